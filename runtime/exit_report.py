"""The stopped line: what a run read, wrote, delivered and lost, and the exit status.

0 only when every frame read has its record in the journal and nothing was lost; see the
daemon's module docstring for every case that makes it 1.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("fsac.runtime")


def exit_report(daemon: Any, pending: dict[str, int], lost: int, ended: bool) -> int:
    """Log the summary of a finished run (a Daemon) and return its exit status."""
    read = daemon.metrics.frames_read.value
    written = daemon.metrics.frames.value
    dropped = daemon.metrics.dropped.value
    elapsed = (daemon.last_written - daemon.first_read) if daemon.first_read and daemon.last_written else 0.0
    rate = f", {written / elapsed:.1f} frames/s" if elapsed > 0 else ""
    delivered = ", ".join(f"{d.name} {d.delivered}" for d in daemon.deliveries) or "no durable sink"
    j = daemon.journal
    sink_lost = {k: v for k, v in j.lost.items() if v}
    log.info("stopped: %d frames read, %d results written (%d defective, %d errors), %d dropped, "
             "%d reconnects%s; delivered: %s; inputs acknowledged %d; run %s", read, written,
             daemon.metrics.anomalies.value, daemon.metrics.errors.value, dropped, daemon.source.reconnects, rate,
             delivered, daemon.acked, daemon.run_id)
    code = 0
    unscored = read - dropped - written
    if unscored > 0:
        log.error("%d frames were read but have no result (%d abandoned at shutdown, %d records not "
                  "journaled)", unscored, lost, daemon.abandoned)
        code = 1
    if daemon.abandoned and unscored <= 0:  # e.g. fail-safe trigger answers, which have no frame read
        log.error("%d records were never journaled (shutdown deadline)", daemon.abandoned)
        code = 1
    if sink_lost:
        log.error("records lost: deleted from the full journal before delivery (journal.when_full="
                  "drop-oldest): %s", ", ".join(f"{k} {v}" for k, v in sorted(sink_lost.items())))
        code = 1
    waiting = {k: v for k, v in pending.items() if v}
    if waiting:
        what = ", ".join(f"{k} {v}" for k, v in sorted(waiting.items()))
        if ended:
            log.error("not delivered within daemon.drain_timeout_s=%gs: %s records (kept in the journal %s, "
                      "delivered on the next start)", daemon.cfg.daemon.drain_timeout_s, what, j.folder)
            code = 1
        else:
            log.warning("pending in the journal %s: %s records (delivered on the next start)", j.folder, what)
    pub = getattr(daemon, "_health_pub", None)
    if pub is not None:  # not journaled, so reported here rather than left for the next start
        lossy = pub.dropped or pub.unsent
        log.log(logging.WARNING if lossy else logging.INFO, "health events: %d published, %d dropped, %d not "
                "delivered at shutdown (MQTT %s)", pub.published, pub.dropped, pub.unsent, pub.topic)
    for d in daemon.deliveries:
        if d.errors:
            log.warning("sink %s: %d failed delivery attempts during the run%s", d.name, d.errors,
                        f" (last: {d.last_error})" if d.failing else "; it recovered")
    if daemon._failure:
        log.error("exiting after a failure: %s", daemon._failure)
        code = 1
    if daemon._timed_out:
        code = 1
    return code
