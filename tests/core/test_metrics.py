"""fsac.metrics: hand-checked examples, ties, edge rankings, brute-force agreement."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fsac.errors import FsacError
from fsac.metrics import ImageMetrics, aupr, auroc, f1_max, image_metrics, roc_curve

# ---------------------------------------------------------------------------- brute force


def brute_auroc(labels, scores) -> float:
    """O(n^2): fraction of (anomalous, normal) pairs ranked right, ties 1/2."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def brute_pr_points(labels, scores):
    """(threshold, precision, recall) of "score >= t" for each distinct score, highest first."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    out = []
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = int((pred & (y == 1)).sum())
        fp = int((pred & (y == 0)).sum())
        out.append((t, tp / (tp + fp), tp / int(y.sum())))
    return out


def brute_ap(labels, scores) -> float:
    ap, r_prev = 0.0, 0.0
    for _, p, r in brute_pr_points(labels, scores):
        ap += (r - r_prev) * p
        r_prev = r
    return ap


def brute_f1(labels, scores) -> float:
    return max((2 * p * r / (p + r) if p + r else 0.0) for _, p, r in brute_pr_points(labels, scores))


def brute_roc(labels, scores):
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    ts = sorted(set(s.tolist()), reverse=True)
    fpr = [0.0] + [((s >= t) & (y == 0)).sum() / (y == 0).sum() for t in ts]
    tpr = [0.0] + [((s >= t) & (y == 1)).sum() / (y == 1).sum() for t in ts]
    return np.array(fpr), np.array(tpr), np.array([np.inf] + ts)


def random_case(rng, n, tie_levels=None):
    """Random labels (both classes present) and scores; tie_levels: integer-valued scores."""
    while True:
        y = rng.integers(0, 2, n)
        if 0 < y.sum() < n:
            break
    if tie_levels:
        s = rng.integers(0, tie_levels, n) + 0.7 * y  # many exact ties, some signal
    else:
        s = rng.normal(size=n) + 1.0 * y
    return y, s


# ---------------------------------------------------------------------- hand-checked cases


def test_hand_example_no_ties():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    # Sorted by score, descending: 0.8 (A), 0.4 (N), 0.35 (A), 0.1 (N); 2 A, 2 N.
    # thresholds inf, 0.8, 0.4, 0.35, 0.1 -> TP 0,1,1,2,2  FP 0,0,1,1,2
    fpr, tpr, thr = roc_curve(labels, scores)
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    # pairs (A, N): 0.8>0.1, 0.8>0.4, 0.35>0.1, 0.35<0.4 -> 3 of 4
    assert auroc(labels, scores) == 0.75
    # t=0.8: P=1/1, R=1/2; t=0.4: P=1/2, R=1/2 (dR=0); t=0.35: P=2/3, R=1; t=0.1: dR=0
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert aupr(labels, scores) == pytest.approx(5 / 6, abs=1e-15)
    # F1 = 2TP / (2TP + FP + FN): t=0.8: 2/3; t=0.4: 2/4; t=0.35: 4/5; t=0.1: 4/6
    f1, t = f1_max(labels, scores)
    assert f1 == pytest.approx(0.8, abs=1e-15)
    assert t == 0.35


def test_hand_example_with_ties():
    labels = [0, 1, 0, 1, 1]
    scores = [0.2, 0.5, 0.5, 0.5, 0.9]
    # Distinct thresholds: 0.9 {A}, 0.5 {A, A, N}, 0.2 {N}; 3 A, 2 N.
    # The tie at 0.5 is crossed in one step: one ROC point per distinct threshold.
    fpr, tpr, thr = roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.5, 0.2])
    # pairs: A0.9 beats both N (2); each A0.5 beats N0.2 and ties N0.5 (1 + 1/2) -> 2 + 2*1.5 = 5 of 6
    assert auroc(labels, scores) == pytest.approx(5 / 6, abs=1e-15)
    # t=0.9: P=1, R=1/3; t=0.5: P=3/4, R=1 -> AP = 1/3 * 1 + 2/3 * 3/4 = 1/3 + 1/2 = 5/6
    assert aupr(labels, scores) == pytest.approx(5 / 6, abs=1e-15)
    # t=0.9: 2/(2+0+2) = 1/2; t=0.5: 6/(6+1+0) = 6/7; t=0.2: 6/(6+2) = 3/4
    f1, t = f1_max(labels, scores)
    assert f1 == pytest.approx(6 / 7, abs=1e-15)
    assert t == 0.5


def test_all_scores_tied():
    labels = [0, 1, 1, 0, 1]
    scores = [3.0] * 5
    fpr, tpr, thr = roc_curve(labels, scores)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    assert auroc(labels, scores) == 0.5  # every pair is a tie
    assert aupr(labels, scores) == pytest.approx(3 / 5)  # one step: P = prevalence, dR = 1
    f1, t = f1_max(labels, scores)
    assert f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 0))  # flag everything: 6/8
    assert t == 3.0


def test_perfect_ranking():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.7, 0.9]
    assert auroc(labels, scores) == 1.0
    assert aupr(labels, scores) == 1.0
    assert f1_max(labels, scores) == (1.0, 0.7)  # lowest anomalous score separates perfectly


def test_inverted_ranking():
    labels = [0, 0, 1, 1]
    scores = [4.0, 3.0, 2.0, 1.0]
    assert auroc(labels, scores) == 0.0
    # t=4: P=0, R=0; t=3: P=0, R=0; t=2: P=1/3, R=1/2; t=1: P=2/4, R=1
    # AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12
    assert aupr(labels, scores) == pytest.approx(5 / 12, abs=1e-15)
    # best is flagging everything: 2*2 / (2*2 + 2 + 0) = 2/3 at t=1 (t=2: 2/5)
    f1, t = f1_max(labels, scores)
    assert f1 == pytest.approx(2 / 3, abs=1e-15)
    assert t == 1.0
    # negating the scores turns it into a perfect ranking
    assert auroc(labels, [-v for v in scores]) == 1.0


def test_f1_max_prefers_highest_threshold_on_ties():
    labels = [1, 0, 0, 1]
    scores = [4.0, 3.0, 2.0, 1.0]
    # F1 = 2TP / (2TP + FP + FN), 2 anomalous:
    # t=4: TP1 FP0 FN1 -> 2/3; t=3: TP1 FP1 FN1 -> 2/4; t=2: TP1 FP2 FN1 -> 2/5;
    # t=1: TP2 FP2 FN0 -> 4/6 = 2/3. Equal best F1: the highest threshold (fewest alarms) wins.
    f1, t = f1_max(labels, scores)
    assert f1 == pytest.approx(2 / 3, abs=1e-15)
    assert t == 4.0
    # Reversed order of the same counts: the best is now unique at t=1.
    labels = [1, 0, 1]
    scores = [3.0, 2.0, 1.0]
    # t=3: 2/(2+0+1) = 2/3; t=2: 2/(2+1+1) = 1/2; t=1: 4/(4+1+0) = 4/5
    assert f1_max(labels, scores) == (pytest.approx(0.8, abs=1e-15), 1.0)


def test_image_metrics_bundle():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    m = image_metrics(labels, scores)
    assert isinstance(m, ImageMetrics)
    assert (m.auroc, m.n_normal, m.n_anomalous) == (0.75, 2, 2)
    assert m.aupr == pytest.approx(5 / 6)
    assert (m.f1_max, m.f1_threshold) == (pytest.approx(0.8), 0.35)
    assert ImageMetrics.from_dict(m.to_dict()) == m
    assert all(type(v) in (float, int) for v in m.to_dict().values())


def test_bool_labels_and_infinite_scores():
    labels = [False, True, False, True]
    scores = [-np.inf, np.inf, 0.0, np.inf]
    # both anomalous at +inf (a tie), both normal below: perfect
    assert auroc(labels, scores) == 1.0
    fpr, tpr, thr = roc_curve(labels, scores)
    np.testing.assert_array_equal(tpr, [0, 1, 1, 1])  # the two +inf are one step, not two
    assert auroc([0, 1, 0, 1], [np.inf, np.inf, np.inf, np.inf]) == 0.5


# ------------------------------------------------------------------------ properties


@pytest.mark.parametrize(
    "transform",
    [np.exp, np.arctan, lambda x: x**3 + 2 * x, lambda x: 1e-3 * x - 7.0],
    ids=["exp", "arctan", "cubic", "affine"],
)
def test_auroc_invariant_to_monotone_transform(transform):
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, s = random_case(rng, 40, tie_levels=6)
        s = s / 3.0  # levels 1/3 * 0.1 apart: no transform here merges or splits a tie
        assert auroc(y, transform(s)) == auroc(y, s)
        assert aupr(y, transform(s)) == pytest.approx(aupr(y, s), abs=1e-12)
        assert f1_max(y, transform(s))[0] == pytest.approx(f1_max(y, s)[0], abs=1e-12)


def test_auroc_of_flipped_scores_is_one_minus():
    rng = np.random.default_rng(1)
    for ties in (None, 4):
        y, s = random_case(rng, 50, tie_levels=ties)
        assert auroc(y, -s) == pytest.approx(1 - auroc(y, s), abs=1e-12)


@pytest.mark.parametrize("tie_levels", [None, 3, 10])
def test_agrees_with_brute_force(tie_levels):
    rng = np.random.default_rng(2)
    for n in (2, 3, 7, 31, 120):
        for _ in range(10):
            y, s = random_case(rng, n, tie_levels=tie_levels)
            assert auroc(y, s) == pytest.approx(brute_auroc(y, s), abs=1e-12)
            assert aupr(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)
            assert f1_max(y, s)[0] == pytest.approx(brute_f1(y, s), abs=1e-12)
            fpr, tpr, thr = roc_curve(y, s)
            bf, bt, bthr = brute_roc(y, s)
            np.testing.assert_allclose(fpr, bf, atol=1e-12)
            np.testing.assert_allclose(tpr, bt, atol=1e-12)
            np.testing.assert_array_equal(thr, bthr)


def test_auroc_area_under_returned_roc_curve():
    # Trapezoid area of the returned curve = AUROC (ties give the diagonal step, worth 1/2).
    rng = np.random.default_rng(3)
    for ties in (None, 5):
        y, s = random_case(rng, 80, tie_levels=ties)
        fpr, tpr, _ = roc_curve(y, s)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert auroc(y, s) == pytest.approx(area, abs=1e-12)


def test_auroc_is_mann_whitney_u():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    for ties in (None, 4):
        y, s = random_case(rng, 60, tie_levels=ties)
        u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
        assert auroc(y, s) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)


def test_agrees_with_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    for ties in (None, 3, 10):
        for n in (5, 50, 300):
            y, s = random_case(rng, n, tie_levels=ties)
            assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
            assert aupr(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
            fpr, tpr, thr = roc_curve(y, s)
            sf, st, sthr = skm.roc_curve(y, s, drop_intermediate=False)
            np.testing.assert_allclose(fpr, sf, atol=1e-12)
            np.testing.assert_allclose(tpr, st, atol=1e-12)
            # sklearn < 1.3 put max(score) + 1 instead of inf first
            np.testing.assert_array_equal(thr[1:], sthr[1:])
            p, r, _ = skm.precision_recall_curve(y, s)
            with np.errstate(invalid="ignore", divide="ignore"):
                f1s = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
            assert f1_max(y, s)[0] == pytest.approx(f1s.max(), abs=1e-12)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [roc_curve, auroc, aupr, f1_max, image_metrics])
def test_only_one_class_is_an_error(fn):
    with pytest.raises(FsacError, match="only one class.*3 normal, 0 anomalous"):
        fn([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(FsacError, match="only one class"):
        fn([1, 1], [0.1, 0.2])
    with pytest.raises(FsacError, match="only one class"):
        fn([], [])


@pytest.mark.parametrize("fn", [roc_curve, auroc, aupr, f1_max, image_metrics])
def test_length_mismatch_is_an_error(fn):
    with pytest.raises(FsacError, match="differ in length.*3 labels, 2 scores"):
        fn([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("fn", [roc_curve, auroc, aupr, f1_max, image_metrics])
def test_nan_score_is_an_error(fn):
    with pytest.raises(FsacError, match="1 of 4 scores are NaN.*index 2"):
        fn([0, 1, 0, 1], [0.1, 0.2, float("nan"), 0.4])


def test_bad_labels_and_shapes_are_errors():
    with pytest.raises(FsacError, match="0 \\(normal\\) or 1 \\(anomalous\\).*2"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(FsacError, match="0 \\(normal\\) or 1"):
        auroc([0.0, 0.5, 1.0], [0.1, 0.2, 0.3])
    with pytest.raises(FsacError, match="found 'good', None"):
        auroc([0, 1, None, "good"], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(FsacError, match="1-D"):
        auroc([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(FsacError, match="scores must be numbers"):
        auroc([0, 1], ["a", "b"])


def test_metrics_module_imports_no_torch_or_sklearn():
    # The torch-free calibration code imports this module.
    code = (
        "import sys, fsac.metrics; "
        "bad = [m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
