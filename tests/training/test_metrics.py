"""Classifier metrics: agreement with scikit-learn, hand-checked values, tie handling, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from features.errors import CrmScoringError
from training.metrics import (
    CLASSIFICATION_METRICS,
    MetricsError,
    brier,
    classification_metrics,
    decile_table,
    expected_calibration_error,
    gains_curve,
    lift_at,
    log_loss,
    pr_auc,
    reliability_table,
    roc_auc,
    roc_curve,
)


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    p = rng.beta(1, 6, 5_000)
    y = (rng.random(5_000) < p).astype(int)
    return y, p


def test_ranking_metrics_match_scikit_learn(sample):
    y, p = sample
    coarse = np.round(p, 2)  # many ties
    for score in (p, coarse):
        assert roc_auc(y, score) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
        assert pr_auc(y, score) == pytest.approx(skm.average_precision_score(y, score), abs=1e-12)
        fpr, tpr = roc_curve(y, score)
        sk_fpr, sk_tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
        assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)


def test_probability_metrics_match_scikit_learn(sample):
    y, p = sample
    assert brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p), abs=1e-12)
    # Hard 0/1 probabilities give a large but finite log loss.
    assert np.isfinite(log_loss([0, 1], [1.0, 0.0]))


def test_auc_extremes():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_lift_at_top_ten_percent_by_hand():
    # 20 rows, top 10 % = 2 rows; both positive; overall rate 4 / 20.
    y = np.array([1, 1] + [1, 1] + [0] * 16)
    p = np.linspace(1, 0, 20)
    assert lift_at(y, p, 0.1) == pytest.approx(1.0 / 0.2)


def test_lift_with_ties_is_the_expectation_over_random_tie_breaking():
    # A 0/1 rule: 10 rows flagged (4 positives), top 10 % of 50 = 5 rows, all from the tied flagged group.
    y = np.array([1] * 4 + [0] * 6 + [1] * 6 + [0] * 34)
    score = np.array([1.0] * 10 + [0.0] * 40)
    expected = (4 / 10) / (10 / 50)
    assert lift_at(y, score, 0.1) == pytest.approx(expected)
    order = np.random.default_rng(1).permutation(50)
    assert lift_at(y[order], score[order], 0.1) == pytest.approx(expected)  # independent of row order


def test_expected_calibration_error():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01  # calibrated
    shifted = np.clip(p + 0.1, 0, 1)
    assert expected_calibration_error(y, shifted) == pytest.approx(0.1, abs=0.01)
    # By hand: 2 equal-frequency bins of 2 rows: |0.5 - 0.15| and |0.5 - 0.85| -> mean 0.35.
    assert expected_calibration_error([0, 1, 0, 1], [0.1, 0.2, 0.8, 0.9], n_bins=2) == pytest.approx(0.35)
    table = reliability_table([0, 1, 0, 1], [0.1, 0.2, 0.8, 0.9], n_bins=2)
    assert table["n"].tolist() == [2, 2]
    assert table["mean_predicted"].tolist() == pytest.approx([0.15, 0.85])


def test_decile_table(sample):
    y, p = sample
    table = decile_table(y, p)
    assert table.columns.tolist() == [
        "decile",
        "n",
        "mean_predicted",
        "actual_rate",
        "lift",
        "cumulative_gain",
        "cumulative_lift",
    ]
    assert table["decile"].tolist() == list(range(1, 11))
    assert table["n"].sum() == len(y) and table["n"].max() - table["n"].min() <= 1
    assert table["mean_predicted"].is_monotonic_decreasing
    assert table["cumulative_gain"].iloc[-1] == pytest.approx(1.0)
    assert table["cumulative_lift"].iloc[-1] == pytest.approx(1.0)
    assert np.average(table["lift"], weights=table["n"]) == pytest.approx(1.0)
    assert table["lift"].iloc[0] == pytest.approx(lift_at(y, p, 0.1), rel=0.05)
    targeted, captured = gains_curve(y, p)
    assert targeted[0] == captured[0] == 0 and targeted[-1] == captured[-1] == 1


def test_classification_metrics_names(sample):
    y, p = sample
    values = classification_metrics(y, p)
    assert list(values) == [f"val_{name}" for name in CLASSIFICATION_METRICS]
    assert list(values) == ["val_roc_auc", "val_pr_auc", "val_brier", "val_log_loss", "val_ece", "val_lift_at_10"]
    assert all(isinstance(v, float) for v in values.values())
    assert list(classification_metrics(y, p, prefix="test_"))[0] == "test_roc_auc"


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "3 labels but 2 scores"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([1, 1], [0.1, 0.2], "both classes"),
        ([0, 2], [0.1, 0.2], "0/1"),
        ([], [], "no rows"),
    ],
)
def test_bad_inputs_raise_specific_errors(y, p, message):
    with pytest.raises(MetricsError, match=message) as info:
        roc_auc(y, p)
    assert isinstance(info.value, CrmScoringError)


def test_probabilities_outside_unit_interval_are_rejected():
    with pytest.raises(MetricsError, match=r"\[0, 1\]"):
        classification_metrics([0, 1], [-0.1, 0.5])
