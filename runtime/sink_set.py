"""Building the configured sinks from the registry, and how the scorer talks to live ones."""

from __future__ import annotations

from typing import Any

from .config import sink_section_enabled
from .sinks import SINKS



def build_sinks(cfg: Any) -> list[Any]:
    """The configured sinks (runtime/sinks/__init__.py: SINKS), in the order records reach them."""
    sinks: list[Any] = []
    try:
        for spec in SINKS:
            settings = getattr(cfg, spec.name)
            if sink_section_enabled(settings):
                sinks.append(spec.build(settings))
    except BaseException:
        for sink in sinks:
            try:
                sink.close(timeout=1.0)
            except Exception:
                pass
        raise
    return sinks


def batch_flusher(sink: Any):
    """The per-batch flush of a sink, without waiting.

    Sinks that deliver from their own thread (MQTT, saved frames) take `flush(timeout)` and
    would otherwise wait for their destination after every batch; the scoring loop only
    asks them to push on, with timeout 0. Their write() already made the record durable.
    """
    import inspect

    try:
        params = inspect.signature(sink.flush).parameters
    except (TypeError, ValueError):
        params = {}
    if "timeout" in params:
        return lambda: sink.flush(timeout=0.0)
    return sink.flush


def accepts_raw_bytes(sink: Any) -> bool:
    """Whether an error record may carry the undecodable file's bytes as `image` (the saved-
    frames sink keeps them for inspection); other sinks get None, as base.Sink says."""
    return bool(getattr(sink, "accepts_raw_bytes", False))
