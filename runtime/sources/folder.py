"""source.kind: folder: every image file directly in a folder, sorted by name, once."""

from __future__ import annotations

import logging
import threading
from typing import Iterator

from fsac.preprocess import IMAGE_SUFFIXES, list_images

from .base import ENCODED, Frame, Source, file_too_big

log = logging.getLogger("fsac.runtime")


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
                too_big = file_too_big(path.stat().st_size, str(path), self.cfg.max_frame_pixels)
                if too_big:
                    yield self._frame(None, path.name, ENCODED, error=too_big)
                    continue
                data = path.read_bytes()
            except OSError as e:
                yield self._frame(None, path.name, ENCODED, error=f"cannot read image {path}: {e.strerror or e}")
                continue
            yield self._frame(data, path.name, ENCODED, path=path)
        self.connected = False
