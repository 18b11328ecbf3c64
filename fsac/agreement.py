"""Agreement between two models' logits on the same images (torch-free, numpy only).

`fsac quantize` (INT8 vs fp32), `fsac bench export` and fsac-run's `backend: auto` policy
all ask the same question: does a faster model rank and decide the images like the fp32
reference? `logit_agreement` answers it here, once, for all of them (Spearman's rho, the
differences, the verdicts through the core's rule); each caller applies its own bounds.
Logits, never scores: sigmoid(z) saturates in float32, so scores would compare ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fsac.errors import FsacError
from fsac.score import is_defective


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the mean of their ranks (as scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    s = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0  # mean of ranks a+1 .. b
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long score vectors (NaN if one is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")


@dataclass
class LogitAgreement:
    """A candidate's logits against the reference's (logit units throughout)."""

    n_images: int
    spearman: float  # NaN when either side is constant
    max_abs_diff: float
    mean_abs_diff: float
    spread: float  # max - min of the reference logits: the scale a difference is judged on
    rel_max_abs_diff: float  # max_abs_diff / spread (inf for a difference on a constant reference)
    logit_threshold: float | None
    verdict_agreement: float | None  # fraction of equal verdicts; None without a (finite) threshold
    flagged_ref: int | None
    flagged_got: int | None


def logit_agreement(ref, got, logit_threshold: float | None, min_images: int = 2) -> LogitAgreement:
    """Compare `got` with the reference `ref`, image by image (two equally long vectors)."""
    a = np.asarray(ref, dtype=np.float64).reshape(-1)
    b = np.asarray(got, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < min_images:
        raise FsacError(f"logit agreement needs two equally long vectors of >= {min_images} images "
                        f"({a.size}, {b.size})")
    d = np.abs(a - b)
    diff, spread = float(d.max()), float(a.max() - a.min())
    rel = diff / spread if spread > 0 else (0.0 if diff == 0 else math.inf)
    va = fa = fb = None
    if logit_threshold is not None and math.isfinite(logit_threshold):
        da, db = is_defective(a, logit_threshold), is_defective(b, logit_threshold)
        va, fa, fb = float(np.mean(da == db)), int(np.sum(da)), int(np.sum(db))
    return LogitAgreement(n_images=int(a.size), spearman=spearman(a, b), max_abs_diff=diff,
                          mean_abs_diff=float(d.mean()), spread=spread, rel_max_abs_diff=rel,
                          logit_threshold=logit_threshold, verdict_agreement=va, flagged_ref=fa, flagged_got=fb)
