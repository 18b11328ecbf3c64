"""/metrics through prometheus_client: the daemon's counters and histograms, plus the values
other parts hold (journal, sinks, health, triggers) gathered at scrape time.

Each daemon has its own registry (tests and the benchmark run several in one process, and a
process-global registry would merge them). Counters and histograms are prometheus_client
objects, updated by the pipeline threads and thread-safe by themselves. Values that are
cheap to read where they live (queue depth, a sink's counters, the journal's fill) are not
copied into metrics on every change: a collector asks for them when /metrics is scraped,
through the small `Exposition` builder, and prometheus_client writes the text format.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Metric, generate_latest

# No `*_created` series: a scraper of a line-side box wants the counts, not their birth times.
prometheus_client.disable_created_metrics()

# Seconds from "frame read" to "result ready". Covers a fast GPU (a few ms) up to a large
# model on a small CPU (seconds).
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Sink statistics that only ever grow during a run (runtime/delivery.py and the sinks'
# stats()): exported as counters, fsac_sink_<key>_total, so that rate() and increase() work
# on them; every other key (pending, failing, connected, queued) is a gauge. The saved-frames
# sink's failed saves are "save_failures" (it was "errors", a gauge fsac_sink_errors beside
# the daemon's counter fsac_sink_errors_total of exceptions raised by a sink: two meanings,
# one name).
SINK_COUNTS = frozenset({"delivered", "delivery_errors", "lost", "written", "bytes", "rotations", "published",
                         "reconnects", "posted", "post_failures", "dropped", "deleted", "images_missing",
                         "unsaveable", "save_failures"})


class Counter(prometheus_client.Counter):
    """A prometheus_client counter whose current value the daemon can read (summary line)."""

    @property
    def value(self) -> int:
        for sample in self.collect()[0].samples:
            if sample.name.endswith("_total"):
                return int(sample.value)
        return 0


def counter(name: str, help_text: str, registry: CollectorRegistry | None) -> Counter:
    """`name` without the `_total` suffix, which prometheus_client adds."""
    return Counter(name, help_text, registry=registry)


def histogram(name: str, help_text: str, buckets: Iterable[float],
              registry: CollectorRegistry | None = None) -> prometheus_client.Histogram:
    return prometheus_client.Histogram(name, help_text, buckets=tuple(buckets), registry=registry)


class Exposition:
    """Metric families built at scrape time: `family` opens one, `sample` adds to it."""

    def __init__(self) -> None:
        self.families: list[Metric] = []
        self._by_name: dict[str, Metric] = {}

    def family(self, name: str, kind: str, help_text: str) -> None:
        base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
        metric = Metric(base, help_text, kind)
        self.families.append(metric)
        self._by_name[name] = metric

    def sample(self, name: str, value: float, labels: dict[str, object] | None = None) -> None:
        metric = self._by_name[name]
        metric.add_sample(name, {k: str(v) for k, v in (labels or {}).items()}, float(value))

    def scalar(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def histogram(self, name: str, help_text: str, hist: prometheus_client.Histogram) -> None:
        """A histogram kept elsewhere (unregistered, e.g. the trigger hub's latency)."""
        self.families.extend(hist.collect())


class _Collector:
    def __init__(self, fixed: list[Any], build: Callable[[Exposition], None]) -> None:
        self.fixed, self.build = fixed, build

    def collect(self) -> Iterable[Metric]:
        for metric in self.fixed:
            yield from metric.collect()
        e = Exposition()
        self.build(e)
        yield from e.families


class RuntimeMetrics:
    """Everything the daemon counts. Gauges that are cheap to read live elsewhere and are
    passed to `render` (queue depth, reconnects kept by the source)."""

    def __init__(self) -> None:
        r = None  # unregistered: each scrape collects them into its own registry (render)
        self.frames_read = counter("fsac_frames_read", "Frames read from the source.", r)
        self.frames = counter("fsac_frames", "Results written (good, defective and error).", r)
        self.anomalies = counter("fsac_anomalies", "Frames judged defective (logit >= logit_threshold).", r)
        self.errors = counter("fsac_errors", "Frames that could not be scored (error records).", r)
        self.dropped = counter("fsac_dropped_frames", "Stale frames dropped in latest-frame mode.", r)
        self.batches = counter("fsac_batches", "Inference calls (frames_total / batches_total = mean batch).", r)
        self.reloads = counter("fsac_model_reloads", "Successful model reloads (SIGHUP).", r)
        self.reload_failures = counter("fsac_model_reload_failures",
                                       "Refused model reloads; the old model kept running.", r)
        self.sink_errors = prometheus_client.Counter("fsac_sink_errors", "Exceptions raised by a sink's write or "
                                                     "flush.", ["sink"], registry=r)
        self.latency = histogram("fsac_latency_seconds", "Seconds from frame read to result ready.", LATENCY_BUCKETS)
        self.inference_seconds = histogram("fsac_inference_seconds", "Seconds per inference call (one batch).",
                                           INFERENCE_BUCKETS)
        self._fixed = [self.frames_read, self.frames, self.anomalies, self.errors, self.dropped, self.batches,
                       self.reloads, self.reload_failures, self.sink_errors, self.latency, self.inference_seconds]

    def sink_error(self, sink: str) -> None:
        self.sink_errors.labels(sink=sink).inc()

    def render(self, *, queue_depth: int, reconnects: int, ready: bool, source_connected: bool,
               model_info: dict[str, object], sink_stats: dict[str, dict[str, float]],
               extra: Callable[[Exposition], None] | None = None) -> str:
        for name in sink_stats:  # every sink's error counter shows, 0 until its first error
            self.sink_errors.labels(sink=name)

        def build(e: Exposition) -> None:
            e.scalar("fsac_reconnects_total", "counter", "Stream reconnect attempts after a lost or failed stream.",
                     reconnects)
            e.scalar("fsac_queue_depth", "gauge", "Frames read and waiting to be scored.", queue_depth)
            e.scalar("fsac_ready", "gauge", "1 when the model is loaded and the source is open.", int(ready))
            e.scalar("fsac_source_connected", "gauge", "1 while the source is open.", int(source_connected))
            e.family("fsac_model_info", "gauge", "The model being served.")
            e.sample("fsac_model_info", 1, model_info)
            for key in sorted({k for stats in sink_stats.values() for k in stats}):
                metric = "fsac_sink_" + "".join(c if c.isalnum() or c == "_" else "_" for c in key)
                kind = "counter" if key in SINK_COUNTS else "gauge"
                if kind == "counter":
                    metric += "_total"
                e.family(metric, kind, f"Sink statistic '{key}' as reported by the sink.")
                for name in sorted(sink_stats):
                    value = sink_stats[name].get(key)
                    if isinstance(value, (int, float)):
                        e.sample(metric, float(value), {"sink": name})
            if extra is not None:
                extra(e)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self._fixed, build))
        return generate_latest(registry).decode("utf-8")
