"""Health alarms as MQTT status events: whenever the set of active input-health alarms
changes, a retained JSON message `{"alarms": [...], "time": ..., "frame_id": ...}` on
`<topic_prefix>/health` (QoS of sinks.mqtt), so a line dashboard sees "lens blocked" as it
happens and a late subscriber gets the current state. Uses the MQTT sink's broker settings.

Unlike results, these events are not journaled: they describe the present. While the broker
is away they wait here, at most `max_queued` of them; beyond that the oldest is dropped and
counted (the newest, retained, is what a dashboard shows). An event counts as published only
when paho reports its message id as delivered (on_publish: PUBACK for QoS 1, PUBCOMP for
QoS 2); what is neither published nor dropped at shutdown is counted as not delivered. The
counts are on /metrics (fsac_health_events_*) and in the exit report.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("fsac.runtime")


class HealthPublisher:
    max_queued = 64  # events kept through a broker outage

    def __init__(self, mqtt_settings: Any, topic: str = "health", max_queued: int | None = None) -> None:
        from .sinks.mqtt import side_client

        self.client, c, prefix = side_client(mqtt_settings, "health")
        self.topic = f"{prefix}/{topic}" if prefix else topic
        self.qos = c["qos"]
        if max_queued is not None:
            self.max_queued = max_queued
        self.published = 0  # acknowledged by the broker (on_publish)
        self.dropped = 0  # the oldest, dropped from a full queue during an outage
        self.unsent = 0  # neither published nor dropped when the publisher closed
        # Lock order: paho calls on_publish holding its own message lock, and publish() takes
        # that lock, so publish() is never called with self._lock held.
        self._lock = threading.Lock()
        self._queue: deque[bytes] = deque()  # waiting for a connection
        self._inflight: set[int] = set()  # handed to paho, not yet acknowledged
        self._acked_early: set[int] = set()  # acknowledged before publish() returned its mid
        self._connected = False
        self._closed = False
        self._send_lock = threading.Lock()  # one sender at a time keeps the events in order
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(c["host"], c["port"], keepalive=c["keepalive"])
        self.client.loop_start()

    # ----------------------------------------------------------------- paho callbacks

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        with self._lock:
            self._connected = True
        self._send()  # what waited through the outage, oldest first

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self._connected = False

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if mid in self._inflight:
                self._inflight.discard(mid)
                self.published += 1
            else:
                self._acked_early.add(mid)

    # ----------------------------------------------------------------- events

    def __call__(self, alarms: list[str], record: dict[str, Any]) -> None:
        body = json.dumps({"alarms": alarms, "time": record.get("time"), "frame_id": record.get("frame_id"),
                           "part_id": record.get("part_id")}).encode()
        with self._lock:
            if self._closed:
                self.unsent += 1
                return
            self._queue.append(body)
            if len(self._queue) > self.max_queued:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("mqtt %s: broker away; %d health status events dropped so far (the newest %d "
                                "are kept)", self.topic, self.dropped, self.max_queued)
        self._send()

    def _send(self) -> None:
        """Hand the queued events to paho while connected (paho itself would queue without bound)."""
        with self._send_lock:
            while True:
                with self._lock:
                    if not self._connected or not self._queue:
                        return
                    body = self._queue.popleft()
                info = self.client.publish(self.topic, body, qos=self.qos, retain=True)
                with self._lock:
                    if info.mid in self._acked_early:
                        self._acked_early.discard(info.mid)
                        self.published += 1
                    else:
                        self._inflight.add(info.mid)  # paho re-sends it after a reconnect

    def pending(self) -> int:
        """Events not yet acknowledged: waiting for the broker, or sent and unacknowledged."""
        with self._lock:
            return len(self._queue) + len(self._inflight)

    def metrics(self, e: Any) -> None:
        with self._lock:
            published, dropped, pending = self.published, self.dropped, len(self._queue) + len(self._inflight)
        e.scalar("fsac_health_events_published_total", "counter", "Health status events the MQTT broker "
                 "acknowledged.", published)
        e.scalar("fsac_health_events_dropped_total", "counter", "Health status events dropped (the oldest) "
                 "while the MQTT broker was away.", dropped)
        e.scalar("fsac_health_events_pending", "gauge", "Health status events waiting for the MQTT broker.",
                 pending)

    def close(self, timeout: float = 5.0) -> None:
        """Wait (up to `timeout`) for what is in flight, then disconnect; what is still
        unacknowledged is counted in `unsent` and logged."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                # Nothing left, or no broker to acknowledge it: a shutdown does not wait for
                # the broker to come back (the events describe a present that is ending).
                if not (self._queue or self._inflight) or not self._connected:
                    break
            time.sleep(0.02)
        with self._lock:
            self.unsent += len(self._queue) + len(self._inflight)
            self._queue.clear()
            self._inflight.clear()
        if self.unsent:
            log.warning("mqtt %s: %d health status events not delivered (broker away at shutdown)", self.topic,
                        self.unsent)
        self.client.disconnect()
        # loop_stop joins paho's thread, which may sit in its reconnect backoff (up to a
        # second at a time): bounded by what is left of the timeout, never forever.
        stopper = threading.Thread(target=self.client.loop_stop, name="fsac-health-stop", daemon=True)
        stopper.start()
        stopper.join(max(1.5, deadline - time.monotonic()))
        if stopper.is_alive():
            log.warning("mqtt %s: the network thread did not stop in time; leaving it behind", self.topic)
