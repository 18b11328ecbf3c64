"""Atomic file writes and content hashes.

Every file fsac writes (checkpoints, model files, reports) goes through `atomic_write_*`:
the bytes land in a temporary file in the same folder, are flushed to disk, and only then
renamed over the target. A crash leaves either the old file or the new one, never half of
one. The new file gets the mode of the file it replaces, or the usual 0o666 & ~umask for a
new file (not mkstemp's private 0o600, which would hide model files and reports from the
service user that reads them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Like atomic_write_bytes, for content that `write(f)` produces into the open temporary
    file (so a large file need not exist in memory first). If `write` raises, the target is
    untouched and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
        except OSError:
            pass
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise_naming(e, path)
        raise
    fsync_dir(path.parent)
    return path


def raise_naming(e: OSError, path: str | os.PathLike) -> None:
    """Re-raise `e` naming `path` if it names no file (write() and fsync() do not: a full disk
    would say only "No space left on device"); else return, for the caller's bare `raise`."""
    if e.filename is None and e.errno is not None:
        raise OSError(e.errno, e.strerror, str(path)) from e


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """Within the block, an OSError that names no file names `path` (a folder of scratch files)."""
    try:
        yield
    except OSError as e:
        raise_naming(e, path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (os.umask() would race other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _target_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def nearest_existing(path: str | os.PathLike) -> Path:
    """`path` itself if it exists, else its closest ancestor that does: where a folder that is
    still to be created would be made (what a writability check must look at)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
