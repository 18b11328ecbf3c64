"""The main thread's loop and the way fsac-run stops: signals, the systemd watchdog, the
drain and shutdown deadlines, and closing everything in order. Functions of the daemon
(`d`, runtime/daemon.py).

  main        handles signals (SIGTERM/SIGINT: stop, drain, flush, exit; SIGHUP: reload the
              model, in a thread of its own so that a slow load cannot hold up the pings),
              pings the systemd watchdog while the daemon is alive (`alive`), and serves
              nothing else; the HTTP endpoints run on their own thread.

Of daemon.shutdown_timeout_s, three quarters go to draining the queue and the rest to
closing the sinks; the reader gets at most 3 s to leave a read it is stuck in.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .exit_report import exit_report
from .notify import sd_notify, watchdog_interval

log = logging.getLogger("fsac.runtime")


def main_loop(d: Any) -> float:
    """Returns the monotonic deadline by which sinks must be closed."""
    timeout = d.cfg.daemon.shutdown_timeout_s
    wd = watchdog_interval()
    next_ping = 0.0
    drain_deadline = reader_deadline = None
    while d._scorer is not None and d._scorer.is_alive():
        now = time.monotonic()
        if d._sig_reload and (d._reload_thread is None or not d._reload_thread.is_alive()):
            d._sig_reload = False  # a SIGHUP during a reload is kept for after it
            d._reload_thread = threading.Thread(target=reload_model, args=(d,), name="fsac-reload", daemon=True)
            d._reload_thread.start()
        if d._sig_stop and drain_deadline is None:
            begin_stop(d, now)
            drain_deadline = now + timeout * 0.75  # the rest is for closing the sinks
            reader_deadline = now + min(timeout * 0.3, 3.0)
        if drain_deadline is not None:
            if d._reader is not None and d._reader.is_alive() and now > reader_deadline \
                    and not d.queue.closed:
                # The source is stuck in a read (a dead network camera): stop waiting for it.
                log.warning("source did not stop within %.1fs; draining without it", min(timeout * 0.3, 3.0))
                d.queue.close()
            if now > drain_deadline:
                d._timed_out = True
                d._hard_stop.set()
                log.error("shutdown: %d frames still queued after %.1fs; giving up on them", len(d.queue),
                          timeout * 0.75)
                break
        if wd is not None and now >= next_ping:
            # Ping only while alive: a hung inference gets us restarted.
            if alive(d, now, max(2 * wd, 5.0)):
                sd_notify("WATCHDOG=1")
            next_ping = now + wd
        time.sleep(0.05)
    if drain_deadline is None:  # the source ended (or something failed): still bounded
        begin_stop(d, time.monotonic())
        return time.monotonic() + timeout * 0.25 + 1.0
    return drain_deadline + timeout * 0.25


def alive(d: Any, now: float, stale_s: float) -> bool:
    """For the watchdog: the scorer took a step within stale_s (a batch, or an idle or paused
    round), or it is waiting honestly: looping in a bounded wait for journal room
    (back-pressure from a sink that fails or a full disk, which recover on their own) while
    the journal thread, which makes that room, still goes round (it sleeps up to
    journal.commit_interval_s between rounds). Not alive: a scorer stuck inside a call (a hung
    inference, a write that never returns), or waiting on a journal thread that is stuck."""
    if now - d._heartbeat < stale_s:
        return True
    journal = d._jthread is not None and d._jthread.is_alive() \
        and now - d._jbeat < stale_s + d.cfg.journal.commit_interval_s
    return journal and now - d._wait_beat < stale_s


def begin_stop(d: Any, now: float) -> None:
    if d.trigger is not None:  # requests accepted now could outlive the journal thread
        d.trigger.refuse_new()
    if not d._stopping:
        d._stopping = True
        if d._sig_stop:
            log.info("stop requested: finishing queued frames (%d) and flushing sinks", len(d.queue))
        sd_notify("STOPPING=1")
    d._stop.set()


def reload_model(d: Any) -> None:
    log.info("reloading model %s", d.cfg.model.path)
    if d.handle.reload():
        d.metrics.reloads.inc()
    else:
        d.metrics.reload_failures.inc()


def finish(d: Any, deadline: float) -> int:
    d._stop.set()
    d.queue.close()
    lost = len(d.queue.clear()) if d._timed_out else 0
    if d._scorer is not None:
        d._scorer.join(timeout=max(0.0, deadline - time.monotonic()))
    stop_journal_thread(d, deadline)
    # Wait for the durable sinks: at the end of a file source for drain_timeout_s (the job is
    # only done once its results are delivered), at a stop signal within the shutdown time.
    ended = not d._sig_stop and d._failure is None
    wait_until = time.monotonic() + d.cfg.daemon.drain_timeout_s if ended else deadline
    for dl in d.deliveries:
        dl.wait_delivered(wait_until)
    for dl in d.deliveries:
        dl.stop(timeout=max(0.1, deadline - time.monotonic()))
    pending = {dl.name: dl.pending() for dl in d.deliveries}
    close_all(d, max(deadline, time.monotonic() + 1.0))
    return exit_report(d, pending, lost, ended)


def close_all(d: Any, deadline: float) -> None:
    d._stop.set()
    d._hard_stop.set()
    d.queue.close()
    d._pool.shutdown(wait=False, cancel_futures=True)
    if d._reader is not None:
        d._reader.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
    stop_journal_thread(d, deadline)
    for dl in d.deliveries:
        dl.stop(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
    close_sinks(d, deadline)
    if d.journal is not None:
        try:
            d.journal.close()
        except OSError as e:
            log.error("closing the journal %s failed: %s", d.journal.folder, e)
    if d.webui is not None:
        d.webui.close()
    if d.http is not None:
        d.http.stop()
    if d.opcua is not None:
        d.opcua.stop(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
    if d.trigger is not None:
        d.trigger.stop()
    if d._health_pub is not None:
        d._health_pub.close(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
    try:
        d.source.close()
    except Exception:
        pass
    close_backend(d)


def close_sinks(d: Any, deadline: float) -> None:
    for sink in d.sinks:
        try:
            sink.close(timeout=max(0.5, deadline - time.monotonic()))
        except Exception as e:
            log.error("closing sink %s failed: %s", getattr(sink, "name", sink), e)


def close_backend(d: Any) -> None:
    try:
        d.handle.current.backend.close()
    except Exception:
        pass


def stop_journal_thread(d: Any, deadline: float) -> None:
    d._jstop.set()
    d._jwake.set()
    if d._jthread is not None and d._jthread.is_alive():
        d._jthread.join(timeout=max(0.5, deadline - time.monotonic()))


