"""The result record, defined once: its fields (in order, with types and meanings), the one
function that makes a record, its one JSON encoding, and the JSON Schema generated from the
field table (`runtime/schema/result.schema.json` is this module's output, kept in the repo;
a test checks that they agree: `python -m fsac.runtime.record > runtime/schema/result.schema.json`).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any

from fsac.score import ERROR, score_from_logit, verdict

from .sinks.base import json_default

RECORD_SCHEMA = "fsac.result/2"

NUMBER_OR_NULL = {"type": ["number", "null"]}

# name, JSON Schema of the value, meaning. The order is the order of the keys in every record.
FIELDS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("schema", {"const": RECORD_SCHEMA}, "Record format identifier; changes when a field changes meaning."),
    ("run_id", {"type": "string", "pattern": "^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$"},
     "This run of fsac-run: start time (UTC) and 32 random bits. With seq, identifies the record: a record "
     "delivered again after a restart has the same (run_id, seq)."),
    ("seq", {"type": "integer", "minimum": 0}, "Position of the record in this run, from 0, without gaps."),
    ("time", {"type": "string", "format": "date-time"}, "UTC time the frame was read, RFC 3339 with milliseconds."),
    ("source", {"type": "string"},
     "The configured source (folder, file, camera, URL with any password replaced by ***)."),
    ("frame_id", {"type": "integer", "minimum": 0},
     "Position of the frame in this run, from 0. Gaps only in latest-frame mode (dropped frames)."),
    ("name", {"type": ["string", "null"]},
     "File name for folder and watch sources, <video>#<index> for video files, null for live streams."),
    ("score", NUMBER_OR_NULL, "Anomaly score AS = sigmoid(logit) in [0, 1], computed in float64, for people "
     "(it saturates near 0 and 1); null for error records."),
    ("logit", NUMBER_OR_NULL, "Anomaly logit z = (sim_anomalous - sim_normal) / tau: the number that ranks and "
     "decides; null for error records."),
    ("sim_normal", NUMBER_OR_NULL,
     "Cosine similarity s(CF, AT+) to the normal text prototype; null for error records."),
    ("sim_anomalous", NUMBER_OR_NULL,
     "Cosine similarity s(CF, AT-) to the anomalous text prototype; null for error records."),
    ("threshold", {"type": "number"},
     "The decision threshold in score units, sigmoid(logit_threshold), for display."),
    ("logit_threshold", {"type": "number"}, "Decision threshold in force: defective when logit >= logit_threshold."),
    ("verdict", {"enum": ["good", "defective", "error"]}, "good, defective, or error (could not be scored)."),
    ("latency_ms", {"type": "number", "minimum": 0},
     "Milliseconds from frame read to result ready (decode, preprocessing, queueing and inference)."),
    ("model", {"type": "string"}, "File name of the model that scored the frame."),
    ("model_sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"},
     "Content hash (seal) of that model file; changes on reload."),
    ("error", {"type": ["string", "null"]}, "Why the frame could not be scored; null otherwise."),
    ("part_id", {"type": ["string", "null"]},
     "source.mode=trigger: the part the inspection request named (echoed); null for other modes."),
    ("request_id", {"type": ["string", "null"]},
     "source.mode=trigger: the request's id (given, or generated); a duplicated request id is answered once."),
    ("site", {"type": "string"}, "station.site: the plant (empty when not configured)."),
    ("line", {"type": "string"}, "station.line: the production line (empty when not configured)."),
    ("station", {"type": "string"}, "station.station: the inspection station (empty when not configured)."),
    ("recipe", {"type": "string"}, "The recipe whose model scored the frame (default: model.path)."),
    ("health", {"type": "array", "items": {"enum": ["lens_blocked", "lighting_changed", "focus_lost",
                                                    "reject_rate_high"]}},
     "Input-health alarms this frame raised (runtime/health.py); empty when all is well or the model file "
     "has no calibration image statistics."),
)
FIELD_NAMES = tuple(name for name, _, _ in FIELDS)


def json_schema() -> dict[str, Any]:
    """The record's JSON Schema (draft 2020-12), generated from FIELDS."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://fsac.invalid/schema/result/2",
        "title": "fsac-run result record",
        "description": "One record per frame read by fsac-run, as kept in its journal, written by the JSON-lines "
                       "sink and published by the MQTT sink. Frames that could not be scored (corrupt, too large, "
                       "wrong size or channel count, inference failure) get verdict \"error\", null score and "
                       "logit, and the reason in \"error\".",
        "type": "object",
        "additionalProperties": False,
        "required": list(FIELD_NAMES),
        "properties": {name: {**spec, "description": doc} for name, spec, doc in FIELDS},
        "if": {"properties": {"verdict": {"const": "error"}}},
        "then": {"properties": {"score": {"type": "null"}, "logit": {"type": "null"}, "error": {"type": "string"}}},
        "else": {"properties": {"score": {"type": "number"}, "logit": {"type": "number"},
                                "error": {"type": "null"}}},
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def new_run_id() -> str:
    """Sortable and unique enough per box: start time (UTC) plus 32 random bits."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_record(record: dict[str, Any]) -> bytes:
    """The one JSON encoding of a record: a journal line, and verbatim what JSONL and MQTT send.

    A lone surrogate (a file name that is not UTF-8, as os.listdir decodes it) cannot be
    encoded as UTF-8; "backslashreplace" writes it as the JSON escape \\udcff instead, so
    the line is still valid JSON and the record is journaled rather than stopping the scorer."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                       default=json_default) + "\n").encode("utf-8", "backslashreplace")


def make_record(frame: Any, model: Any, latency_s: float, outputs: dict[str, float] | None = None,
                error: str | None = None, run_id: str = "", seq: int = 0,
                station: tuple[str, str, str] = ("", "", "")) -> dict[str, Any]:
    """The result record of one frame (keys in FIELDS order).

    `outputs` holds the model's logit and similarities for this frame. The verdict is the
    core's rule on the logit (`fsac.score.verdict`); the score is sigmoid(logit) in float64.
    """
    logit = sim_normal = sim_anomalous = score = None
    if error is None and outputs is not None:
        logit = float(outputs["logit"])
        sim_normal, sim_anomalous = float(outputs["sim_normal"]), float(outputs["sim_anomalous"])
        score = score_from_logit(logit)
        result = verdict(logit, model.logit_threshold)
    else:
        result = ERROR
        error = error or "no score"
    values = (RECORD_SCHEMA, run_id, seq, iso_utc(frame.t_captured), frame.source, frame.frame_id, frame.name,
              score, logit, sim_normal, sim_anomalous, model.threshold, model.logit_threshold, result,
              round(max(0.0, latency_s) * 1000.0, 3), model.name, model.sha256, error,
              getattr(frame, "part_id", None), getattr(frame, "request_id", None), *station, "default", [])
    return dict(zip(FIELD_NAMES, values))


if __name__ == "__main__":  # regenerate the schema file
    print(schema_text(), end="")
