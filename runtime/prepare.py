"""Frame -> model input, in the daemon's decode workers. Never raises: every problem with a
frame (undecodable, too large, wrong size) becomes `Prepared.error`, then an error record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fsac.errors import FsacError
from fsac.preprocess import PreprocessSpec, decode_resize_bytes, frame_to_rgb, resize_crop

from .sources import ENCODED, RGB, Frame, check_frame_pixels


@dataclass
class Prepared:
    x: np.ndarray | None  # (S, S, 3) uint8 model input
    rgb: np.ndarray | None  # decoded frame, kept only when a sink wants pixels
    spec: PreprocessSpec | None
    error: str | None = None


def prepare(frame: Frame, spec: PreprocessSpec, channel_order: str = "bgr",
            frame_size: Sequence[int] | None = None, keep_rgb: bool = False,
            max_pixels: int | None = None) -> Prepared:
    """Frame -> model input. Never raises: every problem becomes Prepared.error."""
    if frame.error is not None:
        return Prepared(None, None, None, frame.error)
    where = frame.name or f"{frame.source} frame {frame.frame_id}"
    try:
        if frame.kind == ENCODED:
            too_big = check_frame_pixels(frame.data, where, max_pixels)
            if too_big:  # refused from the header: a 12000x12000 frame is never decoded
                return Prepared(None, None, None, too_big)
            # Decoded and resized in one step (no round trip through an array): the same pixels.
            x, rgb, (w, h) = decode_resize_bytes(frame.data, where, spec, keep_rgb)
        else:
            rgb = frame.data if frame.kind == RGB else frame_to_rgb(frame.data, channel_order, where)
            h, w = rgb.shape[:2]
            x = None
        if frame_size is not None and (w, h) != (frame_size[0], frame_size[1]):
            return Prepared(None, None, None, f"frame {where} is {w}x{h}, expected {frame_size[0]}x{frame_size[1]} "
                            "(source.frame_size)")
        if x is None:
            x = resize_crop(rgb, spec)
        return Prepared(x, rgb if keep_rgb else None, spec)
    except FsacError as e:
        return Prepared(None, None, None, str(e))
    except MemoryError:
        return Prepared(None, None, None, f"frame {where} is too large to decode (out of memory)")
    except Exception as e:  # a decoder bug on one odd frame must not stop the line
        return Prepared(None, None, None, f"cannot process frame {where}: {type(e).__name__}: {e}")
