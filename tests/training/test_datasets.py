"""Out-of-time examples: the cut-off plan, label windows, and that nothing at or after as_of is read."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.backend import connect
from features.errors import CrmScoringError
from features.synthetic import DATA_END, DATA_START, generate_profile
from features.validation import profile_from_frames
from training.datasets import (
    CUTOFF_COLUMN,
    LABEL_COLUMN,
    DatasetError,
    FeatureCache,
    WindowConfig,
    build_datasets,
    calibration_split,
    features_only,
    plan_cutoffs,
)

H = 90
AS_OF = DATA_END - timedelta(days=120)  # real rows exist after as_of: they must never be read
WINDOWS = WindowConfig(n_training_cutoffs=2)


@pytest.fixture(scope="module")
def synthetic():
    return generate_profile(2_000, seed=5)


@pytest.fixture(scope="module")
def con():
    return connect()


def _truncate(table: pa.Table, column: str, before: datetime) -> pa.Table:
    return table.filter(pc.less(table[column], pa.scalar(before, pa.timestamp("us"))))


@pytest.fixture(scope="module")
def full_cache(synthetic, con):
    """The whole generated profile, plus adversarial rows exactly at as_of."""
    customers = synthetic.customers.to_pandas()
    orders = synthetic.orders.to_pandas()
    events = synthetic.events.to_pandas()
    at = pd.Timestamp(AS_OF)
    existing = customers["customer_id"].iloc[:50].astype(str)
    new_customer = customers.iloc[[0]].assign(customer_id="c-at-as-of", created_at=at, email="new@x.example")
    boundary_orders = pd.DataFrame(
        {
            "order_id": [f"o-at-{i}" for i in range(51)],
            "customer_id": [*existing, "c-at-as-of"],
            "ordered_at": at,
            "amount": 10.0,
            "status": "completed",
            "category": "subscription",
            "currency": "USD",
        }
    )
    boundary_events = pd.DataFrame(
        {
            "customer_id": [*existing, "c-at-as-of"],
            "occurred_at": at,
            "event_type": "pricing_page_view",
            "event_id": [f"e-at-{i}" for i in range(51)],
            "channel": "web",
        }
    )
    profile = profile_from_frames(
        con,
        pd.concat([customers, new_customer], ignore_index=True),
        pd.concat([orders, boundary_orders], ignore_index=True),
        pd.concat([events, boundary_events], ignore_index=True),
    ).profile
    return FeatureCache(profile, AS_OF)


@pytest.fixture(scope="module")
def truncated_cache(synthetic, con):
    """The same profile with every row at or after as_of removed before loading."""
    profile = profile_from_frames(
        con,
        _truncate(synthetic.customers, "created_at", AS_OF),
        _truncate(synthetic.orders, "ordered_at", AS_OF),
        _truncate(synthetic.events, "occurred_at", AS_OF),
    ).profile
    return FeatureCache(profile, AS_OF)


@pytest.fixture(scope="module")
def churn(full_cache):
    return build_datasets(full_cache, "churn", H, WINDOWS)


@pytest.fixture(scope="module")
def lead(full_cache):
    return build_datasets(full_cache, "lead", H, WINDOWS)


def test_plan_cutoffs():
    as_of = datetime(2025, 7, 1)
    plan = plan_cutoffs(as_of, "90d", WindowConfig(), data_start=datetime(2020, 1, 1))
    v = as_of - timedelta(days=90)
    assert plan.validation == v
    assert plan.training == tuple(v - timedelta(days=90 * k) for k in range(1, 5))
    assert plan.calibration == v - timedelta(days=90)
    assert plan.lightgbm == plan.training[1:]
    strided = plan_cutoffs(as_of, 90, WindowConfig(n_training_cutoffs=3, stride_days=30), datetime(2020, 1, 1))
    assert strided.training == tuple(v - timedelta(days=90 + 30 * k) for k in range(3))
    # Stops when the next cut-off would not be after the first profile.
    short = plan_cutoffs(as_of, 90, WindowConfig(n_training_cutoffs=10), data_start=v - timedelta(days=300))
    assert len(short.training) == 3 and short.training[-1] > v - timedelta(days=300)


def test_plan_needs_two_horizons_of_history():
    as_of = datetime(2025, 7, 1)
    with pytest.raises(DatasetError, match="two horizons") as info:
        plan_cutoffs(as_of, 90, WindowConfig(), data_start=as_of - timedelta(days=170))
    assert isinstance(info.value, CrmScoringError)
    single = plan_cutoffs(as_of, 90, WindowConfig(), data_start=as_of - timedelta(days=200))
    assert single.single_cutoff and single.lightgbm == single.training


def test_no_training_label_reaches_past_the_validation_cutoff(churn, lead):
    for data in (churn, lead):
        v = data.plan.validation
        assert v == AS_OF - timedelta(days=H)
        assert (data.validation[CUTOFF_COLUMN] == pd.Timestamp(v)).all()
        for frame in (data.train, data.calibration, data.refit_train):
            assert (frame[CUTOFF_COLUMN] + pd.Timedelta(days=H) <= pd.Timestamp(v)).all()
        assert set(data.calibration[CUTOFF_COLUMN]) == {pd.Timestamp(v - timedelta(days=H))}
        assert pd.Timestamp(v - timedelta(days=H)) not in set(data.train[CUTOFF_COLUMN])
        assert set(data.refit_train[CUTOFF_COLUMN]) == {pd.Timestamp(c) for c in data.plan.training}
        assert data.refit_calibration is data.validation


def test_labels_are_the_orders_in_the_window(churn, lead, synthetic):
    orders = synthetic.orders.to_pandas()
    done = orders[orders["status"] == "completed"]
    for data, positive_when_buying in ((churn, False), (lead, True)):
        for frame in (data.train, data.validation):
            sample = frame.sample(300, random_state=0) if len(frame) > 300 else frame
            for row in sample.itertuples():
                start, end = row.cutoff, row.cutoff + pd.Timedelta(days=H)
                mine = done[done["customer_id"] == row.customer_id]["ordered_at"]
                bought = bool(((mine >= start) & (mine < end)).any())
                before = int((mine < start).sum())
                assert row.label == int(bought == positive_when_buying)
                assert (before > 0) == (not positive_when_buying)  # churn: buyers, lead: no order yet
                assert row.orders_count == before


def test_nothing_at_or_after_as_of_is_read(full_cache, truncated_cache, churn, lead):
    assert full_cache.profile is not full_cache.source
    for task, data in (("churn", churn), ("lead", lead)):
        other = build_datasets(truncated_cache, task, H, WINDOWS)
        for name in ("train", "calibration", "validation", "refit_train"):
            pd.testing.assert_frame_equal(getattr(data, name), getattr(other, name), obj=f"{task}.{name}")


def test_single_cutoff_split_by_customer_hash(full_cache):
    data = build_datasets(full_cache, "lead", H, WindowConfig(n_training_cutoffs=1))
    c0 = pd.Timestamp(data.plan.calibration)
    assert set(data.train[CUTOFF_COLUMN]) == set(data.calibration[CUTOFF_COLUMN]) == {c0}
    assert not set(data.train["customer_id"]) & set(data.calibration["customer_id"])
    share = len(data.calibration) / (len(data.train) + len(data.calibration))
    assert 0.2 < share < 0.3
    assert len(data.refit_train) == len(data.train) + len(data.calibration)
    assert any("hash of customer_id" in note for note in data.notes)
    ids = pd.Series(["c-1", "c-2", "c-3"])
    assert (calibration_split(ids, 0.5) == calibration_split(ids, 0.5)).all()  # stable


def test_examples_carry_features_and_the_cache_is_shared(full_cache, churn, lead):
    assert churn.feature_columns == lead.feature_columns
    assert "customer_id" not in churn.feature_columns and LABEL_COLUMN not in churn.feature_columns
    assert any(c.startswith("attr_") for c in churn.feature_columns)  # attributes are features ...
    assert not {"attr_email", "attr_name", "attr_phone", "email"} & set(churn.feature_columns)  # ... PII never
    assert "funnel_stage" in churn.feature_columns
    inputs = features_only(churn.validation)
    assert CUTOFF_COLUMN not in inputs and LABEL_COLUMN not in inputs and "customer_id" in inputs
    assert np.isin(churn.validation[LABEL_COLUMN].unique(), [0, 1]).all()
    assert len(full_cache._tables) == 1 + len(churn.plan.training)  # one build per cut-off, both tasks


def test_unknown_task_and_early_as_of():
    with pytest.raises(DatasetError, match="unknown task"):
        build_datasets(None, "ltv", H)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="two horizons"):
        plan_cutoffs(DATA_START + timedelta(days=150), H, WindowConfig(), DATA_START)
