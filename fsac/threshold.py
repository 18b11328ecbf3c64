"""Decision thresholds on the anomaly logit (pure numpy).

Rule everywhere in fsac (`fsac.score.is_defective`): an image is DEFECTIVE when
`logit >= logit_threshold`. Every function here takes logits z (the model file's "logit"
output), never the score AS = sigmoid(z): at tau = 0.01 the score of every confidently
anomalous image rounds to exactly 1.0, and an order statistic taken on tied scores can land
above every score the model can produce (a line that never rejects). Thresholds are stored
in logit units, with their score-unit twin sigmoid(t) for display only.

Below, "score" in a formula means the logit. Conformal (normal images only). Inspection
lines have plenty of good parts and few defective ones, so the default needs only normal
images. With n held-out normal logits s_(1) <= ... <= s_(n) and a target false-alarm rate
alpha, let

    k = ceil((n + 1) (1 - alpha)).

If a new normal image's score is exchangeable with the n calibration scores,
P(score_new <= s_(k)) >= k / (n + 1) >= 1 - alpha, i.e. flagging only scores strictly
above s_(k) raises a false alarm with probability <= alpha (split-conformal guarantee,
marginal over the draw of the calibration set). To express "strictly above s_(k)" with the
`>=` rule, the stored threshold is the next float32 above s_(k): no float32 score lies
between them, so `score >= threshold` <=> `score > s_(k)` in float32 and in float64.
If k > n (n < 1/alpha - 1), no finite threshold has the guarantee: the result is +inf with
an "unattainable" warning, and the CLI refuses to write it.

With labelled anomalies as well:
  "f1":     the threshold that maximises F1 on the labelled set (fsac.metrics.f1_max).
  "recall": the highest threshold whose recall on the anomalous images is >= the target
            (fewest false alarms for that recall).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.metrics import f1_max
from fsac.score import is_defective, score_from_logit

METHODS = ("conformal", "f1", "recall")


@dataclass
class ThresholdResult:
    """A threshold and how it was obtained. Rates are fractions in [0, 1] measured on the
    calibration images themselves (in-sample: optimistic for "f1" and "recall")."""

    method: str
    threshold: float  # in LOGIT units: logit >= threshold => defective; +inf = never flag (unattainable)
    n_normal: int
    n_anomalous: int = 0
    alpha: float | None = None
    target_recall: float | None = None
    k: int | None = None  # conformal: rank of the order statistic (1-based)
    order_statistic: float | None = None  # conformal: s_(k)
    fpr: float | None = None  # false alarms among the normal calibration images
    recall: float | None = None  # anomalous calibration images flagged
    f1: float | None = None
    expected_fpr: float | None = None  # conformal: E[FPR] = (n + 1 - k) / (n + 1)
    fpr_spread: float | None = None  # conformal: std of the realised FPR over calibration draws
    warnings: list[str] = field(default_factory=list)

    @property
    def attainable(self) -> bool:
        return math.isfinite(self.threshold)

    @property
    def score_threshold(self) -> float:
        """The same threshold in score units, sigmoid(threshold), for display."""
        return score_from_logit(self.threshold) if self.attainable else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["threshold"] = _json_float(self.threshold)
        d["logit_threshold"] = d["threshold"]
        d["score_threshold"] = self.score_threshold
        return d


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _scores(scores, what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise FsacError(f"{what} must be a 1-D sequence of scores, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise FsacError(f"{int((~np.isfinite(s)).sum())} of the {what} are NaN or infinite: the model produced "
                        "invalid scores")
    return s


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0):
        raise FsacError(f"--alpha (target false-alarm rate) must be in (0, 1), got {alpha!r}")
    return float(alpha)


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)), computed so that float rounding cannot push an exact
    integer (e.g. (19 + 1) * 0.95 = 19) up by one."""
    x = (n + 1) * (1.0 - alpha)
    k = math.ceil(x)
    if k - x > 1 - 1e-9:  # x was an integer plus rounding noise
        k -= 1
    return k


def training_shots(images: list, metadata: dict[str, str]) -> list:
    """The images among `images` (paths) that are the model's own training shots, by content
    (the sha256 list `fsac.train_images` in the model file). They score lower than other good
    parts, the model having been fit on them, so they would pull a conformal threshold down
    and break exchangeability: `fsac calibrate` leaves them out, and the live view's
    re-calibration counts without them."""
    import json

    from fsac.io import sha256_file

    try:
        entries = json.loads(metadata.get("fsac.train_images", "[]") or "[]")
    except ValueError:
        return []
    hashes = {e.get("sha256") for e in entries if isinstance(e, dict)} if isinstance(entries, list) else set()
    return [p for p in images if hashes and sha256_file(p) in hashes]


def min_normal_images(alpha: float) -> int:
    """Smallest n for which the conformal threshold is finite: ceil((n+1)(1-alpha)) <= n."""
    # (n+1)(1-alpha) <= n  <=>  n >= (1-alpha)/alpha: start just below that (a tiny alpha would
    # otherwise count up one by one for minutes), then let the exact rank decide.
    n = max(1, math.floor((1 - alpha) / alpha) - 2)
    while conformal_rank(n, alpha) > n:
        n += 1
    while n > 1 and conformal_rank(n - 1, alpha) <= n - 1:
        n -= 1
    return n


def recommended_normal_images(alpha: float) -> int:
    """n for which the realised FPR scatters by at most alpha/2 (one std) around its mean:
    std ~ sqrt(alpha (1 - alpha) / (n + 2)) <= alpha / 2."""
    return max(min_normal_images(alpha), math.ceil(4 * (1 - alpha) / alpha - 2))


def next_float32_up(x: float) -> float:
    """Smallest float32 strictly greater than x, as a Python float (exact in float64)."""
    x32 = np.float32(x)
    if float(x32) > x:  # rounding to float32 went up: x32 is already the next one above x
        return float(x32)
    return float(np.nextafter(x32, np.float32(np.inf)))


def conformal_threshold(normal_scores, alpha: float) -> ThresholdResult:
    """Threshold with false-alarm rate <= alpha from n normal scores (see module doc)."""
    alpha = check_alpha(alpha)
    s = np.sort(_scores(normal_scores, "normal scores"))
    n = int(s.size)
    if n == 0:
        raise FsacError("no normal images to calibrate on")
    k = conformal_rank(n, alpha)
    res = ThresholdResult(method="conformal", threshold=math.inf, n_normal=n, alpha=alpha, k=k)
    if k > n:
        need = min_normal_images(alpha)
        res.fpr = 0.0
        res.expected_fpr = 0.0
        res.warnings.append(
            f"alpha={alpha:g} is unattainable with n={n} normal images: the conformal threshold needs "
            f"the {k}-th smallest of {n} scores, so it is +inf (nothing would ever be flagged); use at least "
            f"{need} normal images, or a larger alpha"
        )
        return res
    order = float(s[k - 1])
    res.order_statistic = order
    res.threshold = next_float32_up(order)
    res.fpr = float(np.mean(is_defective(s, res.threshold)))
    a, b = n + 1 - k, k  # realised FPR ~ Beta(n + 1 - k, k) over calibration draws
    res.expected_fpr = a / (n + 1)
    res.fpr_spread = math.sqrt(a * b / ((n + 1) ** 2 * (n + 2)))
    if res.fpr_spread > alpha / 2:
        res.warnings.append(
            f"n={n} normal images are few for alpha={alpha:g}: the false-alarm rate of this threshold is "
            f"<= {alpha:g} only on average over calibration sets and will scatter by about ±{res.fpr_spread:.3f} "
            f"around {res.expected_fpr:.3f}; about {recommended_normal_images(alpha)} images give a stable threshold"
        )
    return res


def _labelled(normal_scores, anomalous_scores) -> tuple[np.ndarray, np.ndarray]:
    neg = _scores(normal_scores, "normal scores")
    pos = _scores(anomalous_scores, "anomalous scores")
    if neg.size == 0 or pos.size == 0:
        raise FsacError(
            f"this threshold method needs both normal and anomalous images ({neg.size} normal, {pos.size} anomalous)"
        )
    return neg, pos


def _rates(neg: np.ndarray, pos: np.ndarray, t: float) -> tuple[float, float, float]:
    fp = int(np.sum(is_defective(neg, t)))
    tp = int(np.sum(is_defective(pos, t)))
    fn = pos.size - tp
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return fp / neg.size, tp / pos.size, f1


def f1_threshold(normal_scores, anomalous_scores) -> ThresholdResult:
    """Threshold maximising F1 of the anomalous class on the labelled calibration set."""
    neg, pos = _labelled(normal_scores, anomalous_scores)
    labels = np.r_[np.zeros(neg.size, np.int64), np.ones(pos.size, np.int64)]
    f1, t = f1_max(labels, np.r_[neg, pos])
    fpr, recall, _ = _rates(neg, pos, t)
    res = ThresholdResult(method="f1", threshold=float(t), n_normal=neg.size, n_anomalous=pos.size,
                          fpr=fpr, recall=recall, f1=float(f1))
    if min(neg.size, pos.size) < 10:
        res.warnings.append(f"F1-max threshold from {neg.size} normal / {pos.size} anomalous images is noisy")
    return res


def recall_threshold(normal_scores, anomalous_scores, target_recall: float) -> ThresholdResult:
    """Highest threshold flagging at least `target_recall` of the anomalous images."""
    if not (0.0 < float(target_recall) <= 1.0):
        raise FsacError(f"--target-recall must be in (0, 1], got {target_recall!r}")
    neg, pos = _labelled(normal_scores, anomalous_scores)
    desc = np.sort(pos)[::-1]
    m = math.ceil(target_recall * pos.size - 1e-9)  # anomalies that must be flagged
    t = float(desc[max(m, 1) - 1])
    fpr, recall, f1 = _rates(neg, pos, t)
    res = ThresholdResult(method="recall", threshold=t, n_normal=neg.size, n_anomalous=pos.size,
                          target_recall=float(target_recall), fpr=fpr, recall=recall, f1=f1)
    if pos.size < 20:
        res.warnings.append(
            f"recall target {target_recall:g} set from only {pos.size} anomalous images: one image is "
            f"{1 / pos.size:.0%} of recall"
        )
    return res


def check_not_degenerate(res: ThresholdResult, normal_logits, anomalous_logits=None) -> None:
    """Refuse a threshold that cannot do its job, with a message that says why.

    - not finite (conformal with too few images: its own warning says how many are needed);
    - all normal logits equal: the model does not tell these images apart (a broken export,
      a constant input), so no rank-based threshold means anything;
    - above every calibration logit, normal and anomalous alike, when anomalies were given:
      the line would never reject.
    """
    if not res.attainable:
        why = [w for w in res.warnings if "unattainable" in w]
        raise FsacError(why[0] if why else f"the {res.method} threshold is not a finite number ({res.threshold})")
    neg = _scores(normal_logits, "normal logits")
    if neg.size > 1 and float(neg.max() - neg.min()) == 0.0:
        raise FsacError(f"all {neg.size} normal images have the same logit ({neg[0]:.6g}): the model does not tell "
                        "them apart, so no threshold can be calibrated; check the model file and the images")
    if anomalous_logits is not None and len(anomalous_logits):
        pos = _scores(anomalous_logits, "anomalous logits")
        if not np.any(is_defective(pos, res.threshold)) and not np.any(is_defective(neg, res.threshold)):
            raise FsacError(f"the {res.method} threshold {res.threshold:.6g} is above every calibration logit: "
                            "it would never flag a part")


def compute_threshold(method: str, normal_scores, anomalous_scores=None, alpha: float = 0.05,
                      target_recall: float | None = None) -> ThresholdResult:
    """Dispatch on `method` ("conformal" | "f1" | "recall"). Inputs are logits."""
    if method == "conformal":
        res = conformal_threshold(normal_scores, alpha)
        if anomalous_scores is not None and len(anomalous_scores) and res.attainable:
            neg, pos = _labelled(normal_scores, anomalous_scores)
            res.fpr, res.recall, res.f1 = _rates(neg, pos, res.threshold)
            res.n_anomalous = int(pos.size)
        return res
    if method == "f1":
        return f1_threshold(normal_scores, anomalous_scores if anomalous_scores is not None else [])
    if method == "recall":
        if target_recall is None:
            raise FsacError("--method recall needs --target-recall (e.g. 0.99)")
        return recall_threshold(normal_scores, anomalous_scores if anomalous_scores is not None else [],
                                target_recall)
    raise FsacError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
