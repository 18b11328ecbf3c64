"""The durable result journal: every record is appended here before its input is acknowledged,
and every durable sink delivers from it through a persisted cursor.

Form: append-only segment files of JSON lines (`<dir>/seg-<first index>.jsonl`), not SQLite.
Why: the journal's only operations are "append at the end", "read forward from a position"
and "forget everything before a position". Segments make each of them cheap and lock-free
for the scorer: an append is one write() of the batch's lines (plus one fdatasync, coalesced
by the journal thread, before acknowledgements); trimming is unlink() of whole segments that
every durable sink has passed. There is no compaction, no checkpoint, no page rewriting and
nothing an outside reader (an operator running `tail` or `less`) can lock: the SQLite queue
this replaces stalled under an external read transaction and wrote ~29 KB per 400-byte record.

Positions: every line has a journal index (the segment's first index + its line number),
increasing across runs; records carry their own (run_id, seq) for consumers. A torn last
line (a crash mid-write) is cut off at start. Cursors (`<dir>/cursors.json`, the next index
each sink still has to deliver) are written atomically by the journal thread at most every
`cursor_interval_s`, never per record: a cursor that lags only means records are delivered
again after a restart (at least once; duplicates carry the same run_id and seq). A 64 KiB
`<dir>/reserve` file stays allocated beside them: on a full disk the cursors could not be
saved, so no segment could be trimmed and no space ever freed; the reserve is given up to
save them, and made again once trimming has made room.

Bound (`max_bytes`, `max_records`): segments are trimmed behind the slowest durable sink's
persisted cursor. When the bound is reached, `append` either waits (back-pressure: file and
watch sources stop consuming input) or deletes the oldest segment (live streams: newest
wins); what a sink had not yet read from a deleted segment is counted, exactly, as lost.
A batch a sink has read and is still delivering (retrying) is held in its memory, not lost:
when its segment goes, those records are "at risk" (a gauge) until the sink delivers them
(then they were never lost) or gives up at shutdown (`abandon`: then they are). So `lost`
only ever grows, as the counter fsac_records_lost_total must (a counter that steps back
reads as a reset, and `increase()` then counts the whole total again).

The files themselves (finding segments at start, reading lines, the cursors and reserve
files) are runtime/journal_files.py.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from fsac.errors import FsacError

from .journal_files import (RESERVE, Segment, load_cursors, load_segments, make_reserve, read_lines, save_cursors,
                            seg_path)

try:  # POSIX only; edge boxes are Linux.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("fsac.runtime")

BLOCK, DROP_OLDEST = "block", "drop-oldest"


class Journal:
    def __init__(self, folder: str | os.PathLike, consumers: list[str], *, max_bytes: int = 256 * 1024 * 1024,
                 max_records: int = 1_000_000, segment_bytes: int = 0, sync: bool = True,
                 when_full: str = BLOCK, cursor_interval_s: float = 1.0) -> None:
        self.folder = Path(folder)
        self.max_bytes, self.max_records = int(max_bytes), int(max_records)
        self.segment_bytes = int(segment_bytes) or max(4096, min(16 * 1024 * 1024, self.max_bytes // 16))
        self.sync_enabled = sync
        self.when_full = when_full
        self.cursor_interval_s = cursor_interval_s
        self._cond = threading.Condition()
        self._wlock = threading.Lock()  # held around a write: close() never closes the fd under it
        self._gen = 0  # segment file generation: +1 per roll
        self._closed = False
        self.blocked_s = 0.0  # time append() spent waiting for room (back-pressure)
        self.lost: dict[str, int] = {name: 0 for name in consumers}  # per sink, never delivered
        # Per sink, the batch [from, to) it has read and not yet committed, and how many of
        # those records drop-oldest has deleted from the journal meanwhile (held only by the sink).
        self._inflight: dict[str, tuple[int, int]] = {}
        self.at_risk: dict[str, int] = {name: 0 for name in consumers}
        self._lost_logged: dict[str, int] = {}
        self._offsets: dict[tuple[int, int], int] = {}  # (segment first, index) -> byte offset
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lockfile = open(self.folder / "journal.lock", "a+")
        except OSError as e:
            raise FsacError(f"journal.dir: cannot create or write {self.folder}: {e.strerror or e}") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lockfile.close()
                raise FsacError(f"journal.dir: {self.folder} is in use by another fsac-run process "
                                "(give each daemon its own journal.dir)") from None
        try:
            self.segments = load_segments(self.folder)
            self.cursors = load_cursors(self.folder, consumers, self.segments[0].first, self.segments[-1].end)
            self._fd = os.open(self.segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            self._lockfile.close()
            raise FsacError(f"journal.dir: cannot open the journal in {self.folder}: {e.strerror or e}") from None
        self.persisted = dict(self.cursors)
        self.synced = self.end  # what is on disk for sure (fdatasync'd, or found at start)
        self.sync_error: OSError | None = None  # a failed fdatasync: nothing after `synced` is durable
        self._last_persist = time.monotonic()
        self.waiting = False  # append() waits for room: trim and persist cursors at once
        make_reserve(self.folder)

    # ---------------------------------------------------------------- state

    @property
    def first(self) -> int:
        return self.segments[0].first

    @property
    def end(self) -> int:
        return self.segments[-1].end

    @property
    def nbytes(self) -> int:
        return sum(s.size for s in self.segments)

    def pending(self, name: str) -> int:
        with self._cond:
            return self.end - self.cursors[name]

    def fill(self) -> float:
        """How full the journal is, 0..1 (the larger of bytes and records)."""
        with self._cond:
            return max(self.nbytes / self.max_bytes, (self.end - self.first) / self.max_records)

    # ---------------------------------------------------------------- writer (the scorer)

    def append(self, lines: list[bytes], stop: threading.Event | None = None,
               on_wait: Callable[[], None] | None = None) -> int:
        """Append complete JSON lines (each ends in b"\\n"); returns the index of the first.

        Blocks while the journal is full in `block` mode (until a sink catches up, or `stop`
        is set: then raises FsacError, nothing written), calling `on_wait` every 0.1 s of it
        (the daemon's watchdog: waiting, not hung). One write() per call.
        """
        data = b"".join(lines)
        n = len(lines)
        with self._cond:
            t0 = time.monotonic()
            while self._full(len(data), n):
                if self.when_full == DROP_OLDEST:
                    self._drop_oldest_locked()
                    continue
                self._roll_locked()
                self._trim_locked()
                if not self._full(len(data), n):
                    break
                if stop is not None and stop.is_set() or self._closed:
                    raise FsacError(f"journal.dir: {self.folder} is full and the daemon is stopping")
                self.waiting = True
                if on_wait is not None:
                    on_wait()
                self._cond.wait(0.1)
            self.waiting = False
            self.blocked_s += time.monotonic() - t0
            if self.segments[-1].size >= self.segment_bytes:
                self._roll_locked()
            seg = self.segments[-1]
            first = seg.end
        with self._wlock:
            if self._closed:  # a scorer that outlived the shutdown deadline: never write to a stale fd
                raise FsacError(f"journal.dir: the journal in {self.folder} is closed")
            self._write(data, seg)
        with self._cond:
            seg.count += n
            seg.size += len(data)
            self._cond.notify_all()
        return first

    def _write(self, data: bytes, seg: Segment) -> None:
        written = 0
        try:
            while written < len(data):  # one write() unless the kernel splits it
                written += os.write(self._fd, data[written:])
        except OSError:
            # ENOSPC, EIO: cut the partial batch off so the next append starts on a line of its own.
            try:
                os.ftruncate(self._fd, seg.size)
            except OSError as e:
                log.error("journal: cannot cut a failed write off %s (%s); the next start repairs it", seg.path, e)
            raise

    def _full(self, nbytes: int, n: int) -> bool:
        if self.end == self.first:
            return False  # an empty journal always takes one batch
        return self.nbytes + nbytes > self.max_bytes or self.end - self.first + n > self.max_records

    def _roll_locked(self) -> None:
        last = self.segments[-1]
        if last.count == 0:
            return
        if self.sync_enabled:
            self._check_sync()
            try:  # what sync() may still be about to sync: done here, before the next segment exists
                os.fdatasync(self._fd)
            except OSError as e:
                self.sync_error = e
                raise
        fd = os.open(seg_path(self.folder, last.end), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(self._fd)
        self._fd = fd
        self._gen += 1
        self.segments.append(Segment(last.end, seg_path(self.folder, last.end)))

    def _drop_oldest_locked(self) -> None:
        if len(self.segments) == 1:
            self._roll_locked()
        old = self.segments.pop(0)
        self._offsets = {k: v for k, v in self._offsets.items() if k[0] != old.first}
        for name, pos in self.cursors.items():
            if pos >= old.end:
                continue
            lo, hi = self._inflight.get(name, (pos, pos))
            held = max(0, min(hi, old.end) - max(lo, pos))  # read by the sink, being delivered
            self.lost[name] += old.end - pos - held
            self.at_risk[name] += held
            self.cursors[name] = old.end
        self._unlink(old)

    def _unlink(self, seg: Segment) -> None:
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass

    def _check_sync(self) -> None:
        if self.sync_error is not None:
            e = self.sync_error
            raise OSError(e.errno, f"an earlier fdatasync failed ({e.strerror}); the records after index "
                                   f"{self.synced} are not known to be on disk", str(self.segments[-1].path))

    def sync(self) -> int:
        """fdatasync what was appended; returns the index up to which records are durable.

        A failed fdatasync is final (`sync_error`): Linux reports a writeback error once and
        drops the pages, so a retry would return 0 for data that never reached the disk."""
        with self._cond:
            end, fd, gen = self.end, self._fd, self._gen
        if self.sync_enabled:
            self._check_sync()
        if self.sync_enabled and end > self.synced:
            try:
                os.fdatasync(fd)
            except OSError as e:
                with self._cond:
                    rolled = self._gen != gen
                if not (rolled and e.errno == errno.EBADF):  # rolled meanwhile: the roll synced it
                    self.sync_error = e
                    raise
        with self._cond:
            self.synced = max(self.synced, end)
        return end

    # ---------------------------------------------------------------- readers (sink threads)

    def read(self, name: str, pos: int, max_n: int, timeout: float) -> tuple[int, list[bytes]]:
        """Up to max_n complete lines from index `pos` on (waits up to `timeout` for new ones).

        Returns (pos, lines): `pos` moves forward past records deleted by drop-oldest (counted
        in `lost[name]`). The lines are the sink's batch in flight until `commit` or `abandon`."""
        with self._cond:
            pos = max(pos, self.first)  # records deleted by drop-oldest were counted when deleted
            if pos >= self.end:
                self._cond.wait(timeout)
                if pos >= self.end or pos < self.first:
                    return pos, []
            seg = next(s for s in reversed(self.segments) if s.first <= pos)
            if pos >= seg.end and seg is not self.segments[-1]:  # a gap found at start (load_segments)
                nxt = self.segments[self.segments.index(seg) + 1]
                self.lost[name] += nxt.first - pos
                self.cursors[name] = max(self.cursors[name], nxt.first)
                log.error("journal: sink %s skips records %d..%d, missing from %s", name, pos, nxt.first - 1,
                          seg.path)
                return nxt.first, []
            upto = min(seg.end, pos + max_n)
            size = seg.size
            start = self._offsets.get((seg.first, pos))
        lines, offset = read_lines(seg, pos, upto, size, start)
        with self._cond:
            if lines and pos < self.first:  # drop-oldest deleted (and counted lost) some while we read
                cut = min(len(lines), self.first - pos)
                lines, pos = lines[cut:], pos + cut
                if not lines:
                    return self.first, []
                offset = None  # its segment is gone: nothing to cache
            if len(self._offsets) > 64:  # a few per sink are all that is ever looked up
                self._offsets.clear()
            if lines and offset is not None:
                self._offsets[(seg.first, pos + len(lines))] = offset
                if start is None:
                    self._offsets[(seg.first, pos)] = offset - sum(len(x) for x in lines)
            if lines:
                self._inflight[name] = (pos, pos + len(lines))
        return pos, lines

    def commit(self, name: str, start: int, next_pos: int) -> None:
        """A sink delivered the records start..next_pos-1 (the batch it read) durably."""
        with self._cond:
            self._inflight.pop(name, None)
            self.at_risk[name] = 0  # the ones drop-oldest deleted meanwhile were delivered: not lost
            self.cursors[name] = max(self.cursors[name], next_pos)
            self._cond.notify_all()

    def abandon(self, name: str) -> None:
        """A sink stops without delivering the batch it read (shutdown mid-retry): the records
        of it that drop-oldest deleted meanwhile are lost now; the rest are still here."""
        with self._cond:
            self._inflight.pop(name, None)
            self.lost[name] += self.at_risk[name]
            self.at_risk[name] = 0

    # ---------------------------------------------------------------- housekeeping (journal thread)

    def housekeep(self, force: bool = False) -> None:
        """Persist changed cursors (atomically, at most every cursor_interval_s) and trim."""
        now = time.monotonic()
        with self._cond:
            due = force or self.waiting or now - self._last_persist >= self.cursor_interval_s
            changed = self.cursors != self.persisted
            cursors = dict(self.cursors)
        if due and changed:
            try:
                save_cursors(self.folder, cursors)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not (self.folder / RESERVE).exists():
                    log.error("journal: cannot save sink cursors in %s: %s", self.folder, e)
                    return
                # A full disk: the cursors must be saved before a segment can be trimmed, and
                # saving them needs a block. The reserve file gives it back.
                log.warning("journal: %s is full; using the reserved space to save the sink cursors", self.folder)
                (self.folder / RESERVE).unlink()
                try:
                    save_cursors(self.folder, cursors)
                except OSError as e2:
                    log.error("journal: cannot save sink cursors in %s: %s", self.folder, e2)
                    return
            with self._cond:
                self.persisted = cursors
                self._last_persist = now
        if due:
            with self._cond:
                self._trim_locked()
                self._cond.notify_all()
                news = {n: v for n, v in self.lost.items() if v != self._lost_logged.get(n, 0)}
                self._lost_logged.update(news)
            make_reserve(self.folder)  # again, once trimming made room
            for name, total in news.items():  # at most once per cursor interval, with exact totals
                log.error("journal: sink %s lost %d records in total: deleted from the full journal %s before "
                          "delivery (journal.when_full=drop-oldest)", name, total, self.folder)

    def _trim_locked(self) -> None:
        """Delete whole segments every durable sink has passed (by its persisted cursor)."""
        behind = min(self.persisted.values(), default=self.synced)
        behind = min(behind, self.synced)
        while len(self.segments) > 1 and self.segments[0].end <= behind:
            self._unlink(self.segments.pop(0))

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        try:
            if self.sync_error is None:  # else reported already: the daemon exits 1 for it
                self.sync()
            self.housekeep(force=True)
        finally:
            with self._wlock:
                os.close(self._fd)
            self._lockfile.close()
