"""Lead-funnel family: stages, flags and recency signals on hand-made events."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from features.backend import connect
from features.families.funnel import FunnelParams, funnel_features
from features.validation import profile_from_frames
from tests.features.profiles import event_frame as events

AS_OF = datetime(2025, 7, 1)
DAY = timedelta(days=1)
CREATED = datetime(2025, 1, 1)
ORDERS = pd.DataFrame(
    {"order_id": ["o-1"], "customer_id": ["c-buyer"], "ordered_at": [datetime(2025, 1, 2)], "amount": [1.0]}
)


@pytest.fixture(scope="module")
def con():
    return connect()


def customers(*ids: str) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": ["c-buyer", *ids], "created_at": [CREATED] * (len(ids) + 1)})


def build(con, customer_frame, event_frame, params=FunnelParams(), as_of=AS_OF) -> pd.DataFrame:
    profile = profile_from_frames(con, customer_frame, ORDERS, event_frame).profile
    return con.to_pandas(funnel_features(profile, as_of, params)).set_index("customer_id").sort_index()


def test_furthest_stage_reached_before_as_of(con):
    frame = events(
        [
            ("engaged", AS_OF - 3 * DAY, "page_view"),
            ("engaged", AS_OF - 2 * DAY, "form_submit"),
            ("evaluating", AS_OF - 9 * DAY, "pricing_page_view"),
            ("evaluating", AS_OF - 1 * DAY, "email_click"),  # a later, lower stage does not lower it
            ("ready", AS_OF - 50 * DAY, "trial_start"),
            ("ready", AS_OF - 5 * DAY, "content_download"),
            ("too-late", AS_OF, "demo_request"),  # at as_of: unseen
            ("too-late", AS_OF - DAY, "page_view"),
        ]
    )
    out = build(con, customers("engaged", "evaluating", "ready", "too-late", "lead"), frame)
    assert out["funnel_stage"].to_dict() == {
        "c-buyer": 0,
        "engaged": 1,
        "evaluating": 2,
        "ready": 3,
        "too-late": 0,
        "lead": 0,
    }
    assert out.loc["too-late", "has_demo_request"] == 0
    assert out.loc["ready", "has_trial_start"] == 1 and out.loc["ready", "has_demo_request"] == 0


def test_demo_trial_flags_and_days_since_first(con):
    frame = events(
        [
            ("c1", AS_OF - 40 * DAY, "demo_request"),
            ("c1", AS_OF - 10 * DAY, "trial_start"),
            ("c1", AS_OF - 5 * DAY, "demo_request"),
            ("c2", AS_OF - 12 * DAY - timedelta(hours=12), "trial_start"),
        ]
    )
    out = build(con, customers("c1", "c2", "c3"), frame)
    assert out.loc["c1", ["has_demo_request", "has_trial_start"]].tolist() == [1, 1]
    assert out.loc["c1", "days_since_first_demo_or_trial"] == pytest.approx(40.0)
    assert out.loc["c2", "days_since_first_demo_or_trial"] == pytest.approx(12.5)
    assert pd.isna(out.loc["c3", "days_since_first_demo_or_trial"])
    assert out.loc["c3", ["has_demo_request", "has_trial_start"]].tolist() == [0, 0]


def test_recency_silence_and_created(con):
    frame = events(
        [
            ("c-edge", AS_OF - 30 * DAY, "email_open"),  # exactly at the 30-day start: not silent
            ("c-old", AS_OF - 30 * DAY - timedelta(seconds=1), "email_open"),  # just outside: silent
            ("c-new-type", AS_OF - DAY, "webinar_attended"),  # any type is activity
        ]
    )
    out = build(con, customers("c-edge", "c-old", "c-new-type", "lead"), frame)
    assert out["silent_30d"].to_dict() == {"c-buyer": 1, "c-edge": 0, "c-old": 1, "c-new-type": 0, "lead": 1}
    assert out.loc["c-edge", "days_since_last_activity"] == pytest.approx(30.0)
    assert out.loc["c-new-type", "days_since_last_activity"] == pytest.approx(1.0)
    assert pd.isna(out.loc["lead", "days_since_last_activity"])
    assert out.loc["lead", "days_since_created"] == pytest.approx((AS_OF - CREATED).days)


def test_pricing_unsubscribe_complaints_and_tickets(con):
    frame = events(
        [
            ("c1", AS_OF - 14 * DAY, "pricing_page_view"),  # inside 14 d
            ("c1", AS_OF - 15 * DAY, "pricing_page_view"),  # outside
            ("c1", AS_OF - DAY, "pricing_page_view"),
            ("c1", AS_OF - 300 * DAY, "unsubscribe"),  # any time before as_of
            ("c1", AS_OF - 90 * DAY, "complaint"),  # inside 90 d
            ("c1", AS_OF - 91 * DAY, "complaint"),
            ("c1", AS_OF - 3 * DAY, "support_ticket"),
            ("c1", AS_OF - 4 * DAY, "support_ticket"),
            ("c2", AS_OF, "unsubscribe"),  # at as_of: unseen
            ("c2", AS_OF + DAY, "complaint"),
        ]
    )
    out = build(con, customers("c1", "c2"), frame)
    c1, c2 = out.loc["c1"], out.loc["c2"]
    assert c1["pricing_page_views_14d"] == 2
    assert c1["unsubscribed"] == 1 and c2["unsubscribed"] == 0
    assert c1["complaints_90d"] == 1 and c2["complaints_90d"] == 0
    assert c1["support_tickets_90d"] == 2


def test_lead_without_events_and_one_row_per_eligible_customer(con):
    custs = pd.concat(
        [customers("lead"), pd.DataFrame({"customer_id": ["later"], "created_at": [AS_OF + DAY]})]
    )
    profile = profile_from_frames(con, custs, ORDERS).profile  # no events table at all
    out = con.to_pandas(funnel_features(profile, AS_OF)).set_index("customer_id")
    assert sorted(out.index) == ["c-buyer", "lead"]
    lead = out.loc["lead"]
    assert lead[["funnel_stage", "has_demo_request", "has_trial_start", "pricing_page_views_14d",
                 "unsubscribed", "complaints_90d", "support_tickets_90d"]].tolist() == [0] * 7
    assert lead["silent_30d"] == 1
    assert pd.isna(lead["days_since_first_demo_or_trial"]) and pd.isna(lead["days_since_last_activity"])


def test_params_rename_windows_and_stages(con):
    params = FunnelParams(
        engaged_event_types=("webinar_attended",),
        silent_days=7,
        pricing_window_days=30,
        service_window_days=30,
    )
    frame = events([("c1", AS_OF - 20 * DAY, "webinar_attended"), ("c1", AS_OF - 20 * DAY, "pricing_page_view")])
    out = build(con, customers("c1"), frame, params)
    assert list(out.columns) == [
        "funnel_stage",
        "has_demo_request",
        "has_trial_start",
        "days_since_first_demo_or_trial",
        "days_since_created",
        "days_since_last_activity",
        "silent_7d",
        "pricing_page_views_30d",
        "unsubscribed",
        "complaints_30d",
        "support_tickets_30d",
    ]
    assert out.loc["c1", "funnel_stage"] == 2
    assert out.loc["c1", "silent_7d"] == 1
    assert out.loc["c1", "pricing_page_views_30d"] == 1


def test_bad_params():
    with pytest.raises(ValueError, match="more than one stage"):
        FunnelParams(engaged_event_types=("pricing_page_view",))
    with pytest.raises(ValueError, match="silent_days"):
        FunnelParams(silent_days=0)
    with pytest.raises(ValueError, match="at least one"):
        FunnelParams(sales_ready_event_types=())
