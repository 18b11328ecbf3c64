"""fsac-run configuration: files, overrides, and errors that name the setting."""

from __future__ import annotations

import re

import pytest

from fsac.errors import FsacError
from fsac.runtime.config import RuntimeConfig, apply_override, load_config, to_dict


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_yaml_file_with_relative_paths(tmp_path):
    cfg_file = write(tmp_path / "conf" / "run.yaml", """
model: {path: models/m.onnx, threshold: 0.7, providers: [cpu]}
source: {kind: watch, uri: drop, settle_s: 1, processed: move}
sinks:
  jsonl: {path: out/results.jsonl, max_bytes: 10MB, backups: 2}
http: {port: 0}
""")
    cfg = load_config(cfg_file)
    base = tmp_path / "conf"
    assert cfg.model.path == str(base / "models/m.onnx")
    assert cfg.model.threshold == 0.7 and cfg.model.providers == ["cpu"]
    assert cfg.source.uri == str(base / "drop") and cfg.source.kind == "watch"
    assert cfg.source.settle_s == 1.0 and isinstance(cfg.source.settle_s, float)
    assert cfg.sinks.jsonl.path == str(base / "out/results.jsonl")
    assert cfg.sinks.jsonl.max_bytes == 10_000_000
    assert cfg.http.port == 0 and cfg.http.host == "127.0.0.1"
    assert to_dict(cfg)["source"]["processed"] == "move"


def _have_toml() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("tomllib", "tomli"))


@pytest.mark.skipif(not _have_toml(), reason="TOML needs Python 3.11 or tomli")
def test_toml_file(tmp_path):
    cfg_file = write(tmp_path / "run.toml", """
[model]
path = "/abs/m.onnx"
batch_size = 8
[source]
uri = "rtsp://user:pw@cam/stream"
mode = "latest-frame"
[sinks.jsonl]
path = "r.jsonl"
max_bytes = "1MiB"
""")
    cfg = load_config(cfg_file)
    assert cfg.model.path == "/abs/m.onnx" and cfg.model.batch_size == 8
    assert cfg.source.uri == "rtsp://user:pw@cam/stream"  # URLs are not made into paths
    assert cfg.source.mode == "latest-frame"
    assert cfg.sinks.jsonl.max_bytes == 1024 * 1024


def test_unknown_key_names_the_path_and_suggests(tmp_path):
    cfg_file = write(tmp_path / "run.yaml",
                     "model: {path: m.onnx}\nsource: {uri: x}\nsinks: {jsonl: {path: r, max_byte: 5}}\n")
    with pytest.raises(FsacError, match=r"sinks\.jsonl\.max_byte: unknown setting \(did you mean max_bytes\?\)"):
        load_config(cfg_file)
    with pytest.raises(FsacError, match=r"^modle: unknown setting \(did you mean model\?\)"):
        load_config(None, ["modle.path=x"])


def test_type_and_choice_errors_name_the_setting():
    base = ["model.path=m.onnx", "source.uri=f", "sinks.jsonl.path=r.jsonl"]
    with pytest.raises(FsacError, match=r"source\.queue_size: expected an integer, got 'many'"):
        load_config(None, base + ["source.queue_size=many"])
    with pytest.raises(FsacError, match=r"source\.mode: must be one of every-frame, latest-frame, trigger; got 'latest' "
                                        r"\(did you mean latest-frame\?\)"):
        load_config(None, base + ["source.mode=latest"])
    with pytest.raises(FsacError, match=r"model\.batch_size: must be >= 1, got 0"):
        load_config(None, base + ["model.batch_size=0"])
    with pytest.raises(FsacError, match=r"http\.enabled: expected true or false"):
        load_config(None, base + ["http.enabled=maybe"])
    with pytest.raises(FsacError, match=r"source\.reconnect_min_s .* must not exceed"):
        load_config(None, base + ["source.reconnect_min_s=10", "source.reconnect_max_s=1"])
    with pytest.raises(FsacError, match=r"--set 'nonsense'"):
        load_config(None, base + ["nonsense"])


def test_overrides_and_direct_flags():
    cfg = load_config(None, ["source.mode=latest-frame", "model.threshold=0.25", "model.providers=cuda,cpu",
                             "source.frame_size=[640, 480]"],
                      model="/m.onnx", source="0", jsonl="/tmp/r.jsonl")
    assert cfg.source.mode == "latest-frame" and cfg.model.threshold == 0.25
    assert cfg.model.providers == ["cuda", "cpu"]
    assert cfg.source.frame_size == [640, 480]
    assert cfg.source.uri == "0" and cfg.model.path == "/m.onnx" and cfg.sinks.jsonl.path == "/tmp/r.jsonl"
    # Text settings keep what was typed, even where YAML would read a boolean or a number.
    cfg = load_config(None, ["source.uri=no", "model.path=1.5", "sinks.jsonl.path=r"])
    assert cfg.source.uri == "no" and cfg.model.path == "1.5"


def test_required_settings_and_sinks():
    with pytest.raises(FsacError, match=r"model\.path: not set; pass --model"):
        load_config(None, ["source.uri=x", "sinks.jsonl.path=r"])
    with pytest.raises(FsacError, match=r"source\.uri: not set"):
        load_config(None, ["model.path=m", "sinks.jsonl.path=r"])
    with pytest.raises(FsacError, match=r"no result sink configured"):
        load_config(None, ["model.path=m", "source.uri=x"])


def test_sink_sections_are_validated_by_their_modules():
    pytest.importorskip("fsac.runtime.sinks.mqtt")
    base = ["model.path=m", "source.uri=x", "journal.dir=/j"]
    cfg = load_config(None, base + ["sinks.mqtt.host=broker", "sinks.mqtt.qos=1"])
    assert cfg.sinks.mqtt.host == "broker" and cfg.sinks.mqtt.qos == 1 and cfg.sinks.mqtt.port == 1883
    assert cfg.sinks.mqtt.model_fields_set == {"host", "qos"}
    with pytest.raises(FsacError, match=r"^sinks\.mqtt\.hots: unknown setting \(did you mean host\?\)"):
        load_config(None, base + ["sinks.mqtt.hots=broker"])
    with pytest.raises(FsacError, match=r"^sinks\.mqtt\.qos: must be one of 0, 1, 2; got 7"):
        load_config(None, base + ["sinks.mqtt.qos=7"])
    # Without a JSONL path to put it beside, the journal's folder must be named.
    with pytest.raises(FsacError, match=r"^journal\.dir: not set"):
        load_config(None, ["model.path=m", "source.uri=x", "sinks.mqtt.host=broker"])
    with pytest.raises(FsacError, match=r"sinks\.mqtt\.qos"):
        load_config(None, base + ["sinks.mqtt.host=broker", "sinks.mqtt.qos=7"])
    # enabled: false switches a section off without deleting it; it is still checked, so a typo
    # shows now rather than on the day it is switched back on
    with pytest.raises(FsacError, match="no result sink"):
        load_config(None, base + ["sinks.mqtt.enabled=false", "sinks.mqtt.qos=2"])
    with pytest.raises(FsacError, match=r"^sinks\.mqtt\.qos"):
        load_config(None, base + ["sinks.mqtt.enabled=false", "sinks.mqtt.qos=7"])


def test_bad_files(tmp_path):
    with pytest.raises(FsacError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(FsacError, match=r"must end in \.yaml, \.yml or \.toml"):
        load_config(write(tmp_path / "run.json", "{}"))
    with pytest.raises(FsacError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "model: [unclosed"))
    if _have_toml():
        with pytest.raises(FsacError, match="not valid TOML"):
            load_config(write(tmp_path / "bad.toml", "model = = 1"))
    else:
        with pytest.raises(FsacError, match="TOML needs Python 3.11 or the tomli package"):
            load_config(write(tmp_path / "any.toml", "[model]"))
    with pytest.raises(FsacError, match=r"^model: expected a table of settings"):
        load_config(write(tmp_path / "list.yaml", "model: [1, 2]\n"))


def test_apply_override_builds_nested_sections():
    data = {}
    apply_override(data, "sinks.frames.dir=/tmp/f")
    assert data == {"sinks": {"frames": {"dir": "/tmp/f"}}}
    assert isinstance(RuntimeConfig().sinks.jsonl.max_bytes, int)


def test_journal_settings(tmp_path):
    cfg = load_config(None, ["model.path=m", "source.uri=x", "sinks.jsonl.path=/srv/out/r.jsonl"])
    assert cfg.journal.dir == "/srv/out/.fsac-journal"  # beside the JSONL file by default
    assert cfg.journal.when_full == "auto" and cfg.journal.sync is True
    assert cfg.journal.max_bytes == 256 * 1024 * 1024 and cfg.source.max_frame_pixels == 40_000_000
    cfg_file = write(tmp_path / "run.yaml", "model: {path: m}\nsource: {uri: x}\nsinks: {jsonl: {path: r.jsonl}}\n"
                     "journal: {dir: state/journal, max_bytes: 1MB, when_full: drop-oldest}\n")
    cfg = load_config(cfg_file)
    assert cfg.journal.dir == str(tmp_path / "state" / "journal")  # relative to the config file
    assert cfg.journal.max_bytes == 1000**2 and cfg.journal.when_full == "drop-oldest"
    with pytest.raises(FsacError, match=r"^journal\.when_full: must be one of auto, block, drop-oldest; "
                                         r"got 'drop-olds' \(did you mean drop-oldest\?\)"):
        load_config(None, ["model.path=m", "source.uri=x", "sinks.jsonl.path=r", "journal.when_full=drop-olds"])
    with pytest.raises(FsacError, match=r"^journal\.max_byte: unknown setting \(did you mean max_bytes\?\)"):
        load_config(None, ["model.path=m", "source.uri=x", "sinks.jsonl.path=r", "journal.max_byte=1"])
    with pytest.raises(FsacError, match=r"^sinks\.jsonl\.fsync: unknown setting"):  # the journal decides now
        load_config(None, ["model.path=m", "source.uri=x", "sinks.jsonl.path=r", "sinks.jsonl.fsync=batch"])


def test_recipes_are_settings_too(tmp_path):
    base = ["model.path=m", "source.uri=x", "sinks.jsonl.path=r"]
    cfg_file = write(tmp_path / "run.yaml", "model: {path: m}\nsource: {uri: x}\nsinks: {jsonl: {path: r.jsonl}}\n"
                     "recipes: {cap: {path: models/cap.onnx, logit_threshold: 1.5}}\n")
    cfg = load_config(cfg_file)
    assert cfg.recipes["cap"].path == str(tmp_path / "models" / "cap.onnx")  # relative to the file
    assert cfg.recipes["cap"].logit_threshold == 1.5
    with pytest.raises(FsacError, match=r"^recipes\.cap\.logit_treshold: unknown setting \(did you mean "
                                        r"logit_threshold\?\)"):
        load_config(None, base + ["recipes.cap.path=c.onnx", "recipes.cap.logit_treshold=1"])
    with pytest.raises(FsacError, match=r"^recipes\.cap\.path: a value is required"):
        load_config(None, base + ["recipes.cap.threshold=0.5"])
    with pytest.raises(FsacError, match=r"^recipes\.default: 'default' is model\.path's recipe"):
        load_config(None, base + ["recipes.default.path=c.onnx"])


def test_strict_values_in_files(tmp_path):
    """A quoted number is not a number and 1 is not true: what a YAML typo looks like."""
    cfg_file = write(tmp_path / "run.yaml", "model: {path: m, batch_size: '4'}\nsource: {uri: x}\n"
                     "sinks: {jsonl: {path: r.jsonl}}\n")
    with pytest.raises(FsacError, match=r"^model\.batch_size: expected an integer, got '4'"):
        load_config(cfg_file)
    cfg_file.write_text("model: {path: m}\nsource: {uri: 0}\nsinks: {jsonl: {path: r.jsonl}}\nhttp: {enabled: 1}\n")
    with pytest.raises(FsacError, match=r"^http\.enabled: expected true or false, got 1"):
        load_config(cfg_file)
    cfg_file.write_text("model: {path: m}\nsource: {uri: 0}\nsinks: {jsonl: {path: r.jsonl, max_bytes: 2GiB}}\n")
    cfg = load_config(cfg_file)
    assert cfg.source.uri == "0" and cfg.sinks.jsonl.max_bytes == 2 * 1024**3  # a camera index stays text
    with pytest.raises(FsacError, match=r"^sinks\.jsonl\.max_bytes: expected a size in bytes like 100MB"):
        load_config(None, ["model.path=m", "source.uri=x", "sinks.jsonl.path=r", "sinks.jsonl.max_bytes=lots"])


def test_schema_in_the_repo_is_the_generated_one():
    import json
    from pathlib import Path

    from fsac.runtime.config import config_schema_text

    kept = Path(__file__).resolve().parents[2] / "runtime" / "schema" / "config.schema.json"
    assert kept.read_text() == config_schema_text(), \
        "runtime/schema/config.schema.json is stale: fsac-run --config-schema > runtime/schema/config.schema.json"
    schema = json.loads(kept.read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"model", "source", "sinks", "journal", "http", "trigger", "recipes"}
    sinks = schema["$defs"]["SinksConfig"]["properties"]
    from fsac.runtime.sinks import SINK_NAMES

    assert sorted(sinks) == sorted(SINK_NAMES)  # every registered sink has its section


def test_schema_accepts_what_the_loader_accepts_and_refuses_typos(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from fsac.runtime.config import config_schema, read_config_file

    schema = config_schema()
    cfg_file = write(tmp_path / "run.yaml", """
model: {path: m.onnx, batch_size: 2, openvino: {precision: bf16}}
source: {kind: watch, uri: drop, processed: move}
sinks:
  jsonl: {path: r.jsonl, max_bytes: 10MB}
  mqtt: {host: broker, qos: 2, username_env: FSAC_MQTT_USER}
  frames: {dir: frames, format: jpeg, max_files: 100}
journal: {dir: j, when_full: block}
recipes: {cap: {path: cap.onnx}}
""")
    data = read_config_file(cfg_file)
    jsonschema.validate(data, schema)  # an editor with the schema accepts it ...
    load_config(cfg_file)  # ... and so does fsac-run
    data["sinks"]["mqtt"]["hots"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_config_schema_flag(capsys):
    import json

    from fsac.runtime.cli import main

    assert main(["--config-schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "fsac-run configuration"


def test_errors_name_the_file_and_out_of_range_settings_are_refused_at_start(tmp_path):
    base = "model: {path: m.onnx}\nsource: {uri: x}\nsinks: {jsonl: {path: r.jsonl}}\n"
    cfg_file = write(tmp_path / "cam2.yaml", base + "source: {uri: x, setle_s: 1}\n")
    # Several fsac-run units may run on one box, each with its own file: the line names it.
    with pytest.raises(FsacError) as e:
        load_config(cfg_file)
    assert str(e.value) == f"source.setle_s: unknown setting (did you mean settle_s?) (config file {cfg_file})"
    cfg_file.write_text(base + "http: {port: 99999}\n")
    with pytest.raises(FsacError, match=r"^http\.port: must be <= 65535, got 70000 \(from the command line\)$"):
        load_config(cfg_file, ["http.port=70000"])  # an override is not blamed on the file
    # A re-calibration alpha outside (0, 1) used to pass the start and fail only when the
    # operator pressed Re-calibrate; a wildcard command topic takes the daemon's own results
    # (and other stations' traffic) as inspection requests; remember bounds kept answers.
    for extra, refused in (("live: {alpha: -1}", r"^live\.alpha: must be > 0\.0, got -1"),
                           ("live: {alpha: 5}", r"^live\.alpha: must be < 1\.0, got 5"),
                           ("trigger: {mqtt_command_topic: 'cmd/#'}", r"^trigger\.mqtt_command_topic: 'cmd/#' must be "
                            r"one topic"),
                           ("trigger: {mqtt_command_topic: '+'}", r"^trigger\.mqtt_command_topic: '\+'"),
                           ("trigger: {remember: 100000000}", r"^trigger\.remember: must be <= 1000000")):
        cfg_file.write_text(base + extra + "\n")
        with pytest.raises(FsacError, match=refused + ".*" + re.escape(f"(config file {cfg_file})")):
            load_config(cfg_file)
    cfg_file.write_text(base + "live: {alpha: 0.05}\ntrigger: {mqtt_command_topic: line3/inspect}\n")
    cfg = load_config(cfg_file)
    assert cfg.live.alpha == 0.05 and cfg.trigger.mqtt_command_topic == "line3/inspect"
