"""Trigger mode's wiring: into the daemon (fail-safe records, one result per request,
metrics) and out to the line (HTTP `POST /v1/inspect`, the MQTT command topic).

HTTP answers synchronously with the record (the same JSON the journal holds). MQTT
requests are answered on the MQTT sink's results topic, through the journal like every
record: the record echoes part_id and request_id.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import threading
import time
from typing import Any

from fsac.errors import FsacError

from .record import make_record
from .sources import Source
from .trigger import Request, Stopping, TriggerFrame, TriggerHub, TriggerSource

log = logging.getLogger("fsac.runtime")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def attach_trigger(daemon: Any, inner: Source | None) -> tuple[TriggerHub, TriggerSource]:
    hub = TriggerHub(daemon.cfg.trigger, "requests", lambda req, why: fail_safe(daemon, req, why))
    source = TriggerSource(inner, hub, "requests")

    def state() -> str:
        if not source.connected:
            return f"source {source.label} is not connected"
        return f"{len(daemon.queue)} frames queued"

    hub.source_state = state
    hub.resolve_recipe = lambda name: daemon.recipes.handle(name)
    hub.switch_recipe = lambda name: daemon.recipes.switch(name)
    topic = daemon.cfg.trigger.mqtt_command_topic
    if topic:
        from .config import sink_section_enabled

        mqtt = daemon.cfg.sinks.mqtt
        if not sink_section_enabled(mqtt):
            raise FsacError("trigger.mqtt_command_topic: needs sinks.mqtt (the broker, and the results topic "
                            "the answers go to)")
        hub.inputs.append(MqttCommands(hub, mqtt, topic))
    return hub, source


def fail_safe(daemon: Any, req: Request, reason: str) -> None:
    """The deadline's (or a missing frame's) answer: an error record, journaled, then answered
    from the journal thread once durable, like every other record."""
    model = daemon.handle.current
    frame = TriggerFrame(frame_id=req.frame_id, source=daemon.source.label, data=None, t_captured=req.t_wall,
                         error=reason, t_mono=req.t_mono, part_id=req.part_id, request_id=req.request_id,
                         request=req)
    record = make_record(frame, model, time.monotonic() - req.t_mono, error=reason, run_id=daemon.run_id,
                         station=daemon.station)
    record["recipe"] = req.recipe or daemon.recipes.active
    record["health"] = daemon.health.current()  # no frame of its own: the alarms in force
    log.warning("part %s (request %s): %s", req.part_id, req.request_id, reason)
    if not daemon.journal_records([(frame, record)]):
        raise FsacError(f"journal {daemon.journal.folder}: the fail-safe record was not journaled")


def settle_batch(daemon: Any, batch: list[Any], records: list[dict[str, Any]], preps: list[Any]):
    """Claim each request for its record. A request the deadline already answered keeps that
    answer (its frame's record is the fail-safe one: counted as written, acknowledged to the
    source); one claimed past its deadline is answered with verdict error."""
    hub: TriggerHub = daemon.trigger
    keep_b, keep_r, keep_p = [], [], []
    now = time.monotonic()
    for item, record, prep in zip(batch, records, preps):
        req = getattr(item.frame, "request", None)
        if req is None:
            keep_b.append(item), keep_r.append(record), keep_p.append(prep)
            continue
        if not hub.claim(req):
            # The deadline answered it: with the fail-safe record, answered (and the source's own
            # frame, e.g. a watch-folder file, acknowledged) only once that record is durable. This
            # frame's record is neither journaled nor used: answering with it would tell the line a
            # verdict the journal never held.
            daemon.metrics.frames.inc()
            daemon.metrics.errors.inc()
            inner, inner_source = getattr(item.frame, "inner", None), getattr(daemon.source, "inner", None)
            if inner is not None and inner_source is not None:
                hub.after_answer(req, lambda inner=inner, src=inner_source, req=req: src.on_result(inner, req.record))
            continue
        if now > req.deadline and record["verdict"] != "error":
            hub.late += 1
            late_ms = (now - req.t_mono) * 1000.0
            record = make_record(item.frame, daemon.handle.current, now - req.t_mono,
                                 error=f"deadline exceeded: scored after {late_ms:.0f} ms, trigger.deadline_s="
                                 f"{daemon.cfg.trigger.deadline_s:g}s", run_id=daemon.run_id,
                                 station=daemon.station)
            record["recipe"] = req.recipe or daemon.recipes.active
        keep_b.append(item), keep_r.append(record), keep_p.append(prep)
    return keep_b, keep_r, keep_p


def trigger_metrics(e: Any, hub: TriggerHub) -> None:
    e.scalar("fsac_trigger_requests_total", "counter", "Inspection requests accepted (not counting duplicates).",
             hub.requests)
    e.scalar("fsac_trigger_duplicates_total", "counter", "Requests with a request id seen before (answered once).",
             hub.duplicates)
    e.scalar("fsac_trigger_timeouts_total", "counter", "Requests answered with verdict error by the deadline "
             "or for lack of a frame.", hub.timeouts)
    e.scalar("fsac_trigger_late_total", "counter", "Requests scored past the deadline (answered with error).",
             hub.late)
    e.scalar("fsac_trigger_refused_total", "counter", "Requests over trigger.max_pending (answered with error).",
             hub.refused)
    e.histogram("fsac_trigger_latency_seconds", "Seconds from inspection request to answer (record durable).",
                hub.latency)


def parse_request(payload: bytes) -> dict[str, Any]:
    """`{"part_id": "P-1", "request_id": "r1", "image": "<base64>"}` -> submit() arguments."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FsacError(f"request: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise FsacError("request: expected a JSON object with part_id")
    unknown = sorted(set(data) - {"part_id", "request_id", "image", "recipe"})
    if unknown:
        raise FsacError(f"request: unknown field {unknown[0]!r} (known: part_id, request_id, image, recipe)")
    if "part_id" not in data:
        raise FsacError("request: part_id is required")
    image = data.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise FsacError("image: expected base64 text")
        try:
            image = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError) as e:
            raise FsacError(f"image: not valid base64 ({e})") from None
    return {"part_id": data["part_id"], "request_id": data.get("request_id"), "image": image,
            "recipe": data.get("recipe")}


def check_token(cfg: Any, headers: Any) -> str | None:
    """None if allowed. Loopback needs no token; elsewhere trigger.token_env must hold one."""
    if cfg.http.host in LOOPBACK:
        return None
    token = os.environ.get(cfg.trigger.token_env, "")
    if not token:
        return (f"POST /v1/inspect is off: http.host={cfg.http.host} is not loopback and the environment "
                f"variable {cfg.trigger.token_env} (trigger.token_env) holds no token")
    given = str(headers.get("Authorization", ""))
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return "missing or wrong bearer token"
    return None


def http_inspect(hub: TriggerHub, cfg: Any, headers: Any, body: bytes) -> tuple[int, str]:
    denied = check_token(cfg, headers)
    if denied:
        return 401, json.dumps({"error": denied})
    try:
        req, _dup = hub.submit(**parse_request(body))
    except Stopping as e:
        return 503, json.dumps({"error": str(e)})
    except FsacError as e:
        return 400, json.dumps({"error": str(e)})
    record = hub.wait(req)
    if record is None:  # not even the fail-safe record reached the journal: still a reject
        return 503, json.dumps({"part_id": req.part_id, "request_id": req.request_id, "verdict": "error",
                                "error": "no result: the journal did not take the record in time"})
    return 200, json.dumps(record)


class MqttCommands:
    """Subscribes to the command topic with the MQTT sink's broker settings; each message is
    one request, answered on the results topic through the journal."""

    def __init__(self, hub: TriggerHub, mqtt_settings: Any, topic: str) -> None:
        from .sinks.mqtt import side_client

        self.client, c, prefix = side_client(mqtt_settings, "cmd")
        self.topic = f"{prefix}/{topic}" if prefix else topic
        self.hub = hub
        self.qos = c["qos"]
        self.errors = 0
        # Set once the broker has granted the subscription (SUBACK), cleared on a disconnect:
        # a command published before that is not delivered to us.
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.connect_async(c["host"], c["port"], keepalive=c["keepalive"])

    def start(self) -> None:
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=self.qos)  # again after every reconnect

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self.subscribed.set()
        else:
            log.error("mqtt: the broker refused the subscription to %s (%s)", self.topic, reason_codes)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.subscribed.clear()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            data = json.loads(msg.payload) if msg.payload[:1] == b"{" else None
            if isinstance(data, dict) and set(data) == {"recipe"}:  # {"recipe": NAME}: switch the active one
                self.hub.switch_recipe(_recipe_name(data["recipe"]))
                return
            self.hub.submit(**parse_request(msg.payload))  # answered on the results topic
        except (FsacError, ValueError) as e:
            self.errors += 1
            log.error("mqtt %s: request refused: %s", msg.topic, e)


def _recipe_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FsacError(f"recipe: expected a recipe name, got {value!r:.60}")
    return value
