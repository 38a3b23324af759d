"""Lead-funnel family: how far a profile has come towards buying, read from known event types.

Point in time: only events with `occurred_at < as_of` are read, in one group-by with
conditional aggregates. Event types are matched exactly (case-sensitive).

Columns (one row per eligible customer, key `customer_id`; windows are `[as_of - n days, as_of)`):

- `funnel_stage` (int): furthest stage reached before as_of: 0 none, 1 engaged
  (email_click / form_submit / content_download), 2 evaluating (pricing_page_view),
  3 sales-ready (demo_request / trial_start). The stage types are configurable;
- `has_demo_request`, `has_trial_start` (0/1);
- `days_since_first_demo_or_trial`: exact days since the first sales-ready event; null when none;
- `days_since_created`: exact days since the profile was created (never null);
- `days_since_last_activity`: exact days since the last event of any type; null when none;
- `silent_{n}d` (0/1, n = `silent_days`): no event of any type in the window (1 for a
  profile that never had one);
- `pricing_page_views_{n}d` (n = `pricing_window_days`), `complaints_{n}d` and
  `support_tickets_{n}d` (n = `service_window_days`): counts, 0 when none;
- `unsubscribed` (0/1): any unsubscribe before as_of (a re-subscribe is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import ibis

from features.families.engagement import events_before, timestamp_where
from features.population import eligible_customers
from features.profile import Profile
from features.timeutil import as_of_literal, days_before, days_between, to_utc_naive

STAGE_NONE, STAGE_ENGAGED, STAGE_EVALUATING, STAGE_SALES_READY = 0, 1, 2, 3

DEMO_REQUEST = "demo_request"
TRIAL_START = "trial_start"
PRICING_PAGE_VIEW = "pricing_page_view"
UNSUBSCRIBE = "unsubscribe"
COMPLAINT = "complaint"
SUPPORT_TICKET = "support_ticket"


@dataclass(frozen=True)
class FunnelParams:
    """Which event types mark each funnel stage, and the windows of the recency signals."""

    engaged_event_types: tuple[str, ...] = ("email_click", "form_submit", "content_download")
    evaluating_event_types: tuple[str, ...] = (PRICING_PAGE_VIEW,)
    sales_ready_event_types: tuple[str, ...] = (DEMO_REQUEST, TRIAL_START)
    silent_days: int = 30
    pricing_window_days: int = 14
    service_window_days: int = 90

    def __post_init__(self) -> None:
        for name in ("silent_days", "pricing_window_days", "service_window_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"FunnelParams.{name} must be a positive integer, got {value!r}")
        stages = (self.engaged_event_types, self.evaluating_event_types, self.sales_ready_event_types)
        if not all(stages):
            raise ValueError("FunnelParams: every funnel stage needs at least one event type")
        listed = [t for stage in stages for t in stage]
        if len(set(listed)) != len(listed):
            raise ValueError(f"FunnelParams: an event type is listed in more than one stage: {listed}")


def _count_where(condition: ibis.BooleanValue) -> ibis.IntegerValue:
    """Rows meeting `condition`, as COUNT(CASE WHEN condition THEN 1 END): on DuckDB cheaper than
    SUM(CASE ... ELSE 0) (128-bit sum states) and than COUNT(*) FILTER (...)."""
    return ibis.ifelse(condition, 1, ibis.null("int8")).count()


def funnel_features(profile: Profile, as_of: datetime, params: FunnelParams = FunnelParams()) -> ibis.Table:
    """Funnel features at `as_of`: one row per eligible customer (see the module docstring)."""
    as_of = to_utc_naive(as_of)
    cutoff = as_of_literal(as_of)

    def since(table: ibis.Table, days: int) -> ibis.BooleanValue:
        return table.occurred_at >= days_before(as_of, days)

    ev = events_before(profile, as_of)  # the same expression as the engagement family's: read once
    kind = ev.event_type
    stage = ibis.cases(
        (kind.isin(list(params.sales_ready_event_types)), STAGE_SALES_READY),
        (kind.isin(list(params.evaluating_event_types)), STAGE_EVALUATING),
        (kind.isin(list(params.engaged_event_types)), STAGE_ENGAGED),
        else_=STAGE_NONE,
    )
    per_customer = ev.group_by("customer_id").aggregate(
        _stage=stage.max(),
        _demo_requests=_count_where(kind == DEMO_REQUEST),
        _trial_starts=_count_where(kind == TRIAL_START),
        _first_sales_ready=timestamp_where(kind.isin(list(params.sales_ready_event_types)), ev.occurred_at).min(),
        _last_event=ev.occurred_at.max(),
        _recent_events=_count_where(since(ev, params.silent_days)),
        _pricing_views=_count_where((kind == PRICING_PAGE_VIEW) & since(ev, params.pricing_window_days)),
        _unsubscribes=_count_where(kind == UNSUBSCRIBE),
        _complaints=_count_where((kind == COMPLAINT) & since(ev, params.service_window_days)),
        _tickets=_count_where((kind == SUPPORT_TICKET) & since(ev, params.service_window_days)),
    )

    population = eligible_customers(profile, as_of)
    right = per_customer.rename(_agg_customer_id="customer_id")
    t = population.left_join(right, population.customer_id == right._agg_customer_id)

    def count(col: str) -> ibis.IntegerValue:
        return t[col].coalesce(0).cast("int64")

    def flag(condition: ibis.BooleanValue) -> ibis.IntegerValue:
        return ibis.ifelse(condition, 1, 0).cast("int64")

    return t.select(
        customer_id=t.customer_id,
        funnel_stage=count("_stage"),
        has_demo_request=flag(count("_demo_requests") > 0),
        has_trial_start=flag(count("_trial_starts") > 0),
        days_since_first_demo_or_trial=days_between(cutoff, t._first_sales_ready),
        days_since_created=days_between(cutoff, t.created_at),
        days_since_last_activity=days_between(cutoff, t._last_event),
        **{
            f"silent_{params.silent_days}d": flag(count("_recent_events") == 0),
            f"pricing_page_views_{params.pricing_window_days}d": count("_pricing_views"),
        },
        unsubscribed=flag(count("_unsubscribes") > 0),
        **{
            f"complaints_{params.service_window_days}d": count("_complaints"),
            f"support_tickets_{params.service_window_days}d": count("_tickets"),
        },
    )
