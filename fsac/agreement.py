"""Agreement between two models' logits on the same images (torch-free, numpy only).

`fsac quantize` (INT8 vs fp32), `fsac bench export` and fsac-run's `backend: auto` policy
all ask the same question: does a faster model rank and decide the images like the fp32
reference? `logit_agreement` answers it here, once, for all of them (Spearman's rho, the
differences, the verdicts through the core's rule), and `agreement_failures` applies the
bounds, the same three for every caller (each may make them stricter): Spearman >= 0.99,
verdicts >= 99 %, max |delta logit| <= 0.10 of the reference's logit spread, on at least 20
images (on fewer, 0.99 and 100 % are too easy to mean anything) with finite logits.
Logits, never scores: sigmoid(z) saturates in float32, so scores would compare ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fsac.errors import FsacError
from fsac.score import is_defective

MIN_SPEARMAN = 0.99
MIN_VERDICT = 0.99
MAX_REL_DLOGIT = 0.10
MIN_IMAGES = 20


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
    non_finite: int = 0  # images where either logit is NaN or infinite


def logit_agreement(ref, got, logit_threshold: float | None, min_images: int = 2) -> LogitAgreement:
    """Compare `got` with the reference `ref`, image by image (two equally long vectors)."""
    a = np.asarray(ref, dtype=np.float64).reshape(-1)
    b = np.asarray(got, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < min_images:
        raise FsacError(f"logit agreement needs two equally long vectors of >= {min_images} images "
                        f"({a.size}, {b.size})")
    finite = np.isfinite(a) & np.isfinite(b)
    non_finite = int(a.size - finite.sum())
    d = np.abs(a - b)
    diff, spread = float(d.max()), float(a.max() - a.min())
    rel = diff / spread if spread > 0 else (0.0 if diff == 0 else math.inf)
    if non_finite:  # a NaN would rank as the largest value and decide "good": nothing here holds
        diff = rel = math.inf
    va = fa = fb = None
    if logit_threshold is not None and math.isfinite(logit_threshold):
        da, db = is_defective(a, logit_threshold), is_defective(b, logit_threshold)
        va, fa, fb = float(np.mean(da == db)), int(np.sum(da)), int(np.sum(db))
    return LogitAgreement(n_images=int(a.size), spearman=spearman(a, b) if not non_finite else math.nan,
                          max_abs_diff=diff, mean_abs_diff=float(d[finite].mean()) if finite.any() else math.nan,
                          spread=spread, rel_max_abs_diff=rel, logit_threshold=logit_threshold,
                          verdict_agreement=va, flagged_ref=fa, flagged_got=fb, non_finite=non_finite)


def agreement_failures(a: LogitAgreement, min_spearman: float = MIN_SPEARMAN, min_verdict: float = MIN_VERDICT,
                       max_rel: float = MAX_REL_DLOGIT, min_images: int = MIN_IMAGES) -> list[str]:
    """Why `a` does not qualify the candidate (empty: it does). NaN figures fail; the measured
    side is printed with enough digits that a failing figure never reads as the bound."""
    out = []
    if a.non_finite:
        out.append(f"{a.non_finite} of {a.n_images} images have a NaN or infinite logit")
    if a.n_images < min_images:
        out.append(f"only {a.n_images} images compared; the bounds need at least {min_images}")
    if not (a.spearman >= min_spearman):
        out.append(f"Spearman {a.spearman:.6f} < {min_spearman:g}")
    if a.verdict_agreement is None:
        out.append("verdicts not compared (no decision threshold)")
    elif not (a.verdict_agreement >= min_verdict):
        same = round(a.verdict_agreement * a.n_images)
        out.append(f"verdicts agree on {same} of {a.n_images} images ({a.verdict_agreement:.2%}) < {min_verdict:.2%}")
    if not (a.rel_max_abs_diff <= max_rel):
        out.append(f"max |Δ logit| {a.max_abs_diff:.3g} = {a.rel_max_abs_diff:.3f} x the logit spread > {max_rel:g}")
    return out
