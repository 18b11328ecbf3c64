"""One thread per durable sink: read the journal from the sink's cursor, deliver, advance.

A delivery is a batch of journal lines handed to `sink.deliver(lines)`, which returns only
once the destination has them durably (JSONL: fsync'd; MQTT: PUBACK for every message) and
raises otherwise. On success the cursor advances past the batch; on failure the same batch
is tried again after a backoff (0.2 s doubling to 5 s), forever: the sink recovers on its own
when the disk is freed, file descriptors come back or the broker returns, and nothing is
skipped. While a sink fails, /readyz says so and the journal fills behind it (back-pressure
or drop-oldest at its bound, see journal.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .journal import Journal

log = logging.getLogger("fsac.runtime")

BATCH_MAX = 512  # lines per delivery: one fsync / one PUBACK wait amortized over many records
# At most one delivery per LINGER_S unless the sink paces itself (`linger_s`, e.g. JSONL's
# delivery_interval_s): short, because a reject signal over MQTT must not wait, and long
# enough that a burst goes out as one batch with one PUBACK wait.
LINGER_S = 0.05


class Delivery:
    def __init__(self, sink: Any, journal: Journal, batch_max: int = BATCH_MAX, linger_s: float = LINGER_S) -> None:
        self.sink = sink
        self.name = getattr(sink, "name", type(sink).__name__)
        self.journal = journal
        self.batch_max = int(getattr(sink, "batch_max", batch_max))
        own = getattr(sink, "linger_s", None)  # a sink may pace itself (jsonl: delivery_interval_s)
        self.linger_s = linger_s if own is None else float(own)  # at most one delivery per linger_s
        self.delivered = 0
        self.errors = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fsac-deliver-{self.name}", daemon=True)
        self._last_log = -1e9
        self._suppressed = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def pending(self) -> int:
        return self.journal.pending(self.name)

    def _run(self) -> None:
        pos = self.journal.cursors[self.name]
        backoff = 0.2
        last = 0.0
        while not self._halt.is_set():
            wait = last + self.linger_s - time.monotonic()
            if wait > 0 and self._halt.wait(wait):
                break
            last = time.monotonic()
            try:
                pos, lines = self.journal.read(self.name, pos, self.batch_max, 0.2)
            except Exception as e:  # EMFILE opening a segment, EIO: like a failed delivery; never die
                self._failed(e)
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not lines:
                continue
            while not self._halt.is_set():
                try:
                    self.sink.deliver(lines)
                except Exception as e:
                    self._failed(e)
                    self._halt.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                break
            else:  # halted mid-retry: the cursor stays before this batch, and what of it
                self.journal.abandon(self.name)  # drop-oldest deleted meanwhile is lost now
                return
            self.journal.commit(self.name, pos, pos + len(lines))
            pos += len(lines)
            self.delivered += len(lines)
            backoff = 0.2
            if self.failing_since is not None:
                log.warning("sink %s recovered after %.1f s (%d failed attempts); delivering from its cursor",
                            self.name, time.monotonic() - self.failing_since, self.errors)
                self.failing_since = None
                self.last_error = None

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if now - self._last_log >= 10.0:  # a sink failing for hours must not fill the log
            extra = f" (+{self._suppressed} similar)" if self._suppressed else ""
            log.error("sink %s: delivery failed: %s; %d records wait in the journal, retrying%s", self.name,
                      self.last_error, self.pending(), extra)
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1

    def wait_delivered(self, deadline: float) -> bool:
        """Wait until everything in the journal is delivered, or the deadline."""
        while time.monotonic() < deadline:
            if self.pending() <= 0:
                return True
            time.sleep(0.02)
        return self.pending() <= 0

    def stop(self, timeout: float) -> None:
        self._halt.set()
        if self._thread.ident is not None:  # a start that failed earlier never started it
            self._thread.join(timeout=max(0.1, timeout))

    def stats(self) -> dict[str, float]:
        out = {"delivered": self.delivered, "pending": self.pending(), "delivery_errors": self.errors,
               "failing": 1 if self.failing else 0, "lost": self.journal.lost.get(self.name, 0),
               # read and being delivered, their journal copy deleted by drop-oldest: lost if the
               # sink never delivers them (a gauge; `lost` is the counter)
               "at_risk": self.journal.at_risk.get(self.name, 0)}
        try:
            out.update(self.sink.stats())
        except Exception:
            pass
        return out
