"""Input health: cheap per-frame image statistics against those of the calibration images.

`fsac calibrate` stores, in the model file (`fsac.image_stats`), the mean and spread of three
numbers over its normal images, each taken on the model's own input (the preprocessed
S x S image, so any source resolution compares): brightness (mean gray level), contrast (std
of gray levels) and sharpness (variance of the 4-neighbour Laplacian over that of the gray levels), plus the false-alarm
rate of the calibrated threshold. fsac-run compares every frame with them and names the
alarms on the frame's record (`health`, empty when all is well):

  lens_blocked      dark and flat (covered lens, dead lamp): brightness and contrast both low
  lighting_changed  brightness outside the calibrated band
  focus_lost        sharpness far below the calibrated images'
  reject_rate_high  defective verdicts over the last WINDOW frames far above the calibrated
                    false-alarm rate (with a floor, so a small rate does not alarm on noise),
                    each model's verdicts against its own rate: a re-calibrated model
                    activated, a SIGHUP reload of a new file or a recipe starts its own window

Bands are wide on purpose (K spreads, with absolute floors): an alarm means "the picture
itself went wrong", not "this part is unusual" (that is the model's job).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

# The statistics themselves are the core's (fsac/imagestats.py): `fsac calibrate` stores them
# from its normal images and this module compares each frame with them, the same numbers.
from fsac.imagestats import image_stats

K = 4.0  # spreads of the calibration images' statistic
WINDOW = 200
MAX_WINDOWS = 16  # models whose verdict windows are kept (recipes, re-calibrations); oldest dropped
ALARMS = ("lens_blocked", "lighting_changed", "focus_lost", "reject_rate_high")


def frame_alarms(s: dict[str, float], ref: dict[str, Any]) -> list[str]:
    b, c, sh = ref["brightness"], ref["contrast"], ref["sharpness"]
    alarms = []
    dark_flat = s["brightness"] < b["mean"] - max(K * b["std"], 40.0) and s["contrast"] < max(0.25 * c["mean"], 4.0)
    if dark_flat:
        alarms.append("lens_blocked")
    elif abs(s["brightness"] - b["mean"]) > max(K * b["std"], 25.0):
        alarms.append("lighting_changed")
    if not dark_flat and s["sharpness"] < min(sh["mean"] - K * sh["std"], 0.25 * sh["mean"]):
        alarms.append("focus_lost")
    return alarms


class HealthMonitor:
    def __init__(self) -> None:
        self._refs: dict[str, dict[str, Any] | None] = {}  # model sha256 -> parsed fsac.image_stats
        self._verdicts: dict[str, deque[bool]] = {}  # model sha256 -> its last WINDOW verdicts
        self._lock = threading.Lock()
        self.active: dict[str, int] = {a: 0 for a in ALARMS}  # 1 if the last frame raised it
        self.counts: dict[str, int] = {a: 0 for a in ALARMS}  # frames that raised it
        self.on_change: Any = None  # called (alarms, record) when the set of active alarms changes
        self._last: list[str] = []
        self._pixel_alarms: list[str] = []  # those of the last frame with pixels

    def _ref(self, model: Any) -> dict[str, Any] | None:
        if model.sha256 not in self._refs:
            text = model.info.metadata.get("fsac.image_stats") if hasattr(model.info, "metadata") else None
            try:
                self._refs[model.sha256] = json.loads(text) if text else None
            except (TypeError, ValueError):
                self._refs[model.sha256] = None
        return self._refs[model.sha256]

    def _window(self, sha256: str) -> deque[bool]:
        """This model's verdicts: another model's (the one a re-calibration replaced, say) are
        judged against that model's own false-alarm rate, not this one's."""
        window = self._verdicts.pop(sha256, None)
        if window is None:
            window = deque(maxlen=WINDOW)
            while len(self._verdicts) >= MAX_WINDOWS:
                self._verdicts.pop(next(iter(self._verdicts)))
        self._verdicts[sha256] = window  # most recently used last
        return window

    def current(self) -> list[str]:
        """The alarms in force (those of the last frame), for a record without a frame of its own."""
        with self._lock:
            return list(self._last)

    def annotate(self, records: list[dict[str, Any]], preps: list[Any], model: Any) -> None:
        ref = self._ref(model)
        with self._lock:
            for record, prep in zip(records, preps):
                seen = ref is not None and getattr(prep, "x", None) is not None
                if seen:
                    self._pixel_alarms = frame_alarms(image_stats(prep.x), ref)
                elif ref is None:
                    self._pixel_alarms = []  # a model without statistics raises none
                # A frame without pixels (an error record) says nothing about the lens or the
                # light: the alarms of the last frame that had pixels stay in force.
                alarms = list(self._pixel_alarms)
                verdicts = self._window(model.sha256)
                if record["verdict"] != "error":
                    verdicts.append(record["verdict"] == "defective")
                rate = ref.get("false_alarm_rate") if ref else None
                if rate is not None and len(verdicts) >= 50:
                    if sum(verdicts) / len(verdicts) > max(3.0 * rate, rate + 0.1):
                        alarms.append("reject_rate_high")
                record["health"] = alarms
                if alarms != self._last and self.on_change is not None:
                    try:
                        self.on_change(alarms, record)
                    except Exception as e:  # a status event must not stop scoring; the record has it
                        import logging

                        logging.getLogger("fsac.runtime").warning("health status event failed: %s", e)
                self._last = alarms
                for a in ALARMS:
                    self.active[a] = int(a in alarms)
                    # Frames that raised it: a pixel alarm only by the frame's own pixels.
                    self.counts[a] += int(a in alarms and (seen or a == "reject_rate_high"))

    def metrics(self, e: Any) -> None:
        e.family("fsac_health_alarm", "gauge", "1 while the last frame raised the input-health alarm.")
        for a in ALARMS:
            e.sample("fsac_health_alarm", self.active[a], {"alarm": a})
        e.family("fsac_health_alarm_frames_total", "counter", "Frames that raised the input-health alarm.")
        for a in ALARMS:
            e.sample("fsac_health_alarm_frames_total", self.counts[a], {"alarm": a})
