"""source.kind: watch: a drop folder, each new image file scored once when it is complete."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fsac.errors import FsacError, ImageDecodeError
from fsac.io import nearest_existing
from fsac.preprocess import IMAGE_SUFFIXES, decode_image_bytes

from ..config import SourceConfig
from .base import ENCODED, RGB, Frame, Source, check_frame_pixels, file_too_big, require_folder
from .watch_ledger import WatchLedger, ledger_path, read_ledger

log = logging.getLogger("fsac.runtime")

SCAN_SHARE = 0.1  # the most of one core's time that scanning the folder may take


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    first_seen: float
    stable_since: float


def _identity(name: str, st: os.stat_result) -> tuple[str, int, int, int]:
    """(name, inode, size, mtime_ns): what "the same file" means here."""
    return (name, st.st_ino, st.st_size, st.st_mtime_ns)


def _identities(found: dict[str, os.stat_result]) -> set[tuple[str, int, int, int]]:
    return {_identity(n, st) for n, st in found.items()}


class WatchSource(Source):
    """A drop folder: score each new image file once, when it is complete.

    Poll-based (portable, works on network shares where inotify does not). A file counts as
    complete when its size and mtime have not changed for `settle_s` seconds *and* it
    decodes: a camera program that writes slowly, pauses, and writes again is caught by the
    decode check. A file that still does not decode `give_up_s` after it appeared is
    reported as an error record. Files starting with "." (temporary names) are ignored.

    Claiming (processed: move): a file is renamed into `<folder>/.fsac-processing/` before
    its frame is handed on, and the claimed file's device, inode, size and mtime must be
    those of the bytes that were read. A producer that writes the same name again (a ring
    of file names) creates a new file beside the claimed one, which is scored on its own;
    a file replaced between the read and the claim is read again from the claim folder.
    So only the version that was scored is ever moved to done_dir, and only after its
    record is durable. Files left in the claim folder by a crash are scored again first.
    With processed: leave, nothing is renamed and a file counts as new when its inode,
    size or mtime changes; the files scored are remembered across runs in
    `<journal.dir>/watch-scored.jsonl` (runtime/sources/watch_ledger.py), so a restart does
    not score them again (existing: all does).
    """

    kind = "watch"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__(cfg)
        self.folder = Path(cfg.uri)
        self.done_dir = Path(cfg.done_dir) if cfg.done_dir else self.folder / "done"
        self.claim_dir = self.folder / ".fsac-processing"
        self.claim = cfg.processed == "move"
        self.replaced = 0  # files replaced between read and claim (read again)
        self.ledger: WatchLedger | None = None  # processed: leave, once the daemon names journal.dir
        self._unlisted = 0  # scans in a row that could not list the folder
        self._slow_scan_said = False

    def use_state_dir(self, folder: str | Path) -> None:
        if not self.claim:
            self.ledger = WatchLedger(ledger_path(folder), self.folder.resolve())

    def open(self, create: bool = True) -> None:
        require_folder(self.folder)
        if not os.access(self.folder, os.R_OK | os.X_OK):
            raise FsacError(f"source.uri: cannot read folder {self.folder} (permissions)")
        if self.cfg.processed == "move":
            if self.done_dir.is_dir() or not create:
                existing = nearest_existing(self.done_dir)
                if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                    raise FsacError(f"source.done_dir: {self.done_dir} is not a writable folder")
            else:
                try:
                    self.done_dir.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise FsacError(f"source.done_dir: cannot create {self.done_dir}: {e.strerror or e}") from None
            # Moving away the files we watch needs write access to the watched folder too.
            if not os.access(self.folder, os.W_OK):
                raise FsacError(f"source.processed=move: cannot remove files from {self.folder} (permissions)")
            if create:
                try:
                    self.claim_dir.mkdir(exist_ok=True)
                except OSError as e:
                    raise FsacError(f"source.uri: cannot create {self.claim_dir}: {e.strerror or e}") from None
        self.connected = True

    def check(self) -> str:
        self.open(create=False)  # --check changes nothing on disk
        extra = f", processed files move to {self.done_dir}" if self.cfg.processed == "move" else ""
        if self.ledger is not None:
            keys, why = read_ledger(self.ledger.path, self.ledger.folder)
            present = _identities(self._scan() or {})
            if keys is None:
                extra += f", no earlier run's scored files ({why})"
            elif self.cfg.existing == "process":
                extra += f", {len(keys & present)} file(s) scored by earlier runs skipped ({self.ledger.path})"
        return f"watch {self.label} (settle {self.cfg.settle_s:g}s{extra})"

    def _scan(self) -> dict[str, os.stat_result] | None:
        """The image files in the folder, or None when it cannot be listed (a network share
        gone for a moment: that is not "every file was removed", which would forget what was
        scored and score the whole folder again once it is back)."""
        found: dict[str, os.stat_result] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as e:
            if not self._unlisted:
                log.warning("cannot list watch folder %s: %s (retrying every %gs)", self.folder, e, self.cfg.poll_s)
            self._unlisted += 1
            return None
        if self._unlisted:
            log.info("watch folder %s can be listed again (after %d failed scans)", self.folder, self._unlisted)
            self._unlisted = 0
        for entry in entries:
            name = entry.name
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            try:
                if entry.is_file():
                    found[name] = entry.stat()
            except OSError:
                continue  # removed between listing and stat
        return found

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        settle, give_up = self.cfg.settle_s, self.cfg.give_up_s
        pending: dict[str, _Candidate] = {}
        done: set[tuple[str, int, int, int]] = set()  # (name, inode, size, mtime_ns): scored already
        if self.cfg.existing == "skip":
            done = _identities(self._scan() or {})
        earlier: set[tuple[str, int, int, int]] = set()  # scored by earlier runs: skipped now
        if self.ledger is not None:
            loaded = self.ledger.load()
            if self.cfg.existing == "process":
                earlier = loaded
                done |= earlier
        pruned_at = None  # the ledger forgets removed files at the first scan, then once a minute
        if self.claim:  # claimed by a run that died before their records were durable
            for path in sorted(self.claim_dir.iterdir()) if self.claim_dir.is_dir() else []:
                if stop.is_set():
                    return
                log.warning("watch: %s was claimed by an earlier run and not finished; scoring it again", path.name)
                yield self._read_claimed(path)
        while not stop.is_set():
            now = time.monotonic()
            found = self._scan()
            if found is None:
                stop.wait(self.cfg.poll_s)
                continue
            frames_s = 0.0  # reading new files and handing them on: not what a scan of the folder costs
            # Forget what left the folder: moved, deleted, or renamed away.
            pending = {n: c for n, c in pending.items() if n in found}
            done = {key for key in done if key[0] in found}
            if self.ledger is not None and (pruned_at is None or now - pruned_at >= 60.0):
                present = _identities(found)
                if pruned_at is None and (here := len(earlier & present)):
                    log.info("watch: %d file(s) in the folder were scored by an earlier run (%s): not scored "
                             "again (source.existing: all scores them)", here, self.ledger.path)
                self.ledger.prune(present)
                pruned_at = now
            # Oldest first: the order in which the line produced them (only the files not scored
            # yet are sorted: a folder that keeps its files holds mostly scored ones).
            new = sorted((st.st_mtime_ns, key) for name, st in found.items()
                         if (key := _identity(name, st)) not in done)
            for _, key in new:
                if stop.is_set():
                    break
                name, st = key[0], found[key[0]]
                cand = pending.get(name)
                if cand is None or (cand.size, cand.mtime_ns) != (st.st_size, st.st_mtime_ns):
                    pending[name] = _Candidate(st.st_size, st.st_mtime_ns, cand.first_seen if cand else now, now)
                    continue
                if now - cand.stable_since < settle:
                    continue
                t_frame = time.monotonic()
                frame = self._try_read(name, cand, now, give_up)
                if frame is None:
                    frames_s += time.monotonic() - t_frame
                    continue
                pending.pop(name, None)
                done.add(key)
                frame.identity = key
                if self.claim:
                    frame = self._claim(frame, st)
                    if frame is None:
                        frames_s += time.monotonic() - t_frame
                        continue
                yield frame
                frames_s += time.monotonic() - t_frame
            stop.wait(self._poll_wait(time.monotonic() - now - frames_s, len(found)))

    def _poll_wait(self, busy_s: float, n_files: int) -> float:
        """Seconds until the next scan: source.poll_s, or longer when a scan itself is slow.
        A folder that keeps its files (processed: leave) grows by one file per part, and with
        tens of thousands of them listing and stat-ing every 0.2 s would take a core from the
        model on a 2-core box; so scanning gets at most SCAN_SHARE of one core's time."""
        wait = max(self.cfg.poll_s, busy_s * (1.0 - SCAN_SHARE) / SCAN_SHARE)
        if wait > 2 * self.cfg.poll_s and not self._slow_scan_said:
            self._slow_scan_said = True
            log.warning("watch: one scan of %s (%d files) takes %.0f ms, so the folder is scanned every %.2f s "
                        "(at most %d %% of a core) instead of every source.poll_s=%gs; moving scored files away "
                        "(processed: move) keeps it fast", self.folder, n_files, busy_s * 1e3, wait,
                        round(SCAN_SHARE * 100), self.cfg.poll_s)
        return wait

    def _try_read(self, name: str, cand: _Candidate, now: float, give_up: float) -> Frame | None:
        path = self.folder / name
        too_big = file_too_big(cand.size, str(path), self.cfg.max_frame_pixels)
        if too_big:
            return self._frame(None, name, ENCODED, error=too_big, path=path)
        try:
            data = path.read_bytes()
            st = path.stat()
        except FileNotFoundError:
            return None  # removed; the next scan forgets it
        except OSError as e:
            error = f"cannot read image {path}: {e.strerror or e}"
            return self._give_up_or_wait(name, cand, now, give_up, error, path, None)
        if (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns) or len(data) != st.st_size:
            cand.size, cand.mtime_ns, cand.stable_since = st.st_size, st.st_mtime_ns, now
            return None  # still being written
        too_big = check_frame_pixels(data, str(path), self.cfg.max_frame_pixels)
        if too_big:  # refused from its header, before the watch source decodes it
            return self._frame(None, name, ENCODED, error=too_big, path=path)
        try:
            rgb = decode_image_bytes(data, str(path))
        except ImageDecodeError as e:
            return self._give_up_or_wait(name, cand, now, give_up, str(e), path, data)
        return self._frame(rgb, name, RGB, path=path)

    def _give_up_or_wait(self, name: str, cand: _Candidate, now: float, give_up: float, error: str,
                         path: Path, data: bytes | None) -> Frame | None:
        if now - cand.first_seen >= give_up:
            return self._frame(data, name, ENCODED, error=error, path=path)
        # Maybe still being written with pauses: look again after another settle period.
        cand.stable_since = now
        return None

    def _claim(self, frame: Frame, st: os.stat_result) -> Frame | None:
        """Rename the file just read into the claim folder; hand on the frame only if the file
        claimed is the file read (same device, inode, size, mtime)."""
        src = frame.path
        target = self.claim_dir / f"{frame.frame_id:010d}-{src.name}"
        try:
            os.rename(src, target)
            now = os.stat(target)
        except FileNotFoundError:
            self._next_id -= 1  # gone before the claim (moved or deleted by someone else): not ours
            return None
        except OSError as e:
            log.warning("watch: cannot claim %s (%s); scoring it in place", src, e)
            return frame
        same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_dev, st.st_ino, st.st_size,
                                                                          st.st_mtime_ns)
        if same:
            frame.path = target
            return frame
        # Replaced between our read and the rename: what we claimed is a newer version. Read it.
        self.replaced += 1
        log.info("watch: %s was replaced while being read; scoring the new version", src.name)
        self._next_id -= 1
        return self._read_claimed(target, src.name)

    def _read_claimed(self, path: Path, name: str | None = None) -> Frame:
        name = name or path.name.split("-", 1)[-1]
        try:
            too_big = file_too_big(path.stat().st_size, str(path), self.cfg.max_frame_pixels)
            if too_big:
                return self._frame(None, name, ENCODED, error=too_big, path=path)
            data = path.read_bytes()
        except OSError as e:
            return self._frame(None, name, ENCODED, error=f"cannot read image {path}: {e.strerror or e}", path=path)
        try:
            rgb = decode_image_bytes(data, str(path))
        except ImageDecodeError as e:
            return self._frame(data, name, ENCODED, error=str(e), path=path)
        return self._frame(rgb, name, RGB, path=path)

    def on_result(self, frame: Frame, record: dict[str, Any]) -> None:
        if self.ledger is not None and frame.identity is not None:
            self.ledger.add(frame.identity)  # the record is durable: remember the file as scored
        if self.cfg.processed != "move" or frame.path is None:
            return
        target = self.done_dir / (frame.name or frame.path.name)
        if target.exists():
            stem, suffix = os.path.splitext(frame.name or frame.path.name)
            target = self.done_dir / f"{stem}.{record.get('run_id', '')}.{frame.frame_id}{suffix}"
        try:
            shutil.move(str(frame.path), str(target))
        except FileNotFoundError:
            pass  # someone else took it; the result is already recorded
        except OSError as e:
            log.warning("cannot move processed file %s to %s: %s", frame.path, target, e)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
