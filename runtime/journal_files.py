"""The journal's files (runtime/journal.py): segment files found at start, lines read from a
segment, the sinks' cursors file and the reserve file kept for a full disk."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fsac.runtime")

CURSORS = "cursors.json"
RESERVE = "reserve"  # kept allocated: the room to save the cursors on a full disk (Journal.housekeep)
RESERVE_BYTES = 64 * 1024


@dataclass
class Segment:
    first: int  # journal index of its first line
    path: Path
    count: int = 0  # complete lines
    size: int = 0  # bytes of complete lines

    @property
    def end(self) -> int:
        return self.first + self.count


def seg_path(folder: Path, first: int) -> Path:
    return folder / f"seg-{first:020d}.jsonl"


def load_segments(folder: Path) -> list[Segment]:
    """The segments found in the journal's folder at start, their complete lines counted; a
    torn last line is cut off."""
    segs = []
    for p in sorted(folder.glob("seg-*.jsonl")):
        try:
            segs.append(Segment(int(p.stem[4:]), p))
        except ValueError:
            log.warning("journal: ignoring %s (not a segment name)", p)
    if not segs:
        first = 0
        return [Segment(first, seg_path(folder, first))]
    for a, b in zip(segs, segs[1:]):
        data = a.path.read_bytes()
        a.size = data.rfind(b"\n") + 1
        a.count = data.count(b"\n", 0, a.size)
        if a.count < b.first - a.first:
            # The next segment exists but this one's tail does not (a power cut: fdatasync
            # of a segment comes before its successor is created, so only a failing disk or
            # an outside hand gets here). Sinks are moved past the gap in read(), counted lost.
            log.error("journal: %s holds %d records but the next segment starts at %d: records %d..%d are "
                      "missing; sinks skip them and count them as lost", a.path, a.count, b.first,
                      a.first + a.count, b.first - 1)
        elif a.count > b.first - a.first:
            a.count = b.first - a.first  # never read into the next segment's indices
    last = segs[-1]
    data = last.path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):  # a crash mid-write: the torn line never was acknowledged
        log.warning("journal: %s ended in a partial line (%d bytes, earlier crash); cut off", last.path,
                    len(data) - cut)
        os.truncate(last.path, cut)
    last.count, last.size = data.count(b"\n", 0, cut), cut
    return segs


def load_cursors(folder: Path, consumers: list[str], first: int, end: int) -> dict[str, int]:
    """Each sink's next index to deliver, from cursors.json, within [first, end]."""
    saved: dict[str, int] = {}
    path = folder / CURSORS
    if path.exists():
        try:
            saved = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, TypeError, AttributeError) as e:
            # Unreadable: deliver everything still in the journal again (duplicates, no loss).
            log.error("journal: %s is unreadable (%s); sinks restart from the oldest record", path, e)
    # A sink new to this journal starts at its oldest record: the records were written for it too.
    out = {name: min(max(saved.get(name, first), 0), end) for name in consumers}
    for name, pos in out.items():
        if pos < first:  # deleted by drop-oldest in an earlier run (counted then) or by hand
            log.warning("journal: sink %s's cursor %d is before the oldest record kept (%d): %d records were "
                        "deleted undelivered before this start", name, pos, first, first - pos)
            out[name] = first
    return out


def save_cursors(folder: Path, cursors: dict[str, int]) -> None:
    tmp = folder / (CURSORS + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(cursors))
            f.flush()
            os.fsync(f.fileno())  # else a power cut can bring back older cursors than the trim used
        os.replace(tmp, folder / CURSORS)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def make_reserve(folder: Path) -> None:
    """Keep RESERVE_BYTES allocated in the journal's folder (a no-op if it exists or the
    disk is already full): the room to save the cursors, so that trimming can free space."""
    path = folder / RESERVE
    if path.exists():
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        return
    os.close(fd)


def read_lines(seg: Segment, pos: int, upto: int, size: int, start: int | None) -> tuple[list[bytes], int]:
    """Lines pos..upto-1 of a segment and the byte offset after them. `start`: the byte offset
    of line `pos` when known, else the segment is scanned from its start (after a restart).
    A segment deleted under us (drop-oldest) gives no lines; the next read notices."""
    try:
        with open(seg.path, "rb") as f:
            if start is None:
                skip, offset = pos - seg.first, 0
                while skip > 0:
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        return [], offset
                    offset += len(line)
                    skip -= 1
            else:
                offset = start
                f.seek(offset)
            lines = []
            while len(lines) < upto - pos and offset < size:
                line = f.readline(size - offset)
                if not line.endswith(b"\n"):
                    break
                lines.append(line)
                offset += len(line)
    except FileNotFoundError:
        return [], 0
    return lines, offset
