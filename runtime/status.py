"""What fsac-run reports about itself: readiness (/readyz, the live page, OPC UA) and the
Prometheus text (/metrics). Functions of the daemon (`d`, runtime/daemon.py)."""

from __future__ import annotations

from typing import Any


def ready(d: Any) -> tuple[bool, str]:
    """(ready, why not): the first reason found, in the order an operator would fix them."""
    if d._stopping:
        return False, "stopping"
    if d.paused.is_set():
        return False, "paused by the operator (live view)"
    if not d._started:
        return False, "starting"
    if not d.source.connected:
        return False, f"source {d.source.label} is not open"
    if d.journal_error:
        return False, f"journal {d.journal.folder} cannot be written: {d.journal_error}"
    for dl in d.deliveries:
        if dl.failing:
            return False, f"sink {dl.name} is failing ({dl.last_error}); {dl.pending()} records wait in the journal"
    fill = d.journal.fill()
    if fill >= 0.9:
        return False, f"journal {d.journal.folder} is {fill:.0%} full"
    return True, ""


def sink_stats(d: Any) -> dict[str, dict[str, float]]:
    stats = {dl.name: dl.stats() for dl in d.deliveries}
    for sink in d.live:
        try:
            stats[getattr(sink, "name", type(sink).__name__)] = dict(sink.stats())
        except Exception:
            continue
    return stats


def render_metrics(d: Any) -> str:
    model = d.handle.current
    info = {"name": model.name, "sha256": model.sha256, "arch": model.info.arch,
            "object": model.info.object_name, "logit_threshold": f"{model.logit_threshold:.6g}",
            "backend": model.backend.name, "image_size": model.info.image_size,
            "precision": getattr(model.backend, "precision", model.info.precision),
            "backend_chosen_by": "auto (measured)" if model.selection is not None else "config"}
    ok, _ = ready(d)
    j = d.journal

    def journal_metrics(e: Any) -> None:
        e.scalar("fsac_journal_records", "gauge", "Records kept in the journal.", j.end - j.first)
        e.scalar("fsac_journal_bytes", "gauge", "Bytes of the journal's segments.", j.nbytes)
        e.scalar("fsac_journal_fill_ratio", "gauge", "Journal size / its bound (bytes or records).", j.fill())
        e.scalar("fsac_journal_blocked_seconds_total", "counter", "Time the scorer waited for journal room "
                 "(back-pressure).", j.blocked_s)
        e.scalar("fsac_records_abandoned_total", "counter", "Records never journaled (shutdown deadline).",
                 d.abandoned)
        e.scalar("fsac_inputs_acknowledged_total", "counter", "Inputs acknowledged after their record was "
                 "durable.", d.acked)
        e.family("fsac_records_lost_total", "counter", "Records a durable sink will never deliver (deleted "
                 "from the full journal first, journal.when_full=drop-oldest).")
        for name, n in sorted(j.lost.items()):
            e.sample("fsac_records_lost_total", n, {"sink": name})

    return d.metrics.render(queue_depth=len(d.queue), reconnects=d.source.reconnects, ready=ok,
                               source_connected=bool(d.source.connected), model_info=info,
                               sink_stats=sink_stats(d), extra=_extra_metrics(d, journal_metrics))


def _extra_metrics(d: Any, journal_metrics: Any) -> Any:
    from .trigger_io import trigger_metrics

    return lambda e: (journal_metrics(e), d.health.metrics(e),
                      d._health_pub.metrics(e) if d._health_pub is not None else None,
                      trigger_metrics(e, d.trigger) if d.trigger is not None else None)


