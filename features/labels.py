"""Labels: what happens in the window [as_of, as_of + horizon), apart from features.

Populations are defined by what is known before as_of (they must match the rows of the
feature table, so only eligible customers, created_at < as_of, are labelled). Label values
read only completed orders with as_of <= ordered_at < as_of + horizon. Each function is one
group-by over the orders with conditional aggregates, joined to the eligible customers.
"""

from __future__ import annotations

from datetime import datetime

import ibis
from ibis import _

from features.population import completed_orders, eligible_customers
from features.profile import Profile
from features.timeutil import as_of_literal, day_number, horizon_end, parse_horizon, to_utc_naive


def _order_window_stats(profile: Profile, as_of: datetime, horizon_days: int | str) -> ibis.Table:
    """Per customer with a completed order before as_of + horizon: counts before and inside the window."""
    start = to_utc_naive(as_of)
    end = horizon_end(start, parse_horizon(horizon_days))
    start_lit, end_lit = as_of_literal(start), as_of_literal(end)
    orders = completed_orders(profile)
    orders = orders.filter(orders.ordered_at < end_lit)
    in_window = orders.ordered_at >= start_lit
    return orders.group_by("customer_id").aggregate(
        orders_before=_.count(where=~in_window),
        window_orders=_.count(where=in_window),
        window_purchase_days=day_number(orders.ordered_at).nunique(where=in_window),
        window_revenue=orders.amount.sum(where=in_window),
    )


def _with_stats(profile: Profile, as_of: datetime, horizon_days: int | str) -> ibis.Table:
    eligible = eligible_customers(profile, as_of).select("customer_id")
    joined = eligible.left_join(_order_window_stats(profile, as_of, horizon_days), "customer_id")
    return joined.select(
        customer_id=joined.customer_id,
        orders_before=joined.orders_before.fill_null(0),
        window_orders=joined.window_orders.fill_null(0),
        window_purchase_days=joined.window_purchase_days.fill_null(0),
        window_revenue=joined.window_revenue.fill_null(0.0),
    )


def lead_conversion_labels(profile: Profile, as_of: datetime, horizon_days: int | str) -> ibis.Table:
    """Leads (eligible, no completed order before as_of) -> `converted`: a completed order in the window."""
    stats = _with_stats(profile, as_of, horizon_days)
    leads = stats.filter(stats.orders_before == 0)
    return leads.select("customer_id", converted=leads.window_orders > 0).order_by("customer_id")


def churn_labels(profile: Profile, as_of: datetime, horizon_days: int | str) -> ibis.Table:
    """Buyers (eligible, >= 1 completed order before as_of) -> `churned`: no completed order in the window."""
    stats = _with_stats(profile, as_of, horizon_days)
    buyers = stats.filter(stats.orders_before > 0)
    return buyers.select("customer_id", churned=buyers.window_orders == 0).order_by("customer_id")


def holdout_purchases(profile: Profile, as_of: datetime, horizon_days: int | str) -> ibis.Table:
    """Buyers -> `holdout_purchases` (distinct purchase days in the window, as the CDNOW
    papers count transactions) and `holdout_revenue` (sum of the window's order amounts)."""
    stats = _with_stats(profile, as_of, horizon_days)
    buyers = stats.filter(stats.orders_before > 0)
    return buyers.select(
        "customer_id",
        holdout_purchases=buyers.window_purchase_days,
        holdout_revenue=buyers.window_revenue,
    ).order_by("customer_id")
