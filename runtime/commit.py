"""Durable first: number the records, append them to the journal, fdatasync, and only then
acknowledge their inputs (a watched file moved to done/, a trigger answered).

The scorer calls `journal_records`; the daemon's journal thread runs `journal_loop`, so
the fdatasync (group commit: one per journal.commit_interval_s for every batch in it),
the acknowledgements, the cursor saves and the trimming all happen off the scoring path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fsac.errors import FsacError

from .record import encode_record
from .sources import Frame

log = logging.getLogger("fsac.runtime")


def journal_records(d: Any, pairs: list[tuple[Frame, dict[str, Any]]]) -> bool:
    """Number, append and queue for acknowledgement (after fdatasync) a batch of records."""
    with d._append_lock:
        for _, record in pairs:
            record["seq"], d._seq = d._seq, d._seq + 1
        end = journal_append(d, [encode_record(r) for _, r in pairs])
        if end is None:
            return False
        with d._ack_lock:
            d._acks.append((end, pairs))
    if d.trigger is not None:  # a waiting request: commit now rather than at the group-commit interval
        d._jwake.set()
    return True

def stop_for_sync_error(d: Any, e: OSError) -> None:
    """A failed fdatasync is final (runtime/journal.py): no input past the last good sync is
    acknowledged in this run; the daemon stops with exit status 1 and the next start scores
    those inputs again. Once, whichever thread (scorer or journal) meets it first."""
    if d._failure is not None:
        return
    log.error("journal %s: fdatasync failed (%s); stopping: the inputs of the records not yet on disk stay "
              "unacknowledged", d.journal.folder, e)
    d._failure = f"journal fdatasync failed: {e}"
    d._stop.set()
    d.queue.close()


def waiting(d: Any) -> None:
    """The scorer is in a bounded wait for the journal (room, or a disk it retries): alive,
    for the watchdog (runtime/lifecycle.py `alive`), as long as the journal thread is."""
    d._wait_beat = time.monotonic()


def journal_append(d: Any, lines: list[bytes]) -> int | None:
    """Append a batch; retries a failing disk (the input waits: back-pressure) until the
    shutdown deadline, then counts the batch as abandoned. Returns the end index or None."""
    while True:
        waiting(d)
        try:
            end = d.journal.append(lines, d._hard_stop, on_wait=lambda: waiting(d)) + len(lines)
            if d.journal_error:
                log.warning("journal %s writable again", d.journal.folder)
                d.journal_error = None
            return end
        except OSError as e:
            d.journal_error = e.strerror or str(e)
            d._journal_errors(logging.ERROR, "journal %s: cannot append %d records (%s); inputs wait, "
                                 "retrying", d.journal.folder, len(lines), d.journal_error)
            if d.journal.sync_error is not None:  # a roll's fdatasync failed: final
                stop_for_sync_error(d, d.journal.sync_error)
        except FsacError as e:  # full and stopping
            d._journal_errors(logging.ERROR, "%s", e)
        if d._hard_stop.wait(0.2):
            d.abandoned += len(lines)
            log.error("%d records abandoned: the journal did not take them before the shutdown deadline",
                      len(lines))
            return None

def journal_loop(d: Any) -> None:
    """fdatasync, then acknowledge the inputs whose records are durable; save cursors, trim."""
    interval = max(0.005, d.cfg.journal.commit_interval_s)
    while True:
        d._jbeat = time.monotonic()  # this thread makes the room a blocked scorer waits for
        d._jwake.wait(interval)  # group commit: one fdatasync for every batch of the interval
        d._jwake.clear()
        stopping = d._jstop.is_set()
        with d._ack_lock:
            have = bool(d._acks)
        if have:
            try:
                durable = d.journal.sync()
            except OSError as e:
                stop_for_sync_error(d, e)
                if stopping and d._hard_stop.is_set():
                    return
                time.sleep(0.2)
                continue
            done: list[tuple[Frame, dict[str, Any]]] = []
            with d._ack_lock:
                while d._acks and d._acks[0][0] <= durable:
                    done += d._acks.popleft()[1]
            if d.opcua is not None:  # durable now; before the answers, so a client sees it after Inspect
                d.opcua.publish([record for _, record in done])
            for frame, record in done:
                try:
                    d.source.on_result(frame, record)
                except Exception as e:
                    log.warning("source hook failed for frame %d: %s", frame.frame_id, e)
            d.acked += len(done)
        try:
            d.journal.housekeep()
        except Exception:
            log.exception("journal housekeeping failed")
        if stopping:
            with d._ack_lock:
                if not d._acks:
                    return
