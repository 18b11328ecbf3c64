"""fsac-run configuration: one YAML or TOML file plus command-line overrides.

Every setting lives in a small dataclass below; the dataclass *is* the documentation of
what may be written in the file. Loading validates everything up front, so a typo in a
file that a line engineer edited at 3 am fails at start with a message naming the setting
("sinks.jsonl.max_byte: unknown setting (did you mean max_bytes?)") instead of being
silently ignored for weeks.

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

import difflib
import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

from fsac.errors import FsacError

SOURCE_KINDS = ("auto", "folder", "watch", "video", "camera", "rtsp", "http", "gstreamer")
SOURCE_MODES = ("every-frame", "latest-frame", "trigger")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "openvino")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _opt(default: Any = MISSING, *, factory: Any = MISSING, doc: str = "", **checks: Any) -> Any:
    """A dataclass field with validation hints: choices=, min=, max=, size=True, int_ok=True."""
    meta = {"doc": doc, **checks}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class OpenVinoConfig:
    precision: str = _opt("auto", choices=("auto", "f32", "bf16", "int8"),
                          doc="auto: int8 for a QDQ file, else bf16 where the device has it, else f32")
    device: str = _opt("CPU", doc="OpenVINO device: CPU, GPU (GPU.N), or AUTO")
    streams: int = _opt(0, min=0, max=64, doc="OpenVINO NUM_STREAMS (0: one, the latency hint)")
    cache_dir: str = _opt("", doc="OpenVINO compiled-model cache folder (empty: compile at every start)")


@dataclass
class ModelConfig:
    path: str = _opt("", doc="sealed fsac model file (.onnx) or TensorRT engine (.engine/.plan + .json sidecar)")
    backend: str = _opt("auto", choices=BACKENDS, doc="auto: tensorrt for .engine/.plan/.trt, else onnxruntime; "
                        "with model.calibration_images set, auto times the backends and precisions on this machine and "
                        "serves the fastest whose logits agree with fp32 (fsac.runtime.policy); openvino: Intel's "
                        "runtime (model.openvino)")
    openvino: OpenVinoConfig = _opt(factory=OpenVinoConfig)
    int8_path: str = _opt("", doc="INT8 QDQ file quantized from model.path (`fsac quantize`) that backend: "
                          "auto may serve instead, if it is faster and its logits agree with fp32")
    calibration_images: str = _opt("", doc="folder of normal images for backend: auto to measure each "
                                   "candidate's agreement with fp32 on (empty: auto is onnxruntime fp32)")
    providers: List[str] = _opt(
        factory=list, doc="onnxruntime execution providers in order (tensorrt, cuda, cpu or full names); "
        "empty: TensorRT -> CUDA -> CPU, whichever this onnxruntime offers")
    logit_threshold: Optional[float] = _opt(None, doc="override the calibrated threshold, in logit units "
                                            "(defective iff logit >= logit_threshold)")
    threshold: Optional[float] = _opt(None, doc="override the calibrated threshold in score units (0 < t < 1); "
                                      "converted to a logit threshold. Prefer model.logit_threshold")
    batch_size: int = _opt(4, min=1, max=256, doc="most frames scored in one call when frames queue up")
    threads: int = _opt(0, min=0, max=256, doc="onnxruntime intra-op / OpenVINO inference threads (0: the runtime decides)")
    spin_wait: bool = _opt(False, doc="let onnxruntime's CPU threads busy-wait between operators: a little "
                           "faster on cores nothing else uses, much slower when decoding shares the CPU")
    cpu_prepack: bool = _opt(False, doc="let onnxruntime's CPU provider keep a second, pre-packed copy of the "
                             "weights: measured ~16 % faster at batch 1 on a 2-core x86 CPU, ~280 MB more "
                             "memory for ViT-B-16-plus-240 (off: fsac-run stays within model size + 300 MB)")
    image_size: Optional[int] = _opt(None, min=16, max=4096,
                                     doc="if set, refuse a model whose input size differs (guards against "
                                     "deploying the wrong export)")


@dataclass
class SourceConfig:
    kind: str = _opt("auto", choices=SOURCE_KINDS, doc="auto: decided from uri")
    uri: str = _opt("", int_ok=True, doc="folder, video file, camera index or /dev/videoN, rtsp/http URL, "
                    "or GStreamer pipeline ending in appsink")
    mode: str = _opt("every-frame", choices=SOURCE_MODES,
                     doc="every-frame: no frame skipped, the reader waits (back-pressure); latest-frame: "
                     "stale frames are dropped and counted; trigger: one frame per inspection request "
                     "(section trigger, runtime/trigger.py)")
    queue_size: int = _opt(8, min=1, max=10000, doc="frames read but not yet scored")
    decode_workers: int = _opt(2, min=1, max=64, doc="threads decoding and resizing frames beside inference")
    reconnect_min_s: float = _opt(0.5, min=0.01, doc="first wait before reopening a lost stream")
    reconnect_max_s: float = _opt(30.0, min=0.01, doc="longest wait between reconnect attempts")
    read_timeout_s: float = _opt(10.0, min=0.1, doc="stream open/read timeout where OpenCV supports it")
    settle_s: float = _opt(0.5, min=0.0, doc="watch: a file is complete once its size and mtime have not "
                           "changed for this long and it decodes")
    poll_s: float = _opt(0.2, min=0.01, doc="watch: folder scan interval")
    give_up_s: float = _opt(30.0, min=0.0, doc="watch: a file that still does not decode this long after it "
                            "appeared is reported as an error record")
    existing: str = _opt("process", choices=("process", "skip"),
                         doc="watch: score files already in the folder at start, or only new ones (with "
                         "processed: leave, a restart scores the files still there again)")
    processed: str = _opt("leave", choices=("leave", "move"),
                          doc="watch: leave scored files in place or move them to done_dir")
    done_dir: str = _opt("", doc="watch: where processed files go (default <folder>/done)")
    channel_order: str = _opt("bgr", choices=("bgr", "rgb"),
                              doc="channel order of decoded video frames (OpenCV delivers bgr)")
    frame_size: Optional[List[int]] = _opt(None, doc="[width, height] every frame must have; other frames "
                                           "become error records (null: any size)")
    max_frame_pixels: int = _opt(40_000_000, min=1, doc="an encoded frame whose header says width x height "
                                 "exceeds this becomes an error record before it is decoded (40 MP = 120 MB "
                                 "decoded; decode_workers x that must fit the box's memory)")


@dataclass
class JsonlConfig:
    path: str = _opt("", doc="JSON-lines result file (empty: disabled)")
    max_bytes: int = _opt(100 * 1024 * 1024, size=True, min=1024, doc="rotate when the file would exceed this")
    backups: int = _opt(5, min=0, max=1000, doc="rotated files kept as path.1 ... path.N")


@dataclass
class SinksConfig:
    jsonl: JsonlConfig = _opt(factory=JsonlConfig)
    mqtt: Optional[Dict[str, Any]] = _opt(None, doc="settings passed to fsac.runtime.sinks.mqtt.MqttSink")
    frames: Optional[Dict[str, Any]] = _opt(None, doc="settings passed to fsac.runtime.sinks.frames.FramesSink")
    webhook: Optional[Dict[str, Any]] = _opt(None, doc="settings passed to fsac.runtime.sinks.webhook.WebhookSink")


JOURNAL_WHEN_FULL = ("auto", "block", "drop-oldest")


@dataclass
class JournalConfig:
    dir: str = _opt("", doc="folder of the durable result journal and the sinks' cursors (empty: "
                    "<folder of sinks.jsonl.path>/.fsac-journal); one daemon per folder")
    max_bytes: int = _opt(256 * 1024 * 1024, size=True, min=16 * 1024,
                          doc="journal bound: records kept for sinks that have not delivered them yet")
    max_records: int = _opt(1_000_000, min=16, doc="journal bound, in records")
    when_full: str = _opt("auto", choices=JOURNAL_WHEN_FULL,
                          doc="at the bound: block (stop consuming input: file, folder, watch, video) or "
                          "drop-oldest (live streams: oldest undelivered records deleted and counted); auto: "
                          "drop-oldest for camera/rtsp/http/gstreamer sources, block otherwise")
    sync: bool = _opt(True, doc="fdatasync the journal before an input is acknowledged (survives power "
                      "loss); false: the OS page cache only (survives a daemon crash or kill)")
    commit_interval_s: float = _opt(0.05, min=0.0, max=10.0,
                                    doc="group commit: the journal is fdatasynced (and inputs acknowledged) at "
                                    "most this often, and each durable sink delivers at most this often, so one "
                                    "fsync covers every record of the interval (storage writes per record); "
                                    "adds up to this much latency to acknowledgements and deliveries")
    cursor_interval_s: float = _opt(1.0, min=0.01, max=3600.0,
                                    doc="how often the sinks' cursors are saved; a later save only means "
                                    "records are delivered again after a crash")


@dataclass
class HttpConfig:
    enabled: bool = _opt(True)
    host: str = _opt("127.0.0.1", doc="bind address; keep the loopback default unless a firewall guards it")
    port: int = _opt(9108, min=0, max=65535, doc="0: any free port (logged)")


@dataclass
class LiveConfig:
    """The operator page at http://<http.host>:<http.port>/ (runtime/webui.py)."""
    enabled: bool = _opt(True, doc="serve the live view at / (needs http.enabled; off http.host loopback, the "
                         "token in FSAC_RUN_TOKEN is required)")
    feedback_dir: str = _opt("", doc="where frames marked False alarm / Confirmed defect go (empty: "
                             "<folder of journal.dir>/fsac-feedback)")
    feedback_max_files: int = _opt(1000, min=1, doc="marked frames kept per label; the oldest deleted first")
    calibration_images: List[str] = _opt(factory=list, doc="the original calibration images (files or folders) "
                                         "on this box, for re-calibration from the page")
    alpha: Optional[float] = _opt(None, doc="target false-alarm rate of a re-calibration (default: the model's "
                                  "own calibration alpha, else 0.01)")
    frames_in_memory: int = _opt(16, min=1, max=1000, doc="recent frames whose pixels the page can show or mark "
                                 "(plus the last 12 defective ones)")
    max_frame_bytes: int = _opt(64 * 1024 * 1024, size=True, min=1024 * 1024,
                                doc="bound on the memory those frames take")


@dataclass
class TriggerConfig:
    deadline_s: float = _opt(1.0, min=0.001, max=3600.0, doc="source.mode=trigger: a request not answered within "
                             "this long gets verdict error (the line treats it as reject)")
    max_pending: int = _opt(64, min=1, max=100000, doc="requests waiting for a frame; one more is answered "
                            "with an error at once")
    token_env: str = _opt("FSAC_TRIGGER_TOKEN", doc="NAME of the environment variable holding the bearer token "
                          "POST /v1/inspect requires when http.host is not loopback")
    max_image_bytes: int = _opt(32 * 1024 * 1024, size=True, min=1024, doc="largest image sent with a request")
    remember: int = _opt(10000, min=1, doc="request ids remembered to answer a duplicated request once")
    mqtt_command_topic: Optional[str] = _opt(None, doc="MQTT topic (under sinks.mqtt.topic_prefix) taking "
                                             "inspection requests as JSON; results go to the results topic; "
                                             "null: MQTT requests off")


@dataclass
class StationConfig:
    site: str = _opt("", doc="plant or site name, in every record and the default MQTT topics")
    line: str = _opt("", doc="production line name")
    station: str = _opt("", doc="station name; with site and line set, sinks.mqtt.topic_prefix defaults to "
                        "fsac/<site>/<line>/<station>")


@dataclass
class DaemonConfig:
    shutdown_timeout_s: float = _opt(10.0, min=0.5, doc="SIGTERM: drain and flush within this long")
    drain_timeout_s: float = _opt(60.0, min=0.0, doc="end of a folder or video source: wait this long for the "
                                  "durable sinks to deliver everything, then report what is pending")


@dataclass
class LoggingConfig:
    level: str = _opt("info", choices=LOG_LEVELS)


@dataclass
class RuntimeConfig:
    model: ModelConfig = _opt(factory=ModelConfig)
    source: SourceConfig = _opt(factory=SourceConfig)
    sinks: SinksConfig = _opt(factory=SinksConfig)
    journal: JournalConfig = _opt(factory=JournalConfig)
    http: HttpConfig = _opt(factory=HttpConfig)
    live: LiveConfig = _opt(factory=LiveConfig)
    trigger: TriggerConfig = _opt(factory=TriggerConfig)
    station: StationConfig = _opt(factory=StationConfig)
    recipes: Optional[Dict[str, Any]] = _opt(None, doc="more sealed models by recipe name: {name: {path, "
                                             "logit_threshold?, threshold?}}; model.path is recipe default "
                                             "(runtime/recipes.py)")
    opcua: Optional[Dict[str, Any]] = _opt(None, doc="OPC UA server exposing the station (enabled, host, port, "
                                           "namespace, username_env, password_env, certificate, private_key, "
                                           "security_policies; runtime/opcua_settings.py)")
    daemon: DaemonConfig = _opt(factory=DaemonConfig)
    logging: LoggingConfig = _opt(factory=LoggingConfig)


# --------------------------------------------------------------------------- parsing values


class CliValue(str):
    """A value typed on the command line: parsed as YAML for typed settings, kept verbatim
    for text settings (so `--source no` or `--model 0.onnx` stay strings)."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
               "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}


def _parse_scalar(text: str) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a runtime dependency
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _plain(value: Any) -> Any:
    """Opaque sub-configs (mqtt, frames): turn CLI strings into YAML values, recursively."""
    if isinstance(value, CliValue):
        return _parse_scalar(str(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, tp: Any, name: str, meta: dict[str, Any]) -> Any:
    optional, inner = _is_optional(tp)
    if isinstance(value, CliValue) and inner is not str:
        value = _parse_scalar(str(value))
    if value is None:
        if optional:
            return None
        raise FsacError(f"{name}: a value is required here (got null)")
    tp = inner
    if is_dataclass(tp):
        return _build(tp, value, name)
    origin = get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FsacError(f"{name}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, str) and meta.get("size"):
            m = _SIZE_RE.match(value)
            if not m or m.group(2).lower() not in _SIZE_UNITS:
                raise FsacError(f"{name}: expected a size in bytes like 100MB or 1GiB, got {_describe(value)}")
            value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise FsacError(f"{name}: expected an integer, got {_describe(value)}")
        _check_range(value, name, meta)
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise FsacError(f"{name}: expected a number, got {_describe(value)}")
        _check_range(value, name, meta)
        return float(value)
    if tp is str:
        if isinstance(value, int) and not isinstance(value, bool) and meta.get("int_ok"):
            value = str(value)
        if not isinstance(value, str):
            raise FsacError(f"{name}: expected text, got {_describe(value)}")
        value = str(value)
        choices = meta.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise FsacError(f"{name}: must be one of {', '.join(choices)}; got {value!r}{hint}")
        return value
    if origin in (list, List):
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, str):  # "cuda,cpu" from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise FsacError(f"{name}: expected a list, got {_describe(value)}")
        return [_coerce(v, item_tp, f"{name}[{i}]", {}) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise FsacError(f"{name}: expected a table of settings, got {_describe(value)}")
        return _plain(value)
    if tp is Any:
        return _plain(value)
    raise AssertionError(f"unsupported setting type {tp!r} for {name}")  # programming error


def _check_range(value: float, name: str, meta: dict[str, Any]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise FsacError(f"{name}: must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise FsacError(f"{name}: must be <= {hi}, got {value}")


def _build(cls: type, data: Any, path: str) -> Any:
    where = path or "config"
    if not isinstance(data, dict):
        raise FsacError(f"{where}: expected a table of settings, got {_describe(data)}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
            raise FsacError(f"{name}: unknown setting{hint}")
        kwargs[key] = _coerce(value, hints[key], name, dict(known[key].metadata))
    return cls(**kwargs)


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


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Make the known path settings of a config file relative to the file's folder."""

    def fix(section: dict[str, Any], key: str, check=lambda s: True) -> None:
        value = section.get(key)
        if isinstance(value, str) and value and check(value) and not Path(value).expanduser().is_absolute():
            section[key] = str(base / value)
        elif isinstance(value, str) and value.startswith("~"):
            section[key] = str(Path(value).expanduser())

    model, source, sinks = data.get("model"), data.get("source"), data.get("sinks")
    if isinstance(model, dict):
        fix(model, "path")
        fix(model, "calibration_images")
        fix(model, "int8_path")
    if isinstance(source, dict):
        fix(source, "uri", _looks_like_path)
        fix(source, "done_dir")
    if isinstance(sinks, dict):
        if isinstance(sinks.get("jsonl"), dict):
            fix(sinks["jsonl"], "path")
        if isinstance(sinks.get("mqtt"), dict):
            for key in ("buffer_dir", "ca_certs", "certfile", "keyfile"):
                fix(sinks["mqtt"], key)
        if isinstance(sinks.get("frames"), dict):
            fix(sinks["frames"], "dir")
    if isinstance(data.get("journal"), dict):
        fix(data["journal"], "dir")
    if isinstance(data.get("live"), dict):
        fix(data["live"], "feedback_dir")
        images = data["live"].get("calibration_images")
        if isinstance(images, list):
            data["live"]["calibration_images"] = [str(base / p) if isinstance(p, str) and p and not
                                                  Path(p).expanduser().is_absolute() else p for p in images]


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
        _resolve_relative(data, Path(path).resolve().parent)
    for assignment in overrides:
        apply_override(data, assignment)
    if model is not None:
        apply_override(data, f"model.path={model}")
    if source is not None:
        apply_override(data, f"source.uri={source}")
    if jsonl is not None:
        apply_override(data, f"sinks.jsonl.path={jsonl}")
    cfg = _build(RuntimeConfig, data, "")
    validate(cfg)
    return cfg


def sink_section_enabled(section: dict[str, Any] | None) -> bool:
    return section is not None and section.get("enabled", True) is not False


def sink_section_settings(section: dict[str, Any]) -> dict[str, Any]:
    """The opaque section without our `enabled` switch, as the sink's constructor gets it."""
    return {k: v for k, v in section.items() if k != "enabled"}


def check_sink_section(name: str, settings: dict[str, Any]) -> None:
    """Validate an opaque sink section with its own module's pure validator, so a typo in
    sinks.mqtt fails at start like any other setting. A module that cannot be imported is
    reported when the sink is built (and by --check)."""
    import importlib

    try:
        module = importlib.import_module(f"fsac.runtime.sinks.{name}")
    except ImportError:
        return
    validator = getattr(module, f"validate_{name}_config", None)
    if callable(validator):
        validator(settings)


def validate(cfg: RuntimeConfig) -> None:
    """Checks that involve more than one setting."""
    if not cfg.model.path:
        raise FsacError("model.path: not set; pass --model PATH or set model.path in the config file")
    if not cfg.source.uri and cfg.source.mode != "trigger":  # trigger: images may come with the requests
        raise FsacError("source.uri: not set; pass --source FOLDER|VIDEO|CAMERA|URL or set source.uri")
    if cfg.source.reconnect_min_s > cfg.source.reconnect_max_s:
        raise FsacError(f"source.reconnect_min_s ({cfg.source.reconnect_min_s}) must not exceed "
                        f"source.reconnect_max_s ({cfg.source.reconnect_max_s})")
    fs = cfg.source.frame_size
    if fs is not None and (len(fs) != 2 or min(fs) < 1):
        raise FsacError(f"source.frame_size: expected [width, height] with positive sizes, got {fs}")
    from .recipes import validate_recipes

    validate_recipes(cfg.recipes)
    from .opcua_settings import validate_opcua

    validate_opcua(cfg.opcua)
    st = cfg.station
    for key in ("site", "line", "station"):
        if any(c in getattr(st, key) for c in "/+#\x00"):
            raise FsacError(f"station.{key}: {getattr(st, key)!r} must not contain '/', '+' or '#' (MQTT topics)")
    if st.site and st.line and st.station and isinstance(cfg.sinks.mqtt, dict) \
            and "topic_prefix" not in cfg.sinks.mqtt:  # the fleet layout: one broker, many stations
        cfg.sinks.mqtt["topic_prefix"] = f"fsac/{st.site}/{st.line}/{st.station}"
    for name in ("mqtt", "frames", "webhook"):
        section = getattr(cfg.sinks, name)
        if section is not None and "enabled" in section and not isinstance(section["enabled"], bool):
            raise FsacError(f"sinks.{name}.enabled: expected true or false, got {_describe(section['enabled'])}")
        if sink_section_enabled(section):
            check_sink_section(name, sink_section_settings(section))
    if not (cfg.sinks.jsonl.path or sink_section_enabled(cfg.sinks.mqtt) or sink_section_enabled(cfg.sinks.frames)
            or sink_section_enabled(cfg.sinks.webhook)):
        raise FsacError("sinks: no result sink configured; set sinks.jsonl.path (or --jsonl FILE), "
                        "sinks.mqtt or sinks.frames")
    if not cfg.journal.dir:
        if not cfg.sinks.jsonl.path:
            raise FsacError("journal.dir: not set; set journal.dir (e.g. /var/lib/fsac/journal) for the "
                            "durable result journal")
        cfg.journal.dir = str(Path(cfg.sinks.jsonl.path).parent / ".fsac-journal")


def to_dict(cfg: Any) -> Any:
    """Config back to plain data (for --check output and logs)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    return cfg
