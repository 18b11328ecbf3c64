"""JSON-lines result file: one record per frame, rotated by size.

Durability: the daemon calls `flush()` after every batch, so once a batch's records are
written they are in the operating system's hands (a crash of the daemon loses nothing; a
power cut may lose the last seconds unless `fsync: batch`). `close()` and every rotation
fsync the file. If the file does not end with a newline when opened (a previous run died
mid-write), a newline is written first so the torn line stays on its own and the new
records parse.

Rotation: before a line would push the file past `max_bytes`, path -> path.1 -> path.2 ...,
keeping `backups` old files (0: start the file afresh).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError

log = logging.getLogger("fsac.runtime")


class JsonlSink:
    name = "jsonl"
    needs_images = False
    accepts_raw_bytes = False

    def __init__(self, path: str | os.PathLike, max_bytes: int = 100 * 1024 * 1024, backups: int = 5,
                 fsync: str = "close") -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = int(backups)
        self.fsync_each_batch = fsync == "batch"
        self._lock = threading.Lock()
        self._written = 0
        self._rotations = 0
        self._bytes = 0
        self._file = None
        self._size = 0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as e:
            raise FsacError(f"sinks.jsonl.path: cannot open {self.path} for writing: {e.strerror or e}") from None

    def _open(self) -> None:
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        # Binary append: one write() per line, no newline translation, no text-layer buffering surprises.
        self._file = open(self.path, "ab")
        self._size = self._file.tell()
        if torn:
            log.warning("%s ended in a partial line (earlier crash?); continuing on a new line", self.path)
            self._file.write(b"\n")
            self._size += 1

    def _rotate(self) -> None:
        self._sync()
        self._file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{i}")
                if older.exists():
                    os.replace(older, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._rotations += 1
        self._file = open(self.path, "ab")
        self._size = 0

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, record: dict[str, Any], image: np.ndarray | None = None) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            if self._closed:
                raise FsacError(f"jsonl sink {self.path} is closed")
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._size += len(line)
            self._bytes += len(line)
            self._written += 1

    def flush(self, timeout: float = 0.0) -> None:
        """Hand buffered lines to the OS (and fsync with `fsync: batch`); never waits on a network."""
        with self._lock:
            if self._closed:
                return
            self._file.flush()
            if self.fsync_each_batch:
                os.fsync(self._file.fileno())

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sync()
            finally:
                self._file.close()

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"written": self._written, "bytes": self._bytes, "rotations": self._rotations, "buffered": 0,
                    "dropped": 0}
