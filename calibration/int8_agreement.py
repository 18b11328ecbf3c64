"""`fsac quantize`'s report of INT8 against fp32 on held-out real images, in logit units: the
core's comparison (`fsac.agreement.logit_agreement`) and bounds (`agreement_failures`, which
fsac-run's backend policy applies too), with this command's provenance (threshold source,
image names, notes) and its refusal below the bounds."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from fsac.agreement import (MAX_REL_DLOGIT, MIN_IMAGES, MIN_SPEARMAN, MIN_VERDICT, LogitAgreement,
                            agreement_failures, logit_agreement)
from fsac.errors import FsacError

# Bounds below which an INT8 model is refused: the core's, which fsac-run's policy applies too.
MIN_VERDICT_AGREEMENT = MIN_VERDICT


@dataclass
class AgreementReport:
    """INT8 vs fp32 logits on the same held-out real images (logit units throughout)."""

    n_images: int
    spearman: float
    max_abs_diff: float
    mean_abs_diff: float
    threshold: float | None  # logit threshold
    threshold_source: str
    verdict_agreement: float | None  # fraction of images with the same verdict
    flagged_fp32: int | None
    flagged_int8: int | None
    min_spearman: float = MIN_SPEARMAN
    min_verdict_agreement: float = MIN_VERDICT_AGREEMENT
    spread: float = math.nan  # max - min of the fp32 logits
    rel_max_abs_diff: float = math.nan  # max_abs_diff / spread
    non_finite: int = 0  # images with a NaN or infinite logit on either side
    max_rel_dlogit: float = MAX_REL_DLOGIT
    images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """The core's bounds (fsac.agreement.agreement_failures), as fsac-run's policy applies them."""
        la = LogitAgreement(n_images=self.n_images, spearman=self.spearman, max_abs_diff=self.max_abs_diff,
                            mean_abs_diff=self.mean_abs_diff, spread=self.spread,
                            rel_max_abs_diff=self.rel_max_abs_diff, logit_threshold=self.threshold,
                            verdict_agreement=self.verdict_agreement, flagged_ref=self.flagged_fp32,
                            flagged_got=self.flagged_int8, non_finite=self.non_finite)
        return agreement_failures(la, self.min_spearman, self.min_verdict_agreement, self.max_rel_dlogit)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["failures"] = self.failures
        return d

    def summary(self) -> str:
        va = "n/a" if self.verdict_agreement is None else f"{self.verdict_agreement:.1%}"
        thr = "none" if self.threshold is None else f"{self.threshold:.6g} ({self.threshold_source})"
        return (f"INT8 vs fp32 on {self.n_images} held-out images: Spearman {self.spearman:.4f}, "
                f"max |Δ logit| {self.max_abs_diff:.3g} ({self.rel_max_abs_diff:.3f} x the spread), "
                f"verdict agreement {va} at logit threshold {thr}")


def agreement(fp32_logits, int8_logits, threshold: float | None, threshold_source: str = "model",
              names: Sequence[str] = (), min_spearman: float = MIN_SPEARMAN,
              min_verdict_agreement: float = MIN_VERDICT_AGREEMENT,
              max_rel_dlogit: float = MAX_REL_DLOGIT) -> AgreementReport:
    """The INT8 report: the core's logit comparison (`fsac.agreement.logit_agreement`, also
    used by fsac-run's backend policy) with this command's bounds and provenance."""
    a = np.asarray(fp32_logits, dtype=np.float64)
    if a.ndim != 1 or a.size < 3:
        raise FsacError(f"agreement needs >= 3 held-out images scored by both models (got {a.size})")
    la = logit_agreement(a, int8_logits, threshold, min_images=3)
    return AgreementReport(n_images=la.n_images, spearman=la.spearman, max_abs_diff=la.max_abs_diff,
                           mean_abs_diff=la.mean_abs_diff, threshold=threshold, threshold_source=threshold_source,
                           verdict_agreement=la.verdict_agreement, flagged_fp32=la.flagged_ref,
                           flagged_int8=la.flagged_got, min_spearman=min_spearman,
                           min_verdict_agreement=min_verdict_agreement, spread=la.spread,
                           rel_max_abs_diff=la.rel_max_abs_diff, non_finite=la.non_finite,
                           max_rel_dlogit=max_rel_dlogit, images=[str(n) for n in names])


def enforce_agreement(report: AgreementReport, allow: bool) -> str | None:
    """Raise FsacError below the bounds unless `allow`; then return a loud warning text."""
    if report.passed:
        return None
    msg = f"INT8 model disagrees with fp32: {'; '.join(report.failures)} ({report.summary()})"
    if not allow:
        more = f"pass at least {MIN_IMAGES} held-out images with --eval-images, " if report.n_images < MIN_IMAGES else \
            "try --calibration-method entropy/percentile or more calibration images, "
        raise FsacError(msg + "; " + more + "or pass --allow-disagreement to keep it anyway")
    return "WARNING: " + msg + " (kept because of --allow-disagreement)"
