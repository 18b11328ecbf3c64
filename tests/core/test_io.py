"""fsac.io: atomic writes (all or nothing, no temp files left behind) and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

import fsac.io as fio
from fsac.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_bytes, sha256_file


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_bytes_creates_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "c" / "model.onnx"
    out = atomic_write_bytes(target, b"\x00\x01payload")
    assert out == target
    assert target.read_bytes() == b"\x00\x01payload"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]


def test_write_text_and_json(tmp_path):
    t = atomic_write_text(tmp_path / "sub" / "note.txt", "grüße\n")
    assert t.read_bytes() == "grüße\n".encode("utf-8")
    obj = {"b": [1, 2.5, None], "a": "x", "nested": {"k": True}}
    j = atomic_write_json(tmp_path / "deep" / "er" / "report.json", obj)
    assert json.loads(j.read_text()) == obj
    assert j.read_text().endswith("\n")
    # insertion order kept (sort_keys=False)
    assert list(json.loads(j.read_text())) == ["b", "a", "nested"]
    assert _leftovers(tmp_path / "sub") == [] and _leftovers(tmp_path / "deep" / "er") == []


def test_write_replaces_existing_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old old old old old")
    atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    atomic_write_bytes(target, b"")  # shorter, even empty, content replaces fully
    assert target.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_new_file_mode_follows_umask_not_mkstemp(tmp_path):
    old = os.umask(0o027)
    try:
        p = atomic_write_bytes(tmp_path / "m.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def test_replacing_keeps_mode_of_existing_file(tmp_path):
    p = tmp_path / "keep.bin"
    p.write_bytes(b"old")
    os.chmod(p, 0o604)
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert stat.S_IMODE(p.stat().st_mode) == 0o604


def test_failed_replace_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"OLD CONTENT")

    def boom(src, dst):
        assert os.path.exists(src)  # the complete temp file is there when the rename happens
        raise OSError("disk on fire")

    monkeypatch.setattr(fio.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(target, b"NEW CONTENT " * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"OLD CONTENT"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


class _FailingFile:
    """Wraps the real temp file object; writes half of the data, then fails."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        raise OSError("No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


def test_failed_write_midway_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"v": 1})
    before = target.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(fio.os, "fdopen", lambda fd, *a, **k: _FailingFile(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(target, {"v": 2, "pad": "x" * 10000})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_keyboard_interrupt_during_write_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "new.bin"

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(fio.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"data")
    monkeypatch.undo()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_sha256_file_multi_chunk(tmp_path):
    data = os.urandom(3 * (1 << 20) + 12345)  # more than 3 default chunks, not a multiple
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(p) == expected
    assert sha256_file(p, chunk=4096) == expected
    assert sha256_bytes(data) == expected
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_sha256_file_small_chunks_exact(tmp_path):
    data = bytes(range(256)) * 41  # 10496 bytes: 1499 full chunks of 7 and a remainder
    p = tmp_path / "x.bin"
    p.write_bytes(data)
    assert sha256_file(p, chunk=7) == hashlib.sha256(data).hexdigest()


def test_a_full_disk_names_the_file_and_leaves_nothing(mount_small):
    """A real small tmpfs: write() reports ENOSPC without a file name; the error names the
    target (what `fsac` prints as its one line), and the temporary file is gone."""
    import errno

    fs = mount_small("64k")
    with pytest.raises(OSError) as e:
        atomic_write_bytes(fs / "weights.safetensors", b"\0" * (1 << 20))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(fs / "weights.safetensors")
    assert list(fs.iterdir()) == []


def test_nearest_existing_is_the_path_or_its_closest_existing_ancestor(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "f").write_text("x")
    assert fio.nearest_existing(tmp_path / "a") == tmp_path / "a"
    assert fio.nearest_existing(tmp_path / "a" / "b" / "c") == tmp_path / "a"
    assert fio.nearest_existing(tmp_path / "f" / "sub") == tmp_path / "f"  # a file: the caller refuses it
    assert fio.nearest_existing("/") == fio.Path("/")
