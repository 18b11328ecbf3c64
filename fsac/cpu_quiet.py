"""Wait for this process's own threads to stop using the CPU before timing the next call.

Runtimes keep their worker threads busy-waiting for a while after a call returns, so that
the next operator starts at once: measured on a 2-core AVX2 EPYC after one batch-1 call of
the full model, ONNX Runtime's threads (allow_spinning, its default) burned 41.6 ms of CPU in
the next 100 ms, torch's 10 ms, OpenVINO's 1 ms. A benchmark that times several backends in
turn in one process therefore times each one beside the last one's spinning threads: on 2
cores that took a core from whichever came next. ONNX Runtime INT8 after an ONNX Runtime
or OpenVINO row: 220-233 ms (median of 14 interleaved rounds) against 207-211 ms when the
CPU had gone quiet first, fp32 / INT8 1.54x against 1.66-1.75x in the same process.

`wait_until_idle` sleeps in short windows until one passes in which the process used less
than `busy` of one core (or `max_s` is up), and says how long it waited. Only the process's
own CPU time is read (time.process_time counts every thread), so other processes on the
machine neither hold it up nor hide behind it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

QUIET_MAX_S = 0.3  # ONNX Runtime's spin lasts ~40 ms; an upper bound, not a typical wait
QUIET_WINDOW_S = 0.005
QUIET_BUSY = 0.1  # fraction of one core below which a window counts as quiet


def wait_until_idle(max_s: float = QUIET_MAX_S, window_s: float = QUIET_WINDOW_S, busy: float = QUIET_BUSY) -> float:
    """Sleep until this process's threads are quiet for one window; seconds waited."""
    start = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(window_s)
        used, took = time.process_time() - c0, time.perf_counter() - w0
        if used <= busy * took or time.perf_counter() - start >= max_s:
            return time.perf_counter() - start


def interleaved(backends: dict[str, Callable[[Any], Any]], batches: Sequence[Any], rounds: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each backend; round r runs every backend once on batches[r % len].

    The order within a round rotates (round r starts with backend r mod k), so no backend
    always runs right after the same other one (cache contents, CPU frequency); and each call
    waits until the last one's spinning worker threads are quiet (`wait_until_idle`). Used by
    `fsac bench export` and `fsac bench isa`."""
    for fn in backends.values():
        for i in range(warmup):
            fn(batches[i % len(batches)])
    names = list(backends)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        x = batches[r % len(batches)]
        for j in range(len(names)):
            k = names[(r + j) % len(names)]
            wait_until_idle()
            t = time.perf_counter()
            backends[k](x)
            times[k].append(time.perf_counter() - t)
    return times
