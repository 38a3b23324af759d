"""Baseline scorers: the playbook points rule, recency, the 90-day rule, BG/NBD, and the comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import CrmScoringError
from training.baselines import (
    BaselineError,
    BaselineScore,
    PointsRuleConfig,
    bgnbd_expected_purchases,
    compare_with_baselines,
    no_purchase_rule,
    points_rule,
    recency,
)
from training.ltv import CustomerLtvModel, simulate_bgnbd
from training.metrics import roc_auc


def _leads() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "attr_industry": pd.array(["software", "retail", "software", None], dtype="str"),
            "attr_job_level": pd.array(["vp", "individual_contributor", "manager", "vp"], dtype="str"),
            "attr_company_size": pd.array(["51-200", "1-10", "5000+", "51-200"], dtype="str"),
            "page_view_count_30d": [3, 50, 0, 0],
            "pricing_page_view_count_30d": [1, 0, 0, 0],
            "content_download_count_30d": [0, 10, 0, 0],
            "email_click_count_30d": [0, 0, 1, 0],
            "has_demo_request": [1, 0, 0, 0],
            "has_trial_start": [0, 0, 0, 0],
            "days_since_last_event": [2.0, 5.0, 45.0, np.nan],
        }
    )


def test_points_rule_by_hand():
    scores = points_rule(_leads())
    assert isinstance(scores, BaselineScore) and scores.name == "points_rule"
    # fit 10 + 10 + 5; behaviour 3 + 5 + 0 + 0; demo 25; active
    # fit 0; behaviour 10 (capped) + 15 (capped); active
    # fit 10 (industry); email click 2; silent 45 days -> -20
    # fit 10 + 5 (no industry); never active -> -20
    assert scores.scores.tolist() == [58.0, 25.0, -8.0, -5.0]
    assert scores.notes == ()


def test_points_rule_is_configurable_and_survives_missing_columns():
    table = _leads().drop(columns=["attr_industry", "has_demo_request", "has_trial_start"])
    config = PointsRuleConfig(senior_levels=("manager",), silence_points=0.0)
    scores = points_rule(table, config)
    assert any("attr_industry" in note for note in scores.notes)
    assert any("demo request" in note for note in scores.notes)
    # Row 3 (manager, 1 email click, silent): 10 + 2, no silence penalty.
    assert scores.scores[2] == 12.0
    # The engagement family's demo counts replace the funnel flag when present.
    with_counts = table.assign(demo_request_count_90d=[2, 0, 0, 0])
    assert points_rule(with_counts, config).scores[0] == scores.scores[0] + 25.0


def test_recency_and_the_ninety_day_rule():
    table = pd.DataFrame({"days_since_last_order": [3.5, 90.0, 200.0, 89.9]})
    assert recency(table).scores.tolist() == [3.5, 90.0, 200.0, 89.9]
    rule = no_purchase_rule(table)
    assert rule.name == "no_purchase_90d" and rule.scores.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert no_purchase_rule(table, 30).name == "no_purchase_30d"
    with pytest.raises(BaselineError, match="no last order") as info:
        recency(pd.DataFrame({"days_since_last_order": [1.0, None]}))
    assert isinstance(info.value, CrmScoringError)
    with pytest.raises(BaselineError, match="days_since_last_order"):
        recency(pd.DataFrame({"x": [1.0]}))


def test_bgnbd_baseline_is_minus_expected_purchases():
    table = simulate_bgnbd(3_000, seed=4)
    baseline = bgnbd_expected_purchases(table, horizon_days=91)
    model = CustomerLtvModel(horizon_days=91).fit(table)
    expected = model.expected_purchases(table, t_days=91).to_numpy()
    assert np.allclose(baseline.scores, -expected)
    assert baseline.name == "bgnbd" and "r=" in baseline.description
    # A given fitted model is used as is.
    assert np.allclose(bgnbd_expected_purchases(table, 91, model).scores, -expected)
    # Frequent, recent buyers are the least likely to churn.
    best = table.assign(s=baseline.scores).sort_values("s").head(100)
    assert best["frequency"].mean() > table["frequency"].mean()
    with pytest.raises(BaselineError, match="rfm columns"):
        bgnbd_expected_purchases(table.drop(columns=["T_days"]), 91)


def test_compare_with_baselines_names_and_lift():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    model = y + rng.normal(0, 0.5, 500)
    weak = y + rng.normal(0, 2.0, 500)
    report = compare_with_baselines(y, model, {"weak": BaselineScore("weak", weak, "noisy")})
    assert set(report.metrics) == {"baseline_weak_val_roc_auc", "lift_over_weak_roc_auc"}
    assert report.metrics["baseline_weak_val_roc_auc"] == pytest.approx(roc_auc(y, weak))
    assert report.metrics["lift_over_weak_roc_auc"] == pytest.approx(roc_auc(y, model) - roc_auc(y, weak))
    assert report.metrics["lift_over_weak_roc_auc"] > 0
    assert report.table["scorer"].tolist() == ["model", "baseline_weak"]
