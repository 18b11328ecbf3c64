"""The compositional prompt ensemble (CPE) of WinCLIP, as data (METHOD.md, "Text").

7 normal states x 22 templates = 154 normal prompts; 4 anomalous states x 22 = 88.
"""

from __future__ import annotations

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

ANOMALOUS_STATES = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)

DEFAULT_OBJECT = "object"


def object_name_from_category(category: str | None) -> str:
    """'metal_nut' -> 'metal nut'; None or '' -> 'object' (METHOD.md: "object" if unknown)."""
    if not category:
        return DEFAULT_OBJECT
    return " ".join(category.replace("_", " ").replace("-", " ").split()) or DEFAULT_OBJECT


def build_prompts(object_name: str) -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts) for one object name, states x templates."""
    o = object_name.strip() or DEFAULT_OBJECT
    normal = [t.format(s.format(o)) for s in NORMAL_STATES for t in TEMPLATES]
    anomalous = [t.format(s.format(o)) for s in ANOMALOUS_STATES for t in TEMPLATES]
    return normal, anomalous
