"""Looking at what the model trains against: the synthetic anomalies of `fsac.train.synth`
outlined, laid out on a contact sheet, and written as PNG files (`fsac synth`, `fsac train
--write-synth`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fsac.errors import FsacError
from fsac.io import atomic_write_bytes
from fsac.train.synth import SynthSample


_SHEET_GAP = 4
_SHEET_LABEL = 14
_SHEET_BG = (48, 48, 48)
_OUTLINE_RGB = (255, 0, 0)


def outline(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = _OUTLINE_RGB) -> np.ndarray:
    """Copy of image (RGB) with the mask's outline drawn 1 px *outside* the mask, so the
    anomaly's own pixels stay visible."""
    out = image.copy()
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, 1)
    return out


def contact_sheet(images: Sequence[np.ndarray], samples: Sequence[Sequence[SynthSample]],
                  names: Sequence[str] | None = None) -> np.ndarray:
    """One row per normal image: the normal image, then its synthetic images with the mask
    outlined in red; a label strip above each tile. Returns (H', W', 3) uint8 RGB."""
    _check_rows(images, samples, names)
    cell_h = max(max(im.shape[0] for im in images), max((s.image.shape[0] for r in samples for s in r), default=0))
    cell_w = max(max(im.shape[1] for im in images), max((s.image.shape[1] for r in samples for s in r), default=0))
    cols = 1 + max(len(r) for r in samples)
    rows = len(images)
    g, lab = _SHEET_GAP, _SHEET_LABEL
    sheet = np.empty((g + rows * (lab + cell_h + g), g + cols * (cell_w + g), 3), dtype=np.uint8)
    sheet[:] = _SHEET_BG
    for i, (image, row) in enumerate(zip(images, samples)):
        tiles = [(image, (names[i] if names else f"{i}") + " normal")]
        tiles += [(outline(s.image, s.mask), f"{j} {s.kind}" + (f"<{s.source_index}" if s.source_index is not None else ""))
                  for j, s in enumerate(row)]
        y0 = g + i * (lab + cell_h + g)
        for c, (tile, text) in enumerate(tiles):
            x0 = g + c * (cell_w + g)
            sheet[y0 + lab : y0 + lab + tile.shape[0], x0 : x0 + tile.shape[1]] = tile
            cv2.putText(sheet, text[:40], (x0 + 1, y0 + lab - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (235, 235, 235), 1,
                        cv2.LINE_AA)
    return sheet


def _check_rows(images, samples, names) -> None:
    if len(images) != len(samples) or not images:
        raise FsacError(f"synth: {len(images)} normal images but {len(samples)} rows of samples")
    if names is not None and len(names) != len(images):
        raise FsacError(f"synth: {len(names)} names for {len(images)} normal images")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")[:80] or "image"


def _write_png(path: Path, rgb_or_gray: np.ndarray) -> Path:
    img = rgb_or_gray
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # cv2 encodes BGR
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise FsacError(f"cannot encode PNG for {path}")
    return atomic_write_bytes(path, buf.tobytes())


# The names `write_synth_images` writes; nothing else in a folder is ever removed.
_SYNTH_FILE = re.compile(r"^\d{3,}(_[A-Za-z0-9._-]*)?_synth\d{2,}_[a-z]+\.png$|^contact_sheet\.png$")


def remove_synth_images(out_dir: str | Path, keep: Sequence[Path] = ()) -> list[Path]:
    """Delete earlier `write_synth_images` files in out_dir, except `keep`. A second run with
    fewer images or anomalies per image used to leave the first run's extra files beside
    the new ones, looking like part of this run. -> the paths removed."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    kept = {Path(p).name for p in keep}
    stale = [p for p in sorted(out_dir.iterdir())
             if p.is_file() and _SYNTH_FILE.match(p.name) and p.name not in kept]
    for p in stale:
        p.unlink()
    return stale


def write_synth_images(images: Sequence[np.ndarray], samples: Sequence[Sequence[SynthSample]],
                       out_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Write every synthetic image and its mask as PNG, plus a contact sheet.

    images: the normal images given to `generate`; samples: its result; names: optional
    per normal image (e.g. file stems), made file-name safe and prefixed with the index.
    Files in out_dir (created): <i>[_<name>]_synth<j>_<kind>.png (RGB),
    <i>[_<name>]_synth<j>_mask.png (0/255 grey), contact_sheet.png. Written atomically.
    Earlier such files not written this time are removed. Returns the paths, contact sheet last.
    """
    _check_rows(images, samples, names)
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for i, row in enumerate(samples):
        stem = f"{i:03d}" if names is None else f"{i:03d}_{_safe_name(names[i])}"
        for j, s in enumerate(row):
            paths.append(_write_png(out_dir / f"{stem}_synth{j:02d}_{s.kind}.png", s.image))
            paths.append(_write_png(out_dir / f"{stem}_synth{j:02d}_mask.png", s.mask.astype(np.uint8) * 255))
    sheet_names = [_safe_name(n) for n in names] if names is not None else None
    paths.append(_write_png(out_dir / "contact_sheet.png", contact_sheet(images, samples, sheet_names)))
    remove_synth_images(out_dir, keep=paths)
    return paths
