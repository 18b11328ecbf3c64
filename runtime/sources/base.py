"""What every source shares: the Frame it yields, the Source base class, payload kinds and
the checks that run before a frame is decoded."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from fsac.errors import FsacError

from ..config import SourceConfig

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
    identity: tuple | None = None  # watch: (name, inode, size, mtime_ns) of the file read
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


def file_too_big(size: int, where: str, max_pixels: int | None) -> str | None:
    """The error text for an image file larger than any image of `max_pixels` can be (8 bytes
    a pixel: 16-bit RGBA, uncompressed, plus 1 MiB of metadata), else None. Checked from the
    file's size before it is read: a stray 20 GB file named *.png must not be read into memory."""
    if not max_pixels:
        return None
    limit = 8 * max_pixels + (1 << 20)
    if size <= limit:
        return None
    return (f"file {where} is {size} bytes, more than an image of source.max_frame_pixels={max_pixels} can take "
            f"({limit} bytes); not read")


def redact(uri: str) -> str:
    """rtsp://user:secret@cam/stream -> rtsp://user:***@cam/stream (for records and logs)."""
    return re.sub(r"(//[^/@:\s]+):[^/@\s]*@", r"\1:***@", uri)


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

    def use_state_dir(self, folder: str | Path) -> None:
        """The folder (journal.dir) where a source may keep what must outlive a run."""

    def on_result(self, frame: Frame, record: dict[str, Any]) -> None:
        """Called after every sink accepted the frame's record."""

    def close(self) -> None:
        pass


def require_folder(path: Path, setting: str = "source.uri") -> None:
    if not path.exists():
        raise FsacError(f"{setting}: folder not found: {path}")
    if not path.is_dir():
        raise FsacError(f"{setting}: not a folder: {path}")


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise FsacError("video, camera and stream sources need OpenCV (pip install opencv-python-headless; "
                        "JetPack ships a GStreamer-enabled build)") from None
    return cv2
