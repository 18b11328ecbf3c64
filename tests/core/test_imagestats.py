"""fsac.imagestats: the input-health statistics calibrate stores and fsac-run compares."""

from __future__ import annotations

import numpy as np
import pytest

from fsac.imagestats import STATS, image_stats, reference_stats


def _checker(size=64, cell=4, lo=40, hi=200) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    g = np.where(((yy // cell) + (xx // cell)) % 2 == 0, lo, hi).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def test_brightness_contrast_and_sharpness():
    sharp = _checker()
    s = image_stats(sharp)
    assert s["brightness"] == pytest.approx(120.0) and s["contrast"] == pytest.approx(80.0)
    blurred = sharp.astype(np.float32)
    for _ in range(4):  # box blur
        blurred = (blurred + np.roll(blurred, 1, 0) + np.roll(blurred, -1, 0) + np.roll(blurred, 1, 1)
                   + np.roll(blurred, -1, 1)) / 5
    assert image_stats(blurred.astype(np.uint8))["sharpness"] < 0.5 * s["sharpness"]
    # a darker, lower-contrast picture of the same sharp scene is not "less sharp"
    dim = image_stats(_checker(lo=20, hi=100))
    assert dim["brightness"] < s["brightness"] and dim["sharpness"] == pytest.approx(s["sharpness"], rel=0.05)


def test_reference_stats_mean_std_and_rate():
    ref = reference_stats([_checker(lo=40, hi=200), _checker(lo=60, hi=220)], 0.05)
    assert set(ref) == {*STATS, "n", "false_alarm_rate"} and ref["n"] == 2 and ref["false_alarm_rate"] == 0.05
    assert ref["brightness"]["mean"] == pytest.approx(130.0) and ref["brightness"]["std"] == pytest.approx(10.0)
