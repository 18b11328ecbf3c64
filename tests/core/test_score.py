"""fsac.score: the anomaly logit, its sigmoid and the one verdict rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsac.score import (DEFECTIVE, GOOD, VERDICT_RULE, is_defective, logit_from_score, logit_from_similarities,
                        score_from_logit, verdict)


def test_logit_is_the_similarity_gap_over_tau():
    z = logit_from_similarities([0.2, 0.3], [0.25, 0.1], tau=0.01)
    assert z.dtype == np.float64
    np.testing.assert_allclose(z, [5.0, -20.0])
    with pytest.raises(ValueError, match="tau"):
        logit_from_similarities([0.2], [0.3], tau=0.0)


def test_sigmoid_of_the_logit_equals_eq12_softmax_form():
    """AS = S- / (S- + S+) with S+- the softmax of s+-/tau is sigmoid((s- - s+)/tau)."""
    for sp, sn, tau in [(0.2, 0.25, 0.01), (0.9, 0.1, 0.5), (0.3, 0.3, 0.01), (-0.1, 0.4, 1.0)]:
        a, b = math.exp(sp / tau), math.exp(sn / tau)
        s_pos, s_neg = a / (a + b), b / (a + b)
        z = float(logit_from_similarities(sp, sn, tau))
        assert score_from_logit(z) == pytest.approx(s_neg / (s_neg + s_pos), rel=1e-12)


def test_score_from_logit_is_stable_and_keeps_types():
    assert score_from_logit(0.0) == 0.5 and isinstance(score_from_logit(3), float)
    assert score_from_logit(-800.0) == 0.0 and score_from_logit(800.0) == 1.0  # no overflow warning
    z = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    with np.errstate(over="raise"):
        s = score_from_logit(z)
    assert s.dtype == np.float64 and np.all(np.diff(s) >= 0)
    assert s[1] == pytest.approx(math.exp(-30), rel=1e-12)  # float64 keeps the small scores


def test_float32_score_saturates_where_the_logit_does_not():
    """The reason the logit exists: at tau = 0.01 a gap of 0.2 is AS = 1.0 exactly in float32."""
    gaps = np.array([0.2, 0.3, 0.5], dtype=np.float32)
    z = gaps / np.float32(0.01)
    as32 = (1 / (1 + np.exp(-z))).astype(np.float32)
    assert np.all(as32 == np.float32(1.0))  # three ties
    assert len(np.unique(z)) == 3  # three ranks


def test_logit_from_score_inverts_and_refuses_the_ends():
    for z in (-12.5, -1.0, 0.0, 0.3, 7.0):
        assert logit_from_score(score_from_logit(z)) == pytest.approx(z, abs=1e-9)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            logit_from_score(bad)


def test_verdict_rule_is_logit_at_or_above_the_threshold():
    assert VERDICT_RULE == "logit >= logit_threshold => defective"
    assert verdict(2.0, 2.0) == DEFECTIVE and verdict(1.999, 2.0) == GOOD and verdict(-5.0, -6.0) == DEFECTIVE
    assert is_defective(2.0, 2.0) is True
    np.testing.assert_array_equal(is_defective(np.array([1.0, 2.0, 3.0], np.float32), 2.0), [False, True, True])
