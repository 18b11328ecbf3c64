"""The sink registry: every result destination fsac-run can deliver to.

A sink is one module plus one entry here. The module defines its settings model (a
`Settings` subclass; `sinks.<name>` in the config file, and in the JSON Schema) and
`build(settings) -> sink`; the sink implements base.Sink and, when `durable`, delivers
from the journal through its own cursor (runtime/delivery.py). The settings models are
imported here, so the modules must import their heavy dependencies (paho, OpenCV) only
when a sink is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from fsac.errors import FsacError

from .frames_config import FramesSettings
from .jsonl import JsonlSettings
from .mqtt_config import MqttSettings
from .webhook import WebhookSettings


@dataclass(frozen=True)
class SinkSpec:
    name: str  # the section: sinks.<name>
    settings: type  # its Settings model
    module: str  # fsac.runtime.sinks.<module> defines build(settings)
    description: str
    always_present: bool = False  # the section exists with defaults (jsonl: switched on by its path)

    def importable(self) -> Any:
        """The sink's module, or a FsacError saying what to install."""
        try:
            return importlib.import_module(f"{__name__}.{self.module}")
        except ImportError as e:
            raise FsacError(f"sinks.{self.name}: the {self.name} sink cannot be loaded ({e}); install "
                            f"fsac[runtime] or remove the sinks.{self.name} section") from None

    def build(self, settings: Any) -> Any:
        return self.importable().build(settings)


# In the order records reach them.
SINKS: tuple[SinkSpec, ...] = (
    SinkSpec("jsonl", JsonlSettings, "jsonl", "JSON-lines result file", always_present=True),
    SinkSpec("mqtt", MqttSettings, "mqtt", "MQTT broker: results, anomalies, errors, status topics"),
    SinkSpec("frames", FramesSettings, "frames", "saved images of defective (and sampled normal) frames"),
    SinkSpec("webhook", WebhookSettings, "webhook", "HTTP POST of result batches"),
)
SINK_NAMES = tuple(s.name for s in SINKS)
