"""MQTT result sink: every record to `<prefix>/results`, defective ones also to
`<prefix>/anomalies`, a retained `online`/`offline` status with a last will.

Delivery guarantee (at least once, in order)
--------------------------------------------
Every record is first appended to an on-disk queue, then published from the sink's own
thread, oldest first; a record leaves the disk only once the broker acknowledged every
message it produced (PUBACK for QoS 1, PUBCOMP for QoS 2; for QoS 0, once paho wrote it to
the socket). So:

- broker down at start, or gone mid-run: records accumulate on disk and go out when the
  broker is back, in their original order (paho reconnects with backoff; messages that were
  in flight when the link dropped are re-sent by paho first, and no newer record is handed
  over until those are acknowledged, so the order of first arrivals is kept);
- daemon crash or restart: the next `MqttSink` on the same `buffer_dir` resumes from the disk
  queue. QoS 1 allows duplicates (a message the broker got but whose PUBACK was lost is sent
  again); nothing is lost except records dropped by the disk bound (counted) and, with
  `buffer_fsync: false`, the last records before a power cut.

The disk queue is one SQLite database (`<buffer_dir>/mqtt-queue.sqlite3`, stdlib `sqlite3`,
WAL journal, one row per record holding its payload and topics, AUTOINCREMENT ids so the
order survives restarts). `write()` commits the row before it returns:

- `buffer_fsync: false` (default): `synchronous=NORMAL`: a committed record survives a crash
  or kill of the daemon; a power cut may lose the last few hundred milliseconds of records
  (the database itself stays consistent).
- `buffer_fsync: true`: `synchronous=FULL`: every record is fsynced before `write()`
  returns; survives power loss, costs one fsync per record on the scoring thread.

The queue is bounded by `buffer_max_records` and `buffer_max_bytes` (payload bytes). When
a new record would exceed either bound, the OLDEST records are deleted to make room and
counted in `stats()["dropped"]`, with a WARNING in the log (the first drop after start or
after a connection, then at most once a minute with the running total). Newest wins: for a
line-side monitor the recent results matter more than week-old ones. (A record dropped while
already handed to the client may still arrive: `dropped` counts records that left the disk
unacknowledged.) The database file is about the payload bound plus SQLite overhead; freed
pages are reused, and given back once the queue drains.

`max_inflight` bounds the MQTT messages handed to paho and not yet acknowledged (a
defective record is two messages); it keeps paho's memory bounded and lets a reconnect
re-send a short window only.

QoS 2 caveat (a broker bug, seen with Mosquitto 2.0.11): Mosquitto acknowledges QoS 2
messages (PUBCOMP) and then fails to forward some of them to a subscriber whose outgoing
in-flight window (`max_inflight_messages`, default 20) is full. Past the broker's
acknowledgement the sink cannot help. Use QoS 1 (the default), or with QoS 2 set
`max_inflight: 1` here or `max_inflight_messages 0` on the broker.

Only one process may use a `buffer_dir` at a time (an advisory `flock` on
`<buffer_dir>/mqtt-queue.lock`).

Credentials never sit in the config file: `username_env` / `password_env` name environment
variables that hold them (e.g. set by systemd `EnvironmentFile=`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sqlite3
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.runtime.sinks.base import json_default

try:  # POSIX only; edge boxes are Linux.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("fsac.runtime.sinks.mqtt")
_paho_log = logging.getLogger("fsac.runtime.sinks.mqtt.paho")


class _QuietOutage(logging.Filter):
    """paho 2.x logs "Client is not connected" at ERROR on every retry while the broker is
    down; the sink reports outages itself (once), so drop that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log.addFilter(_QuietOutage())

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
    "buffer_dir": "/var/lib/fsac/mqtt",
    "buffer_max_bytes": 64 * 1024 * 1024,
    "buffer_max_records": 200_000,
    "buffer_fsync": False,
}

_STATUS_ONLINE = b"online"
_STATUS_OFFLINE = b"offline"


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
    if unknown:
        raise _err(unknown[0], f"unknown setting (known: {', '.join(MQTT_DEFAULTS)})")
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
    for key in ("connect_timeout", "reconnect_min_delay", "reconnect_max_delay"):
        if not _is_num(out[key]) or out[key] <= 0:
            raise _err(key, f"must be a positive number of seconds, got {out[key]!r}")
    if out["reconnect_max_delay"] < out["reconnect_min_delay"]:
        raise _err("reconnect_max_delay", "must be >= reconnect_min_delay")
    if not _is_int(out["max_inflight"]) or not 1 <= out["max_inflight"] <= 10000:
        raise _err("max_inflight", f"must be an integer 1..10000, got {out['max_inflight']!r}")
    for key in ("tls", "tls_insecure", "buffer_fsync"):
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
    if not isinstance(out["buffer_dir"], str) or not out["buffer_dir"]:
        raise _err("buffer_dir", f"must be a folder path, got {out['buffer_dir']!r}")
    if not _is_int(out["buffer_max_bytes"]) or out["buffer_max_bytes"] < 4096:
        raise _err("buffer_max_bytes", f"must be an integer >= 4096, got {out['buffer_max_bytes']!r}")
    if not _is_int(out["buffer_max_records"]) or out["buffer_max_records"] < 1:
        raise _err("buffer_max_records", f"must be a positive integer, got {out['buffer_max_records']!r}")
    return out


# --------------------------------------------------------------------------- disk queue


class _DiskQueue:
    """Bounded FIFO of (topics, payload) rows in SQLite; every method is thread-safe."""

    FILENAME = "mqtt-queue.sqlite3"

    def __init__(self, folder: Path, max_bytes: int, max_records: int, fsync: bool):
        self.folder = folder
        self.path = folder / self.FILENAME
        self.max_bytes = max_bytes
        self.max_records = max_records
        self._lock = threading.Lock()
        self._db = self._open(fsync)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue").fetchone()
        self.count, self.nbytes = int(row[0]), int(row[1])

    def _open(self, fsync: bool) -> sqlite3.Connection:
        try:
            return self._connect(fsync)
        except sqlite3.DatabaseError as e:
            # A corrupt queue must not keep the daemon from starting: set it aside, loudly.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("MQTT disk queue %s is unreadable (%s); moved it to %s and started empty",
                      self.path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    os.replace(p, Path(str(aside) + suffix))
            return self._connect(fsync)

    def _connect(self, fsync: bool) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # effective on a new file only
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            db.execute("PRAGMA journal_size_limit=4194304")
            db.execute(
                "CREATE TABLE IF NOT EXISTS queue ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"  # never reused: order across restarts
                " topics TEXT NOT NULL,"  # "\n"-separated
                " payload BLOB NOT NULL,"
                " size INTEGER NOT NULL)"
            )
            db.execute("SELECT COUNT(*) FROM queue").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def append(self, topics: list[str], payload: bytes) -> int:
        """Store one record; returns how many old records were dropped to make room."""
        size = len(payload)
        if size > self.max_bytes:
            return 1  # cannot fit even in an empty queue: this record is the one dropped
        with self._lock:
            dropped = 0
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                over_n = self.count + 1 - self.max_records
                if over_n > 0 or self.nbytes + size > self.max_bytes:
                    dropped = self._trim_locked(over_n, self.nbytes + size - self.max_bytes)
                db.execute("INSERT INTO queue (topics, payload, size) VALUES (?, ?, ?)",
                           ("\n".join(topics), payload, size))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._recount_locked()
                raise
            self.count += 1
            self.nbytes += size
            return dropped

    def _trim_locked(self, over_n: int, over_bytes: int) -> int:
        """Delete the oldest rows until `over_n` rows and `over_bytes` bytes are freed."""
        freed_n = freed_b = 0
        last_id = None
        for rid, size in self._db.execute("SELECT id, size FROM queue ORDER BY id"):
            if freed_n >= over_n and freed_b >= over_bytes:
                break
            freed_n += 1
            freed_b += size
            last_id = rid
        if last_id is None:
            return 0
        self._db.execute("DELETE FROM queue WHERE id <= ?", (last_id,))
        self.count -= freed_n
        self.nbytes -= freed_b
        return freed_n

    def _recount_locked(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue").fetchone()
        self.count, self.nbytes = int(row[0]), int(row[1])

    def after(self, last_id: int, limit: int) -> list[tuple[int, list[str], bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topics, payload FROM queue WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit)).fetchall()
        return [(rid, topics.split("\n"), bytes(payload)) for rid, topics, payload in rows]

    def delete(self, ids: list[int]) -> int:
        if not ids:
            return 0
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(ids))
                row = db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue WHERE id IN ({marks})",
                                 ids).fetchone()
                db.execute(f"DELETE FROM queue WHERE id IN ({marks})", ids)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.count -= int(row[0])
            self.nbytes -= int(row[1])
            return int(row[0])

    def compact(self) -> None:
        """Once the queue is empty: give freed pages back to the file system, truncate the WAL."""
        with self._lock:
            if self.count == 0:
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()


# --------------------------------------------------------------------------- sink




class MqttSink:
    """Publishes result records to an MQTT broker; see the module docstring."""

    name = "mqtt"
    needs_images = False
    accepts_raw_bytes = False

    def __init__(self, cfg: dict[str, Any] | None):
        import paho.mqtt.client as mqtt  # runtime extra; imported here so the config loader works without it

        self._mqtt = mqtt
        self.cfg = c = validate_mqtt_config(cfg)
        self.client_id = c["client_id"] or f"fsac-{socket.gethostname()}"
        prefix = c["topic_prefix"].replace("{client_id}", self.client_id)
        _check_topic("topic_prefix", prefix, allow_none=False, allow_empty=True)

        def full(t: str | None) -> str | None:
            return None if t is None else (f"{prefix}/{t}" if prefix else t)

        self.results_topic = full(c["results_topic"])
        self.anomalies_topic = full(c["anomalies_topic"])
        self.errors_topic = full(c["errors_topic"])
        self.status_topic = full(c["status_topic"])
        self.qos = c["qos"]
        self.endpoint = f"{c['host']}:{c['port']}"

        username = password = None
        if c["username_env"] is not None:
            username = os.environ.get(c["username_env"])
            if username is None:
                raise _err("username_env", f"environment variable {c['username_env']} is not set")
        if c["password_env"] is not None:
            password = os.environ.get(c["password_env"])
            if password is None:
                raise _err("password_env", f"environment variable {c['password_env']} is not set")
        for key in ("ca_certs", "certfile", "keyfile"):
            if c[key] is not None and not os.path.isfile(c[key]):
                raise _err(key, f"file not found: {c[key]}")

        # Disk queue (+ single-owner lock).
        self.buffer_dir = Path(c["buffer_dir"])
        try:
            self.buffer_dir.mkdir(parents=True, exist_ok=True)
            self._lockfile = open(self.buffer_dir / "mqtt-queue.lock", "a+")
        except OSError as e:
            raise _err("buffer_dir", f"cannot create or write {self.buffer_dir}: {e}") from e
        if fcntl is not None:
            try:
                fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lockfile.close()
                raise _err("buffer_dir", f"{self.buffer_dir} is in use by another fsac-run process "
                                         "(give each MQTT sink its own buffer_dir)") from None
        try:
            self._queue = _DiskQueue(self.buffer_dir, c["buffer_max_bytes"], c["buffer_max_records"],
                                     c["buffer_fsync"])
        except (sqlite3.Error, OSError) as e:
            self._lockfile.close()
            raise _err("buffer_dir", f"cannot open the disk queue in {self.buffer_dir}: {e}") from e
        if self._queue.count:
            log.info("MQTT: %d records left from a previous run in %s; delivering them first",
                     self._queue.count, self.buffer_dir)

        self._state = threading.Lock()  # guards the counters and flags below
        self._published = 0
        self._dropped = 0
        self._connected = False
        self._connections = 0  # successful CONNACKs
        self._ever_connected = False
        self._outage_logged = False
        self._last_drop_log: float | None = None  # None: the next drop is logged at once
        self._drops_since_log = 0
        self._last_refusal: str | None = None
        self.last_error: str | None = None  # last connection problem, human readable
        self.left_on_disk: int | None = None  # set by close()
        self._closed = False
        self._acks: list[int] = []  # mids acknowledged (paho thread -> pump thread)
        self._wake = threading.Event()
        self._stop = threading.Event()

        # Pump-thread state (touched by the pump thread only, and by close() after it stopped).
        self._mid_row: dict[int, int] = {}  # mid -> row id
        self._row_left: dict[int, int] = {}  # row id -> messages not yet acknowledged
        self._cursor = 0  # highest row id handed to paho
        self._seen_connections = 0
        self._hold = False  # after a reconnect: wait for paho's re-sends before new rows
        self._hold_since = 0.0
        self._hold_limit = max(30.0, 2.0 * c["keepalive"])

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=True,
        )
        client.enable_logger(_paho_log)
        client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        client.max_inflight_messages_set(0)  # the pump bounds what is in flight
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(c["reconnect_min_delay"], c["reconnect_max_delay"])
        client.connect_timeout = float(c["connect_timeout"])
        if username is not None:
            client.username_pw_set(username, password)
        if c["tls"]:
            try:
                client.tls_set(ca_certs=c["ca_certs"], certfile=c["certfile"], keyfile=c["keyfile"],
                               cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError, ValueError) as e:
                self._queue.close()
                self._lockfile.close()
                raise _err("certfile" if c["certfile"] else "ca_certs", f"cannot load TLS files: {e}") from e
            client.tls_insecure_set(c["tls_insecure"])
        client.will_set(self.status_topic, _STATUS_OFFLINE, qos=self.qos, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

        self._pump = threading.Thread(target=self._pump_main, name="fsac-mqtt-pump", daemon=True)
        self._pump.start()
        # connect_async + loop_start: a dead broker at start neither raises nor blocks;
        # paho keeps retrying with backoff in its own thread.
        client.connect_async(c["host"], c["port"], keepalive=c["keepalive"])
        client.loop_start()

    # ----------------------------------------------------------------- paho callbacks

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            msg = (f"MQTT broker {self.endpoint} refused the connection: {reason_code}")
            if self.cfg["username_env"]:
                msg += (f" (check the credentials in the environment variables "
                        f"{self.cfg['username_env']}/{self.cfg['password_env'] or '-'})")
            else:
                msg += " (no credentials configured: set sinks.mqtt.username_env/password_env)"
            with self._state:
                self.last_error = msg
                repeat = self._last_refusal == str(reason_code)
                self._last_refusal = str(reason_code)
            if not repeat:
                log.error("%s; buffering to %s", msg, self.buffer_dir)
            return
        with self._state:
            self._connected = True
            self._connections += 1
            first = not self._ever_connected
            self._ever_connected = True
            self._outage_logged = False
            self._last_refusal = None
            self._last_drop_log = None  # a new outage's first drop is reported at once
            self.last_error = None
            pending = self._queue.count
        client.publish(self.status_topic, _STATUS_ONLINE, qos=self.qos, retain=True)
        log.info("MQTT %s to %s as %s (%d records pending on disk)",
                 "connected" if first else "reconnected", self.endpoint, self.client_id, pending)
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        with self._state:
            self.last_error = f"MQTT broker {self.endpoint} unreachable"
            first = not self._outage_logged
            self._outage_logged = True
        if first:
            log.warning("MQTT broker %s unreachable, buffering to %s", self.endpoint, self.buffer_dir)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._state:
            was = self._connected
            self._connected = False
            closing = self._closed
            if was and not closing:
                self._outage_logged = True
                self.last_error = f"MQTT connection to {self.endpoint} lost: {reason_code}"
        if was and not closing:
            log.warning("MQTT connection to %s lost (%s), buffering to %s",
                        self.endpoint, reason_code, self.buffer_dir)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._state:
            self._acks.append(mid)
        self._wake.set()

    # ----------------------------------------------------------------- pump thread

    def _pump_main(self) -> None:
        compacted = True
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._process_acks()
                self._publish_some()
                if self._queue.count:
                    compacted = False
                elif not compacted:
                    compacted = True
                    self._queue.compact()
            except Exception:  # keep pumping; the disk queue still holds everything
                log.exception("MQTT sink: unexpected error in the publish thread")
                self._stop.wait(1.0)

    def _process_acks(self) -> None:
        with self._state:
            acks, self._acks = self._acks, []
        done: list[int] = []
        for mid in acks:
            rid = self._mid_row.pop(mid, None)
            if rid is None:
                continue  # status message, or a row already forgotten
            left = self._row_left.get(rid, 1) - 1
            if left <= 0:
                self._row_left.pop(rid, None)
                done.append(rid)
            else:
                self._row_left[rid] = left
        if done:
            self._queue.delete(done)
            with self._state:
                self._published += len(done)
        if self._hold and not self._row_left:
            self._hold = False

    def _publish_some(self) -> None:
        with self._state:
            connected = self._connected
            connections = self._connections
        if not connected:
            return
        if connections != self._seen_connections:
            self._seen_connections = connections
            if self.qos == 0:
                # QoS 0 messages are not kept by paho across a reconnect: send them again.
                self._forget_inflight()
            elif self._row_left:
                # paho re-sends the unacknowledged QoS 1/2 messages itself; hand over
                # nothing newer until they are acknowledged, so the order is kept.
                self._hold = True
                self._hold_since = time.monotonic()
        if self._hold:
            if time.monotonic() - self._hold_since < self._hold_limit:
                return
            # Should not happen (paho re-sends its unacknowledged messages on reconnect);
            # never stall for weeks on it: send everything pending again (duplicates, no loss).
            log.warning("MQTT sink: %d records not re-acknowledged %.0f s after reconnecting; "
                        "re-sending from the oldest", len(self._row_left), self._hold_limit)
            self._hold = False
            self._forget_inflight()
        room = self.cfg["max_inflight"] - len(self._mid_row)
        if room <= 0:
            return
        mqtt = self._mqtt
        for rid, topics, payload in self._queue.after(self._cursor, room):
            if len(topics) > room and self._mid_row:
                return  # wait for acknowledgements (a record's messages go out together)
            room -= len(topics)
            mids = []
            ok = True
            for topic in topics:
                info = self._client.publish(topic, payload, qos=self.qos)
                if info.rc == mqtt.MQTT_ERR_SUCCESS or (self.qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN):
                    mids.append(info.mid)  # QoS>0 + NO_CONN: queued in paho, sent on reconnect
                else:
                    ok = False
                    break
            if not ok:
                # Not handed over (QoS 0 without connection): the whole row goes again later.
                for mid in mids:
                    self._mid_row.pop(mid, None)
                return
            for mid in mids:
                self._mid_row[mid] = rid
            self._row_left[rid] = len(mids)
            self._cursor = rid
            if not self._client.is_connected():
                return

    def _forget_inflight(self) -> None:
        self._mid_row.clear()
        self._row_left.clear()
        self._cursor = 0

    # ----------------------------------------------------------------- Sink API

    def _topics_for(self, record: dict[str, Any]) -> list[str]:
        topics = [self.results_topic]
        if self.anomalies_topic and record.get("verdict") == "defective":
            topics.append(self.anomalies_topic)
        if self.errors_topic and (record.get("error") or record.get("verdict") == "error"):
            topics.append(self.errors_topic)
        return topics

    def write(self, record: dict[str, Any], image: np.ndarray | None = None) -> None:
        """Append the record to the disk queue (one SQLite commit) and wake the publisher.

        Never touches the network. If the disk itself fails, the record is counted as
        dropped and logged; the scoring loop is not interrupted.
        """
        if self._closed:
            raise RuntimeError("MqttSink is closed")
        payload = json.dumps(record, separators=(",", ":"), default=json_default).encode("utf-8")
        try:
            dropped = self._queue.append(self._topics_for(record), payload)
        except sqlite3.Error as e:
            self._note_dropped(1, f"cannot write the disk queue in {self.buffer_dir} ({e})")
            return
        if dropped:
            self._note_dropped(dropped, f"disk queue full (buffer_max_records="
                                        f"{self.cfg['buffer_max_records']}, buffer_max_bytes="
                                        f"{self.cfg['buffer_max_bytes']}); dropped the oldest")
        self._wake.set()

    def _note_dropped(self, n: int, why: str) -> None:
        now = time.monotonic()
        with self._state:
            self._dropped += n
            self._drops_since_log += n
            total = self._dropped
            loud = self._last_drop_log is None or now - self._last_drop_log >= 60.0
            if loud:
                since, self._drops_since_log = self._drops_since_log, 0
                self._last_drop_log = now
        if loud:
            log.warning("MQTT sink: %s: %d records lost (%d in total since start); broker %s %s",
                        why, since, total, self.endpoint,
                        "connected" if self._connected else "unreachable")

    def flush(self, timeout: float = 2.0) -> None:
        """Wake the publisher and, while connected, wait up to `timeout` s for the disk queue
        to drain. Returns early when disconnected (the records stay on disk)."""
        self._wake.set()
        deadline = time.monotonic() + timeout
        while self._queue.count and self._connected and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.01)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is pending within `timeout` s (while the broker is reachable), publish
        "offline", disconnect cleanly. Undelivered records stay on disk for the next start;
        their count is logged and kept in `self.left_on_disk`."""
        if self._closed:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        self.flush(timeout=max(0.0, deadline - time.monotonic()))
        with self._state:
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._pump.join(max(0.5, deadline - time.monotonic()))
        client = self._client
        if self._connected:
            try:
                info = client.publish(self.status_topic, _STATUS_OFFLINE, qos=self.qos, retain=True)
                info.wait_for_publish(max(0.2, min(2.0, deadline - time.monotonic())))
            except (RuntimeError, ValueError):
                pass
        client.disconnect()
        stopper = threading.Thread(target=client.loop_stop, name="fsac-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(1.0, deadline - time.monotonic()))
        if stopper.is_alive():
            log.warning("MQTT sink: the network thread did not stop in time; leaving it behind")
        if not self._pump.is_alive():
            self._process_acks()
        left = self._queue.count
        self.left_on_disk = left
        try:
            self._queue.close()
        finally:
            self._lockfile.close()
        if left:
            log.warning("MQTT sink closed with %d undelivered records left in %s; "
                        "they are sent on the next start", left, self.buffer_dir)
        else:
            log.info("MQTT sink closed; all records delivered")

    def stats(self) -> dict[str, float]:
        with self._state:
            return {
                "published": self._published,
                "buffered": self._queue.count,
                "buffered_bytes": self._queue.nbytes,
                "dropped": self._dropped,
                "connected": 1 if self._connected else 0,
                "reconnects": max(0, self._connections - 1),
            }

    def __enter__(self) -> "MqttSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
