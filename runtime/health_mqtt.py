"""Health alarms as MQTT status events: whenever the set of active input-health alarms
changes, a retained JSON message `{"alarms": [...], "time": ..., "frame_id": ...}` on
`<topic_prefix>/health` (QoS of sinks.mqtt), so a line dashboard sees "lens blocked" as it
happens and a late subscriber gets the current state. Uses the MQTT sink's broker settings.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

log = logging.getLogger("fsac.runtime")


class HealthPublisher:
    def __init__(self, mqtt_settings: Any, topic: str = "health") -> None:
        from .sinks.mqtt import side_client

        self.client, c, prefix = side_client(mqtt_settings, "health")
        self.topic = f"{prefix}/{topic}" if prefix else topic
        self.qos = c["qos"]
        self.published = 0
        self._infos: list[Any] = []
        self.client.connect_async(c["host"], c["port"], keepalive=c["keepalive"])
        self.client.loop_start()

    def __call__(self, alarms: list[str], record: dict[str, Any]) -> None:
        body = json.dumps({"alarms": alarms, "time": record.get("time"), "frame_id": record.get("frame_id"),
                           "part_id": record.get("part_id")})
        # paho queues the message while disconnected and sends it on (re)connect.
        self._infos.append(self.client.publish(self.topic, body, qos=self.qos, retain=True))
        self._infos = [i for i in self._infos if not i.is_published()]
        self.published += 1

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while any(not i.is_published() for i in self._infos) and time.monotonic() < deadline:
            time.sleep(0.02)
        unsent = sum(not i.is_published() for i in self._infos)
        if unsent:
            log.warning("mqtt %s: %d health status messages not acknowledged at shutdown", self.topic, unsent)
        self.client.disconnect()
        self.client.loop_stop()
