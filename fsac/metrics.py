"""Image-level anomaly classification metrics: ROC curve, I-AUROC, I-AUPR (average
precision) and F1-max, in pure numpy.

Torch-free and sklearn-free on purpose: the calibration code (no torch) uses it too.
fsac passes the anomaly logit z as `scores` everywhere (`fsac.score`): the score AS =
sigmoid(z) ties at 0 and 1 in float32 and would make these metrics count ties.

Conventions, for every function here:

- `labels`: 1-D, length N, values 0 (normal / negative) or 1 (anomalous / positive);
  bools are accepted.
- `scores`: 1-D float, length N, higher = more anomalous. NaN is refused (it has no rank);
  +-inf is allowed and ranked like any other value.
- Both classes must be present, otherwise every metric here is undefined.
- Results are fractions in [0, 1]. Tables and figures show them in percent with one
  decimal (paper style, "95.5"); see `fsac.train.report`.
- Ties are handled exactly like scikit-learn: images with the same score are crossed
  together, as one step of the curve (one point per distinct threshold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fsac.errors import FsacError

__all__ = [
    "ImageMetrics",
    "aupr",
    "auroc",
    "f1_max",
    "image_metrics",
    "roc_curve",
]


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert -> (labels int64 (N,), scores float64 (N,))."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise FsacError(
            f"labels and scores must be 1-D sequences (got shapes {y.shape} and {s.shape})"
        )
    if y.shape[0] != s.shape[0]:
        raise FsacError(
            f"labels and scores differ in length ({y.shape[0]} labels, {s.shape[0]} scores): "
            "each test image needs exactly one label and one score"
        )
    try:
        s = s.astype(np.float64)
    except (TypeError, ValueError):
        raise FsacError(f"scores must be numbers (got dtype {s.dtype})") from None
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        first = int(np.flatnonzero(np.isnan(s))[0])
        raise FsacError(
            f"{n_nan} of {s.shape[0]} scores are NaN (first at index {first}): the model produced "
            "an invalid score; check the input images and the model"
        )
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.size and not (np.issubdtype(y.dtype, np.number) and np.isin(y, (0, 1)).all()):
        # repr + sort on strings: works for any mix of types (None, str, float...)
        bad = sorted({repr(v) for v in y.tolist() if v not in (0, 1)})[:5]
        raise FsacError(f"labels must be 0 (normal) or 1 (anomalous); found {', '.join(bad)}")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise FsacError(
            f"labels hold only one class ({n_neg} normal, {n_pos} anomalous): AUROC, AUPR and "
            "F1-max need both normal and anomalous test images"
        )
    return y, s


def _binary_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative counts at each distinct threshold, highest threshold first.

    -> (fps, tps, thresholds), each (K,) with K = number of distinct scores:
    fps[k] / tps[k] = number of normal / anomalous images with score >= thresholds[k].
    Same construction as sklearn's `_binary_clf_curve` (stable descending sort, one entry
    at the last index of each run of equal scores).
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # `!=` rather than np.diff: diff(inf, inf) is NaN and would split a tie of infinities.
    last_of_run = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])
    idx = np.r_[last_of_run, y_sorted.size - 1]
    tps = np.cumsum(y_sorted)[idx]
    fps = (idx + 1) - tps
    return fps, tps, s_sorted[idx]


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve -> (fpr, tpr, thresholds), each float64 of shape (K + 1,).

    K is the number of distinct scores. Point k >= 1 is the rule "score >= thresholds[k]
    => anomalous"; point 0 is (0, 0) with threshold +inf (nothing flagged). Thresholds
    decrease; fpr and tpr increase to 1. This equals sklearn >= 1.3
    `roc_curve(labels, scores, drop_intermediate=False)` (no collinear points dropped).
    """
    y, s = _check(labels, scores)
    fps, tps, thr = _binary_counts(y, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def auroc(labels, scores) -> float:
    """Area under the ROC curve, a fraction in [0, 1].

    = P(score of a random anomalous image > score of a random normal one), ties counting
    1/2 = Mann-Whitney U / (n_anomalous * n_normal). 0.5 is chance, 1 a perfect ranking.
    """
    y, s = _check(labels, scores)
    fps, tps, _ = _binary_counts(y, s)
    # Trapezoids in integer counts: crossing a tie group adds d_fp negatives that lie
    # below (tp_before) positives outright and level with d_tp positives (half each).
    d_fp = np.diff(np.r_[0, fps])
    d_tp = np.diff(np.r_[0, tps])
    tp_before = tps - d_tp
    twice_u = int(np.sum(d_fp * (2 * tp_before + d_tp)))
    return float(twice_u / (2 * tps[-1] * fps[-1]))


def aupr(labels, scores) -> float:
    """Average precision (area under the precision-recall curve), a fraction in [0, 1].

    AP = sum over distinct thresholds, highest first, of (R_n - R_{n-1}) * P_n with R_0 = 0,
    where P_n, R_n are precision and recall of "score >= threshold_n". Step-wise, no
    interpolation: equals sklearn's `average_precision_score`. Chance level is the
    fraction of anomalous images, not 0.5.
    """
    y, s = _check(labels, scores)
    fps, tps, _ = _binary_counts(y, s)
    precision = tps / (tps + fps)
    d_recall = np.diff(np.r_[0, tps]) / tps[-1]
    return float(np.sum(d_recall * precision))


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 over all rules "score >= t => anomalous" -> (f1, t).

    F1 = 2 TP / (2 TP + FP + FN) of the anomalous class, a fraction in [0, 1]. F1 only
    changes where t crosses a score, so t ranges over the distinct scores; `t` is the score
    value itself (use `>=`). When several thresholds reach the same best F1, the highest
    one (fewest alarms) is returned.
    """
    y, s = _check(labels, scores)
    fps, tps, thr = _binary_counts(y, s)
    fns = tps[-1] - tps
    f1 = 2 * tps / (2 * tps + fps + fns)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return float(f1[best]), float(thr[best])


@dataclass(frozen=True)
class ImageMetrics:
    """Image-level metrics of one evaluation run.

    auroc, aupr, f1_max: fractions in [0, 1] (shown in percent in tables).
    f1_threshold: the threshold reaching f1_max ("value >= t => anomalous") in the units of
    what was ranked: the anomaly logit z everywhere in fsac (evaluation and calibration rank
    logits, never the saturating score). n_normal, n_anomalous: test images of each class.
    """

    auroc: float
    aupr: float
    f1_max: float
    f1_threshold: float
    n_normal: int
    n_anomalous: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageMetrics:
        return cls(
            auroc=float(d["auroc"]),
            aupr=float(d["aupr"]),
            f1_max=float(d["f1_max"]),
            f1_threshold=float(d["f1_threshold"]),
            n_normal=int(d["n_normal"]),
            n_anomalous=int(d["n_anomalous"]),
        )


def image_metrics(labels, scores) -> ImageMetrics:
    """All image-level metrics at once; see the module docstring for the conventions."""
    y, s = _check(labels, scores)
    f1, t = f1_max(y, s)
    n_pos = int(y.sum())
    return ImageMetrics(
        auroc=auroc(y, s),
        aupr=aupr(y, s),
        f1_max=f1,
        f1_threshold=t,
        n_normal=int(y.size - n_pos),
        n_anomalous=n_pos,
    )
