"""The `source.gige` settings of a GigE Vision / GenICam camera (source.kind: gige).

A section of the config tree (runtime/config_model.py: source.gige), checked at start like
every other setting; every problem becomes one line naming the setting:
"source.gige.exposur: unknown setting (did you mean exposure_us?)".
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from fsac.errors import FsacError
from fsac.pixel_formats import CAMERA_PIXEL_FORMATS

from pydantic import Field, field_validator

from .settings_base import Settings, check

ACQUISITION_MODES = ("free-run", "software", "hardware")

class GigeSettings(Settings):
    """What fsac-run sets on the camera when it connects (and again after every reconnect)."""

    pixel_format: Optional[Literal[CAMERA_PIXEL_FORMATS]] = Field(  # type: ignore[valid-type]
        None, description="camera pixel format; null: keep the camera's own (it must be one of these)")
    exposure_us: Optional[float] = Field(None, gt=0, description="exposure time in microseconds (auto "
                                         "exposure off); null: leave as the camera has it")
    gain_db: Optional[float] = Field(None, ge=0, description="analog gain in dB (auto gain off); null: leave")
    frame_rate: Optional[float] = Field(None, gt=0, description="free-run: frames per second; null: leave")
    region: Optional[List[int]] = Field(None, description="[x, y, width, height] of the sensor to read; "
                                        "null: leave")
    acquisition: Literal[ACQUISITION_MODES] = Field(  # type: ignore[valid-type]
        "free-run", description="free-run: the camera streams; software: one frame per software trigger, "
        "fired when fsac-run wants a frame (source.mode: trigger: one per inspection request); hardware: "
        "one frame per pulse on trigger_source")
    trigger_source: str = Field("Line0", min_length=1, description="hardware: the camera's input line")
    trigger_activation: Optional[str] = Field(None, description="hardware: RisingEdge, FallingEdge, ...; "
                                              "null: leave")
    timeout_s: float = Field(2.0, gt=0, le=3600, description="free-run: no frame for this long, or "
                             "software: no frame this long after a trigger, means the camera is lost "
                             "(reconnect); hardware trigger waits for pulses forever and relies on the "
                             "GigE Vision heartbeat instead")
    buffers: int = Field(4, ge=1, le=256, description="frame buffers queued in the stream")
    packet_size: Optional[int] = Field(None, ge=576, le=16384, description="GigE Vision packet size in "
                                       "bytes (jumbo frames: up to 9000); null: Aravis's default")
    packet_socket: Optional[bool] = Field(None, description="receive with Aravis's packet socket (needs "
                                          "CAP_NET_RAW, less CPU); null: on, except for a camera on loopback "
                                          "(the kernel delivers loopback traffic on lo, where that socket "
                                          "does not listen)")
    features: Dict[str, Union[bool, int, float, str]] = Field(
        default_factory=dict, description="more GenICam features to set, by name, e.g. {BalanceWhiteAuto: "
        "Continuous}; applied last")

    @field_validator("region")
    @classmethod
    def _region(cls, v: Optional[List[int]]) -> Optional[List[int]]:
        if v is not None and (len(v) != 4 or min(v[:2]) < 0 or min(v[2:]) < 1):
            raise ValueError("expected [x, y, width, height] with x, y >= 0 and width, height >= 1")
        return v


def validate_gige_settings(data: Any) -> GigeSettings:
    """source.gige -> GigeSettings; a FsacError naming the setting otherwise."""
    if isinstance(data, GigeSettings):
        return data
    return check(GigeSettings, data, "source.gige")


def check_gige_source(cfg: Any) -> None:
    """The checks config.validate() runs for a gige source (cfg: SourceConfig)."""
    if cfg.kind != "gige":
        if cfg.gige is not None:
            raise FsacError(f"source.gige: camera settings given, but source.kind is {cfg.kind} (set kind: gige)")
        return
    if not str(cfg.uri).strip():
        raise FsacError("source.uri: the camera id for source.kind=gige (its IP address, Aravis device id "
                        "such as Basler-21234567, or auto for the first camera found)")
    validate_gige_settings(cfg.gige)
