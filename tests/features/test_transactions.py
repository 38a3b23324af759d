"""Transaction family: windows, trends, gaps, refunds, categories, checked on hand-made orders."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.backend import connect
from features.families.transactions import TransactionParams, transaction_features
from features.validation import profile_from_frames

AS_OF = datetime(2025, 7, 1)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def con():
    return connect()


def customers(*ids: str, created_at: datetime = datetime(2024, 1, 1)) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": list(ids), "created_at": [created_at] * len(ids)})


def orders(rows: list[tuple]) -> pd.DataFrame:
    """rows: (customer_id, ordered_at, amount, status, category)."""
    frame = pd.DataFrame(rows, columns=["customer_id", "ordered_at", "amount", "status", "category"])
    frame.insert(0, "order_id", [f"o-{i}" for i in range(len(frame))])
    # Explicit types: an all-None column would otherwise have no type at all.
    types = {"ordered_at": "datetime64[us]", "amount": "float64"}
    return frame.astype({c: types.get(c, "string") for c in frame.columns})


def build(con, customer_frame: pd.DataFrame, order_frame: pd.DataFrame, params=TransactionParams(), as_of=AS_OF):
    profile = profile_from_frames(con, customer_frame, order_frame).profile
    return con.to_pandas(transaction_features(profile, as_of, params)).set_index("customer_id").sort_index()


def test_window_boundaries_and_completed_only(con):
    frame = orders(
        [
            ("c1", AS_OF - 30 * DAY, 10.0, "completed", None),  # exactly at the 30-day start: inside
            ("c1", AS_OF - 30 * DAY - timedelta(seconds=1), 20.0, "completed", None),  # just outside 30 d
            ("c1", AS_OF - timedelta(seconds=1), 1.0, None, None),  # no status counts as completed
            ("c1", AS_OF - 2 * DAY, 500.0, "cancelled", None),  # not a purchase
            ("c1", AS_OF, 1000.0, "completed", None),  # at as_of: excluded
            ("c1", AS_OF + DAY, 1000.0, "completed", None),  # future: excluded
            ("c1", AS_OF - 200 * DAY, 4.0, "COMPLETED", None),  # status is case-insensitive
        ]
    )
    out = build(con, customers("c1"), frame).loc["c1"]
    assert out["orders_7d"] == 1 and out["revenue_7d"] == pytest.approx(1.0)
    assert out["orders_30d"] == 2 and out["revenue_30d"] == pytest.approx(11.0)
    assert out["orders_90d"] == 3 and out["revenue_90d"] == pytest.approx(31.0)
    assert out["orders_365d"] == 4 and out["revenue_365d"] == pytest.approx(35.0)
    assert out["days_since_last_order"] == pytest.approx(1 / 86400)


def test_trends_are_symmetric_relative_changes(con):
    frame = orders(
        [
            # c-up: 3 orders in the last 30 days, 1 in the 30 days before.
            *[("c-up", AS_OF - d * DAY, 10.0, "completed", None) for d in (1, 2, 3)],
            ("c-up", AS_OF - 45 * DAY, 30.0, "completed", None),
            # c-stopped: bought only 30-60 days ago (the previous window starts at exactly as_of - 60 d).
            ("c-stopped", AS_OF - 60 * DAY, 5.0, "completed", None),
        ]
    )
    out = build(con, customers("c-up", "c-stopped", "c-none"), frame)
    assert out.loc["c-up", "orders_trend_30d"] == pytest.approx((3 - 1) / (3 + 1))
    assert out.loc["c-up", "revenue_trend_30d"] == pytest.approx((30 - 30) / 60)
    assert out.loc["c-stopped", "orders_trend_30d"] == -1.0
    assert out.loc["c-stopped", "revenue_trend_30d"] == -1.0
    # Never bought: 0, not a division by zero.
    assert out.loc["c-none", "orders_trend_30d"] == 0.0
    assert out.loc["c-none", "revenue_trend_90d"] == 0.0
    # c-up's 45-day-old order is inside the 90-day window, so there is nothing before it.
    assert out.loc["c-up", "orders_trend_90d"] == 1.0


def test_gaps_between_distinct_purchase_days(con):
    first = datetime(2025, 3, 1, 9, 0)
    frame = orders(
        [
            ("c1", first, 10.0, "completed", None),
            ("c1", first + timedelta(hours=5), 10.0, "completed", None),  # same day: one purchase
            ("c1", first + 10 * DAY, 10.0, "completed", None),
            ("c1", first + 30 * DAY, 10.0, "completed", None),
            ("c2", first, 10.0, "completed", None),
            ("c2", first + 4 * DAY, 10.0, "completed", None),
            ("c3", first, 10.0, "completed", None),
        ]
    )
    out = build(con, customers("c1", "c2", "c3"), frame)
    # c1: gaps 10 and 20 days.
    assert out.loc["c1", "purchase_gap_mean_days"] == pytest.approx(15.0)
    assert out.loc["c1", "purchase_gap_std_days"] == pytest.approx(math.sqrt(50.0))
    since_last = (AS_OF - (first + 30 * DAY)).total_seconds() / 86400
    assert out.loc["c1", "days_since_last_order"] == pytest.approx(since_last)
    assert out.loc["c1", "purchase_overdue_ratio"] == pytest.approx(since_last / 15.0)
    # c2: one gap -> mean, but no standard deviation.
    assert out.loc["c2", "purchase_gap_mean_days"] == pytest.approx(4.0)
    assert pd.isna(out.loc["c2", "purchase_gap_std_days"])
    # c3: one purchase day -> no gap at all.
    assert pd.isna(out.loc["c3", "purchase_gap_mean_days"])
    assert pd.isna(out.loc["c3", "purchase_overdue_ratio"])


def test_refund_share_over_all_orders_before_as_of(con):
    frame = orders(
        [
            ("c1", AS_OF - 10 * DAY, 10.0, "completed", None),
            ("c1", AS_OF - 20 * DAY, 10.0, "refunded", None),
            ("c1", AS_OF - 30 * DAY, 10.0, "Returned", None),
            ("c1", AS_OF - 40 * DAY, 10.0, "cancelled", None),
            ("c1", AS_OF + DAY, 10.0, "refunded", None),  # after as_of: unseen
            ("c2", AS_OF - 10 * DAY, 10.0, "completed", None),
        ]
    )
    out = build(con, customers("c1", "c2", "c3"), frame)
    assert out.loc["c1", "refund_share"] == pytest.approx(2 / 4)
    assert out.loc["c2", "refund_share"] == 0.0
    assert pd.isna(out.loc["c3", "refund_share"])  # no order at all
    # Refunded orders are not purchases.
    assert out.loc["c1", "orders_365d"] == 1


def test_top_category_by_revenue_and_distinct_categories(con):
    frame = orders(
        [
            ("c1", AS_OF - 10 * DAY, 5.0, "completed", "books"),
            ("c1", AS_OF - 11 * DAY, 5.0, "completed", "books"),
            ("c1", AS_OF - 12 * DAY, 8.0, "completed", "toys"),
            ("c1", AS_OF - 13 * DAY, 100.0, "refunded", "garden"),  # not a purchase
            ("c1", AS_OF - 14 * DAY, 3.0, "completed", None),
            ("c2", AS_OF - 10 * DAY, 7.0, "completed", "toys"),
            ("c2", AS_OF - 11 * DAY, 7.0, "completed", "books"),  # tie: alphabetical first
            ("c3", AS_OF - 10 * DAY, 7.0, "completed", None),
        ]
    )
    out = build(con, customers("c1", "c2", "c3"), frame)
    assert out.loc["c1", "top_category"] == "books"
    assert out.loc["c1", "distinct_categories"] == 2
    assert out.loc["c2", "top_category"] == "books"
    assert pd.isna(out.loc["c3", "top_category"])
    assert out.loc["c3", "distinct_categories"] == 0


def test_one_row_per_eligible_customer_and_leads_get_zeros(con):
    frame = orders([("c1", AS_OF - DAY, 10.0, "completed", "books")])
    custs = pd.concat(
        [customers("c1", "lead"), customers("future", created_at=AS_OF), customers("later", created_at=AS_OF + DAY)]
    )
    out = build(con, custs, frame)
    assert sorted(out.index) == ["c1", "lead"]
    lead = out.loc["lead"]
    for w in (7, 30, 90, 365):
        assert lead[f"orders_{w}d"] == 0 and lead[f"revenue_{w}d"] == 0.0
        assert lead[f"orders_trend_{w}d"] == 0.0
    for column in ("days_since_last_order", "purchase_gap_mean_days", "purchase_overdue_ratio", "refund_share"):
        assert pd.isna(lead[column])
    assert lead["distinct_categories"] == 0


def test_columns_and_types_follow_params(con):
    frame = orders([("c1", AS_OF - DAY, 10.0, "completed", "books")])
    profile = profile_from_frames(con, customers("c1"), frame).profile
    table = transaction_features(profile, AS_OF, TransactionParams(windows_days=(14,)))
    assert table.columns == (
        "customer_id",
        "orders_14d",
        "revenue_14d",
        "orders_trend_14d",
        "revenue_trend_14d",
        "days_since_last_order",
        "purchase_gap_mean_days",
        "purchase_gap_std_days",
        "purchase_overdue_ratio",
        "refund_share",
        "top_category",
        "distinct_categories",
    )
    schema = table.schema()
    assert schema["orders_14d"].is_int64() and schema["revenue_14d"].is_float64()
    assert schema["top_category"].is_string()


@pytest.mark.parametrize("windows", [(), (30, 30), (0,), (-7,)])
def test_bad_windows_are_rejected(windows):
    with pytest.raises(ValueError, match="windows_days"):
        TransactionParams(windows_days=windows)


CUSTOMER_IDS = ("c1", "c2", "c3", "c4")


# Few examples of several customers each: every example pays for a validation round trip.
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(CUSTOMER_IDS), st.integers(-400 * 24, 10 * 24), st.integers(0, 500)),
        max_size=60,
    )
)
def test_windows_and_gaps_match_a_pandas_reference(con, rows):
    """Random hourly orders around as_of: counts, revenue and gaps equal a direct pandas computation."""
    frame = orders(
        [(c, AS_OF + timedelta(hours=h), float(amount), "completed", None) for c, h, amount in rows]
    )
    out = build(con, customers(*CUSTOMER_IDS), frame)
    seen = frame[frame.ordered_at < AS_OF]
    for cid in CUSTOMER_IDS:
        mine = seen[seen.customer_id == cid]
        for w in (7, 30, 90, 365):
            inside = mine[mine.ordered_at >= AS_OF - w * DAY]
            assert out.loc[cid, f"orders_{w}d"] == len(inside)
            assert out.loc[cid, f"revenue_{w}d"] == pytest.approx(float(inside.amount.sum()))
        days = sorted({ts.date() for ts in mine.ordered_at})
        gaps = [(b - a).days for a, b in zip(days, days[1:])]
        if gaps:
            assert out.loc[cid, "purchase_gap_mean_days"] == pytest.approx(sum(gaps) / len(gaps))
        else:
            assert pd.isna(out.loc[cid, "purchase_gap_mean_days"])
        if len(gaps) >= 2:
            assert out.loc[cid, "purchase_gap_std_days"] == pytest.approx(pd.Series(gaps).std(ddof=1))
