"""fsac.agreement.logit_agreement: the one comparison of two models' logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsac.agreement import logit_agreement
from fsac.errors import FsacError


def test_figures_on_known_logits():
    ref = np.array([-3.0, -1.0, 0.0, 2.0, 5.0])
    got = np.array([-3.0, -0.5, 0.5, 1.5, 5.0])  # same order; 2.0 -> 1.5 crosses the threshold 1.8
    a = logit_agreement(ref, got, 1.8)
    assert a.n_images == 5 and a.spearman == pytest.approx(1.0)
    assert a.max_abs_diff == pytest.approx(0.5) and a.mean_abs_diff == pytest.approx(0.3)
    assert a.spread == 8.0 and a.rel_max_abs_diff == pytest.approx(0.5 / 8.0)
    assert a.verdict_agreement == pytest.approx(0.8) and (a.flagged_ref, a.flagged_got) == (2, 1)


def test_verdicts_use_the_core_rule_logit_at_threshold_is_defective():
    a = logit_agreement([0.0, 1.0, 2.0], [0.0, 1.0, 2.0 - 1e-9], 2.0)
    assert (a.flagged_ref, a.flagged_got) == (1, 0) and a.verdict_agreement == pytest.approx(2 / 3)


def test_no_threshold_no_verdicts_and_constant_logits():
    a = logit_agreement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], None)
    assert a.verdict_agreement is None and a.flagged_ref is None and a.rel_max_abs_diff == 0.0
    assert logit_agreement([1.0, 2.0], [1.0, 2.0], math.inf).verdict_agreement is None
    flat = logit_agreement([1.0, 1.0, 1.0], [1.0, 1.1, 1.0], 0.0)
    assert math.isnan(flat.spearman) and flat.rel_max_abs_diff == math.inf


def test_refuses_unequal_or_short_vectors():
    with pytest.raises(FsacError, match=">= 2 images"):
        logit_agreement([1.0, 2.0], [1.0], 0.0)
    with pytest.raises(FsacError, match=">= 3 images"):
        logit_agreement([1.0, 2.0], [1.0, 2.0], 0.0, min_images=3)


def test_a_nan_or_inf_logit_fails_every_bound():
    """rankdata would rank a NaN last and is_defective would call it good: a candidate that
    produced one must not pass on its other images."""
    from fsac.agreement import agreement_failures

    ref = np.linspace(-2.0, 2.0, 24)
    got = ref.copy()
    got[5] = np.nan
    got[6] = np.inf
    a = logit_agreement(ref, got, 0.0)
    assert a.non_finite == 2 and math.isnan(a.spearman) and a.max_abs_diff == math.inf
    msgs = agreement_failures(a)
    assert msgs[0] == "2 of 24 images have a NaN or infinite logit" and len(msgs) >= 2
    assert agreement_failures(logit_agreement(ref, ref, 0.0)) == []
