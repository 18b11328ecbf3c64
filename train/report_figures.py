"""Evaluation figures: ROC curves and anomaly-logit histograms of an `EvalReport`, as PNG.

matplotlib is imported inside the plotting functions only, and only through its
object-oriented API with the Agg canvas (no pyplot, so no global figure state and no GUI
backend is ever touched). A report made with random backbone weights carries
a "RANDOM BACKBONE WEIGHTS" line in every figure, as in every other output.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from fsac.errors import FsacError
from fsac.io import atomic_write_bytes
from fsac.metrics import roc_curve
from fsac.train.report import STD_DDOF, EvalReport, pct_text, run_groups


def _new_figure(n_panels: int, panel_w: float = 3.6, panel_h: float = 3.2):
    """-> (figure, axes list) on an Agg canvas, up to 4 panels per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(n_panels, 4))
    rows = max(1, math.ceil(n_panels / cols))
    # constrained layout keeps the suptitle, axis labels and equal-aspect panels apart
    fig = Figure(figsize=(panel_w * cols, panel_h * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(n_panels, 1))]
    return fig, axes


def _finish(fig, report: EvalReport, title: str, path) -> Path:
    if report.random_weights:
        # The figure may be shared alone, so it carries the warning itself.
        fig.suptitle(f"{title}\nRANDOM BACKBONE WEIGHTS: pipeline check, measures nothing", color="#b00000",
                     fontsize=11, fontweight="bold")
    else:
        fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return atomic_write_bytes(path, buf.getvalue())


def _empty_panel(ax, text: str = "no evaluation runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_roc(report: EvalReport, path: str | os.PathLike, all_seeds: bool = True) -> Path:
    """ROC curves -> PNG at `path` (written atomically).

    One panel per category; in it one curve per shots setting, the lowest seed drawn solid
    and (all_seeds) the other seeds faint in the same colour. The legend gives the AUROC
    in percent, mean ± std over seeds.
    """
    categories, all_shots, groups = run_groups(report)
    fig, axes = _new_figure(len(categories))
    if not categories:
        _empty_panel(axes[0])
    colors = {s: f"C{i % 10}" for i, s in enumerate(all_shots)}
    for ax, cat in zip(axes, categories):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        for shots in all_shots:
            runs = groups.get((cat, shots))
            if not runs:
                continue
            aucs = np.array([r.metrics.auroc for r in runs])
            label = f"{'zero-shot' if shots == 0 else f'{shots}-shot'}: AUROC {pct_text(aucs.mean(), aucs.std(ddof=STD_DDOF))}"
            for i, r in enumerate(runs if all_seeds else runs[:1]):
                fpr, tpr, _ = roc_curve(r.labels, r.logits)
                ax.plot(fpr, tpr, color=colors[shots], lw=1.6 if i == 0 else 0.8,
                        alpha=1.0 if i == 0 else 0.3, label=label if i == 0 else None)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_title(cat, fontsize=10)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(loc="lower right", fontsize=7)
    for ax in axes[len(categories):]:
        ax.set_axis_off()
    return _finish(fig, report, "Image-level ROC (faint: other seeds)", path)


def plot_score_histogram(
    report: EvalReport, path: str | os.PathLike, shots: int | None = None, seed: int | None = None
) -> Path:
    """Histogram of anomaly logits, normal vs anomalous test images -> PNG at `path`.

    One panel per category (paper Fig. 7 style), for one shots setting (default: the
    largest) and one seed (default: the lowest run for that category); counts, shared
    bins per panel. Written atomically.
    """
    categories, all_shots, groups = run_groups(report)
    if shots is None and all_shots:
        shots = all_shots[-1]
    elif shots is not None and shots not in all_shots:
        raise FsacError(f"no runs with shots={shots} in the report (have {all_shots})")
    cats = [c for c in categories if (c, shots) in groups]
    fig, axes = _new_figure(len(cats), panel_h=2.8)
    if not cats:
        _empty_panel(axes[0])
    for ax, cat in zip(axes, cats):
        runs = groups[(cat, shots)]
        run = runs[0] if seed is None else next((r for r in runs if r.seed == seed), None)
        if run is None:
            _empty_panel(ax, f"{cat}: no run with seed {seed}")
            continue
        s = np.asarray(run.logits)
        y = np.asarray(run.labels)
        finite = s[np.isfinite(s)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 21)
        ax.hist(np.clip(s[y == 0], lo, hi), bins=bins, color="tab:blue", alpha=0.6,
                label=f"normal (n={int((y == 0).sum())})")
        ax.hist(np.clip(s[y == 1], lo, hi), bins=bins, color="tab:red", alpha=0.6,
                label=f"anomalous (n={int((y == 1).sum())})")
        if math.isfinite(run.metrics.f1_threshold):
            ax.axvline(run.metrics.f1_threshold, color="k", ls=":", lw=1, label="F1-max threshold")
        ax.set_title(f"{cat} (AUROC {100 * run.metrics.auroc:.1f}, seed {run.seed})", fontsize=9)
        ax.set_xlabel("anomaly logit z", fontsize=8)
        ax.set_ylabel("images", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[len(cats):]:
        ax.set_axis_off()
    label = "" if shots is None else (" (zero-shot)" if shots == 0 else f" ({shots}-shot)")
    return _finish(fig, report, f"Anomaly logits of test images{label}", path)
