"""The sink interface every result destination implements.

A result record is a plain dict that validates against `runtime/schema/result.schema.json`
(fields: schema, time, source, frame_id, score, threshold, verdict, latency_ms, model,
model_sha256, error). Sinks receive records in frame order from one thread.

Rules every sink follows:
- `write` never loses a record it has accepted: if the destination is down, the record is
  buffered (bounded, on disk where the sink promises durability) and delivered later, in order.
- `write` does not block the scoring loop for long: slow I/O happens on the sink's own thread.
- `close(timeout)` flushes what it can within `timeout` seconds and reports what it could not.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Sink(Protocol):
    name: str

    def write(self, record: dict[str, Any], image: np.ndarray | None = None) -> None:
        """Accept one result. `image` is the frame as decoded, (H, W, 3) uint8 RGB, or None
        (error records, or sinks that do not need pixels)."""

    def flush(self) -> None:
        """Push buffered records toward the destination (best effort, bounded time)."""

    def close(self, timeout: float = 10.0) -> None:
        """Flush and release resources; after close, write raises."""

    def stats(self) -> dict[str, float]:
        """Counters for /metrics, e.g. {"written": n, "buffered": n, "dropped": 0}."""
