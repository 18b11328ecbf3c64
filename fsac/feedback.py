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


def _marked(base: Path) -> list[tuple[Path, tuple | None]]:
    """(frame, (run_id, seq) of its record or None) of the complete pairs in one label folder,
    oldest first. A JSON file that is not an object, or whose "image" is not a plain file name
    in this folder (no path: nothing outside it is ever read), does not make a pair."""
    out = []
    for meta in sorted(base.glob("*.json")) if base.is_dir() else []:
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        name = data.get("image") if isinstance(data, dict) else None
        if isinstance(name, str) and name and Path(name).name == name and (base / name).is_file():
            record = data.get("record")
            key = (str(record.get("run_id")), str(record.get("seq"))) if isinstance(record, dict) \
                and record.get("run_id") and record.get("seq") is not None else None
            out.append((base / name, key))
    return out


def _pairs(base: Path) -> list[Path]:
    return [frame for frame, _ in _marked(base)]


def good_images(folder: str | Path) -> list[Path]:
    """The frames an operator marked "False alarm" (good parts the model flagged), oldest first:
    only those whose JSON exists (complete pairs), and none that was also marked "Confirmed
    defect" (the same record, run_id and seq): a frame the operator has called a defect even
    once must never calibrate the threshold as a normal image, which would let that defect pass."""
    defects = {key for _, key in _marked(Path(folder) / CONFIRMED_DEFECT) if key is not None}
    return [frame for frame, key in _marked(Path(folder) / FALSE_ALARM) if key is None or key not in defects]


def defect_images(folder: str | Path) -> list[Path]:
    """The frames an operator marked "Confirmed defect" (complete pairs), oldest first."""
    return _pairs(Path(folder) / CONFIRMED_DEFECT)


def counts(folder: str | Path) -> dict[str, int]:
    """Complete pairs per label."""
    return {label: len(_pairs(Path(folder) / label)) for label in LABELS}
