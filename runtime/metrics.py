"""Counters, gauges and a histogram for /metrics, in Prometheus text format (no dependency).

Written by the pipeline threads, read by the HTTP thread: every value sits behind one lock
per metric, so a scrape never sees a histogram whose count and buckets disagree.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Iterable

# Seconds from "frame read" to "result ready". Covers a fast GPU (a few ms) up to a large
# model on a small CPU (seconds).
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def labels_text(labels: dict[str, object] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


class Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def inc(self, n: int = 1) -> None:
        with self._lock:
            self._value += n

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


class Gauge:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: float = 0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = value

    @property
    def value(self) -> float:
        with self._lock:
            return self._value


class Histogram:
    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._counts = [0] * (len(self.buckets) + 1)  # last: above the largest bucket
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value
            self._count += 1

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """Cumulative (upper bound, count) pairs ending with +Inf, the sum and the count."""
        with self._lock:
            counts, total, n = list(self._counts), self._sum, self._count
        cumulative, running = [], 0
        for bound, c in zip(self.buckets + (math.inf,), counts):
            running += c
            cumulative.append((bound, running))
        return cumulative, total, n


class Exposition:
    """Builds one Prometheus text page; each metric family gets its HELP and TYPE once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, object] | None = None) -> None:
        self.lines.append(f"{name}{labels_text(labels)} {format_value(value)}")

    def scalar(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def histogram(self, name: str, help_text: str, hist: Histogram) -> None:
        self.family(name, "histogram", help_text)
        cumulative, total, n = hist.snapshot()
        for bound, count in cumulative:
            self.sample(f"{name}_bucket", count, {"le": format_value(bound)})
        self.sample(f"{name}_sum", total)
        self.sample(f"{name}_count", n)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class RuntimeMetrics:
    """Everything the daemon counts. Gauges that are cheap to read live elsewhere and are
    passed to `render` as callables (queue depth, reconnects kept by the source)."""

    def __init__(self) -> None:
        self.frames_read = Counter()
        self.frames = Counter()  # results written, any verdict
        self.anomalies = Counter()
        self.errors = Counter()
        self.dropped = Counter()
        self.batches = Counter()
        self.reloads = Counter()
        self.reload_failures = Counter()
        self.latency = Histogram()
        self.inference_seconds = Histogram((0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self._sink_errors: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def sink_error(self, sink: str) -> None:
        with self._lock:
            counter = self._sink_errors.setdefault(sink, Counter())
        counter.inc()

    def sink_errors(self) -> dict[str, int]:
        with self._lock:
            return {k: c.value for k, c in self._sink_errors.items()}

    def render(self, *, queue_depth: int, reconnects: int, ready: bool, source_connected: bool,
               model_info: dict[str, object], sink_stats: dict[str, dict[str, float]],
               extra: Callable[[Exposition], None] | None = None) -> str:
        e = Exposition()
        e.scalar("fsac_frames_read_total", "counter", "Frames read from the source.", self.frames_read.value)
        e.scalar("fsac_frames_total", "counter", "Results written (good, defective and error).", self.frames.value)
        e.scalar("fsac_anomalies_total", "counter", "Frames judged defective (logit >= logit_threshold).",
                 self.anomalies.value)
        e.scalar("fsac_errors_total", "counter", "Frames that could not be scored (error records).",
                 self.errors.value)
        e.scalar("fsac_dropped_frames_total", "counter", "Stale frames dropped in latest-frame mode.",
                 self.dropped.value)
        e.scalar("fsac_reconnects_total", "counter", "Stream reconnect attempts after a lost or failed stream.",
                 reconnects)
        e.scalar("fsac_batches_total", "counter", "Inference calls (frames_total / batches_total = mean batch).",
                 self.batches.value)
        e.scalar("fsac_model_reloads_total", "counter", "Successful model reloads (SIGHUP).", self.reloads.value)
        e.scalar("fsac_model_reload_failures_total", "counter", "Refused model reloads; the old model kept running.",
                 self.reload_failures.value)
        e.scalar("fsac_queue_depth", "gauge", "Frames read and waiting to be scored.", queue_depth)
        e.scalar("fsac_ready", "gauge", "1 when the model is loaded and the source is open.", int(ready))
        e.scalar("fsac_source_connected", "gauge", "1 while the source is open.", int(source_connected))
        e.histogram("fsac_latency_seconds", "Seconds from frame read to result ready.", self.latency)
        e.histogram("fsac_inference_seconds", "Seconds per inference call (one batch).", self.inference_seconds)
        e.family("fsac_model_info", "gauge", "The model being served.")
        e.sample("fsac_model_info", 1, model_info)
        errors = self.sink_errors()
        names = sorted(set(sink_stats) | set(errors))
        e.family("fsac_sink_errors_total", "counter", "Exceptions raised by a sink's write or flush.")
        for name in names:
            e.sample("fsac_sink_errors_total", errors.get(name, 0), {"sink": name})
        stat_keys = sorted({k for stats in sink_stats.values() for k in stats})
        for key in stat_keys:
            metric = "fsac_sink_" + "".join(c if c.isalnum() or c == "_" else "_" for c in key)
            e.family(metric, "gauge", f"Sink statistic '{key}' as reported by the sink.")
            for name in sorted(sink_stats):
                if key in sink_stats[name]:
                    try:
                        e.sample(metric, float(sink_stats[name][key]), {"sink": name})
                    except (TypeError, ValueError):
                        continue
        if extra is not None:
            extra(e)
        return e.text()
