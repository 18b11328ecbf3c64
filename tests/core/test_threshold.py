"""Thresholds: the conformal order statistic and its false-alarm guarantee, the warnings
for small n, and the F1 / target-recall thresholds on labelled toy data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsac.threshold import (
    compute_threshold,
    conformal_rank,
    conformal_threshold,
    f1_threshold,
    min_normal_images,
    next_float32_up,
    recall_threshold,
)
from fsac.errors import FsacError


def test_exact_order_statistic_on_a_hand_example():
    # n = 9, alpha = 0.2: k = ceil(10 * 0.8) = 8 -> the 8th smallest score.
    scores = [0.50, 0.10, 0.90, 0.30, 0.70, 0.20, 0.80, 0.40, 0.60]
    r = conformal_threshold(scores, 0.2)
    assert r.k == 8 and r.order_statistic == pytest.approx(0.80)
    # Smallest float32 above the (float64) order statistic: nothing lies in between.
    assert r.threshold > 0.80 and r.threshold == float(np.float32(0.8))
    assert r.fpr == pytest.approx(1 / 9)  # only 0.9 is flagged (score >= threshold)
    assert r.expected_fpr == pytest.approx(2 / 10)
    # Exact integers do not round up: n = 19, alpha = 0.05 -> (n + 1)(1 - alpha) = 19.
    assert conformal_rank(19, 0.05) == 19
    assert conformal_rank(99, 0.01) == 99 and conformal_rank(98, 0.01) == 99
    assert min_normal_images(0.05) == 19 and min_normal_images(0.1) == 9


def test_threshold_flags_exactly_the_scores_above_the_order_statistic():
    s = np.float32([0.25, 0.5, 0.5, 0.75])  # ties at the order statistic are not flagged
    r = conformal_threshold(s, 0.4)  # k = ceil(5 * 0.6) = 3 -> 0.5
    assert r.order_statistic == 0.5
    assert list(s >= np.float32(r.threshold)) == [False, False, False, True]
    assert list(s.astype(np.float64) >= r.threshold) == [False, False, False, True]
    assert next_float32_up(1.0) == float(np.nextafter(np.float32(1), np.float32(2)))
    x32 = float(np.float32(0.1))  # a float32 score: the next float32 up
    assert next_float32_up(x32) == float(np.nextafter(np.float32(0.1), np.float32(1)))


@pytest.mark.parametrize("alpha,n", [(0.05, 40), (0.1, 19), (0.2, 200)])
def test_conformal_false_alarm_bound_on_a_known_distribution(alpha, n):
    """Many calibration draws from a known score distribution: the mean false-alarm rate
    on fresh normal scores is <= alpha (+ Monte Carlo tolerance) and, by the upper bound of
    split conformal, >= alpha - 1/(n+1)."""
    rng = np.random.default_rng(1234)
    trials, fresh = 3000, 2000
    fprs = np.empty(trials)
    for t in range(trials):
        cal = rng.gamma(2.0, 1.0, size=n).astype(np.float32)
        thr = conformal_threshold(cal, alpha).threshold
        # Exact FPR of this threshold for the known distribution, via the empirical tail of a
        # large fresh sample from the same gamma distribution.
        test = rng.gamma(2.0, 1.0, size=fresh).astype(np.float32)
        fprs[t] = np.mean(test >= thr)
    mean = fprs.mean()
    se = fprs.std() / math.sqrt(trials)
    k = conformal_rank(n, alpha)
    assert mean <= alpha + 4 * se + 1e-3
    assert mean == pytest.approx((n + 1 - k) / (n + 1), abs=4 * se + 2e-3)  # Beta mean, exactly
    assert mean >= alpha - 1 / (n + 1) - 4 * se


def test_unattainable_alpha_warns_and_gives_infinity():
    r = conformal_threshold(np.linspace(0, 1, 10), 0.05)  # k = ceil(11 * 0.95) = 11 > 10
    assert math.isinf(r.threshold) and not r.attainable
    assert r.k == 11
    assert "unattainable" in r.warnings[0] and "at least 19" in r.warnings[0]
    assert r.to_dict()["threshold"] == "inf"


def test_few_images_warning_but_finite_threshold():
    r = conformal_threshold(np.linspace(0, 1, 30), 0.05)
    assert r.attainable
    assert any("few for alpha=0.05" in w for w in r.warnings)
    big = conformal_threshold(np.random.default_rng(0).random(2000), 0.05)
    assert big.warnings == [] and big.fpr == pytest.approx(0.05, abs=0.002)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 2, float("nan")])
def test_bad_alpha(bad):
    with pytest.raises(FsacError, match="--alpha"):
        conformal_threshold([0.1, 0.2, 0.3], bad)


def test_nan_scores_are_refused():
    with pytest.raises(FsacError, match="NaN"):
        conformal_threshold([0.1, float("nan"), 0.3], 0.1)


def test_f1_threshold_on_a_labelled_toy_set():
    normal = [0.1, 0.2, 0.3, 0.4, 0.6]
    anomalous = [0.5, 0.7, 0.8, 0.9]
    r = f1_threshold(normal, anomalous)
    # t = 0.5 flags {0.5, 0.6, 0.7, 0.8, 0.9}: TP 4, FP 1, FN 0 -> F1 = 8/9, the best.
    assert r.threshold == pytest.approx(0.5) and r.f1 == pytest.approx(8 / 9)
    assert r.recall == 1.0 and r.fpr == pytest.approx(0.2)
    with pytest.raises(FsacError, match="both normal and anomalous"):
        f1_threshold(normal, [])


def test_recall_threshold_on_a_labelled_toy_set():
    normal = [0.1, 0.2, 0.3, 0.45, 0.6]
    anomalous = [0.4, 0.5, 0.7, 0.8, 0.9]
    r = recall_threshold(normal, anomalous, 0.8)  # 4 of 5 must be flagged -> 4th largest = 0.5
    assert r.threshold == pytest.approx(0.5) and r.recall == pytest.approx(0.8) and r.fpr == pytest.approx(0.2)
    r = recall_threshold(normal, anomalous, 1.0)
    assert r.threshold == pytest.approx(0.4) and r.recall == 1.0 and r.fpr == pytest.approx(0.4)
    r = recall_threshold(normal, anomalous, 0.5)  # ceil(2.5) = 3 -> 0.7
    assert r.threshold == pytest.approx(0.7) and r.fpr == 0.0
    with pytest.raises(FsacError, match="--target-recall"):
        recall_threshold(normal, anomalous, 0.0)
    with pytest.raises(FsacError, match="needs --target-recall"):
        compute_threshold("recall", normal, anomalous)


def test_compute_threshold_dispatch_and_labelled_conformal():
    rng = np.random.default_rng(0)
    normal, anomalous = rng.normal(0, 1, 200), rng.normal(3, 1, 50)
    r = compute_threshold("conformal", normal, anomalous, alpha=0.1)
    assert r.method == "conformal" and r.n_anomalous == 50 and 0.5 < r.recall <= 1.0
    assert compute_threshold("f1", normal, anomalous).method == "f1"
    with pytest.raises(FsacError, match="--method"):
        compute_threshold("youden", normal, anomalous)


def test_an_infinite_logit_is_refused_by_name():
    """+inf among the normal logits used to give an infinite threshold, refused with the
    unrelated "few images" warning as its message."""
    with pytest.raises(FsacError, match="1 of the normal .* are NaN or infinite"):
        conformal_threshold([0.1 * i for i in range(19)] + [math.inf], 0.05)


def test_an_unattainable_alpha_names_the_images_it_needs():
    from fsac.threshold import check_not_degenerate

    logits = np.linspace(-1.0, 1.0, 10)
    res = conformal_threshold(logits, 0.05)
    with pytest.raises(FsacError, match="unattainable with n=10 .*19"):
        check_not_degenerate(res, logits)


def test_min_normal_images_for_a_tiny_alpha_starts_near_the_answer(monkeypatch):
    """Counting n up from 1 took about 15 s at alpha = 1e-7 (before the error message could
    say how many images are needed); it now starts next to (1 - alpha) / alpha."""
    import fsac.threshold as th

    calls = []
    real = th.conformal_rank
    monkeypatch.setattr(th, "conformal_rank", lambda n, a: calls.append(n) or real(n, a))
    n = th.min_normal_images(1e-7)
    assert len(calls) < 10
    assert real(n, 1e-7) <= n and real(n - 1, 1e-7) > n - 1  # still the smallest such n
