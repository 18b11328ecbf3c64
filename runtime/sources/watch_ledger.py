"""The watch source's memory of scored files across runs (source.processed: leave).

With `processed: move` a scored file leaves the folder, so a restart cannot score it twice.
With `leave` (a read-only share, a camera's FTP folder that another program cleans) the files
stay, and without a memory every restart would score the whole folder again and send the
line's MES a second result for each part. The ledger is that memory: one JSON line per
acknowledged file, `[name, inode, size, mtime_ns]` (the identity the watch source already
uses within a run), in `<journal.dir>/watch-scored.jsonl`, beside the journal whose
durability it follows.

A line is appended only after the file's record is durable in the journal (the source's
`on_result` hook), so the ledger never claims a file whose result could be lost: a crash
between the journal's sync and the append scores that file again, the same contract as an
unacknowledged `move`. Lines are flushed to the OS, not fsynced (a daemon kill loses nothing;
power loss may lose the last lines, which again means scoring again, never losing).

The first line names the folder; a ledger written for another folder is set aside (renamed
`.old`), not applied. Entries for files no longer in the folder are dropped when the ledger is
rewritten (at start, then whenever it holds more than twice the live entries plus 1024), so it
stays the size of the folder.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("fsac.runtime")

LEDGER_NAME = "watch-scored.jsonl"
SCHEMA = "fsac.watch-ledger/1"

Key = tuple  # (name: str, inode: int, size: int, mtime_ns: int)


def ledger_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / LEDGER_NAME


def read_ledger(path: Path, folder: Path) -> tuple[set[Key] | None, str]:
    """(keys, why): the files an earlier run scored in `folder`, or None with the reason when
    the ledger is missing, unreadable or for another folder. Torn or foreign lines (a crash in
    the middle of an append) are skipped; of two lines for one name the later one counts."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None, "no ledger yet"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    lines = text.splitlines()
    try:
        head = json.loads(lines[0]) if lines else {}
    except ValueError:
        head = {}
    if not isinstance(head, dict) or head.get("schema") != SCHEMA:
        return None, f"{path} is not a watch ledger"
    if head.get("folder") != str(folder):
        return None, f"{path} is for folder {head.get('folder')}, not {folder}"
    keys: dict[str, Key] = {}
    for line in lines[1:]:
        try:
            name, ino, size, mtime_ns = json.loads(line)
        except (ValueError, TypeError):
            continue
        if isinstance(name, str) and all(isinstance(v, int) for v in (ino, size, mtime_ns)):
            keys[name] = (name, ino, size, mtime_ns)
    return set(keys.values()), ""


class WatchLedger:
    """Append-only record of the files scored in one watched folder. Thread-safe: `add` runs
    on the commit thread, `prune` on the reader's."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder
        self.errors = 0  # failed writes (each means: that file is scored again after a restart)
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {}  # name -> the version of it that was scored
        self._lines = 0
        self._file = None

    def load(self) -> set[Key]:
        """The files earlier runs scored here (logged when the ledger cannot be used)."""
        keys, why = read_ledger(self.path, self.folder)
        if keys is None:
            if why != "no ledger yet":
                log.warning("watch: %s; starting a new ledger (files already in the folder are scored)", why)
                if self.path.exists():
                    try:
                        os.replace(self.path, self.path.with_name(self.path.name + ".old"))
                    except OSError:
                        pass
            keys = set()
        with self._lock:
            self._keys = {k[0]: k for k in keys}
        return set(keys)

    def add(self, key: Key) -> None:
        with self._lock:
            # A name holds one file: an older version under it is gone, so the newer key
            # replaces it (in the next rewrite; a line already appended never matches again).
            self._keys[key[0]] = key
            try:
                if self._file is None:
                    self._rewrite_locked()  # the first write of a run also writes the header
                else:
                    self._file.write(json.dumps(list(key)) + "\n")
                    self._file.flush()
                    self._lines += 1
            except OSError as e:
                self._failed(e)

    def prune(self, present: set[Key]) -> None:
        """Forget files no longer in the folder as they were scored (removed, or written again
        under the same name); rewrite the file when it has grown past twice what is live, or
        when it was not written yet this run."""
        with self._lock:
            self._keys = {n: k for n, k in self._keys.items() if k in present}
            if self._file is not None and self._lines <= 2 * len(self._keys) + 1024:
                return
            try:
                self._rewrite_locked()
            except OSError as e:
                self._failed(e)

    def _rewrite_locked(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps({"schema": SCHEMA, "folder": str(self.folder)}) + "\n")
                for key in sorted(self._keys.values()):
                    f.write(json.dumps(list(key)) + "\n")
                f.flush()
                os.fsync(f.fileno())  # the rewrite replaces lines that were on disk: keep them there
            os.replace(tmp, self.path)
        except OSError:
            try:
                tmp.unlink()  # a half-written copy on a full disk would hold the space it needs
            except OSError:
                pass
            raise
        if self._file is not None:
            self._file.close()
        self._file = open(self.path, "a", encoding="utf-8")
        self._lines = len(self._keys)

    def _failed(self, e: OSError) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 100 == 0:
            log.warning("watch: cannot write %s (%s): %d scored file(s) not remembered; a restart scores "
                        "them again", self.path, e.strerror or e, self.errors)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None  # the next add rewrites the whole ledger, header included

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._file = None
