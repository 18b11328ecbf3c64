"""JSON-lines sink: rotation by size, torn-line recovery, closed-sink behaviour, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from fsac.errors import FsacError
from fsac.runtime.record import FIELD_NAMES, encode_record, schema_text
from fsac.runtime.sinks.jsonl import JsonlSink

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "runtime" / "schema" / "result.schema.json"


def record(i: int, verdict: str = "good") -> dict:
    err = verdict == "error"
    return {"schema": "fsac.result/2", "run_id": "20240501T120000Z-0a1b2c3d", "seq": i, "time": "2024-05-01T12:00:00.000Z", "source": "/srv/drop", "frame_id": i,
            "name": f"{i:04d}.png", "score": None if err else 0.25, "logit": None if err else -1.0986,
            "sim_normal": None if err else 0.61, "sim_anomalous": None if err else 0.60, "threshold": 0.5,
            "logit_threshold": 0.0, "verdict": verdict, "latency_ms": 3.5, "model": "m.onnx", "model_sha256": "a" * 64,
            "error": "cannot read image" if err else None, "part_id": None, "request_id": None,
            "site": "", "line": "", "station": "", "recipe": "default", "health": []}


def line(i: int, verdict: str = "good") -> bytes:
    return encode_record(record(i, verdict))


def test_rotation_keeps_n_backups_and_every_record(tmp_path):
    path = tmp_path / "r.jsonl"
    line_len = len(line(0))
    sink = JsonlSink(path, max_bytes=line_len * 10 + 5, backups=2)
    for i in range(0, 45, 4):  # deliveries of 4 lines (the last one 1): rotation may fall inside one
        sink.deliver([line(k) for k in range(i, min(i + 4, 45))])
    sink.close()
    files = [path, Path(f"{path}.1"), Path(f"{path}.2")]
    assert all(f.exists() for f in files) and not Path(f"{path}.3").exists()
    ids = []
    for f in reversed(files):  # .2 oldest, then .1, then the live file
        lines = f.read_text().splitlines()
        assert len(lines) <= 10
        ids += [json.loads(line)["frame_id"] for line in lines]
    assert ids == list(range(45 - len(ids), 45))  # the newest records, contiguous, in order
    assert sink.stats()["rotations"] == 4 and sink.stats()["written"] == 45
    with pytest.raises(FsacError, match="closed"):
        sink.deliver([line(99)])


def test_zero_backups_starts_afresh(tmp_path):
    path = tmp_path / "r.jsonl"
    sink = JsonlSink(path, max_bytes=1024, backups=0)
    for i in range(30):
        sink.deliver([line(i)])
    sink.close()
    ids = [json.loads(line)["frame_id"] for line in path.read_text().splitlines()]
    assert ids[-1] == 29 and not Path(f"{path}.1").exists()


def test_torn_last_line_is_isolated(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + '{"schema": "fsac.res')  # a crash mid-line
    sink = JsonlSink(path)
    sink.deliver([line(1)])
    sink.close()
    lines = path.read_text().splitlines()
    assert lines[1] == '{"schema": "fsac.res'
    assert json.loads(lines[2])["frame_id"] == 1


def test_unwritable_path_names_the_setting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FsacError, match=r"sinks\.jsonl\.path: cannot open"):
        JsonlSink(blocker / "r.jsonl")


def test_schema_is_valid_and_rejects_inconsistent_records():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    assert json.loads(schema_text()) == schema  # the file is generated from runtime/record.py
    assert list(record(0)) == list(FIELD_NAMES) == schema["required"]
    v.validate(record(0))
    v.validate(record(1, "error"))
    bad = record(2) | {"score": None}  # good verdict without a score
    assert not v.is_valid(bad)
    assert not v.is_valid(record(2) | {"logit": None})  # good verdict without the logit that decided it
    assert not v.is_valid(record(2, "error") | {"logit": 1.0})  # an error record with a logit
    assert not v.is_valid({k: val for k, val in record(5).items() if k != "logit_threshold"})
    assert not v.is_valid(record(6) | {"schema": "fsac.result/1"})
    assert not v.is_valid(record(3) | {"extra": 1})
    assert not v.is_valid({k: val for k, val in record(4).items() if k != "model_sha256"})
