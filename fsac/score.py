"""The anomaly logit: the one number that ranks and decides (torch-free).

METHOD.md eq. 10-12 give the anomaly score AS = S- / (S- + S+) with S+- a softmax over
s(CF, AT+-) / tau. A two-way softmax is a sigmoid of the difference, so

    z  = (s(CF, AT-) - s(CF, AT+)) / tau        the anomaly logit   (sim_anomalous - sim_normal)
    AS = sigmoid(z)                             the anomaly score, for people

At tau = 0.01, float32 rounds AS to exactly 1.0 once the similarity gap passes ~0.17 (and
float64 once it passes ~0.37): confidently anomalous images all tie at 1.0 and a threshold
taken on AS can land above every possible score. z does not saturate, so everything that
ranks or decides (metrics, ROC curves, thresholds, INT8 / parity agreement, gradient maps,
fsac-run's verdict) uses z, through the functions here; AS is derived from z in float64
wherever it is shown.
"""

from __future__ import annotations

import math

import numpy as np

# The verdict rule, in words: model files, reports and the README quote this string.
VERDICT_RULE = "logit >= logit_threshold => defective"
DEFECTIVE = "defective"
GOOD = "good"
ERROR = "error"


def logit_from_similarities(sim_normal, sim_anomalous, tau: float) -> np.ndarray:
    """z = (s(CF, AT-) - s(CF, AT+)) / tau, float64, same shape as the inputs."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return (np.asarray(sim_anomalous, dtype=np.float64) - np.asarray(sim_normal, dtype=np.float64)) / float(tau)


def score_from_logit(z):
    """AS = sigmoid(z) in float64, computed without overflow for any finite z.

    A Python float in gives a Python float out; arrays give float64 arrays.
    """
    if np.isscalar(z) and not isinstance(z, np.ndarray):
        z = float(z)
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def logit_from_score(score: float) -> float:
    """The inverse of `score_from_logit` for a score strictly inside (0, 1).

    Only for reading a threshold a person wrote in score units (`model.threshold`): a score
    of exactly 0 or 1 has no logit, and saying so beats inventing one.
    """
    s = float(score)
    if not 0.0 < s < 1.0:
        raise ValueError(f"a score threshold must lie strictly between 0 and 1 to have a logit, got {score!r}")
    return math.log(s) - math.log1p(-s)


def is_defective(logit, logit_threshold: float):
    """The verdict rule: defective iff logit >= logit_threshold (bool, or a bool array)."""
    if np.isscalar(logit) and not isinstance(logit, np.ndarray):
        return float(logit) >= float(logit_threshold)
    return np.asarray(logit, dtype=np.float64) >= float(logit_threshold)


def verdict(logit: float, logit_threshold: float) -> str:
    """"defective" or "good" for one image, by `is_defective`."""
    return DEFECTIVE if is_defective(logit, logit_threshold) else GOOD
