"""Where frames come from: the source registry (a folder, a watched drop folder, a video
file, a live OpenCV stream, a GigE Vision camera).

A source is one module here plus one entry in `SOURCES`; `base.py` has what they share.

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

import importlib
import re
from pathlib import Path

from fsac.errors import FsacError
from fsac.preprocess import IMAGE_SUFFIXES

from ..config import SourceConfig
from .base import (ENCODED, RAW, RGB, STREAM_KINDS, VIDEO_SUFFIXES, Frame, Source, check_frame_pixels,  # noqa: F401
                   redact)

# source.kind -> (module in this package, class). Imported when a source of that kind is
# made, so OpenCV and Aravis load only for the kinds that need them. A class whose kind is
# one of several (StreamSource) takes the kind as its second argument.
SOURCES: dict[str, tuple[str, str]] = {
    "folder": ("folder", "FolderSource"),
    "watch": ("watch", "WatchSource"),
    "video": ("video", "VideoSource"),
    "camera": ("stream", "StreamSource"),
    "rtsp": ("stream", "StreamSource"),
    "http": ("stream", "StreamSource"),
    "gstreamer": ("stream", "StreamSource"),
    "gige": ("gige", "GigeSource"),
}
_SHARED_CLASSES = {"StreamSource"}


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


def source_class(kind: str) -> type[Source]:
    """The Source class of a resolved source.kind (its module imported now)."""
    module, name = SOURCES[kind]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def make_source(cfg: SourceConfig) -> Source:
    kind = resolve_kind(cfg)
    cls = source_class(kind)
    return cls(cfg, kind) if cls.__name__ in _SHARED_CLASSES else cls(cfg)
