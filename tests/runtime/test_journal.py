"""runtime/journal.py: a failed fdatasync is final, and a segment roll that fails leaks nothing.

Linux reports a writeback error (EIO) to fdatasync once and then drops the dirty pages, so the
next fdatasync returns 0 for data that never reached the disk. The EIO is injected into
os.fdatasync here (a failing disk cannot be made on these machines without device-mapper);
the files, descriptors and the journal's own state are real.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import fsac.runtime.journal as journal_mod
from fsac.runtime.journal import Journal


class FailOnce:
    """os.fdatasync that fails once with EIO, then succeeds like the kernel would."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


def line(i: int) -> bytes:
    return b'{"seq": %d, "pad": "%s"}\n' % (i, b"x" * 200)


def open_fds(folder: Path) -> int:
    """Descriptors of this process open on files in `folder` (other tests' leftover threads
    open and close their own descriptors meanwhile; counting all of them was flaky)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except OSError:  # closed since the listing
            continue
    return n


def test_a_failed_fdatasync_is_never_retried_into_durable(tmp_path, monkeypatch):
    j = Journal(tmp_path / "j", ["jsonl"])
    j.append([line(0), line(1)])
    assert j.sync() == 2 and j.synced == 2
    j.append([line(2)])
    monkeypatch.setattr(journal_mod.os, "fdatasync", FailOnce())
    with pytest.raises(OSError, match="Input/output error"):
        j.sync()
    with pytest.raises(OSError, match="an earlier fdatasync failed .* after index 2 are not known to be on disk"):
        j.sync()  # the retry would succeed: it must not say record 2 is durable
    assert j.synced == 2
    j.close()


def test_a_roll_whose_fdatasync_fails_opens_no_segment_and_stays_failed(tmp_path, monkeypatch):
    j = Journal(tmp_path / "j", ["jsonl"], segment_bytes=4096)
    i = 0
    while len(j.segments) == 1:  # fill the first segment up to its roll size
        j.append([line(i)])
        i += 1
    j.sync()
    while j.segments[-1].size < 4096:
        j.append([line(i)])
        i += 1
    segments, fds = len(j.segments), open_fds(tmp_path / "j")
    monkeypatch.setattr(journal_mod.os, "fdatasync", FailOnce())
    for _ in range(5):  # fsac-run retries a failed append every 0.2 s
        with pytest.raises(OSError):
            j.append([line(i)])
    assert open_fds(tmp_path / "j") == fds, "each failed roll leaked a descriptor"
    assert len(j.segments) == segments  # no new segment after a tail that may not be on disk
    with pytest.raises(OSError, match="an earlier fdatasync failed"):
        j.sync()
    j.close()


def test_a_full_disk_still_saves_the_cursors_and_trims(mount_small):
    """A real 512 KiB tmpfs filled by the journal itself: the sink has delivered everything,
    but saving its cursor needs a block. With the reserve given up, the cursor is saved, the
    delivered segments are trimmed, and appends succeed again."""
    fs = mount_small("512k")
    j = Journal(fs / "j", ["jsonl"], segment_bytes=8192, cursor_interval_s=3600)
    assert (fs / "j" / "reserve").exists()
    i = 0
    with pytest.raises(OSError) as full:
        while True:
            j.append([line(i)])
            i += 1
    assert full.value.errno == errno.ENOSPC and i > 100
    j.sync()
    j.commit("jsonl", 0, i)  # the sink delivered everything before index i
    j.housekeep(force=True)
    assert json.loads((fs / "j" / "cursors.json").read_text()) == {"jsonl": i}
    assert len(j.segments) <= 2
    j.append([line(i)])  # room again
    assert (fs / "j" / "reserve").exists()  # made again once trimming made room
    j.close()


def test_a_segment_whose_tail_is_gone_is_skipped_and_counted_not_a_silent_stall(tmp_path):
    """A segment cut short while its successor exists (a failing disk, an outside hand): the
    count used to come from the file names, so a sink reading into the gap got no lines,
    for ever, with nothing logged. Now the gap is counted as lost and the sink goes on."""
    folder = tmp_path / "j"
    j = Journal(folder, ["jsonl"], segment_bytes=4096)
    i = 0
    while len(j.segments) < 3:
        j.append([line(i)])
        i += 1
    j.sync()
    first_seg = j.segments[0]
    kept = first_seg.count - 5
    j.close()
    data = first_seg.path.read_bytes().split(b"\n")
    first_seg.path.write_bytes(b"\n".join(data[:kept]) + b"\n")  # its last 5 records gone
    j = Journal(folder, ["jsonl"], segment_bytes=4096)
    pos, got = 0, []
    for _ in range(100):
        pos, lines = j.read("jsonl", pos, 1000, timeout=0)
        got += lines
        pos += len(lines)
        if pos >= j.end:
            break
    assert pos == j.end == i and len(got) == i - 5
    assert j.lost["jsonl"] == 5
    j.close()


def _fill_until_dropped(j: Journal, first_seg_end: int, i: int) -> int:
    """Append records until drop-oldest has deleted the segment ending at `first_seg_end`."""
    while j.first < first_seg_end:
        j.append([line(i)])
        i += 1
    return i


def _drop_oldest_journal(tmp_path) -> tuple[Journal, int]:
    j = Journal(tmp_path / "j", ["mqtt"], segment_bytes=1000, max_records=8, when_full="drop-oldest")
    i = 0
    while len(j.segments) < 2:
        j.append([line(i)])
        i += 1
    assert j.segments[0].count >= 3
    return j, i


def test_a_batch_being_delivered_when_its_segment_is_dropped_is_at_risk_not_lost(tmp_path):
    """drop-oldest deletes a segment while the sink holds 2 of its records (read, delivery
    being retried): those 2 are at risk, the unread rest is lost; the delivery then succeeds
    and the 2 were never lost. The lost count only grows: it is a Prometheus counter, and
    it used to be taken back down after the delivery (a counter reset to `increase()`)."""
    j, i = _drop_oldest_journal(tmp_path)
    seg0 = j.segments[0]
    pos, lines = j.read("mqtt", 0, 2, timeout=0)
    assert (pos, len(lines)) == (0, 2)
    _fill_until_dropped(j, seg0.end, i)
    assert j.lost["mqtt"] == seg0.count - 2 and j.at_risk["mqtt"] == 2
    j.commit("mqtt", 0, 2)  # delivered after all
    assert j.lost["mqtt"] == seg0.count - 2 and j.at_risk["mqtt"] == 0
    assert j.cursors["mqtt"] == seg0.end  # it goes on after the deleted segment
    j.close()


def test_a_batch_abandoned_after_its_segment_was_dropped_is_lost(tmp_path):
    j, i = _drop_oldest_journal(tmp_path)
    seg0 = j.segments[0]
    j.read("mqtt", 0, 2, timeout=0)
    _fill_until_dropped(j, seg0.end, i)
    j.abandon("mqtt")  # the sink stopped mid-retry: its 2 records exist nowhere now
    assert j.lost["mqtt"] == seg0.count and j.at_risk["mqtt"] == 0
    j.close()


def test_records_dropped_while_a_sink_reads_them_are_not_handed_out(tmp_path, monkeypatch):
    """drop-oldest runs between the journal choosing the lines and the sink getting them
    (the file is read outside the lock): those records were counted lost when deleted, so
    the sink must not deliver them as well."""
    j, i = _drop_oldest_journal(tmp_path)
    seg0, seg1 = j.segments[0], j.segments[1]
    real = journal_mod.read_lines

    def read_then_drop(seg, pos, upto, size, start):
        out = real(seg, pos, upto, size, start)
        _fill_until_dropped(j, seg0.end, i)  # the scorer appends meanwhile
        return out

    monkeypatch.setattr(journal_mod, "read_lines", read_then_drop)
    pos, lines = j.read("mqtt", 0, 2, timeout=0)
    assert (pos, lines) == (seg0.end, []) and j.lost["mqtt"] == seg0.count and j.at_risk["mqtt"] == 0
    monkeypatch.setattr(journal_mod, "read_lines", real)
    pos, lines = j.read("mqtt", pos, 100, timeout=0)
    assert pos == seg1.first and json.loads(lines[0])["seq"] == seg1.first  # on from the next segment
    j.close()
