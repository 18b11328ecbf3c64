"""source.kind: camera / rtsp / http / gstreamer: a live OpenCV capture that never ends on
its own (reopened with backoff)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Iterator

from fsac.errors import FsacError

from ..config import SourceConfig
from .base import RAW, Frame, Source, import_cv2

log = logging.getLogger("fsac.runtime")


class StreamSource(Source):
    """Camera index or /dev/videoN, RTSP/HTTP URL, or GStreamer pipeline; reconnects forever."""

    def __init__(self, cfg: SourceConfig, kind: str) -> None:
        super().__init__(cfg)
        self.kind = kind
        self._cap = None
        self.opened_once = False

    def _open_capture(self):
        cv2 = import_cv2()
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
            cv2 = import_cv2()
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
