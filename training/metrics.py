"""Evaluation metrics of the binary classifiers (lead_scoring, churn_propensity) and baselines.

Pure numpy: y is 0/1 (or boolean), p a score or probability of the positive class.

* `roc_auc`: area under the ROC curve (ties count one half; a constant score gives 0.5);
* `pr_auc`: average precision (the step-wise area under the precision-recall curve, as
  scikit-learn computes it; tied scores enter together);
* `brier`, `log_loss`: proper scoring rules of probabilities (log loss clips p to
  [1e-15, 1 - 1e-15] so a hard 0 or 1 does not give infinity);
* `lift_at(y, p, 0.10)`: positive rate among the top 10 % scores over the overall rate. The
  top k = ceil(0.1 n) rows are taken by score; rows tied at the boundary contribute their
  group's mean rate for the places left (the expectation over random tie-breaking), so a
  coarse score such as a 0/1 rule gets a well-defined, order-independent value;
* `expected_calibration_error`: sum over bins of (bin share) x |actual rate - mean p|. Bins are
  **equal-frequency** (10 by default, on the sorted probabilities): propensities concentrate
  near the base rate (6 % of leads convert), so equal-width bins would leave most of the
  population in one or two bins and hide miscalibration there;
* `decile_table`: rows ranked by score, 10 equal-size bins (decile 1 = highest scores):
  n, mean predicted, actual rate, lift (rate / overall rate), cumulative gain (share of all
  positives captured in deciles 1..k) and cumulative lift.

`classification_metrics(y, p)` returns exactly the six numbers every classifier run logs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from features.errors import CrmScoringError

#: Keys of `classification_metrics` (without the prefix), in logging order.
CLASSIFICATION_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_at_10")

LOG_LOSS_EPS = 1e-15


class MetricsError(CrmScoringError, ValueError):
    """Labels / scores a metric cannot be computed from (lengths differ, NaN, a single class)."""


def _check(
    y: ArrayLike, p: ArrayLike, *, both_classes: bool = True, probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    p_arr = np.asarray(p, dtype="float64")
    if y_arr.ndim != 1 or p_arr.ndim != 1:
        raise MetricsError(f"labels and scores must be 1-d, got shapes {y_arr.shape} and {p_arr.shape}")
    if len(y_arr) != len(p_arr):
        raise MetricsError(f"{len(y_arr)} labels but {len(p_arr)} scores")
    if len(y_arr) == 0:
        raise MetricsError("no rows to evaluate")
    try:
        y_float = y_arr.astype("float64")
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"labels must be 0/1, got {y_arr.dtype}") from exc
    if np.isnan(y_float).any() or not np.isin(y_float, (0.0, 1.0)).all():
        raise MetricsError("labels must be 0/1 without nulls")
    if not np.isfinite(p_arr).all():
        raise MetricsError(f"{int((~np.isfinite(p_arr)).sum())} score(s) are NaN or infinite")
    if probabilities and ((p_arr < 0) | (p_arr > 1)).any():
        raise MetricsError("probabilities must lie in [0, 1]")
    if both_classes and y_float.min() == y_float.max():
        raise MetricsError(f"every label is {int(y_float[0])}: the metric needs both classes")
    return y_float, p_arr


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties 1/2."""
    y_arr, p_arr = _check(y, p)
    # Mann-Whitney U from average ranks: exact with ties, O(n log n).
    ranks = pd.Series(p_arr).rank(method="average").to_numpy()
    n_pos = y_arr.sum()
    n_neg = len(y_arr) - n_pos
    return float((ranks[y_arr == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pr_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision."""
    y_arr, p_arr = _check(y, p)
    order = np.argsort(-p_arr, kind="stable")
    y_sorted, p_sorted = y_arr[order], p_arr[order]
    # One point per distinct score (tied scores enter the curve together).
    last_of_group = np.r_[np.flatnonzero(np.diff(p_sorted) != 0), len(p_sorted) - 1]
    true_pos = np.cumsum(y_sorted)[last_of_group]
    predicted_pos = last_of_group + 1
    precision = true_pos / predicted_pos
    recall = true_pos / y_arr.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared error of the probabilities."""
    y_arr, p_arr = _check(y, p, both_classes=False, probabilities=True)
    return float(np.mean((p_arr - y_arr) ** 2))


def log_loss(y: ArrayLike, p: ArrayLike) -> float:
    """Mean negative log-likelihood (natural log), probabilities clipped to [1e-15, 1 - 1e-15]."""
    y_arr, p_arr = _check(y, p, both_classes=False, probabilities=True)
    q = np.clip(p_arr, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(y_arr * np.log(q) + (1 - y_arr) * np.log1p(-q)))


def lift_at(y: ArrayLike, p: ArrayLike, fraction: float = 0.1) -> float:
    """Positive rate in the top `fraction` of scores over the overall rate (ties at the boundary averaged)."""
    if not 0 < fraction <= 1:
        raise MetricsError(f"fraction must be in (0, 1], got {fraction}")
    y_arr, p_arr = _check(y, p)
    k = math.ceil(fraction * len(y_arr))
    order = np.argsort(-p_arr, kind="stable")
    y_sorted, p_sorted = y_arr[order], p_arr[order]
    boundary = p_sorted[k - 1]
    above = p_sorted > boundary
    tied = p_sorted == boundary
    # Expected positives in the top k when the tied group is broken at random.
    positives = y_sorted[above].sum() + (k - above.sum()) * y_sorted[tied].mean()
    return float((positives / k) / y_arr.mean())


def _equal_frequency_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0..n_bins-1) per row: n_bins bins of equal size (+-1) over the sorted values."""
    order = np.argsort(p, kind="stable")
    bins = np.empty(len(p), dtype=np.int64)
    for k, members in enumerate(np.array_split(order, n_bins)):
        bins[members] = k
    return bins


def expected_calibration_error(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Share-weighted mean |actual rate - mean probability| over `n_bins` equal-frequency bins."""
    if n_bins < 1:
        raise MetricsError(f"n_bins must be >= 1, got {n_bins}")
    y_arr, p_arr = _check(y, p, both_classes=False, probabilities=True)
    bins = _equal_frequency_bins(p_arr, min(n_bins, len(p_arr)))
    counts = np.bincount(bins)
    gap = np.abs(np.bincount(bins, weights=y_arr) - np.bincount(bins, weights=p_arr))
    # sum_b (n_b / n) |mean_y_b - mean_p_b| = sum_b |sum_y_b - sum_p_b| / n
    return float(gap[counts > 0].sum() / len(y_arr))


def reliability_table(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Per equal-frequency bin (ascending probability): n, mean_predicted, actual_rate (the ECE's bins)."""
    y_arr, p_arr = _check(y, p, both_classes=False, probabilities=True)
    bins = _equal_frequency_bins(p_arr, min(n_bins, len(p_arr)))
    frame = pd.DataFrame({"bin": bins + 1, "p": p_arr, "y": y_arr})
    table = frame.groupby("bin").agg(n=("y", "size"), mean_predicted=("p", "mean"), actual_rate=("y", "mean"))
    return table.reset_index()


def decile_table(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Score deciles, best first: decile, n, mean_predicted, actual_rate, lift, cumulative_gain, cumulative_lift.

    Bins have equal sizes (+-1); tied scores are split in input order (the bins' sizes, not
    the tie-breaking, are what a campaign targeting "the top 10 %" uses).
    """
    if n_bins < 1:
        raise MetricsError(f"n_bins must be >= 1, got {n_bins}")
    y_arr, p_arr = _check(y, p, both_classes=False)
    order = np.argsort(-p_arr, kind="stable")
    bins = np.empty(len(order), dtype=np.int64)
    for k, members in enumerate(np.array_split(order, min(n_bins, len(order)))):
        bins[members] = k + 1
    frame = pd.DataFrame({"decile": bins, "p": p_arr, "y": y_arr})
    table = frame.groupby("decile").agg(n=("y", "size"), mean_predicted=("p", "mean"), actual_rate=("y", "mean"))
    table = table.reset_index()
    base_rate = y_arr.mean()
    positives = (table["actual_rate"] * table["n"]).cumsum()
    table["lift"] = table["actual_rate"] / base_rate if base_rate > 0 else np.nan
    table["cumulative_gain"] = positives / y_arr.sum() if y_arr.sum() > 0 else np.nan
    table["cumulative_lift"] = (positives / table["n"].cumsum()) / base_rate if base_rate > 0 else np.nan
    table["n"] = table["n"].astype("int64")
    return table


def gains_curve(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(share of population targeted, share of positives captured), best scores first, from (0, 0)."""
    y_arr, p_arr = _check(y, p)
    order = np.argsort(-p_arr, kind="stable")
    captured = np.cumsum(y_arr[order]) / y_arr.sum()
    targeted = np.arange(1, len(y_arr) + 1) / len(y_arr)
    return np.r_[0.0, targeted], np.r_[0.0, captured]


def roc_curve(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y_arr, p_arr = _check(y, p)
    order = np.argsort(-p_arr, kind="stable")
    y_sorted, p_sorted = y_arr[order], p_arr[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(p_sorted) != 0), len(p_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_group]
    fp = (last_of_group + 1) - tp
    return np.r_[0.0, fp / (len(y_arr) - y_arr.sum())], np.r_[0.0, tp / y_arr.sum()]


def classification_metrics(y: ArrayLike, p: ArrayLike, prefix: str = "val_", ece_bins: int = 10) -> dict[str, float]:
    """The six logged metrics: {prefix}roc_auc, pr_auc, brier, log_loss, ece, lift_at_10."""
    _check(y, p, probabilities=True)
    values = {
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "brier": brier(y, p),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p, ece_bins),
        "lift_at_10": lift_at(y, p, 0.10),
    }
    return {f"{prefix}{name}": values[name] for name in CLASSIFICATION_METRICS}
