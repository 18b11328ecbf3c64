"""JSON-lines result file: one record per line, rotated by size; a durable journal consumer.

Durability: `deliver(lines)` writes the journal's lines verbatim and fsyncs the file before
it returns, so the daemon advances this sink's cursor only over lines that are on disk.
Under load a delivery carries every line pending (up to the delivery batch), so the fsync
is paid per batch, not per record.

Faults: a failed write (ENOSPC, EIO) truncates the file back to its last fsynced size where
it can and raises; the daemon retries the same lines from the cursor until the fault
clears. A failed rotation (EMFILE, ENOSPC) leaves no file open and raises; the next
delivery opens the file again, so one failure never ends the sink. If the file does not end
with a newline when opened (an earlier crash mid-write), a newline is written first so the
torn line stays on its own line and the new records parse.

Rotation: before a line would push the file past `max_bytes`, path -> path.1 -> path.2 ...,
keeping `backups` old files (0: start the file afresh).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pydantic import Field

from fsac.errors import FsacError

from ..settings_base import Settings, Size

log = logging.getLogger("fsac.runtime")


class JsonlSettings(Settings):
    """sinks.jsonl: one JSON line per result, rotated by size. On once `path` is set."""

    enabled: bool = Field(True, description="false: off even with a path")
    path: str = Field("", description="JSON-lines result file (empty: disabled)")
    max_bytes: Size = Field(100 * 1024 * 1024, ge=1024, description="rotate when the file would exceed this")
    backups: int = Field(5, ge=0, le=1000, description="rotated files kept as path.1 ... path.N")
    delivery_interval_s: float = Field(1.0, ge=0.0, le=60.0, description="the file is written and fsynced at "
                                       "most this often, each time with every record pending: at a few frames "
                                       "a second one fsync per record would rewrite a 4 KB page per record; "
                                       "lines reach the file up to this much later (0: as often as the "
                                       "other sinks, every 50 ms)")
    path_settings = ("path",)

    def active(self) -> bool:
        return self.enabled and bool(self.path)


def build(settings: JsonlSettings) -> "JsonlSink":
    sink = JsonlSink(settings.path, settings.max_bytes, settings.backups)
    sink.linger_s = settings.delivery_interval_s or None
    return sink


class JsonlSink:
    name = "jsonl"
    durable = True  # delivers from the journal (runtime/delivery.py)
    needs_images = False
    accepts_raw_bytes = False
    linger_s: float | None = None  # at most one delivery per linger_s (None: delivery.LINGER_S)

    def __init__(self, path: str | os.PathLike, max_bytes: int = 100 * 1024 * 1024, backups: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = int(backups)
        self._lock = threading.Lock()
        self._written = 0
        self._rotations = 0
        self._bytes = 0
        self._fd: int | None = None
        self._size = 0  # bytes in the file, all fsynced
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as e:
            raise FsacError(f"sinks.jsonl.path: cannot open {self.path} for writing: {e.strerror or e}") from None

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
                if torn:
                    log.warning("%s ended in a partial line (earlier crash?); continuing on a new line", self.path)
                    os.write(fd, b"\n")
                    size += 1
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, size

    def _rotate(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None  # from here on a failure leaves no file open; the next delivery reopens
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{i}")
                if older.exists():
                    os.replace(older, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._rotations += 1
        self._open()

    def _write_all(self, data: bytes) -> None:
        done = 0
        while done < len(data):
            done += os.write(self._fd, data[done:])

    def deliver(self, lines: list[bytes]) -> None:
        """Append the lines and fsync; returns only once they are on disk, else raises."""
        with self._lock:
            if self._closed:
                raise FsacError(f"jsonl sink {self.path} is closed")
            if self._fd is None:
                self._open()
            chunk: list[bytes] = []
            size = self._size
            try:
                for line in lines:
                    if size > 0 and size + len(line) > self.max_bytes:
                        if chunk:
                            self._write_all(b"".join(chunk))
                            chunk = []
                        self._size = size
                        self._rotate()
                        size = self._size
                    chunk.append(line)
                    size += len(line)
                if chunk:
                    self._write_all(b"".join(chunk))
                os.fsync(self._fd)
            except OSError:
                self._undo_partial()
                raise
            self._bytes += sum(len(line) for line in lines)
            self._size = size
            self._written += len(lines)

    def _undo_partial(self) -> None:
        """After a failed write: cut the file back to its last fsynced size (no torn line, no
        duplicate on retry); if even that fails, close it and let the next open repair it."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"written": self._written, "bytes": self._bytes, "rotations": self._rotations}
