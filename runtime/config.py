"""fsac-run configuration: one YAML or TOML file plus command-line overrides.

Every setting lives in a pydantic model (runtime/config_model.py, and each sink's own module
for sinks.<name>); the models *are* the documentation of what may be written in the file,
and `fsac-run --config-schema` prints their JSON Schema. Loading validates everything up
front, so a typo in a file that a line engineer edited at 3 am fails at start with a message
naming the setting ("sinks.jsonl.max_byte: unknown setting (did you mean max_bytes?)")
instead of being silently ignored for weeks.

Relative paths written in a config file are relative to the config file's folder (under
systemd the working directory is `/`); paths given on the command line are relative to the
current directory.

Example (YAML; the same keys work in TOML):

    model:
      path: bottle.fsac.onnx
      batch_size: 4
    source:
      kind: watch
      uri: /srv/line3/images
      settle_s: 0.5
      processed: move
    sinks:
      jsonl: {path: /var/lib/fsac/results.jsonl, max_bytes: 100MB, backups: 5}
    http: {port: 9108}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from fsac.errors import FsacError

from .config_model import (BACKENDS, JOURNAL_WHEN_FULL, LOG_LEVELS, SOURCE_KINDS, SOURCE_MODES,  # noqa: F401
                           DaemonConfig, HttpConfig, JournalConfig, LiveConfig, LoggingConfig, ModelConfig,
                           OpenVinoConfig, RecipeConfig, RuntimeConfig, SinksConfig, SourceConfig, StationConfig,
                           TriggerConfig)
from .settings_base import CliValue, _unwrap, check, sink_settings_active  # noqa: F401 (CliValue: API)
from .sinks import SINKS


# --------------------------------------------------------------------------- files and overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    """YAML (.yaml/.yml) or TOML (.toml) -> plain dict. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FsacError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise FsacError(f"{path}: reading YAML needs pyyaml (pip install pyyaml)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FsacError(f"{path}: not valid YAML ({e})") from None
    elif suffix == ".toml":
        try:
            import tomllib as toml  # Python >= 3.11
        except ImportError:
            try:
                import tomli as toml  # the same parser, for Python 3.10
            except ImportError:
                raise FsacError(f"{path}: reading TOML needs Python 3.11 or the tomli package "
                                "(pip install tomli); or write the config in YAML") from None
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as e:
            raise FsacError(f"{path}: not valid TOML ({e})") from None
    else:
        raise FsacError(f"{path}: config files must end in .yaml, .yml or .toml")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FsacError(f"{path}: expected a table of settings at the top level")
    return data


def _looks_like_path(uri: str) -> bool:
    return not (re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri) or uri.strip().isdigit() or "!" in uri
                or uri.startswith("/dev/"))


def _resolve_relative(data: Any, model: type, base: Path) -> None:
    """Make the path settings of a config file relative to the file's folder, following the
    models' `path_settings` (so a new section or sink declares its paths where it is defined)."""
    if not isinstance(data, dict) or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return

    def fixed(value: Any, check_path: bool) -> Any:
        if isinstance(value, list):
            return [fixed(v, check_path) for v in value]
        if not isinstance(value, str) or not value or (check_path and not _looks_like_path(value)):
            return value
        if value.startswith("~"):
            return str(Path(value).expanduser())
        return value if Path(value).is_absolute() else str(base / value)

    for key in getattr(model, "path_settings", ()):
        if key in data:
            data[key] = fixed(data[key], False)
    for key in getattr(model, "maybe_path_settings", ()):
        if model is SourceConfig and data.get("kind") == "gige":  # a camera id (an IP address) is no path
            continue
        if key in data:
            data[key] = fixed(data[key], True)
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        tp = _unwrap(field.annotation)
        if get_origin(tp) is dict and isinstance(value, dict):  # recipes: {name: RecipeConfig}
            for entry in value.values():
                _resolve_relative(entry, _unwrap(get_args(tp)[-1]), base)
        else:
            _resolve_relative(value, tp, base)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """`source.mode=latest-frame` -> data["source"]["mode"] = CliValue("latest-frame")."""
    key, sep, value = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise FsacError(f"--set {assignment!r}: expected SECTION.SETTING=VALUE, e.g. source.mode=latest-frame")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = CliValue(value)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                model: str | None = None, source: str | None = None, jsonl: str | None = None) -> RuntimeConfig:
    """Read the config file (if any), apply `--set` overrides and direct flags, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
        _resolve_relative(data, RuntimeConfig, Path(path).resolve().parent)
    for assignment in overrides:
        apply_override(data, assignment)
    if model is not None:
        apply_override(data, f"model.path={model}")
    if source is not None:
        apply_override(data, f"source.uri={source}")
    if jsonl is not None:
        apply_override(data, f"sinks.jsonl.path={jsonl}")
    try:
        cfg = check(RuntimeConfig, data)
        validate(cfg)
    except FsacError as e:
        flags = [k for k, v in (("model.path", model), ("source.uri", source), ("sinks.jsonl.path", jsonl))
                 if v is not None]
        raise _where(e, path, [*overrides, *flags]) from None
    return cfg


def _where(error: FsacError, path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> FsacError:
    """The error, naming where its setting was written: a box may run several fsac-run units,
    each with its own file, and "live.alpha: must be > 0.0" alone does not say which."""
    if path is None:
        return error
    text = str(error)
    key = text.split(":", 1)[0].split(" ", 1)[0]
    if any(a.partition("=")[0].strip() == key for a in overrides):
        return FsacError(f"{text} (from the command line)")
    return FsacError(f"{text} (config file {path})")


# A sink section switches on by being present, unless it says `enabled: false`.
sink_section_enabled = sink_settings_active


def validate(cfg: RuntimeConfig) -> None:
    """Checks that involve more than one section."""
    if not cfg.model.path:
        raise FsacError("model.path: not set; pass --model PATH or set model.path in the config file")
    if not cfg.source.uri and cfg.source.mode != "trigger":  # trigger: images may come with the requests
        raise FsacError("source.uri: not set; pass --source FOLDER|VIDEO|CAMERA|URL or set source.uri")
    if cfg.source.reconnect_min_s > cfg.source.reconnect_max_s:
        raise FsacError(f"source.reconnect_min_s ({cfg.source.reconnect_min_s}) must not exceed "
                        f"source.reconnect_max_s ({cfg.source.reconnect_max_s})")
    if cfg.source.kind == "gige" or cfg.source.gige is not None:
        from .gige_settings import check_gige_source

        check_gige_source(cfg.source)
    fs = cfg.source.frame_size
    if fs is not None and (len(fs) != 2 or min(fs) < 1):
        raise FsacError(f"source.frame_size: expected [width, height] with positive sizes, got {fs}")
    from .recipes import validate_recipes

    validate_recipes(cfg.recipes)
    from .opcua_settings import validate_opcua

    validate_opcua(cfg.opcua)
    topic = cfg.trigger.mqtt_command_topic
    if topic is not None and (not topic or any(c in topic for c in "+#\x00")):
        # A subscription with a wildcard would also take the daemon's own results (and any other
        # station's traffic) as inspection requests.
        raise FsacError(f"trigger.mqtt_command_topic: {topic!r} must be one topic, not empty and without the "
                        "wildcards '+' or '#'")
    st = cfg.station
    for key in ("site", "line", "station"):
        if any(c in getattr(st, key) for c in "/+#\x00"):
            raise FsacError(f"station.{key}: {getattr(st, key)!r} must not contain '/', '+' or '#' (MQTT topics)")
    mqtt = cfg.sinks.mqtt
    if st.site and st.line and st.station and mqtt is not None \
            and "topic_prefix" not in mqtt.model_fields_set:  # the fleet layout: one broker, many stations
        mqtt.topic_prefix = f"fsac/{st.site}/{st.line}/{st.station}"
    if not any(sink_section_enabled(getattr(cfg.sinks, s.name)) for s in SINKS):
        raise FsacError("sinks: no result sink configured; set sinks.jsonl.path (or --jsonl FILE), "
                        + ", ".join(f"sinks.{s.name}" for s in SINKS if not s.always_present))
    cfg.model._frames_queue = source_queues(cfg)
    resolve_openvino_streams(cfg)
    if not cfg.journal.dir:
        if not cfg.sinks.jsonl.path:
            raise FsacError("journal.dir: not set; set journal.dir (e.g. /var/lib/fsac/journal) for the "
                            "durable result journal")
        cfg.journal.dir = str(Path(cfg.sinks.jsonl.path).parent / ".fsac-journal")


# Sources whose frames wait in a queue (a folder of files, a video file): in every-frame mode
# the batches are full, and frames/s is what counts.
QUEUED_KINDS = ("folder", "video")


def auto_streams(kind: str | None, mode: str) -> str | int:
    """What model.openvino.streams `auto` means for a source of this kind and mode."""
    return "throughput" if mode == "every-frame" and kind in QUEUED_KINDS else 1


def resolve_openvino_streams(cfg: RuntimeConfig) -> None:
    """model.openvino.streams `auto` -> `throughput` or 1, from the source (model._frames_queue,
    which `validate` sets from `source_queues` first; kept as a value, so
    `--check` and the log show what runs). With one stream a lone frame runs on all the
    threads; with two on 2 cores each stream has one core, so a decoder taking a core stalls
    one stream instead of the whole inference: measured on an AVX-512 VNNI EPYC (2 cores, int8),
    fsac-run at 86-99 % (mean 94 %) of the bare backend with two streams against 85-89 % with
    one, the bare throughput the same, but a lone frame 190 instead of 103 ms (README). So two
    where frames queue up (OpenVINO's throughput hint: two streams of one thread on 2 cores,
    its own choice on more), one where each frame's latency counts (triggers, cameras, watch
    folders)."""
    ov = cfg.model.openvino
    if ov.streams != "auto":
        return
    ov.streams = "throughput" if cfg.model._frames_queue else 1


def source_queues(cfg: RuntimeConfig) -> bool:
    """Whether the source's frames wait in a queue: a folder or video file in every-frame mode
    (the scorer's batches are full, and frames/s is what counts)."""
    if not (cfg.source.uri and cfg.source.mode == "every-frame"):
        return False
    from .sources import resolve_kind

    try:
        kind = resolve_kind(cfg.source)
    except FsacError:  # the source names it when it opens; here it only means: not queued
        return False
    return kind in QUEUED_KINDS


def to_dict(cfg: Any) -> Any:
    """Config back to plain data (for --check output and logs)."""
    if isinstance(cfg, BaseModel):
        return cfg.model_dump(mode="json")
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    return cfg


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (`fsac-run --config-schema`; kept in runtime/schema/)."""
    schema = RuntimeConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/fsac/fsac/runtime/schema/config.schema.json"
    schema["title"] = "fsac-run configuration"
    return schema


def config_schema_text() -> str:
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"
