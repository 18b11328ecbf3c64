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


def good_images(folder: str | Path) -> list[Path]:
    """The frames an operator marked "False alarm" (good parts the model flagged), oldest first:
    only those whose JSON exists (complete pairs)."""
    out = []
    base = Path(folder) / FALSE_ALARM
    for meta in sorted(base.glob("*.json")) if base.is_dir() else []:
        try:
            name = json.loads(meta.read_text()).get("image")
        except (OSError, ValueError):
            continue
        if name and (base / name).is_file():
            out.append(base / name)
    return out


def counts(folder: str | Path) -> dict[str, int]:
    """Complete pairs per label."""
    return {label: len(list((Path(folder) / label).glob("*.json"))) if (Path(folder) / label).is_dir() else 0
            for label in LABELS}
