"""Image statistics for input health (torch-free, numpy only).

`fsac calibrate` stores them in the model file (`fsac.image_stats`) from its normal images and
fsac-run compares every frame with them (runtime/health.py). Both sides must compute the very
same numbers on the very same input, so the definition lives here, in the core, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STATS = ("brightness", "contrast", "sharpness")


def image_stats(x: np.ndarray) -> dict[str, float]:
    """Brightness, contrast and Laplacian variance of an (S, S, 3) uint8 model input."""
    g = x.astype(np.float32).mean(axis=2)
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1]) - 4.0 * g[1:-1, 1:-1]
    # Sharpness is the Laplacian's variance relative to the gray-level variance: a darker
    # (lower-contrast) picture of the same sharp scene must not read as "focus lost".
    return {"brightness": float(g.mean()), "contrast": float(g.std()),
            "sharpness": float(lap.var() / (g.var() + 1.0))}


def reference_stats(inputs: list[np.ndarray], false_alarm_rate: float | None) -> dict[str, Any]:
    """What `fsac calibrate` stores: per statistic mean and std over the calibration inputs."""
    rows = [image_stats(x) for x in inputs]
    out: dict[str, Any] = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
                           for k in STATS}
    out["n"] = len(rows)
    out["false_alarm_rate"] = false_alarm_rate
    return out
