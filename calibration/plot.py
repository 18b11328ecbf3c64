"""Picture of the calibration scores with the decision threshold (PNG, written atomically).

One panel: histograms of the normal (and, if given, anomalous) calibration scores on a
common bin grid, a vertical line at the threshold, and a title saying how the threshold
was chosen and what it achieves on these images.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from fsac.io import atomic_write_bytes


def render_scores_png(normal_scores, anomalous_scores=None, threshold: float | None = None,
                      title: str = "", subtitle: str = "") -> bytes:
    """-> PNG bytes. Scores are 1-D arrays (higher = more anomalous)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    neg = np.asarray(normal_scores, dtype=np.float64)
    pos = np.asarray(anomalous_scores if anomalous_scores is not None else [], dtype=np.float64)
    allv = np.r_[neg, pos]
    lo, hi = float(allv.min()), float(allv.max())
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:  # all scores equal: give the bins some width
        lo, hi = lo - 1e-6, hi + 1e-6
    bins = np.linspace(lo, hi, max(10, min(60, int(np.sqrt(allv.size)) * 3)))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    try:
        ax.hist(neg, bins=bins, alpha=0.6, color="tab:green", label=f"normal (n={neg.size})")
        if pos.size:
            ax.hist(pos, bins=bins, alpha=0.6, color="tab:red", label=f"anomalous (n={pos.size})")
        if threshold is not None:
            if math.isfinite(threshold):
                ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.6g}")
            else:
                ax.text(0.98, 0.95, "threshold = +inf (unattainable)", transform=ax.transAxes,
                        ha="right", va="top", color="k")
        ax.set_xlabel("anomaly logit z (logit >= threshold => defective)")
        ax.set_ylabel("images")
        ax.set_title(title + (("\n" + subtitle) if subtitle else ""), fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_scores_png(path: str | os.PathLike, normal_scores, anomalous_scores=None, threshold: float | None = None,
                     title: str = "", subtitle: str = "") -> Path:
    return atomic_write_bytes(path, render_scores_png(normal_scores, anomalous_scores, threshold, title, subtitle))
