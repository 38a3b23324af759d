"""Labels: the window [as_of, as_of + horizon), populations, and no overlap with features."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from features.backend import connect
from features.cdnow import cdnow_to_profile
from features.families.rfm import rfm_features
from features.io import read_cdnow_transactions
from features.labels import churn_labels, holdout_purchases, lead_conversion_labels
from features.validation import profile_from_frames
from tests.features.profiles import make_profile

AS_OF = datetime(2024, 3, 1)
HORIZON = 30
END = AS_OF + timedelta(days=HORIZON)
US = timedelta(microseconds=1)


@pytest.fixture(scope="module")
def con():
    return connect()


def as_dict(table, column: str) -> dict[str, object]:
    return {r["customer_id"]: r[column] for r in table.to_pyarrow().to_pylist()}


CREATED = datetime(2024, 1, 1)


@pytest.fixture(scope="module")
def profile(con):
    customers = [
        (c, CREATED)
        for c in (
            "lead_at_start",  # first order exactly at as_of: converts
            "lead_before_end",  # first order one microsecond before the window ends: converts
            "lead_at_end",  # first order exactly at as_of + horizon: does not convert
            "lead_cancelled",  # only a cancelled order in the window: does not convert
            "lead_cancelled_before",  # a cancelled order before as_of is no purchase: still a lead
            "lead_silent",
            "buyer_back",  # buys before and in the window: not churned
            "buyer_gone",  # buys just before as_of only: churned
            "buyer_late",  # next order exactly at the window end: churned
        )
    ] + [("created_at_as_of", AS_OF), ("created_later", AS_OF + timedelta(days=3))]
    orders = [
        ("lead_at_start", AS_OF, 10),
        ("lead_before_end", END - US, 20),
        ("lead_at_end", END, 40),
        ("lead_cancelled", AS_OF + timedelta(days=1), 80, "cancelled"),
        ("lead_cancelled_before", AS_OF - timedelta(days=1), 5, "cancelled"),
        ("buyer_back", datetime(2024, 2, 1), 1),
        ("buyer_back", AS_OF + timedelta(days=2, hours=1), 100),
        ("buyer_back", AS_OF + timedelta(days=2, hours=5), 200),  # same day: one purchase day
        ("buyer_back", AS_OF + timedelta(days=9), 400),
        ("buyer_back", AS_OF + timedelta(days=10), 800, "refunded"),  # not a purchase
        ("buyer_back", END, 1600),  # after the window
        ("buyer_gone", AS_OF - US, 7),
        ("buyer_late", datetime(2024, 2, 10), 3),
        ("buyer_late", END, 9),
        ("created_at_as_of", AS_OF + timedelta(days=1), 50),
        ("created_later", AS_OF + timedelta(days=4), 50),
    ]
    return make_profile(con, customers, orders)


LEADS = {"lead_at_start", "lead_before_end", "lead_at_end", "lead_cancelled", "lead_cancelled_before", "lead_silent"}
BUYERS = {"buyer_back", "buyer_gone", "buyer_late"}


def test_lead_conversion_population_and_window(profile):
    converted = as_dict(lead_conversion_labels(profile, AS_OF, HORIZON), "converted")
    assert set(converted) == LEADS  # eligible (created before as_of) and no completed order before it
    assert {c for c, v in converted.items() if v} == {"lead_at_start", "lead_before_end"}


def test_churn_population_and_window(profile):
    churned = as_dict(churn_labels(profile, AS_OF, HORIZON), "churned")
    assert set(churned) == BUYERS
    assert churned == {"buyer_back": False, "buyer_gone": True, "buyer_late": True}


def test_holdout_counts_distinct_purchase_days_and_window_revenue(profile):
    table = holdout_purchases(profile, AS_OF, HORIZON)
    purchases, revenue = as_dict(table, "holdout_purchases"), as_dict(table, "holdout_revenue")
    assert set(purchases) == BUYERS
    assert purchases == {"buyer_back": 2, "buyer_gone": 0, "buyer_late": 0}
    assert revenue == {"buyer_back": 700.0, "buyer_gone": 0.0, "buyer_late": 0.0}


def test_horizon_accepts_durations(profile):
    assert as_dict(churn_labels(profile, AS_OF, "30d"), "churned") == as_dict(churn_labels(profile, AS_OF, 30), "churned")


def test_features_and_labels_do_not_overlap(profile):
    """An order at as_of - 1 us is a feature and never a label; one at as_of is a label and never a feature."""
    features = {r["customer_id"]: r for r in rfm_features(profile, AS_OF).to_pyarrow().to_pylist()}
    assert features["buyer_gone"]["orders_count"] == 1  # as_of - 1 us
    assert features["lead_at_start"]["orders_count"] == 0  # exactly at as_of
    assert features["buyer_back"]["revenue_total"] == 1.0
    assert as_dict(holdout_purchases(profile, AS_OF, HORIZON), "holdout_revenue")["buyer_gone"] == 0.0


def test_labels_ignore_rows_outside_the_window(con, profile):
    """Changing amounts before as_of or adding orders from as_of + horizon on changes no label value."""
    shifted = make_profile(
        con,
        [("a", CREATED), ("b", CREATED)],
        [("a", datetime(2024, 2, 1), 1), ("a", AS_OF, 5), ("b", datetime(2024, 2, 1), 1)],
    )
    noisy = make_profile(
        con,
        [("a", CREATED), ("b", CREATED)],
        [
            ("a", datetime(2024, 2, 1), 999),
            ("a", datetime(2024, 2, 2), 999),
            ("a", AS_OF, 5),
            ("a", END, 999),
            ("b", datetime(2024, 2, 1), 1),
            ("b", END + timedelta(days=1), 999),
        ],
    )
    for labels in (churn_labels, holdout_purchases):
        assert labels(shifted, AS_OF, HORIZON).to_pandas().equals(labels(noisy, AS_OF, HORIZON).to_pandas())


@pytest.mark.slow
def test_cdnow_holdout_by_calibration_frequency_matches_the_published_table(con):
    """Mean holdout transactions per calibration frequency, CDNOW sample, 39 + 39 weeks.

    Source: Fader, Hardie & Lee (2005), "Counting your customers the easy way", Marketing
    Science 24(2), figure of conditional expectations; the numbers as in DESIGN.md.
    """
    cdnow = cdnow_to_profile(read_cdnow_transactions(sample=True))
    profile = profile_from_frames(con, cdnow.customers, cdnow.orders).profile
    as_of = datetime(1997, 10, 1)
    features = rfm_features(profile, as_of).to_pandas()
    holdout = holdout_purchases(profile, as_of, "39w").to_pandas()
    merged = features.merge(holdout, on="customer_id", validate="one_to_one")
    assert len(merged) == 2357
    means = merged.groupby(merged.frequency.clip(upper=7)).holdout_purchases.mean()
    published = [0.2367, 0.6970, 1.3925, 1.5600, 2.5323, 2.9474, 3.8621, 6.3594]
    assert means.to_numpy() == pytest.approx(published, abs=5e-5)
