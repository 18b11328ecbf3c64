"""MQTT result sink: every record to `<prefix>/results`, defective ones also to
`<prefix>/anomalies`, a retained `online`/`offline` status with a last will.

Delivery guarantee (at least once, in order)
--------------------------------------------
The sink is a consumer of fsac-run's journal (runtime/journal.py, runtime/delivery.py): the
records wait there, not in a queue of the sink's own. `deliver(lines)` publishes a batch
oldest first, at most `max_inflight` messages unacknowledged at a time, and returns only
when the broker acknowledged every message of the batch (PUBACK for QoS 1, PUBCOMP for
QoS 2; for QoS 0, once paho wrote it to the socket). Only then does the daemon advance the
sink's cursor. Broker down at start, gone, frozen or flapping: `deliver` raises (not
connected, or no acknowledgement within `publish_timeout`), the daemon retries the batch
from the cursor and the records wait in the journal; a restart replays from the saved
cursor. QoS 1 allows duplicates (a batch partly acknowledged before the link dropped is
sent again); each carries the same (run_id, seq), so a consumer can drop them.

Order: a retry re-publishes the batch from its oldest record, so the first arrival of
every record is in journal order (paho re-sends its own unacknowledged QoS 1/2 messages
first after a reconnect).

QoS 2 caveat (a broker bug, seen with Mosquitto 2.0.11): Mosquitto acknowledges QoS 2
messages (PUBCOMP) and then fails to forward some of them to a subscriber whose outgoing
in-flight window (`max_inflight_messages`, default 20) is full. Past the broker's
acknowledgement the sink cannot help. Use QoS 1 (the default), or with QoS 2 set
`max_inflight: 1` here or `max_inflight_messages 0` on the broker.

Credentials never sit in the config file: `username_env` / `password_env` name environment
variables that hold them (e.g. set by systemd `EnvironmentFile=`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any

from fsac.runtime.sinks.mqtt_config import _check_topic, _err, validate_mqtt_config

log = logging.getLogger("fsac.runtime.sinks.mqtt")
_paho_log = logging.getLogger("fsac.runtime.sinks.mqtt.paho")

__all__ = ["MqttSink", "validate_mqtt_config"]


class _QuietOutage(logging.Filter):
    """paho 2.x logs "Client is not connected" at ERROR on every retry while the broker is
    down; the sink reports outages itself (once), so drop that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log.addFilter(_QuietOutage())

_STATUS_ONLINE = b"online"
_STATUS_OFFLINE = b"offline"


def broker_credentials(c: dict[str, Any]) -> tuple[str | None, str | None]:
    """(username, password) from the environment variables the settings name; a named
    variable that is not set, or a TLS file that does not exist, is an error naming the setting."""
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
    return username, password


def apply_broker_auth(client: Any, c: dict[str, Any], username: str | None, password: str | None) -> None:
    """Credentials and TLS on a paho client, the same for every connection of the station."""
    if username is not None:
        client.username_pw_set(username, password)
    if c["tls"]:
        try:
            client.tls_set(ca_certs=c["ca_certs"], certfile=c["certfile"], keyfile=c["keyfile"],
                           cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise _err("certfile" if c["certfile"] else "ca_certs", f"cannot load TLS files: {e}") from e
        client.tls_insecure_set(c["tls_insecure"])


def side_client(settings: Any, suffix: str) -> tuple[Any, dict[str, Any], str]:
    """A second connection to the sink's broker (health events, trigger commands): the same
    host, credentials, TLS and reconnect backoff as the results sink, client id <id>-<suffix>.
    -> (paho client, validated settings, topic prefix with {client_id} filled in)."""
    import paho.mqtt.client as mqtt

    c = validate_mqtt_config(settings)
    client_id = c["client_id"] or f"fsac-{socket.gethostname()}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{client_id}-{suffix}")
    apply_broker_auth(client, c, *broker_credentials(c))
    client.reconnect_delay_set(int(max(1, c["reconnect_min_delay"])), int(max(1, c["reconnect_max_delay"])))
    return client, c, c["topic_prefix"].replace("{client_id}", client_id)


class MqttSink:
    """Publishes result records to an MQTT broker; see the module docstring."""

    name = "mqtt"
    durable = True  # delivers from the journal
    needs_images = False
    accepts_raw_bytes = False

    def __init__(self, cfg: dict[str, Any] | None):
        import paho.mqtt.client as mqtt  # runtime extra; imported here so the config loader works without it

        self._mqtt = mqtt
        self.cfg = c = validate_mqtt_config(cfg)
        self.batch_max = c["batch_max"]
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

        username, password = broker_credentials(c)

        self._state = threading.Lock()  # guards the counters and flags below
        self._published = 0
        self._connected = False
        self._answered = threading.Event()  # a connection attempt got its answer (CONNACK, refusal or failure)
        self._connections = 0  # successful CONNACKs
        self._ever_connected = False
        self._outage_logged = False
        self._last_refusal: str | None = None
        self.last_error: str | None = None  # last connection problem, human readable
        self._closed = False
        self._deliver_lock = threading.Lock()

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=True)
        client.enable_logger(_paho_log)
        client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        client.max_inflight_messages_set(0)  # deliver() bounds what is in flight
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(c["reconnect_min_delay"], c["reconnect_max_delay"])
        client.connect_timeout = float(c["connect_timeout"])
        apply_broker_auth(client, c, username, password)
        client.will_set(self.status_topic, _STATUS_OFFLINE, qos=self.qos, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        self._client = client
        # connect_async + loop_start: a dead broker at start neither raises nor blocks;
        # paho keeps retrying with backoff in its own thread.
        client.connect_async(c["host"], c["port"], keepalive=c["keepalive"])
        client.loop_start()

    # ----------------------------------------------------------------- paho callbacks

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            self._connect_answer(client, reason_code)
        finally:
            self._answered.set()  # after _connected / last_error are set, which deliver() reads next

    def _connect_answer(self, client, reason_code) -> None:
        if reason_code.is_failure:
            msg = f"MQTT broker {self.endpoint} refused the connection: {reason_code}"
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
                log.error("%s; results wait in the journal", msg)
            return
        with self._state:
            self._connected = True
            self._connections += 1
            first = not self._ever_connected
            self._ever_connected = True
            self._outage_logged = False
            self._last_refusal = None
            self.last_error = None
        client.publish(self.status_topic, _STATUS_ONLINE, qos=self.qos, retain=True)
        log.info("MQTT %s to %s as %s", "connected" if first else "reconnected", self.endpoint, self.client_id)

    def _on_connect_fail(self, client, userdata) -> None:
        with self._state:
            self.last_error = f"MQTT broker {self.endpoint} unreachable"
            first = not self._outage_logged
            self._outage_logged = True
        self._answered.set()
        if first:
            log.warning("MQTT broker %s unreachable; results wait in the journal", self.endpoint)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._state:
            was = self._connected
            self._connected = False
            closing = self._closed
            if was and not closing:
                self._outage_logged = True
                self.last_error = f"MQTT connection to {self.endpoint} lost: {reason_code}"
        if was and not closing:
            log.warning("MQTT connection to %s lost (%s); results wait in the journal", self.endpoint, reason_code)

    # ----------------------------------------------------------------- Sink API

    def _topics_for(self, record: dict[str, Any]) -> list[str]:
        topics = [self.results_topic]
        if self.anomalies_topic and record.get("verdict") == "defective":
            topics.append(self.anomalies_topic)
        if self.errors_topic and (record.get("error") or record.get("verdict") == "error"):
            topics.append(self.errors_topic)
        return topics

    def deliver(self, lines: list[bytes]) -> None:
        """Publish the records (journal lines) and wait for the broker's acknowledgements.

        Returns once every message of the batch is acknowledged; raises ConnectionError or
        TimeoutError otherwise (the daemon retries the whole batch)."""
        with self._deliver_lock:
            if self._closed:
                raise RuntimeError("MqttSink is closed")
            if not self._connected and self.last_error is None:
                # Records reach the journal before the first connection attempt has its answer:
                # wait for that answer rather than count a delivery error against a broker that is up.
                self._answered.wait(min(2.0, float(self.cfg["publish_timeout"])))
            deadline = time.monotonic() + self.cfg["publish_timeout"]
            window: list[Any] = []
            for line in lines:
                if not self._connected:
                    raise ConnectionError(self.last_error or f"MQTT broker {self.endpoint} not connected")
                try:
                    record = json.loads(line)
                except ValueError:  # a damaged journal line: published raw on the results topic only
                    record = {}
                    log.error("mqtt: a journal line is not JSON; published to the results topic as it is")
                payload = line.rstrip(b"\n")
                for topic in self._topics_for(record):
                    info = self._client.publish(topic, payload, qos=self.qos)
                    if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                        raise ConnectionError(f"MQTT publish to {self.endpoint} failed: "
                                              f"{self._mqtt.error_string(info.rc)}")
                    window.append(info)
                if len(window) >= self.cfg["max_inflight"]:
                    self._wait(window, deadline)
                    window = []
                    # Per window of max_inflight messages: over a slow link a 256-record batch
                    # must not need to fit one publish_timeout (it was retried forever, duplicated).
                    deadline = time.monotonic() + self.cfg["publish_timeout"]
            self._wait(window, deadline)
            with self._state:
                self._published += len(lines)

    def _wait(self, infos: list[Any], deadline: float) -> None:
        for info in infos:
            while not info.is_published():
                if not self._connected:
                    raise ConnectionError(self.last_error or f"MQTT connection to {self.endpoint} lost")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"MQTT broker {self.endpoint} did not acknowledge within "
                                       f"sinks.mqtt.publish_timeout={self.cfg['publish_timeout']:g}s")
                try:
                    info.wait_for_publish(min(left, 0.2))
                except (RuntimeError, ValueError) as e:  # paho: not queued / disconnected
                    raise ConnectionError(f"MQTT publish to {self.endpoint} failed: {e}") from None

    def close(self, timeout: float = 10.0) -> None:
        """Publish "offline" and disconnect cleanly. Undelivered records stay in the journal."""
        if self._closed:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        with self._state:
            self._closed = True
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

    def stats(self) -> dict[str, float]:
        with self._state:
            return {"published": self._published, "connected": 1 if self._connected else 0,
                    "reconnects": max(0, self._connections - 1)}

    def __enter__(self) -> "MqttSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build(settings: Any) -> MqttSink:
    return MqttSink(settings)
