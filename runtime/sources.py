"""Where frames come from: a folder, a watched drop folder, a video file, a live stream.

Every source yields `Frame`s with increasing `frame_id`s starting at 0. A source never
raises for a bad frame: a file that cannot be read or decoded becomes a Frame with `error`
set, which the daemon reports as an error record and moves past. Sources raise FsacError
only for configuration problems found at `open()` (a folder that does not exist, an OpenCV
without GStreamer for a GStreamer pipeline).

Decoding and resizing happen in the daemon's worker threads, not here: a source hands over
encoded bytes (files) or the raw camera array, so reading the next frame overlaps with the
work on the previous ones. The watch source is the exception: it must decode a file to know
the file is complete, and passes the decoded pixels on so they are not decoded twice.

Live streams (camera, RTSP/HTTP, GStreamer) never end on their own: a failed read releases
the capture and reopens it with exponential backoff (counted in `reconnects`). Files end:
the last frame of a folder or video is followed by a clean exit.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


from fsac.errors import FsacError, ImageDecodeError
from fsac.preprocess import IMAGE_SUFFIXES, decode_image_bytes, list_images

from .config import SourceConfig

log = logging.getLogger("fsac.runtime")

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mjpg", ".mjpeg", ".ts", ".mpg", ".mpeg",
                  ".h264", ".h265", ".wmv", ".flv")
STREAM_KINDS = ("camera", "rtsp", "http", "gstreamer", "gige")  # live: never end

# Frame payload kinds: encoded file bytes, a decoded (H, W, 3) RGB array, or a raw video
# frame in the source's channel order (OpenCV: BGR).
ENCODED, RGB, RAW = "encoded", "rgb", "raw"


@dataclass
class Frame:
    frame_id: int
    source: str
    data: Any  # bytes | np.ndarray | None
    t_captured: float  # wall clock (time.time()) when the frame was read
    name: str | None = None
    error: str | None = None
    kind: str = ENCODED
    path: Path | None = None  # the file, for sources that move processed files
    t_mono: float = field(default_factory=time.monotonic)  # for latency; immune to clock steps


def check_frame_pixels(data: Any, where: str, max_pixels: int | None) -> str | None:
    """The error text for an encoded frame whose header says it is larger than `max_pixels`
    (source.max_frame_pixels), else None. Reads the header only: the point is to refuse a
    12000x12000 frame before its 430 MB of pixels are decoded."""
    if not max_pixels or not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:
        return f"frame {where} is too large to decode ({e}; source.max_frame_pixels={max_pixels})"
    except Exception:
        return None  # not an image header PIL knows: the decoder reports it
    if w * h > max_pixels:
        return (f"frame {where} is {w}x{h} ({w * h / 1e6:.1f} MP), above source.max_frame_pixels={max_pixels}; "
                "refused before decoding")
    return None


def redact(uri: str) -> str:
    """rtsp://user:secret@cam/stream -> rtsp://user:***@cam/stream (for records and logs)."""
    return re.sub(r"(//[^/@:\s]+):[^/@\s]*@", r"\1:***@", uri)


def resolve_kind(cfg: SourceConfig) -> str:
    """The source kind for `auto`, decided from the uri."""
    uri = cfg.uri.strip()
    if cfg.kind != "auto":
        return cfg.kind
    if uri.isdigit() or re.fullmatch(r"/dev/video\d+", uri):
        return "camera"
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    if scheme:
        s = scheme.group(1).lower()
        if s in ("http", "https"):
            return "http"
        if s == "file":
            raise FsacError(f"source.uri: write a file path instead of a file:// URL ({uri})")
        return "rtsp"  # rtsp, rtsps, rtmp, udp, tcp, srt: all opened by OpenCV's FFmpeg backend
    if "!" in uri:
        return "gstreamer"
    path = Path(uri)
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise FsacError(f"source.uri: {uri} is a single image; point source.uri at its folder")
        return "video"
    raise FsacError(f"source.uri: {uri} does not exist (expected a folder, a video file, a camera index or "
                    "/dev/videoN, an rtsp:// or http:// URL, or a GStreamer pipeline)")


def make_source(cfg: SourceConfig) -> "Source":
    kind = resolve_kind(cfg)
    if kind == "folder":
        return FolderSource(cfg)
    if kind == "watch":
        return WatchSource(cfg)
    if kind == "video":
        return VideoSource(cfg)
    if kind == "gige":
        from .sources_gige import GigeSource  # Aravis is imported only for this kind

        return GigeSource(cfg)
    return StreamSource(cfg, kind)


class Source:
    """Base: counters, the connected flag for /readyz, and default no-op hooks."""

    kind = "?"

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.label = redact(cfg.uri)
        self.connected = False
        self.reconnects = 0
        self._next_id = 0
        self._lock = threading.Lock()

    def _frame(self, data: Any, name: str | None, kind: str, error: str | None = None,
               path: Path | None = None) -> Frame:
        frame = Frame(frame_id=self._next_id, source=self.label, data=data, t_captured=time.time(), name=name,
                      error=error, kind=kind, path=path)
        self._next_id += 1
        return frame

    def open(self) -> None:
        """Check the configuration and get ready; raise FsacError for what cannot work."""

    def check(self) -> str:
        """For `fsac-run --check`: open and describe the source (may read one frame)."""
        self.open()
        return f"{self.kind} {self.label}"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        raise NotImplementedError

    def on_result(self, frame: Frame, record: dict[str, Any]) -> None:
        """Called after every sink accepted the frame's record."""

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- folder


def _require_folder(path: Path, setting: str = "source.uri") -> None:
    if not path.exists():
        raise FsacError(f"{setting}: folder not found: {path}")
    if not path.is_dir():
        raise FsacError(f"{setting}: not a folder: {path}")


class FolderSource(Source):
    """Every image file directly in the folder, sorted by name, once; then the end."""

    kind = "folder"

    def open(self) -> None:
        self.files = list_images(self.cfg.uri)
        if not self.files:
            log.warning("source folder %s has no image files (%s)", self.cfg.uri, ", ".join(IMAGE_SUFFIXES))
        self.connected = True

    def check(self) -> str:
        self.open()
        return f"folder {self.label} ({len(self.files)} image files)"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for path in self.files:
            if stop.is_set():
                return
            try:
                data = path.read_bytes()
            except OSError as e:
                yield self._frame(None, path.name, ENCODED, error=f"cannot read image {path}: {e.strerror or e}")
                continue
            yield self._frame(data, path.name, ENCODED, path=path)
        self.connected = False


# --------------------------------------------------------------------------- watch


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    first_seen: float
    stable_since: float


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
    size or mtime changes.
    """

    kind = "watch"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__(cfg)
        self.folder = Path(cfg.uri)
        self.done_dir = Path(cfg.done_dir) if cfg.done_dir else self.folder / "done"
        self.claim_dir = self.folder / ".fsac-processing"
        self.claim = cfg.processed == "move"
        self.replaced = 0  # files replaced between read and claim (read again)

    def open(self, create: bool = True) -> None:
        _require_folder(self.folder)
        if not os.access(self.folder, os.R_OK | os.X_OK):
            raise FsacError(f"source.uri: cannot read folder {self.folder} (permissions)")
        if self.cfg.processed == "move":
            if self.done_dir.is_dir() or not create:
                existing = self.done_dir
                while not existing.exists() and existing != existing.parent:
                    existing = existing.parent
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
        return f"watch {self.label} (settle {self.cfg.settle_s:g}s{extra})"

    def _scan(self) -> dict[str, os.stat_result]:
        found = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as e:
            log.warning("cannot list watch folder %s: %s", self.folder, e)
            return found
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
            done = {(n, st.st_ino, st.st_size, st.st_mtime_ns) for n, st in self._scan().items()}
        if self.claim:  # claimed by a run that died before their records were durable
            for path in sorted(self.claim_dir.iterdir()) if self.claim_dir.is_dir() else []:
                if stop.is_set():
                    return
                log.warning("watch: %s was claimed by an earlier run and not finished; scoring it again", path.name)
                yield self._read_claimed(path)
        while not stop.is_set():
            now = time.monotonic()
            found = self._scan()
            # Forget what left the folder: moved, deleted, or renamed away.
            pending = {n: c for n, c in pending.items() if n in found}
            done = {key for key in done if key[0] in found}
            # Oldest first: the order in which the line produced them.
            for name in sorted(found, key=lambda n: (found[n].st_mtime_ns, n)):
                if stop.is_set():
                    break
                st = found[name]
                key = (name, st.st_ino, st.st_size, st.st_mtime_ns)
                if key in done:
                    continue
                cand = pending.get(name)
                if cand is None or (cand.size, cand.mtime_ns) != (st.st_size, st.st_mtime_ns):
                    pending[name] = _Candidate(st.st_size, st.st_mtime_ns, cand.first_seen if cand else now, now)
                    continue
                if now - cand.stable_since < settle:
                    continue
                frame = self._try_read(name, cand, now, give_up)
                if frame is None:
                    continue
                pending.pop(name, None)
                done.add(key)
                if self.claim:
                    frame = self._claim(frame, st)
                    if frame is None:
                        continue
                yield frame
            stop.wait(self.cfg.poll_s)

    def _try_read(self, name: str, cand: _Candidate, now: float, give_up: float) -> Frame | None:
        path = self.folder / name
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
            data = path.read_bytes()
        except OSError as e:
            return self._frame(None, name, ENCODED, error=f"cannot read image {path}: {e.strerror or e}", path=path)
        try:
            rgb = decode_image_bytes(data, str(path))
        except ImageDecodeError as e:
            return self._frame(data, name, ENCODED, error=str(e), path=path)
        return self._frame(rgb, name, RGB, path=path)

    def on_result(self, frame: Frame, record: dict[str, Any]) -> None:
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


# --------------------------------------------------------------------------- OpenCV sources


def _cv2():
    try:
        import cv2
    except ImportError:
        raise FsacError("video, camera and stream sources need OpenCV (pip install opencv-python-headless; "
                        "JetPack ships a GStreamer-enabled build)") from None
    return cv2


class VideoSource(Source):
    """A video file, frame by frame; the end of the file ends the run."""

    kind = "video"

    def open(self) -> None:
        path = Path(self.cfg.uri)
        if not path.is_file():
            raise FsacError(f"source.uri: video file not found: {path}")
        cv2 = _cv2()
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise FsacError(f"source.uri: OpenCV cannot open video file {path} (unknown format or codec)")
        self.connected = True

    def check(self) -> str:
        self.open()
        cv2 = _cv2()
        ok, frame = self.cap.read()
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.cap.release()
        if not ok or frame is None:
            raise FsacError(f"source.uri: OpenCV opened {self.cfg.uri} but cannot decode a frame from it")
        return f"video {self.label} ({n} frames of {frame.shape[1]}x{frame.shape[0]})"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        stem = Path(self.cfg.uri).name
        index = 0
        try:
            while not stop.is_set():
                ok, image = self.cap.read()
                if not ok or image is None:
                    return  # end of file
                yield self._frame(image, f"{stem}#{index}", RAW)
                index += 1
        finally:
            self.cap.release()
            self.connected = False


class StreamSource(Source):
    """Camera index or /dev/videoN, RTSP/HTTP URL, or GStreamer pipeline; reconnects forever."""

    def __init__(self, cfg: SourceConfig, kind: str) -> None:
        super().__init__(cfg)
        self.kind = kind
        self._cap = None
        self.opened_once = False

    def _open_capture(self):
        cv2 = _cv2()
        uri = self.cfg.uri.strip()
        params: list[int] = []
        timeout_ms = int(self.cfg.read_timeout_s * 1000)
        if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        if self.kind == "camera":
            m = re.fullmatch(r"(?:/dev/video)?(\d+)", uri)
            if not m:
                raise FsacError(f"source.uri: {uri!r} is not a camera index or /dev/videoN")
            cap = cv2.VideoCapture(int(m.group(1)), cv2.CAP_ANY)
        elif self.kind == "gstreamer":
            cap = cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params) if params else cv2.VideoCapture(uri, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            return None
        if self.cfg.mode == "latest-frame":
            # Drivers keep a few frames of their own; in latest-frame mode those are stale too.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    def open(self) -> None:
        if self.kind == "gstreamer":
            cv2 = _cv2()
            info = cv2.getBuildInformation()
            if not re.search(r"GStreamer:\s+YES", info):
                raise FsacError("source.kind=gstreamer: this OpenCV build has no GStreamer support (pip's "
                                "opencv-python does not; on the Jetson use JetPack's OpenCV, see Dockerfile.jetson)")
            if "appsink" not in self.cfg.uri:
                raise FsacError("source.uri: a GStreamer pipeline for OpenCV must end in appsink, e.g. "
                                "'nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080 ! nvvidconv "
                                "! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1'")
        # A camera that is not up yet when the box boots is not fatal: frames() keeps trying.
        self._cap = self._open_capture()
        self.connected = self._cap is not None
        if self._cap is None:
            log.warning("cannot open %s %s yet; retrying in the background", self.kind, self.label)

    def check(self) -> str:
        self.open()
        if self._cap is None:
            raise FsacError(f"source.uri: cannot open {self.kind} {self.label}")
        ok, frame = self._cap.read()
        self._cap.release()
        self._cap = None
        if not ok or frame is None:
            raise FsacError(f"source.uri: opened {self.kind} {self.label} but read no frame from it")
        return f"{self.kind} {self.label} (first frame {frame.shape[1]}x{frame.shape[0]})"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        backoff = self.cfg.reconnect_min_s
        cap = self._cap
        self._cap = None
        try:
            while not stop.is_set():
                if cap is None:
                    cap = self._open_capture()
                    if cap is None:
                        self.connected = False
                        self.reconnects += 1
                        log.warning("cannot open %s %s (attempt %d); next try in %.1fs", self.kind, self.label,
                                    self.reconnects, backoff)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                        continue
                    log.info("%s %s opened", self.kind, self.label)
                self.connected = True
                while not stop.is_set():
                    ok, image = cap.read()
                    if not ok or image is None:
                        break
                    backoff = self.cfg.reconnect_min_s  # healthy again: next loss starts small
                    yield self._frame(image, None, RAW)
                cap.release()
                cap = None
                self.connected = False
                if stop.is_set():
                    return
                self.reconnects += 1
                log.warning("lost %s %s; reconnect #%d in %.1fs", self.kind, self.label, self.reconnects, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
        finally:
            if cap is not None:
                cap.release()
            self.connected = False
