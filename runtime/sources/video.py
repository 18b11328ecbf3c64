"""source.kind: video: a video file, frame by frame (OpenCV)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator

from fsac.errors import FsacError

from .base import RAW, Frame, Source, import_cv2

log = logging.getLogger("fsac.runtime")


class VideoSource(Source):
    """A video file, frame by frame; the end of the file ends the run."""

    kind = "video"

    def open(self) -> None:
        path = Path(self.cfg.uri)
        if not path.is_file():
            raise FsacError(f"source.uri: video file not found: {path}")
        cv2 = import_cv2()
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise FsacError(f"source.uri: OpenCV cannot open video file {path} (unknown format or codec)")
        self.connected = True

    def check(self) -> str:
        self.open()
        cv2 = import_cv2()
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
