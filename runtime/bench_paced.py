"""`fsac bench runtime`'s paced row: storage written per record when frames come at a camera's pace.

The main daemon passes read a folder as fast as the model scores, so the scorer always has
a backlog: batches of 4, one journal append per batch. A camera on a line sends frames at its
own rate, usually below what the model can do, so every frame is a batch of one, and every
record its own journal append. What the flash pays per record then depends on how many
records each fsync covers (journal.commit_interval_s, sinks.jsonl.delivery_interval_s), not
on the model. This pass runs the real daemon (default settings, the JSON-lines sink and, when
a broker is given, MQTT) on a source that hands it decoded frames at `fps`, like a camera,
and divides the bytes the process caused to be written (/proc/self/io write_bytes) by the
records written.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fsac.errors import FsacError
from fsac.preprocess import load_image

from .bench_passes import write_bytes  # the same counter as the main passes
from .config import ModelConfig, RuntimeConfig, SourceConfig, validate
from .daemon import Daemon
from .sinks.mqtt_config import MqttSettings
from .sources import RAW, Frame, Source


class PacedSource(Source):
    """Decoded frames at a fixed rate, on an absolute schedule (a late frame does not shift the
    next ones), `n` of them; a live stream to the daemon (kind camera)."""

    kind = "camera"

    def __init__(self, cfg: SourceConfig, arrays: list[np.ndarray], fps: float, n: int) -> None:
        super().__init__(cfg)
        self.arrays, self.period, self.n = arrays, 1.0 / fps, n
        self.label = f"paced {fps:g} frames/s"

    def open(self) -> None:
        self.connected = True

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        t0 = time.monotonic()
        for i in range(self.n):
            wait = t0 + i * self.period - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            yield self._frame(self.arrays[i % len(self.arrays)], None, RAW)


def bench_paced(model: Path, files: list[Path], fps: float, seconds: float, work: Path, *,
                mqtt_port: int | None = None, batch_size: int = 4, threads: int = 0,
                backend: dict[str, Any] | None = None) -> dict[str, Any]:
    """One paced pass; returns fps, records, achieved rate and bytes written per record."""
    if fps <= 0 or seconds <= 0:
        raise FsacError("paced pass: fps and seconds must be > 0")
    n = max(4, int(round(fps * seconds)))
    arrays = [load_image(p) for p in files[:8]]
    work.mkdir(parents=True, exist_ok=True)
    cfg = RuntimeConfig()
    from .bench_passes import _backend_kw

    cfg.model = ModelConfig(path=str(model), batch_size=batch_size, threads=threads, threshold=0.5,
                            **_backend_kw(backend))
    cfg.source = SourceConfig(kind="camera", uri="0", mode="every-frame")
    out = work / "paced.jsonl"
    cfg.sinks.jsonl.path = str(out)
    cfg.journal.dir = str(work / "paced.journal")
    if mqtt_port is not None:
        cfg.sinks.mqtt = MqttSettings(host="127.0.0.1", port=mqtt_port, client_id="fsac-bench-paced")
    cfg.http.enabled = False
    validate(cfg)
    daemon = Daemon(cfg, source=PacedSource(cfg.source, arrays, fps, n), install_signals=False)
    logger = logging.getLogger("fsac.runtime")
    level = logger.level
    logger.setLevel(logging.WARNING)
    before, t0 = write_bytes(), time.monotonic()
    try:
        code = daemon.run()
    finally:
        logger.setLevel(level)
    after, elapsed = write_bytes(), time.monotonic() - t0
    if code != 0:
        raise FsacError(f"the paced daemon run exited with {code}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    batches = daemon.metrics.batches.value
    return {"fps": fps, "frames": n, "records": len(records), "seconds": elapsed,
            "achieved_fps": len(records) / elapsed if elapsed > 0 else 0.0,
            "mean_batch": len(records) / batches if batches else 0.0,
            "sinks": "jsonl+mqtt" if mqtt_port is not None else "jsonl",
            "bytes_written_per_record": None if before is None or after is None
            else (after - before) / max(1, len(records)),
            # Flash wear is bytes per day: below a few frames a second the fsyncs' per-interval
            # pages dominate, so bytes per record rise while bytes per second fall.
            "bytes_written_per_s": None if before is None or after is None or elapsed <= 0
            else (after - before) / elapsed,
            "dropped": daemon.metrics.dropped.value}


def format_row(p: dict[str, Any]) -> str:
    per = p["bytes_written_per_record"]
    figure = "n/a (no /proc/self/io)" if per is None else (
        f"{per:.0f} B (target <= 4 KB: {'met' if per <= 4096 else 'NOT met'}), "
        f"{p['bytes_written_per_s'] / 1024:.1f} KB/s = {p['bytes_written_per_s'] * 86400 / 1e9:.2f} GB/day")
    return (f"  storage per record at a camera's pace ({p['fps']:g} frames/s for {p['frames']} frames, sinks "
            f"{p['sinks']}, mean batch {p['mean_batch']:.2f}, {p['dropped']} dropped): {figure}")
