"""The sink interface every result destination implements.

A result record is a plain dict that validates against `runtime/schema/result.schema.json`
(fields: schema, time, source, frame_id, score, logit, sim_normal, sim_anomalous, threshold,
logit_threshold, verdict, latency_ms, model,
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


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for records: numpy scalars and arrays become plain values."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


class Sink(Protocol):
    name: str
    needs_images: bool  # the daemon keeps decoded frames only if some sink needs them
    accepts_raw_bytes: bool  # error records may carry the undecodable frame's bytes as `image`

    def write(self, record: dict[str, Any], image: np.ndarray | None = None) -> None:
        """Accept one result. `image` is the frame as decoded, (H, W, 3) uint8 RGB, when the sink
        `needs_images`; for an error record, the raw bytes of the undecodable frame when the
        sink `accepts_raw_bytes`; else None."""

    def flush(self) -> None:
        """Push buffered records toward the destination (best effort, bounded time)."""

    def close(self, timeout: float = 10.0) -> None:
        """Flush and release resources; after close, write raises."""

    def stats(self) -> dict[str, float]:
        """Counters for /metrics, e.g. {"written": n, "buffered": n, "dropped": 0}."""
