"""Settings of the MQTT sink (`sinks.mqtt`): defaults and the pure validator.

Separate from the sink so that checking a config file needs neither paho nor a broker.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from fsac.errors import FsacError

SECTION = "sinks.mqtt"

MQTT_DEFAULTS: dict[str, Any] = {
    "host": "localhost",
    "port": 1883,
    "client_id": None,  # None: "fsac-<hostname>"
    "topic_prefix": "fsac/{client_id}",  # "{client_id}" is replaced; "" = topics used verbatim
    "results_topic": "results",  # every record
    "anomalies_topic": "anomalies",  # verdict == "defective" only; None disables
    "errors_topic": None,  # records with an error; None (default) disables
    "status_topic": "status",  # retained "online" / "offline" (also the last will)
    "qos": 1,
    "keepalive": 30,  # seconds
    "connect_timeout": 5.0,  # seconds
    "reconnect_min_delay": 1.0,  # seconds; doubles per failed attempt ...
    "reconnect_max_delay": 30.0,  # ... up to this
    "max_inflight": 20,  # messages handed to the client and not yet acknowledged (see below)
    "tls": False,
    "ca_certs": None,  # None with tls: the system CA store
    "certfile": None,
    "keyfile": None,
    "tls_insecure": False,  # skip the broker host name check (never in production)
    "username_env": None,  # NAME of the environment variable holding the user name
    "password_env": None,  # NAME of the environment variable holding the password
    "publish_timeout": 10.0,  # seconds a delivery waits for the broker's acknowledgements
    "batch_max": 256,  # records per delivery
}

# Settings of the SQLite disk queue this sink had before the journal took its job.
REMOVED = {"buffer_dir": "journal.dir", "buffer_max_bytes": "journal.max_bytes",
           "buffer_max_records": "journal.max_records", "buffer_fsync": "journal.sync"}

# --------------------------------------------------------------------------- config


def _err(key: str, msg: str) -> FsacError:
    return FsacError(f"{SECTION}.{key}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_topic(key: str, value: Any, allow_none: bool, allow_empty: bool = False) -> None:
    if value is None:
        if not allow_none:
            raise _err(key, "must be set")
        return
    if not isinstance(value, str):
        raise _err(key, f"must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise _err(key, "must not be empty")
    if "+" in value or "#" in value or "\x00" in value:
        raise _err(key, f"{value!r} must not contain the wildcards '+' or '#'")


def validate_mqtt_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Check the `sinks.mqtt` section and return it with defaults filled in.

    Pure: reads neither disk nor environment (the sink does that when it starts). Raises
    FsacError naming the setting, e.g. "sinks.mqtt.qos: must be 0, 1 or 2, got 3".
    """
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise FsacError(f"{SECTION}: must be a mapping of settings, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(MQTT_DEFAULTS))
    for key in unknown:
        if key in REMOVED:
            raise _err(key, f"no longer used: records wait in fsac-run's journal; set {REMOVED[key]} instead")
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(MQTT_DEFAULTS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(MQTT_DEFAULTS)}"
        raise _err(unknown[0], f"unknown setting ({hint})")
    out = {**MQTT_DEFAULTS, **cfg}

    if not isinstance(out["host"], str) or not out["host"].strip():
        raise _err("host", "must be a non-empty host name or address")
    if not _is_int(out["port"]) or not 1 <= out["port"] <= 65535:
        raise _err("port", f"must be an integer 1..65535, got {out['port']!r}")
    cid = out["client_id"]
    if cid is not None and (not isinstance(cid, str) or not cid or len(cid.encode()) > 65535):
        raise _err("client_id", f"must be a non-empty string, got {cid!r}")
    if cid is not None and ("+" in cid or "#" in cid or "/" in cid):
        raise _err("client_id", f"{cid!r} must not contain '/', '+' or '#'")
    _check_topic("topic_prefix", out["topic_prefix"], allow_none=False, allow_empty=True)
    if out["topic_prefix"].endswith("/"):
        raise _err("topic_prefix", f"{out['topic_prefix']!r} must not end with '/'")
    _check_topic("results_topic", out["results_topic"], allow_none=False)
    _check_topic("anomalies_topic", out["anomalies_topic"], allow_none=True)
    _check_topic("errors_topic", out["errors_topic"], allow_none=True)
    _check_topic("status_topic", out["status_topic"], allow_none=False)
    if not _is_int(out["qos"]) or out["qos"] not in (0, 1, 2):
        raise _err("qos", f"must be 0, 1 or 2, got {out['qos']!r}")
    if not _is_int(out["keepalive"]) or not 5 <= out["keepalive"] <= 65535:
        raise _err("keepalive", f"must be an integer number of seconds 5..65535, got {out['keepalive']!r}")
    for key in ("connect_timeout", "reconnect_min_delay", "reconnect_max_delay", "publish_timeout"):
        if not _is_num(out[key]) or out[key] <= 0:
            raise _err(key, f"must be a positive number of seconds, got {out[key]!r}")
    if out["reconnect_max_delay"] < out["reconnect_min_delay"]:
        raise _err("reconnect_max_delay", "must be >= reconnect_min_delay")
    if not _is_int(out["max_inflight"]) or not 1 <= out["max_inflight"] <= 10000:
        raise _err("max_inflight", f"must be an integer 1..10000, got {out['max_inflight']!r}")
    for key in ("tls", "tls_insecure"):
        if not isinstance(out[key], bool):
            raise _err(key, f"must be true or false, got {out[key]!r}")
    for key in ("ca_certs", "certfile", "keyfile"):
        v = out[key]
        if v is not None:
            if not isinstance(v, str) or not v:
                raise _err(key, f"must be a file path, got {v!r}")
            if not out["tls"]:
                raise _err(key, "is set but tls is false (set sinks.mqtt.tls: true)")
    if out["keyfile"] is not None and out["certfile"] is None:
        raise _err("keyfile", "needs sinks.mqtt.certfile (the client certificate)")
    if out["tls_insecure"] and not out["tls"]:
        raise _err("tls_insecure", "only applies with tls: true")
    for key in ("username_env", "password_env"):
        v = out[key]
        if v is not None and (not isinstance(v, str) or not v or "=" in v or "\x00" in v):
            raise _err(key, f"must be the NAME of an environment variable (e.g. FSAC_MQTT_USERNAME), got {v!r}")
    if out["password_env"] is not None and out["username_env"] is None:
        raise _err("password_env", "needs sinks.mqtt.username_env too")
    if not _is_int(out["batch_max"]) or not 1 <= out["batch_max"] <= 100000:
        raise _err("batch_max", f"must be an integer 1..100000, got {out['batch_max']!r}")
    return out
