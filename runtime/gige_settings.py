"""The `source.gige` settings of a GigE Vision / GenICam camera (source.kind: gige).

A pydantic model, so that the section is checked at start like every other setting (the
daemon's own config is plain dataclasses today; this section is opaque to it and validated
here, as the sinks validate theirs). Every problem becomes one line naming the setting:
"source.gige.exposur: unknown setting (did you mean exposure_us?)".
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, List, Literal, Optional, Union

from fsac.errors import FsacError
from fsac.preprocess import CAMERA_PIXEL_FORMATS

try:
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
except ImportError:  # pragma: no cover - pydantic comes with fsac[gige]
    BaseModel = None  # type: ignore[assignment,misc]

ACQUISITION_MODES = ("free-run", "software", "hardware")

if BaseModel is not None:

    class GigeSettings(BaseModel):
        """What fsac-run sets on the camera when it connects (and again after every reconnect)."""

        model_config = ConfigDict(extra="forbid")

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


def _one_line(error: Any) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    where = f"source.gige.{loc}" if loc else "source.gige"
    if error["type"] == "extra_forbidden":
        known = list(GigeSettings.model_fields)
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
        return f"{where}: unknown setting{hint}"
    value = repr(error.get("input"))
    value = value if len(value) <= 60 else value[:57] + "..."
    return f"{where}: {error['msg']}; got {value}"


def validate_gige_settings(data: Optional[Dict[str, Any]]) -> "GigeSettings":
    """source.gige -> GigeSettings; FsacError with one line per the first problem found."""
    if BaseModel is None:
        raise FsacError("source.kind=gige needs pydantic >= 2 (pip install 'fsac[gige]')")
    if data is not None and not isinstance(data, dict):
        raise FsacError(f"source.gige: expected a table of settings, got {data!r:.60}")
    try:
        return GigeSettings.model_validate(data or {})
    except ValidationError as e:
        errors = e.errors()
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise FsacError(_one_line(errors[0]) + more) from None


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
