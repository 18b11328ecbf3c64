"""Warnings about what a preprocessing spec does to a set of images, read from the files'
headers before anything is decoded: squash distorting a far from square image, "shortest"
cropping a large part away, images much smaller than the model input. `fsac train`,
`fsac eval` and `fsac calibrate` print them once per kind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from fsac.preprocess import PreprocessSpec

# Past this aspect ratio squash stretches shapes visibly (a circle becomes a 2:1 ellipse).
SQUASH_MAX_ASPECT = 2.0
# "shortest" crops away 1 - 1/aspect of an image; warn once that exceeds a tenth.
CROP_WARN_FRACTION = 0.10
# An image whose shorter side is under half the model input is upscaled more than 2x.
SMALL_IMAGE_FACTOR = 0.5


def image_sizes(paths: Iterable[str | os.PathLike]) -> list[tuple[str, int, int]]:
    """(path, width, height) from each file's header (no decode); unreadable files are left
    out, since decoding reports them with the reason."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:
            continue
        out.append((str(p), int(w), int(h)))
    return out


def geometry_warnings(sizes: Sequence[tuple[str, int, int]], spec: PreprocessSpec) -> list[str]:
    """Warnings, one per kind, for images this spec treats badly: squash distorting a far
    from square image, shortest cropping a large part away, images much smaller than S."""
    out: list[str] = []
    if not sizes:
        return out
    aspect = [(max(w, h) / max(1, min(w, h)), p, w, h) for p, w, h in sizes]
    worst = max(aspect)
    if spec.resize_mode == "squash":
        bad = [a for a in aspect if a[0] > SQUASH_MAX_ASPECT]
        if bad:
            out.append(f"{len(bad)} of {len(sizes)} images are far from square (worst {worst[2]}x{worst[3]}, "
                       f"aspect {worst[0]:.1f}:1, {Path(worst[1]).name}): resize mode 'squash' distorts them by more "
                       f"than {SQUASH_MAX_ASPECT:g}x; use --resize-mode longest (pads instead)")
    elif spec.resize_mode == "shortest":
        bad = [a for a in aspect if 1 - 1 / a[0] > CROP_WARN_FRACTION]
        if bad:
            out.append(f"resize mode 'shortest' crops away up to {1 - 1 / worst[0]:.0%} of an image ({len(bad)} of "
                       f"{len(sizes)} images lose more than {CROP_WARN_FRACTION:.0%}; worst {Path(worst[1]).name}): "
                       "a defect at the border is not seen; use squash or longest")
    small = [(min(w, h), p) for p, w, h in sizes if min(w, h) < SMALL_IMAGE_FACTOR * spec.image_size]
    if small:
        side, name = min(small)
        out.append(f"{len(small)} of {len(sizes)} images are much smaller than the model input "
                   f"{spec.image_size}x{spec.image_size} (smallest side {side} px, {Path(name).name}): they are "
                   "upscaled and fine detail is invented, not seen")
    return out
