"""FramesSink: real files in a temporary folder, real cv2 encoding."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fsac.errors import FsacError
from fsac.runtime.sinks.frames import FramesSink
from fsac.runtime.sinks.frames_config import FRAMES_DEFAULTS, validate_frames_config

NAME_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z_[A-Za-z0-9._-]+\.(png|jpg|json|bin|bmp|tif)$")


def rec(i, verdict="defective", error=None, frame_id=None):
    return {
        "schema": "fsac.result/2", "time": "2024-05-01T12:00:00Z", "source": "cam0",
        "frame_id": i if frame_id is None else frame_id, "score": 0.9, "logit": 2.1972,
        "sim_normal": 0.30, "sim_anomalous": 0.32, "threshold": 0.5, "logit_threshold": 0.0,
        "verdict": verdict, "latency_ms": 10.0, "model": "bottle", "model_sha256": "0" * 64,
        "error": error,
    }


def img(i: int, h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def pairs(folder: Path) -> dict[str, list[str]]:
    """stem -> sorted suffixes of the files the sink wrote."""
    out: dict[str, list[str]] = {}
    for p in folder.iterdir():
        stem, _, ext = p.name.rpartition(".")
        out.setdefault(stem, []).append(ext)
    return {k: sorted(v) for k, v in sorted(out.items())}


def saved_ids(folder: Path) -> list:
    return [json.loads(p.read_text())["frame_id"] for p in sorted(folder.glob("*.json"))]


@pytest.fixture
def sinks():
    made: list[FramesSink] = []
    yield made
    for s in made:
        s.close(timeout=5)


def make(sinks, folder: Path, **over) -> FramesSink:
    s = FramesSink({"dir": str(folder), **over})
    sinks.append(s)
    return s


def test_saves_defective_with_json_and_skips_good(tmp_path, sinks):
    s = make(sinks, tmp_path / "f")
    frames = {i: img(i) for i in range(6)}
    for i in range(6):
        image = frames[i].copy()
        s.write(rec(i, "defective" if i % 2 else "good"), image)
        image[:] = 0  # the caller reuses its buffer: the sink kept its own copy
    s.flush(20)
    p = pairs(tmp_path / "f")
    assert len(p) == 3 and all(v == ["json", "png"] for v in p.values())
    for stem in p:
        meta = json.loads((tmp_path / "f" / f"{stem}.json").read_text())
        assert meta == rec(meta["frame_id"], "defective")
        bgr = cv2.imread(str(tmp_path / "f" / f"{stem}.png"), cv2.IMREAD_COLOR)
        assert np.array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), frames[meta["frame_id"]])  # RGB kept
    assert saved_ids(tmp_path / "f") == [1, 3, 5]
    st = s.stats()
    assert st["written"] == 3 and st["files"] == 3 and st["dropped"] == 0 and st["save_failures"] == 0
    assert st["bytes"] == sum(f.stat().st_size for f in (tmp_path / "f").iterdir())
    s.close()
    with pytest.raises(RuntimeError):
        s.write(rec(9), img(9))


def test_jpeg_format_and_quality(tmp_path, sinks):
    smooth = np.zeros((64, 64, 3), np.uint8)
    smooth[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 3  # red ramp
    hi = make(sinks, tmp_path / "hi", format="jpeg", jpeg_quality=95)
    lo = make(sinks, tmp_path / "lo", format="JPG", jpeg_quality=10)
    hi.write(rec(1), smooth)
    lo.write(rec(1), smooth)
    hi.flush(20)
    lo.flush(20)
    (a,) = (tmp_path / "hi").glob("*.jpg")
    (b,) = (tmp_path / "lo").glob("*.jpg")
    assert a.read_bytes()[:3] == b"\xff\xd8\xff"
    assert b.stat().st_size < a.stat().st_size
    rgb = cv2.cvtColor(cv2.imread(str(a)), cv2.COLOR_BGR2RGB)
    assert rgb[..., 0].mean() > 50 and rgb[..., 2].mean() < 10  # red stays red


def test_file_names_are_safe(tmp_path, sinks):
    s = make(sinks, tmp_path / "f")
    weird = ["../../etc/passwd", "cam 0/img:001.png", "", "...", "x" * 300, "é€\x00\n", 7, 7]
    for k, fid in enumerate(weird):  # the same id twice in a row still gets distinct names
        s.write(rec(k, frame_id=fid), img(k))
    s.flush(20)
    files = list((tmp_path / "f").iterdir())
    assert len(files) == 2 * len(weird)
    for f in files:
        assert f.parent == tmp_path / "f"
        assert NAME_RE.match(f.name), f.name
        assert len(f.name) < 120
    assert not list(tmp_path.glob("etc*"))
    assert sorted(map(str, saved_ids(tmp_path / "f"))) == sorted(map(str, weird))


def test_retention_max_files_across_restarts(tmp_path, sinks):
    folder = tmp_path / "f"
    (folder).mkdir()
    (folder / "README.txt").write_text("not ours")
    s = make(sinks, folder, max_files=5, max_bytes=None)
    for i in range(8):
        s.write(rec(i), img(i))
        s.flush(20)
        time.sleep(0.002)
    assert saved_ids(folder) == [3, 4, 5, 6, 7]
    assert s.stats()["deleted"] == 3
    s.close()
    # A crash in the middle of an atomic write leaves a temporary file: cleaned at start.
    (folder / ".20240101T000000.000000Z_9_defective.png.abc123.tmp").write_bytes(b"partial")

    s2 = make(sinks, folder, max_files=3, max_bytes=None)  # restart with a smaller bound
    assert saved_ids(folder) == [5, 6, 7]
    assert s2.stats()["files"] == 3
    for i in range(8, 10):
        s2.write(rec(i), img(i))
        s2.flush(20)
        time.sleep(0.002)
    assert saved_ids(folder) == [7, 8, 9]
    assert (folder / "README.txt").read_text() == "not ours"
    assert not list(folder.glob(".*.tmp"))


def test_retention_max_bytes(tmp_path, sinks):
    folder = tmp_path / "f"
    s = make(sinks, folder, max_files=None, max_bytes=20_000, png_compression=0)
    for i in range(12):
        s.write(rec(i), img(i, 40, 40))  # ~4.8 kB of pixels each, stored uncompressed
        s.flush(20)
        time.sleep(0.002)
    total = sum(f.stat().st_size for f in folder.iterdir())
    assert total <= 20_000
    kept = saved_ids(folder)
    assert kept == list(range(12 - len(kept), 12)) and 2 <= len(kept) <= 4  # the newest
    assert s.stats()["bytes"] == total
    s.close()
    s2 = make(sinks, folder, max_files=None, max_bytes=10_000)
    assert s2.stats()["bytes"] <= 10_000
    assert saved_ids(folder) == kept[-len(saved_ids(folder)):]


def test_sample_normal_is_seeded(tmp_path, sinks):
    def run(name, seed, p, n=300):
        s = make(sinks, tmp_path / name, sample_normal=p, seed=seed, save_defective=False,
                 queue_size=1024)  # no overload skips: compare the picks only
        for i in range(n):
            s.write(rec(i, "good"), img(0, 8, 8))
            if i % 50 == 0:
                s.write(rec(10_000 + i, "defective"), img(0, 8, 8))  # neither saved nor drawn
        s.close(timeout=30)
        assert s.stats()["dropped"] == 0
        return saved_ids(tmp_path / name)

    a, b, c = run("a", 7, 0.05), run("b", 7, 0.05), run("c", 8, 0.05)
    assert a == b and a != c
    assert 3 <= len(a) <= 35 and all(i < 300 for i in a)
    assert run("none", 7, 0.0) == []
    assert run("all", 7, 1.0, n=40) == list(range(40))


def test_error_frames_raw_bytes(tmp_path, sinks):
    ok, png = cv2.imencode(".png", img(1))
    raw = {"png": png.tobytes(), "bin": b"\x00\x01garbage", "jpg": b"\xff\xd8\xff\xe0broken"}
    off = make(sinks, tmp_path / "off")
    on = make(sinks, tmp_path / "on", save_errors=True)
    for k, data in enumerate(raw.values()):
        for s in (off, on):
            s.write(rec(k, "error", error="cannot decode"), data)
    on.write(rec(9, "error", error="no bytes"), None)
    off.flush(20)
    on.flush(20)
    assert list((tmp_path / "off").iterdir()) == []
    p = pairs(tmp_path / "on")
    assert sorted(v[0] if v[0] != "json" else v[1] for v in p.values()) == ["bin", "jpg", "png"]
    for stem, exts in p.items():
        ext = [e for e in exts if e != "json"][0]
        assert (tmp_path / "on" / f"{stem}.{ext}").read_bytes() == raw[ext]
        assert stem.endswith("_error")


def test_overload_skips_frames_without_blocking(tmp_path, sinks):
    s = make(sinks, tmp_path / "f", queue_size=1, png_compression=9)
    big = img(3, 720, 960)
    t0 = time.monotonic()
    for i in range(40):
        s.write(rec(i), big)
    assert time.monotonic() - t0 < 2.0, "write() must not wait for the disk"
    s.close(timeout=20)
    st = s.stats()
    assert st["dropped"] > 0
    assert st["written"] + st["dropped"] == 40
    assert len(list((tmp_path / "f").glob("*.png"))) == st["written"]


def test_bad_image_is_counted_not_fatal(tmp_path, sinks):
    s = make(sinks, tmp_path / "f")
    s.write(rec(0), np.zeros((4, 4, 3), np.float32))
    s.write(rec(1), np.zeros((4, 4, 5), np.uint8))
    s.write(rec(2), img(2))
    s.flush(20)
    assert s.stats()["save_failures"] == 2 and saved_ids(tmp_path / "f") == [2]
    with pytest.raises(TypeError):
        s.write(rec(3), "not an image")


def test_defaults_and_validation():
    out = validate_frames_config({"dir": "/tmp/x"})
    assert {k: v for k, v in out.items() if k != "dir"} == {
        k: v for k, v in FRAMES_DEFAULTS.items() if k != "dir"}
    assert validate_frames_config({"format": "JPEG"})["format"] == "jpeg"


@pytest.mark.parametrize("cfg, setting", [
    ({"format": "gif"}, "format"),
    ({"jpeg_quality": 0}, "jpeg_quality"),
    ({"jpeg_quality": 90.5}, "jpeg_quality"),
    ({"png_compression": 10}, "png_compression"),
    ({"sample_normal": 1.5}, "sample_normal"),
    ({"sample_normal": "1%"}, "sample_normal"),
    ({"sample_normal": float("nan")}, "sample_normal"),
    ({"seed": "x"}, "seed"),
    ({"save_errors": 1}, "save_errors"),
    ({"save_defective": "no"}, "save_defective"),
    ({"max_files": 0}, "max_files"),
    ({"max_bytes": -5}, "max_bytes"),
    ({"max_files": None, "max_bytes": None}, "max_files"),
    ({"queue_size": 0}, "queue_size"),
    ({"dir": ""}, "dir"),
    ({"folder": "/tmp"}, "folder"),
])
def test_bad_config_names_the_setting(cfg, setting):
    with pytest.raises(FsacError, match=rf"^sinks\.frames\.{setting}\b"):
        validate_frames_config(cfg)


def test_unusable_dir_names_the_setting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FsacError, match=r"^sinks\.frames\.dir"):
        FramesSink({"dir": str(blocker / "sub")})


# ------------------------------------------------------------------ journal consumer (fsac-run)


def line(record: dict) -> bytes:
    return json.dumps({**record, "run_id": "r1"}).encode() + b"\n"


def test_deliver_saves_the_staged_frames_and_recovers_from_a_failing_folder(tmp_path):
    folder = tmp_path / "saved"
    sink = FramesSink({"dir": str(folder), "sample_normal": 0.0})
    try:
        records = [{**rec(i, "defective" if i % 2 else "good"), "run_id": "r1"} for i in range(6)]
        for i, r in enumerate(records):
            sink.stage(r, img(i))
        assert sink.stats()["queued"] == 3  # only the wanted (defective) frames are staged
        # A real fault: the folder is replaced by a file, so every atomic write fails.
        folder.rename(tmp_path / "moved")
        folder.write_text("not a folder")
        with pytest.raises(OSError):
            sink.deliver([line(r) for r in records])
        assert sink.stats()["written"] == 0 and sink.stats()["queued"] == 3  # nothing consumed
        folder.unlink()
        (tmp_path / "moved").rename(folder)
        sink.deliver([line(r) for r in records[:2]])  # frame 1 saved ...
        sink.deliver([line(r) for r in records])  # ... then the batch again, as a retry would
        assert saved_ids(folder) == [1, 3, 5]  # each once, none twice
        assert sink.stats()["written"] == 3 and sink.stats()["queued"] == 0
        # After a restart the journal replays records whose pixels died with the old process.
        sink.deliver([line(rec(7))])
        assert sink.stats()["images_missing"] == 1 and saved_ids(folder) == [1, 3, 5]
    finally:
        sink.close(timeout=1.0)


def test_staging_is_bounded_and_counts_what_it_skips(tmp_path):
    sink = FramesSink({"dir": str(tmp_path / "s"), "queue_size": 2})
    try:
        for i in range(5):
            sink.stage({**rec(i), "run_id": "r1"}, img(i))
        st = sink.stats()
        assert st["queued"] == 2 and st["dropped"] == 3
        sink.deliver([line({**rec(i), "run_id": "r1"}) for i in range(5)])
        assert saved_ids(tmp_path / "s") == [3, 4]  # the newest kept, the oldest skipped and counted
        assert sink.stats()["dropped"] == 3 and sink.stats()["images_missing"] == 0  # once, not twice
    finally:
        sink.close(timeout=1.0)


def test_a_frame_that_can_never_be_saved_is_counted_and_does_not_stop_the_sink(tmp_path):
    """A JPEG side over 65535 px makes cv2.imencode fail on every retry, and a damaged journal
    line never parses: both are counted as unsaveable and skipped. Before, the batch was
    retried forever, the frames cursor stopped, and in block mode the journal then filled."""
    folder = tmp_path / "saved"
    sink = FramesSink({"dir": str(folder), "format": "jpeg", "sample_normal": 0.0})
    try:
        records = [{**rec(i), "run_id": "r1"} for i in range(3)]
        sink.stage(records[0], img(0))
        sink.stage(records[1], np.zeros((1, 70000, 3), np.uint8))  # wider than JPEG allows
        sink.stage(records[2], img(2))
        sink.deliver([line(records[0]), line(records[1]), b'{"torn": \n', line(records[2])])
        assert saved_ids(folder) == [0, 2]
        assert sink.stats()["unsaveable"] == 2 and sink.stats()["queued"] == 0
    finally:
        sink.close(timeout=1.0)
