"""The operator's corrections: frames marked on the live view, with their records.

Layout (one folder per label, so `fsac calibrate --feedback DIR` and people can tell them apart):

    <feedback_dir>/false_alarm/<UTC time>_<run_id>-<seq>.png       the frame, lossless
    <feedback_dir>/false_alarm/<UTC time>_<run_id>-<seq>.json      {"label", "marked_at", "record"}
    <feedback_dir>/confirmed_defect/...

The image is the frame exactly as the model saw it before resizing (the decoded pixels,
PNG), or the file's own bytes for a frame that could not be decoded, so re-scoring it gives
the logit in its record. Files are written atomically (image first, JSON last: a JSON file
means its image is complete). Bounded like saved frames: at most `max_files` pairs per label,
the oldest deleted first; the folder is rescanned each time, so the bound holds across restarts.
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.io import atomic_write_bytes, atomic_write_text

# The layout and its readers are the core's (fsac/feedback.py): `fsac calibrate --feedback`
# reads what this module writes, so both take it from there.
from fsac.feedback import LABELS

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _raw_suffix(data: bytes) -> str:
    for magic, suffix in ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"BM", ".bmp"), (b"II*\x00", ".tif"),
                          (b"MM\x00*", ".tif")):
        if data.startswith(magic):
            return suffix
    return ".bin"


def save_feedback(folder: str | Path, label: str, record: dict[str, Any], pixels: Any, max_files: int) -> Path:
    """Write one marked frame and its record; returns the JSON file's path."""
    if label not in LABELS:
        raise FsacError(f"feedback label must be one of {', '.join(LABELS)}, got {label!r}")
    target = Path(folder) / label
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    stem = _SAFE.sub("_", f"{stamp}_{record.get('run_id', '')}-{record.get('seq', 0)}")[:120]
    if isinstance(pixels, np.ndarray):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=3)
        data, suffix = buf.getvalue(), ".png"
    elif isinstance(pixels, (bytes, bytearray)):
        data, suffix = bytes(pixels), _raw_suffix(pixels)
    else:
        raise FsacError("this frame's pixels are no longer in memory; mark a more recent frame")
    try:
        image = atomic_write_bytes(target / (stem + suffix), data)
        meta = {"label": label, "marked_at": stamp, "image": image.name, "record": record}
        out = atomic_write_text(target / (stem + ".json"), json.dumps(meta, indent=2) + "\n")
    except OSError as e:
        raise FsacError(f"live.feedback_dir: cannot write {target}: {e.strerror or e}") from None
    trim(target, max_files)
    return out


def trim(folder: Path, max_files: int) -> int:
    """Delete the oldest pairs beyond max_files (names sort oldest first); returns how many."""
    pairs = sorted(folder.glob("*.json"))
    removed = 0
    for old in pairs[: max(0, len(pairs) - max_files)]:
        for p in folder.glob(old.stem + ".*"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        removed += 1
    return removed
