"""Settings of the saved-frames sink (`sinks.frames`): defaults and the pure validator.

Separate from the sink (frames.py), as mqtt_config.py is from the MQTT sink.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BeforeValidator, Field, model_validator
from typing_extensions import Annotated

from ..settings_base import OptionalSize, Settings, section_dict, setting_error

SECTION = "sinks.frames"


def _format(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("png", "jpeg", "jpg"):
        return "png" if value.lower() == "png" else "jpeg"
    return value


class FramesSettings(Settings):
    """sinks.frames: keep the images of defective (and a sample of normal) frames beside their records."""

    enabled: bool = Field(True, description="false: the section stays in the file but the sink is off")
    dir: str = Field("/var/lib/fsac/frames", min_length=1, description="folder of the saved frames")
    format: Annotated[Literal["png", "jpeg"], BeforeValidator(_format)] = Field(
        "png", description="png (lossless) or jpeg")
    jpeg_quality: int = Field(90, ge=1, le=100)
    png_compression: int = Field(3, ge=0, le=9, description="cv2 IMWRITE_PNG_COMPRESSION")
    save_defective: bool = True
    sample_normal: float = Field(0.0, ge=0.0, le=1.0, description="probability of keeping a non-defective frame")
    seed: int = 0
    save_errors: bool = Field(False, description="keep the bytes of frames that could not be decoded")
    max_files: Optional[int] = Field(10_000, ge=1, description="image+JSON pairs kept; null = no count bound")
    max_bytes: OptionalSize = Field(2 * 1024**3, ge=1, description="null = no size bound (one of the two must be set)")
    queue_size: int = Field(16, ge=1, le=1024, description="frames waiting to be written")
    path_settings = ("dir",)

    @model_validator(mode="after")
    def _bounded(self) -> "FramesSettings":
        if self.max_files is None and self.max_bytes is None:
            raise setting_error("max_files", "set max_files and/or max_bytes: the saved frames must not fill the disk")
        return self


FRAMES_DEFAULTS: dict[str, Any] = FramesSettings().model_dump(exclude={"enabled"})


def validate_frames_config(cfg: Any) -> dict[str, Any]:
    """Check the `sinks.frames` section and return it as a dict with defaults filled in (pure)."""
    return section_dict(FramesSettings, cfg, SECTION)
