"""The operator-feedback folder layout, shared by its writer and its readers.

fsac-run writes the frames an operator marks on the live view (runtime/feedback.py);
`fsac calibrate --feedback DIR` and fsac-run's recalibration read the "False alarm" ones back
as good images. The layout is a contract between them, so it is defined here, in the core:

    <feedback_dir>/false_alarm/<stem>.png|.jpg|...   the frame
    <feedback_dir>/false_alarm/<stem>.json           {"label", "marked_at", "image", "record"}
    <feedback_dir>/confirmed_defect/...

A JSON file is written last, so only pairs whose JSON exists are complete.
"""

from __future__ import annotations

import json
from pathlib import Path

FALSE_ALARM, CONFIRMED_DEFECT = "false_alarm", "confirmed_defect"
LABELS = (FALSE_ALARM, CONFIRMED_DEFECT)


def _pairs(base: Path) -> list[Path]:
    """The frames of complete pairs in one label folder, oldest first. A JSON file that is not
    an object, or whose "image" is not a plain file name in this folder (no path: nothing
    outside it is ever read), does not make a pair."""
    out = []
    for meta in sorted(base.glob("*.json")) if base.is_dir() else []:
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        name = data.get("image") if isinstance(data, dict) else None
        if isinstance(name, str) and name and Path(name).name == name and (base / name).is_file():
            out.append(base / name)
    return out


def good_images(folder: str | Path) -> list[Path]:
    """The frames an operator marked "False alarm" (good parts the model flagged), oldest first:
    only those whose JSON exists (complete pairs)."""
    return _pairs(Path(folder) / FALSE_ALARM)


def counts(folder: str | Path) -> dict[str, int]:
    """Complete pairs per label."""
    return {label: len(_pairs(Path(folder) / label)) for label in LABELS}
