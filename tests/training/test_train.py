"""train_classifier on a small generated profile: the TrainingResult contract the MLflow layer relies on."""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from features.backend import connect
from features.synthetic import DATA_END, TRUTH_AS_OF, generate_profile
from features.validation import profile_from_frames
from training.datasets import FeatureCache, WindowConfig
from training.train import (
    ClassifierConfig,
    LightGbmParams,
    TrainingError,
    data_fingerprint,
    train_classifier,
)

CONFIG = ClassifierConfig(windows=WindowConfig(n_training_cutoffs=2), lightgbm=LightGbmParams(n_estimators=100))


@pytest.fixture(scope="module")
def generated():
    return generate_profile(3_000, seed=8)


@pytest.fixture(scope="module")
def profile(generated):
    return profile_from_frames(connect(), generated.customers, generated.orders, generated.events).profile


@pytest.fixture(scope="module")
def results(profile):
    messages: list[str] = []
    cache = FeatureCache(profile, DATA_END, CONFIG.features, CONFIG.families, messages.append)
    out = {
        task: train_classifier(profile, task, DATA_END, "90d", CONFIG, messages.append, cache) for task in ("lead", "churn")
    }
    return out, messages


def test_result_contract(results):
    out, messages = results
    for task, name in (("lead", "lead_scoring"), ("churn", "churn_propensity")):
        result = out[task]
        assert result.model_name == name
        assert result.as_of == DATA_END and result.horizon_days == 90
        assert result.validation_as_of == TRUTH_AS_OF == DATA_END - timedelta(days=90)
        assert result.primary_metric.name == "val_roc_auc" and result.primary_metric.greater_is_better
        for metric in ("val_roc_auc", "val_pr_auc", "val_brier", "val_ece", "val_lift_at_10", "val_log_loss"):
            assert np.isfinite(result.metrics[metric]), metric
        assert all(isinstance(v, float) for v in result.metrics.values())
        assert all(isinstance(v, (str, int, float, bool)) for v in result.params.values())
        assert result.params["calibration"] == "platt" and result.params["lgbm_n_estimators"] == 100
        assert set(result.figures) == {"roc", "calibration", "gains", "feature_importance"}
        assert all(isinstance(f, Figure) for f in result.figures.values())
        assert {"decile_table", "baseline_comparison"} <= set(result.tables)
        assert len(result.tables["decile_table"]) == 10
        # The champion can be rescored on exactly these rows.
        assert "label" in result.validation and "cutoff" not in result.validation
        assert set(result.feature_columns) <= set(result.validation.columns)
        assert result.feature_columns == result.model.feature_columns_
        scored = result.model.predict_frame(result.validation[result.feature_columns])
        assert scored.columns.tolist() == ["probability"] and len(scored) == len(result.validation)
        assert result.row_counts["validation"] == len(result.validation)
        assert result.row_counts["refit_calibration"] == len(result.validation)
        assert result.data_fingerprint.startswith("sha256:")
        restored = pickle.loads(pickle.dumps(result.model))
        assert np.array_equal(restored.predict_proba(result.validation), result.model.predict_proba(result.validation))
    assert set(out["lead"].metrics) >= {"baseline_points_rule_val_roc_auc", "lift_over_points_rule_roc_auc"}
    for name in ("recency", "no_purchase_90d", "bgnbd"):
        assert f"baseline_{name}_val_roc_auc" in out["churn"].metrics
        assert out["churn"].metrics[f"lift_over_{name}_roc_auc"] == pytest.approx(
            out["churn"].metrics["val_roc_auc"] - out["churn"].metrics[f"baseline_{name}_val_roc_auc"]
        )
    assert any("building features" in m for m in messages) and any("refitting" in m for m in messages)
    # Lead and churn share one feature build per cut-off.
    assert sum("building features" in m for m in messages) == 3


def test_served_model_is_refit_one_window_later(results):
    out, _ = results
    result = out["churn"]
    cutoffs = result.params["training_cutoffs"].split(",")
    assert result.params["calibration_cutoff"] == cutoffs[0] == f"{TRUTH_AS_OF - timedelta(days=90):%Y-%m-%d}"
    assert result.row_counts["refit_train"] > result.row_counts["train"]
    assert result.model.n_calibration_ == len(result.validation)  # calibrated on v, labels [v, T)
    assert result.model.n_train_ == result.row_counts["refit_train"]


def test_fingerprint_is_stable_and_sees_changes(generated, profile):
    first, counts = data_fingerprint(profile)
    assert first == data_fingerprint(profile)[0]
    assert counts == {
        "customers": generated.customers.num_rows,
        "orders": generated.orders.num_rows,
        "events": generated.events.num_rows,
    }
    customers, orders, events = (generated.customers.to_pandas(), generated.orders.to_pandas(), generated.events.to_pandas())
    # A batch run's id comes from the fingerprint: every correction must change it, including
    # those that keep the counts, the time ranges and the amount total.
    other_customer = orders.loc[orders["customer_id"] != orders.loc[0, "customer_id"], "customer_id"].iloc[0]
    other_type = next(t for t in events["event_type"].unique() if t != events.loc[0, "event_type"])
    attribute = next(c for c in customers.columns if c not in ("customer_id", "created_at") and pd.api.types.is_string_dtype(customers[c]))
    other_value = next(v for v in customers[attribute].dropna().unique() if v != customers.loc[0, attribute])
    corrections = {
        "an amount": ("orders", "amount", orders.loc[0, "amount"] + 1.0),
        "an order's status": ("orders", "status", "refunded" if orders.loc[0, "status"] != "refunded" else "completed"),
        "an order's customer": ("orders", "customer_id", other_customer),
        "an event's type": ("events", "event_type", other_type),
        "an attribute": ("customers", attribute, other_value),
    }
    seen = {first}
    for what, (table, column, value) in corrections.items():
        frames = {"customers": customers.copy(), "orders": orders.copy(), "events": events.copy()}
        frames[table].loc[0, column] = value
        changed = profile_from_frames(connect(), frames["customers"], frames["orders"], frames["events"]).profile
        fingerprint, changed_counts = data_fingerprint(changed)
        assert changed_counts == counts, what
        assert fingerprint not in seen, f"changing {what} kept the fingerprint"
        seen.add(fingerprint)
    # Row order is not content.
    shuffled = profile_from_frames(connect(), customers[::-1], orders.sample(frac=1.0, random_state=1), events[::-1]).profile
    assert data_fingerprint(shuffled)[0] == first


def test_bad_requests_fail_clearly(profile, results):
    with pytest.raises(TrainingError, match="unknown classifier task"):
        train_classifier(profile, "ltv", DATA_END, 90, CONFIG)  # type: ignore[arg-type]
    other_config = replace(CONFIG, families=("rfm",))
    cache = FeatureCache(profile, DATA_END, CONFIG.features, CONFIG.families)
    with pytest.raises(TrainingError, match="feature cache"):
        train_classifier(profile, "churn", DATA_END, 90, other_config, cache=cache)
    with pytest.raises(Exception, match="two horizons"):
        train_classifier(profile, "churn", pd.Timestamp("2023-10-01").to_pydatetime(), 90, CONFIG)


def test_churn_does_not_need_order_values(generated):
    """The BG/NBD churn baseline fits purchase counts only: repeat orders that cost nothing
    (free refills, samples) leave Gamma-Gamma nothing to fit, and must not cost the churn model."""
    orders = generated.orders.to_pandas().sort_values("ordered_at")
    orders.loc[orders.duplicated("customer_id"), "amount"] = 0.0
    profile = profile_from_frames(connect(), generated.customers, orders, generated.events).profile

    result = train_classifier(profile, "churn", DATA_END, "90d", CONFIG)

    assert np.isfinite(result.metrics["baseline_bgnbd_val_roc_auc"])
    assert not any("skipped" in note for note in result.notes)


def test_a_baseline_that_cannot_be_computed_is_skipped_with_a_note(profile, monkeypatch):
    from training import baselines
    from training.ltv import LtvFitError

    def no_fit(*args, **kwargs):
        raise LtvFitError("customer_ltv: bgnbd fit failed for every penalizer")

    monkeypatch.setattr(baselines, "bgnbd_expected_purchases", no_fit)
    messages: list[str] = []

    result = train_classifier(profile, "churn", DATA_END, "90d", CONFIG, messages.append)

    assert "baseline bgnbd skipped: customer_ltv: bgnbd fit failed for every penalizer" in result.notes
    assert any("baseline bgnbd skipped" in m for m in messages)
    assert "baseline_bgnbd_val_roc_auc" not in result.metrics
    assert np.isfinite(result.metrics["baseline_recency_val_roc_auc"])  # the others are still there for the gate


def test_churn_trained_without_the_rfm_family_skips_the_recency_baselines() -> None:
    """Churn on engagement and attributes only: the recency rules have no column to read;
    they are left out with notes instead of costing the model."""
    from training.train import _baselines

    validation = pd.DataFrame({"customer_id": ["a", "b"], "events_count_30d": [1.0, 0.0], "label": [0, 1]})
    baselines, notes = _baselines("churn", validation, 90, CONFIG)
    assert baselines == {}
    assert [note.split(":")[0] for note in notes] == ["baseline recency skipped", "baseline no_purchase_90d skipped", "baseline bgnbd skipped"]
