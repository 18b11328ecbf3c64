"""Frame sources against real files, a real video, a real HTTP stream and a watched folder."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fsac.errors import FsacError
from fsac.preprocess import load_image
from fsac.runtime.config import SourceConfig
from fsac.runtime.sources import ENCODED, RAW, RGB, make_source, redact, resolve_kind
from fsac.runtime.sources.folder import FolderSource
from fsac.runtime.sources.stream import StreamSource
from fsac.runtime.sources.video import VideoSource
from fsac.runtime.sources.watch import WatchSource
from fsac_run_helpers import wait_for, write_video

cv2 = pytest.importorskip("cv2")


class Collector:
    """Runs a source's frames() on a thread, like the daemon's reader."""

    def __init__(self, source):
        self.source = source
        self.frames = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for frame in self.source.frames(self.stop):
            self.frames.append(frame)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_resolve_kind(tmp_path, image_folder):
    video = tmp_path / "v.avi"
    video.write_bytes(b"x")
    assert resolve_kind(SourceConfig(uri=str(image_folder))) == "folder"
    assert resolve_kind(SourceConfig(uri=str(video))) == "video"
    assert resolve_kind(SourceConfig(uri="0")) == "camera"
    assert resolve_kind(SourceConfig(uri="/dev/video2")) == "camera"
    assert resolve_kind(SourceConfig(uri="rtsp://cam/stream")) == "rtsp"
    assert resolve_kind(SourceConfig(uri="http://cam/mjpg")) == "http"
    assert resolve_kind(SourceConfig(uri="nvarguscamerasrc ! appsink")) == "gstreamer"
    assert resolve_kind(SourceConfig(kind="watch", uri=str(image_folder))) == "watch"
    with pytest.raises(FsacError, match=r"source\.uri: .* does not exist"):
        resolve_kind(SourceConfig(uri=str(tmp_path / "missing")))
    with pytest.raises(FsacError, match="single image"):
        resolve_kind(SourceConfig(uri=str(next(image_folder.iterdir()))))
    assert redact("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"


def test_folder_source_sorted_once(image_folder):
    src = FolderSource(SourceConfig(kind="folder", uri=str(image_folder)))
    src.open()
    frames = list(src.frames(threading.Event()))
    assert [f.frame_id for f in frames] == list(range(12))
    assert [f.name for f in frames] == sorted(p.name for p in image_folder.iterdir())
    assert all(f.kind == ENCODED and isinstance(f.data, bytes) and f.error is None for f in frames)
    with pytest.raises(FsacError, match="folder not found"):
        FolderSource(SourceConfig(uri="/nonexistent/folder")).open()


def test_video_source_reads_every_frame_then_ends(tmp_path, bottle_images):
    video, frames_bgr = write_video(tmp_path / "line.avi", bottle_images[:7])
    src = make_source(SourceConfig(uri=str(video)))
    assert isinstance(src, VideoSource)
    assert "7 frames of 128x128" in VideoSource(SourceConfig(uri=str(video))).check()
    src.open()
    frames = list(src.frames(threading.Event()))
    assert len(frames) == 7 and all(f.kind == RAW and f.data.shape == (128, 128, 3) for f in frames)
    assert frames[3].name == "line.avi#3"
    # MJPG is lossy, but close to what was written
    assert np.abs(frames[3].data.astype(int) - frames_bgr[3].astype(int)).mean() < 8
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF garbage")
    with pytest.raises(FsacError, match="cannot open video file"):
        VideoSource(SourceConfig(uri=str(bad))).open()


@pytest.fixture
def http_server(tmp_path):
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_stream_reconnects_with_backoff(tmp_path, bottle_images, http_server):
    """A stream that ends (the served file runs out) is a lost stream: reopened and counted."""
    write_video(tmp_path / "cam.avi", bottle_images[:4])
    url = f"http://127.0.0.1:{http_server.server_address[1]}/cam.avi"
    cfg = SourceConfig(uri=url, reconnect_min_s=0.05, reconnect_max_s=0.2, read_timeout_s=10)  # generous: the first open shares 2 cores with the suite
    src = make_source(cfg)
    assert isinstance(src, StreamSource) and src.kind == "http"
    src.open()
    assert src.connected
    col = Collector(src)
    wait_for(lambda: len(col.frames) >= 12 and src.reconnects >= 2, 20, what="three passes over the stream")
    col.close()
    ids = [f.frame_id for f in col.frames]
    assert ids == list(range(len(ids)))  # ids keep counting across reconnects
    assert all(f.kind == RAW for f in col.frames)


def test_unreachable_stream_keeps_retrying_without_frames():
    cfg = SourceConfig(uri="http://127.0.0.1:9/none.avi", reconnect_min_s=0.05, reconnect_max_s=0.1)
    src = make_source(cfg)
    src.open()  # not fatal: the camera may come up later
    assert not src.connected
    col = Collector(src)
    wait_for(lambda: src.reconnects >= 3, 10, what="reconnect attempts")
    col.close()
    assert col.frames == []
    with pytest.raises(FsacError, match="cannot open http"):
        make_source(cfg).check()


def test_gstreamer_without_support_is_a_clear_error():
    if "GStreamer:                   YES" in cv2.getBuildInformation().replace("\t", " "):
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(FsacError, match="no GStreamer support"):
        make_source(SourceConfig(uri="videotestsrc ! videoconvert ! appsink")).open()


def test_watch_scores_each_file_once_and_only_when_complete(tmp_path, bottle_images):
    drop = tmp_path / "drop"
    drop.mkdir()
    cfg = SourceConfig(kind="watch", uri=str(drop), settle_s=0.3, poll_s=0.05, give_up_s=2.0)
    src = WatchSource(cfg)
    src.open()
    col = Collector(src)
    full = bottle_images[0].read_bytes()
    # A: written in two parts with a pause longer than settle_s: the half file must not be read.
    with open(drop / "a.png", "wb") as f:
        f.write(full[: len(full) // 3])
        f.flush()
        time.sleep(0.8)
        assert col.frames == []
        f.write(full[len(full) // 3:])
    # B: written under a hidden temporary name, then renamed (what careful writers do).
    (drop / ".b.png.tmp").write_bytes(bottle_images[1].read_bytes())
    (drop / ".b.png.tmp").rename(drop / "b.png")
    # C: appears and is removed before it settles.
    (drop / "c.png").write_bytes(full)
    (drop / "c.png").unlink()
    # D: never becomes an image.
    (drop / "d.png").write_bytes(b"\x89PNG this is not an image")
    (drop / "notes.txt").write_text("ignored: not an image suffix")
    wait_for(lambda: len(col.frames) >= 3, 15, what="a, b and d")
    time.sleep(0.5)  # nothing else may arrive
    col.close()
    by_name = {f.name: f for f in col.frames}
    assert sorted(f.name for f in col.frames) == ["a.png", "b.png", "d.png"]
    assert by_name["a.png"].kind == RGB
    np.testing.assert_array_equal(by_name["a.png"].data, load_image(bottle_images[0]))
    np.testing.assert_array_equal(by_name["b.png"].data, load_image(bottle_images[1]))
    assert by_name["d.png"].error and "d.png" in by_name["d.png"].error
    assert [f.frame_id for f in col.frames] == [0, 1, 2]


def test_watch_skip_existing_and_missing_folder(tmp_path, bottle_images):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "old.png").write_bytes(bottle_images[0].read_bytes())
    src = WatchSource(SourceConfig(kind="watch", uri=str(drop), settle_s=0.1, poll_s=0.05, existing="skip"))
    src.open()
    col = Collector(src)
    time.sleep(0.3)
    (drop / "new.png").write_bytes(bottle_images[1].read_bytes())
    wait_for(lambda: col.frames, 10, what="new.png")
    time.sleep(0.3)
    col.close()
    assert [f.name for f in col.frames] == ["new.png"]
    with pytest.raises(FsacError, match="folder not found"):
        WatchSource(SourceConfig(kind="watch", uri=str(tmp_path / "nope"))).open()


def test_watch_folder_gone_for_a_moment_is_not_scored_again(tmp_path, bottle_images, caplog):
    """A network share that cannot be listed for a while is not a folder emptied: the files
    scored before the outage are not scored again when it comes back."""
    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(2):
        (drop / f"p{i}.png").write_bytes(bottle_images[i].read_bytes())
    src = WatchSource(SourceConfig(kind="watch", uri=str(drop), settle_s=0.05, poll_s=0.02))
    src.open()
    col = Collector(src)
    wait_for(lambda: len(col.frames) == 2, 10, what="p0 and p1")
    with caplog.at_level(logging.INFO, logger="fsac.runtime"):
        drop.rename(tmp_path / "away")  # the share is gone: every scan fails
        time.sleep(0.3)
        (tmp_path / "away").rename(drop)
        (drop / "p2.png").write_bytes(bottle_images[2].read_bytes())
        wait_for(lambda: len(col.frames) >= 3, 10, what="p2")
        time.sleep(0.3)
    col.close()
    assert [f.name for f in col.frames] == ["p0.png", "p1.png", "p2.png"]
    warned = [r for r in caplog.records if "cannot list watch folder" in r.getMessage()]
    assert len(warned) == 1  # once per outage, not once per scan
    assert any("can be listed again" in r.getMessage() for r in caplog.records)


def test_watch_a_slow_scan_is_spaced_out_and_said_once(tmp_path, bottle_images, caplog):
    """A folder that keeps every file grows by one per part; its scan must not take a core.
    The time spent reading new files is work, not scan cost: a burst does not delay the next scan."""
    drop = tmp_path / "drop"
    drop.mkdir()
    src = WatchSource(SourceConfig(kind="watch", uri=str(drop), settle_s=0.0, poll_s=0.01))
    src.open()
    real_scan, real_read, scans = src._scan, src._try_read, []

    def slow_scan():
        scans.append(time.monotonic())
        time.sleep(0.03)  # what listing some 30000 files costs
        return real_scan()

    src._scan = slow_scan
    with caplog.at_level(logging.WARNING, logger="fsac.runtime"):
        col = Collector(src)
        time.sleep(1.5)
    gaps = np.diff(scans)
    assert 3 <= len(scans) <= 8, scans  # every poll_s = 0.01 s it would have been about 37
    assert all(g >= 0.25 for g in gaps), gaps  # 0.03 s of scanning, then at least 0.27 s of rest
    said = [r.getMessage() for r in caplog.records if "one scan of" in r.getMessage()]
    assert len(said) == 1 and "(0 files) takes 3" in said[0] and "processed: move" in said[0]
    col.close()

    # A burst of slow-to-read files (0.1 s each), then one more file: it is found at the next
    # ordinary poll, not after 9 x the burst's read time.
    src2 = WatchSource(SourceConfig(kind="watch", uri=str(drop), settle_s=0.0, poll_s=0.05))
    src2.open()
    src2._try_read = lambda *a: (time.sleep(0.1), real_read.__func__(src2, *a))[1]
    for i in range(8):
        (drop / f"b{i}.png").write_bytes(bottle_images[i % 6].read_bytes())
    col = Collector(src2)
    wait_for(lambda: len(col.frames) == 8, 10, what="the burst")
    (drop / "late.png").write_bytes(bottle_images[0].read_bytes())
    t = time.monotonic()
    wait_for(lambda: len(col.frames) == 9, 10, what="late.png")
    assert time.monotonic() - t < 2.0  # with the burst counted as scanning: about 0.8 s x 9 = 7 s
    col.close()


def test_frames_path_keeps_file_for_move(tmp_path, image_folder):
    src = FolderSource(SourceConfig(kind="folder", uri=str(image_folder)))
    src.open()
    frame = next(iter(src.frames(threading.Event())))
    assert isinstance(frame.path, Path) and frame.path.name == "img_000.png"


def test_a_file_name_that_is_not_utf8_is_scored_not_fatal(tmp_path, bottle_images, model_file):
    import os

    from fsac.runtime.daemon import Daemon
    from fsac_run_helpers import read_jsonl
    from test_daemon import config

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(bottle_images[0].read_bytes())
    # A producer writing Latin-1 names: os.listdir decodes b"\xff" to the lone surrogate
    # "\udcff", which UTF-8 cannot encode (the record was never journaled; exit status 1).
    with open(os.path.join(os.fsencode(folder), b"b\xff.png"), "wb") as f:
        f.write(bottle_images[1].read_bytes())
    out = tmp_path / "r.jsonl"
    assert Daemon(config(model_file, str(folder), out), install_signals=False).run() == 0
    records = read_jsonl(out)
    assert [r["name"] for r in records] == ["a.png", "b\udcff.png"]  # the JSON escape round-trips
    assert all(r["verdict"] in ("good", "defective") for r in records)


def test_a_file_too_big_to_be_an_image_is_an_error_without_being_read(tmp_path, bottle_images):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.png").write_bytes(bottle_images[0].read_bytes())
    with open(drop / "huge.png", "wb") as f:  # sparse: 64 MB on paper, nothing on disk
        f.truncate(64 << 20)
    # 4 MP at most: no image file can exceed 8 bytes a pixel + 1 MiB = 33 MiB. Without the size
    # check the whole file was read into memory (a stray 20 GB "x.png" took the box down).
    cfg = SourceConfig(kind="watch", uri=str(drop), settle_s=0.05, poll_s=0.05, give_up_s=0.0,
                       max_frame_pixels=4_000_000)
    col = Collector(WatchSource(cfg))
    col.source.open()
    wait_for(lambda: len(col.frames) >= 2, 15, what="a and huge")
    col.close()
    by_name = {f.name: f for f in col.frames}
    assert by_name["a.png"].kind == RGB and by_name["a.png"].error is None
    huge = by_name["huge.png"]
    assert huge.data is None and "67108864 bytes, more than an image of source.max_frame_pixels" in huge.error
    folder = FolderSource(SourceConfig(kind="folder", uri=str(drop), max_frame_pixels=4_000_000))
    folder.open()
    frames = {f.name: f for f in folder.frames(threading.Event())}
    assert frames["huge.png"].data is None and "not read" in frames["huge.png"].error
    assert frames["a.png"].data == bottle_images[0].read_bytes()
