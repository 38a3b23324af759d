"""Engagement family: per-type windows, recency, trends, totals and active days on hand-made events."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from features.backend import connect
from features.families.engagement import EngagementParams, engagement_column_names, engagement_features
from features.schema import KNOWN_EVENT_TYPES
from features.validation import profile_from_frames
from tests.features.profiles import event_frame as events

AS_OF = datetime(2025, 7, 1)
DAY = timedelta(days=1)
NO_ORDERS = pd.DataFrame(
    {"order_id": ["o-1"], "customer_id": ["c-buyer"], "ordered_at": [datetime(2025, 1, 1)], "amount": [1.0]}
)


@pytest.fixture(scope="module")
def con():
    return connect()


def customers(*ids: str, created_at: datetime = datetime(2024, 1, 1)) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": ["c-buyer", *ids], "created_at": [created_at] * (len(ids) + 1)})


def build(con, customer_frame, event_frame, params=EngagementParams(), as_of=AS_OF) -> pd.DataFrame:
    profile = profile_from_frames(con, customer_frame, NO_ORDERS, event_frame).profile
    return con.to_pandas(engagement_features(profile, as_of, params)).set_index("customer_id").sort_index()


def test_window_counts_and_boundaries(con):
    frame = events(
        [
            ("c1", AS_OF - 30 * DAY, "pricing_page_view"),  # exactly at the 30-day start: inside
            ("c1", AS_OF - 30 * DAY - timedelta(seconds=1), "pricing_page_view"),  # just outside 30 d
            ("c1", AS_OF - 7 * DAY, "pricing_page_view"),  # inside 7 d
            ("c1", AS_OF - timedelta(seconds=1), "email_open"),
            ("c1", AS_OF, "pricing_page_view"),  # at as_of: excluded
            ("c1", AS_OF + DAY, "pricing_page_view"),  # future: excluded
            ("c1", AS_OF - 200 * DAY, "pricing_page_view"),  # only in "days since last"
        ]
    )
    out = build(con, customers("c1"), frame).loc["c1"]
    assert out["pricing_page_view_count_7d"] == 1
    assert out["pricing_page_view_count_30d"] == 2
    assert out["pricing_page_view_count_90d"] == 3
    assert out["days_since_last_pricing_page_view"] == pytest.approx(7.0)
    assert out["email_open_count_7d"] == 1
    assert out["days_since_last_email_open"] == pytest.approx(1 / 86400)
    assert out["events_count_7d"] == 2 and out["events_count_30d"] == 3 and out["events_count_90d"] == 4
    assert out["days_since_last_event"] == pytest.approx(1 / 86400)
    assert out["page_view_count_90d"] == 0 and pd.isna(out["days_since_last_page_view"])


def test_unconfigured_types_count_in_the_totals_only(con):
    # The vocabulary is free: a CDP's own event types are activity too (totals, recency,
    # active days, trend), but only the configured types get columns of their own.
    frame = events(
        [
            ("c1", AS_OF - DAY, "webinar_attended"),  # free vocabulary, not configured
            ("c1", AS_OF - 40 * DAY, "Page_View"),  # types match exactly: this is another type
            ("c1", AS_OF - 2 * DAY, "page_view"),
            ("c2", AS_OF - 3 * DAY, "webinar_attended"),  # only unconfigured types
        ]
    )
    out = build(con, customers("c1", "c2"), frame)
    c1, c2 = out.loc["c1"], out.loc["c2"]
    assert c1["page_view_count_7d"] == 1 and c1["page_view_count_90d"] == 1
    assert c1["events_count_7d"] == 2 and c1["events_count_30d"] == 2 and c1["events_count_90d"] == 3
    assert c1["days_since_last_event"] == pytest.approx(1.0)
    assert c1["days_since_last_page_view"] == pytest.approx(2.0)
    assert c1["active_days_30d"] == 2
    assert c1["events_trend_30d"] == pytest.approx((2 - 1) / (2 + 1))  # 2 in the last 30 days, 1 in the 30 before
    assert c2["events_count_7d"] == 1 and c2["days_since_last_event"] == pytest.approx(3.0) and c2["active_days_30d"] == 1
    assert all(c2[f"{t}_count_90d"] == 0 for t in KNOWN_EVENT_TYPES)
    assert not any("webinar" in c for c in out.columns)


def test_trend_last_30_days_against_the_30_before(con):
    frame = events(
        [
            *[("c-up", AS_OF - d * DAY, "app_login") for d in (1, 2, 3)],
            ("c-up", AS_OF - 31 * DAY, "app_login"),
            ("c-down", AS_OF - 60 * DAY, "app_login"),  # exactly at the start of the previous window
            ("c-down", AS_OF - 61 * DAY, "app_login"),  # before it: no effect
            ("c-flat", AS_OF - 5 * DAY, "app_login"),
            ("c-flat", AS_OF - 35 * DAY, "app_login"),
        ]
    )
    out = build(con, customers("c-up", "c-down", "c-flat", "c-none"), frame)
    assert out.loc["c-up", "app_login_trend_30d"] == pytest.approx(0.5)
    assert out.loc["c-down", "app_login_trend_30d"] == -1.0
    assert out.loc["c-flat", "app_login_trend_30d"] == 0.0
    assert out.loc["c-none", "app_login_trend_30d"] == 0.0
    assert out.loc["c-up", "events_trend_30d"] == pytest.approx(0.5)
    assert out.loc["c-none", "email_open_trend_30d"] == 0.0


def test_trend_window_outside_the_count_windows(con):
    frame = events(
        [
            ("c1", AS_OF - 10 * DAY, "email_click"),
            ("c1", AS_OF - 100 * DAY, "email_click"),  # in [as_of - 120 d, as_of - 60 d)
            ("c1", AS_OF - 130 * DAY, "email_click"),  # before the trend windows
        ]
    )
    params = EngagementParams(windows_days=(7,), event_types=("email_click",), trend_days=60, active_days_window=14)
    out = build(con, customers("c1"), frame, params)
    assert list(out.columns) == [
        "email_click_count_7d",
        "days_since_last_email_click",
        "email_click_trend_60d",
        "events_count_7d",
        "days_since_last_event",
        "events_trend_60d",
        "active_days_14d",
    ]
    row = out.loc["c1"]
    assert row["email_click_count_7d"] == 0
    assert row["email_click_trend_60d"] == 0.0  # one in each trend window
    assert row["days_since_last_email_click"] == pytest.approx(10.0)
    assert row["active_days_14d"] == 1


def test_active_days_are_distinct_calendar_days(con):
    frame = events(
        [
            ("c1", datetime(2025, 6, 20, 8), "page_view"),
            ("c1", datetime(2025, 6, 20, 23, 59), "email_open"),  # same UTC day
            ("c1", datetime(2025, 6, 21, 0, 1), "page_view"),
            ("c1", AS_OF - 30 * DAY, "page_view"),  # 2025-06-01 00:00: inside
            ("c1", AS_OF - 31 * DAY, "page_view"),  # outside
        ]
    )
    out = build(con, customers("c1"), frame)
    assert out.loc["c1", "active_days_30d"] == 3


def test_one_row_per_eligible_customer_and_silent_leads_get_zeros(con):
    frame = events([("c1", AS_OF - DAY, "demo_request")])
    custs = pd.concat(
        [customers("c1", "lead"), pd.DataFrame({"customer_id": ["new"], "created_at": [AS_OF]})]
    )
    out = build(con, custs, frame)
    assert sorted(out.index) == ["c-buyer", "c1", "lead"]
    lead = out.loc["lead"]
    count_columns = [c for c in out.columns if "_count_" in c or c.startswith("active_days")]
    assert (lead[count_columns] == 0).all()
    assert lead[[c for c in out.columns if c.startswith("days_since")]].isna().all()
    assert (lead[[c for c in out.columns if "_trend_" in c]] == 0.0).all()


def test_profile_without_events(con):
    profile = profile_from_frames(con, customers("c1"), NO_ORDERS).profile
    out = con.to_pandas(engagement_features(profile, AS_OF))
    assert len(out) == 2
    assert out["events_count_90d"].tolist() == [0, 0]


def test_column_names_are_declared_and_column_safe(con):
    params = EngagementParams(event_types=("Webinar Attended", "pricing_page_view"))
    names = engagement_column_names(params)
    assert "webinar_attended_count_30d" in names and "days_since_last_webinar_attended" in names
    frame = events([("c1", AS_OF - DAY, "Webinar Attended")])
    out = build(con, customers("c1"), frame, params)
    assert tuple(out.columns) == names
    assert out.loc["c1", "webinar_attended_count_7d"] == 1
    default = engagement_column_names()
    assert len(default) == len(KNOWN_EVENT_TYPES) * 5 + 6
    assert "days_since_last_pricing_page_view" in default


def test_clashing_or_bad_params_fail_early():
    with pytest.raises(ValueError, match="clashing"):
        engagement_column_names(EngagementParams(event_types=("page view", "page_view")))
    with pytest.raises(ValueError, match="clashing"):
        engagement_column_names(EngagementParams(event_types=("event",)))  # days_since_last_event
    with pytest.raises(ValueError, match="duplicates"):
        EngagementParams(event_types=("page_view", "page_view"))
    with pytest.raises(ValueError, match="trend_days"):
        EngagementParams(trend_days=0)
    with pytest.raises(ValueError, match="windows_days"):
        EngagementParams(windows_days=())
