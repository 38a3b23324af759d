"""Transaction family: purchase windows, trends, inter-purchase gaps, refunds, categories.

Point in time: only orders with `ordered_at < as_of` are read. Purchases are completed
orders (`features.population.completed_orders`: status `completed` or no status); the
refund share alone looks at every order.

Columns (one row per eligible customer, key `customer_id`), for each window `w` in
`TransactionParams.windows_days` (a window is `[as_of - w days, as_of)`):

- `orders_{w}d` (int, 0 when none), `revenue_{w}d` (float, 0.0 when none);
- `orders_trend_{w}d`, `revenue_trend_{w}d`: the last `w` days against the `w` days
  before them (`[as_of - 2w, as_of - w)`), as the symmetric relative change
  `(recent - previous) / (recent + previous)`: in [-1, 1], 0 when both are zero,
  +1 for "new activity", -1 for "stopped". Unlike a plain ratio it never divides by
  zero and is bounded, so trees and linear models can both use it.

Then, over all history before as_of:

- `days_since_last_order`: exact elapsed days (fractional) since the last purchase; null when never;
- `purchase_gap_mean_days`, `purchase_gap_std_days`: mean and sample standard deviation of
  the gaps between consecutive distinct purchase days (same-day orders are one purchase,
  as for BG/NBD). The mean needs >= 2 purchase days, the std >= 3; null otherwise;
- `purchase_overdue_ratio`: `days_since_last_order / purchase_gap_mean_days`; above 1 the
  customer is later than usual (null without a mean gap);
- `refund_share`: share of all orders (any status) whose status is in `REFUNDED_STATUSES`
  (case-insensitive); null when the customer has no order at all;
- `top_category`: the category with the most completed revenue (ties: alphabetical), a
  string; null without a categorised purchase. `distinct_categories`: number of categories
  among the completed purchases (0 when none).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import ibis

from features.families.rfm import purchase_sequence
from features.population import eligible_customers
from features.profile import Profile
from features.schema import REFUNDED_STATUSES
from features.timeutil import as_of_literal, days_before, days_between, to_utc_naive


@dataclass(frozen=True)
class TransactionParams:
    """Look-back windows in days; each also gets a trend against the window before it."""

    windows_days: tuple[int, ...] = (7, 30, 90, 365)

    def __post_init__(self) -> None:
        if not self.windows_days:
            raise ValueError("TransactionParams.windows_days needs at least one window")
        if any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in self.windows_days):
            raise ValueError(f"TransactionParams.windows_days must be positive integers, got {self.windows_days}")
        if len(set(self.windows_days)) != len(self.windows_days):
            raise ValueError(f"TransactionParams.windows_days has duplicates: {self.windows_days}")


def _relative_change(recent: ibis.NumericValue, previous: ibis.NumericValue) -> ibis.FloatingValue:
    """(recent - previous) / (recent + previous) for non-negative values; 0 when both are 0."""
    recent = recent.cast("float64")
    previous = previous.cast("float64")
    total = recent + previous
    return ibis.ifelse(total == 0, 0.0, (recent - previous) / total)


def _join_on_customer(base: ibis.Table, *aggregates: ibis.Table) -> ibis.Table:
    """Left-join per-customer aggregates onto the population without duplicating the key."""
    for agg in aggregates:
        right = agg.rename(_agg_customer_id="customer_id")
        base = base.left_join(right, base.customer_id == right._agg_customer_id).drop("_agg_customer_id")
    return base


def transaction_features(
    profile: Profile, as_of: datetime, params: TransactionParams = TransactionParams()
) -> ibis.Table:
    """Transaction features at `as_of`: one row per eligible customer (see the module docstring)."""
    as_of = to_utc_naive(as_of)
    cutoff = as_of_literal(as_of)

    # Completed purchases before as_of with their purchase days: the rfm family's expression, so
    # with both families in one query the orders are filtered and sorted per customer once.
    purchases = purchase_sequence(profile, as_of)

    # 1. Windows, the trends' previous windows, recency and the gaps between consecutive distinct
    # purchase days (the positive day gaps; the first purchase has none): one pass with
    # conditional aggregates, written as COUNT(CASE ... THEN 1 END) and SUM(CASE ...): on DuckDB
    # several times cheaper than COUNT/SUM ... FILTER (...) (and the counts cheaper than
    # SUM(CASE ... ELSE 0) with its 128-bit states); no COUNT(DISTINCT) here, which would push
    # the whole aggregate onto a slower path.
    window_aggs: dict[str, ibis.Value] = {}
    for w in params.windows_days:
        start = days_before(as_of, w)
        prev_start = days_before(as_of, 2 * w)
        recent = purchases.ordered_at >= start
        previous = (purchases.ordered_at >= prev_start) & (purchases.ordered_at < start)
        window_aggs[f"_orders_{w}"] = ibis.ifelse(recent, 1, ibis.null("int8")).count()
        window_aggs[f"_revenue_{w}"] = ibis.ifelse(recent, purchases.amount, 0.0).sum()
        window_aggs[f"_orders_prev_{w}"] = ibis.ifelse(previous, 1, ibis.null("int8")).count()
        window_aggs[f"_revenue_prev_{w}"] = ibis.ifelse(previous, purchases.amount, 0.0).sum()
    gap = ibis.ifelse(purchases.day_gap > 0, purchases.day_gap, ibis.null("int64"))
    windows = purchases.group_by("customer_id").aggregate(
        _last_ordered_at=purchases.ordered_at.max(),
        **window_aggs,
        _gap_mean=gap.mean(),
        _gap_std=gap.std(how="sample"),
    )
    # The trends from the buyers' sums, before the join: far fewer expressions over every
    # eligible customer (DuckDB sets up a vector per expression node on every execution).
    windows = windows.mutate(
        **{
            f"_{measure}_trend_{w}": _relative_change(windows[f"_{measure}_{w}"], windows[f"_{measure}_prev_{w}"])
            for w in params.windows_days
            for measure in ("orders", "revenue")
        }
    )

    # 2. Refund share over every order before as_of, whatever its status.
    every_order = profile.orders.filter(profile.orders.ordered_at < cutoff)
    refunded = every_order.status.lower().isin([s.lower() for s in REFUNDED_STATUSES])
    refunds = every_order.group_by("customer_id").aggregate(
        _orders_any_status=every_order.count(),
        _orders_refunded=ibis.ifelse(refunded, 1, ibis.null("int8")).count(),
    )

    # 3. Top category by completed revenue (deterministic tie-break on the name) and the
    # number of categories: one row per (customer, category), ranked within the customer.
    categorised = purchases.filter(purchases.category.notnull())
    by_category = categorised.group_by(["customer_id", "category"]).aggregate(
        _category_revenue=categorised.amount.sum()
    )
    ranked = by_category.mutate(
        _rank=ibis.row_number().over(
            ibis.window(group_by="customer_id", order_by=[ibis.desc("_category_revenue"), "category"])
        ),
        _distinct_categories=by_category.count().over(ibis.window(group_by="customer_id")),
    )
    top = ranked.filter(ranked._rank == 0).select(
        "customer_id", "_distinct_categories", _top_category="category"
    )

    population = eligible_customers(profile, as_of)
    t = _join_on_customer(population, windows, refunds, top)

    columns: dict[str, ibis.Value] = {"customer_id": t.customer_id}
    for w in params.windows_days:
        orders_w = t[f"_orders_{w}"].coalesce(0)
        revenue_w = t[f"_revenue_{w}"].coalesce(0.0)
        columns[f"orders_{w}d"] = orders_w.cast("int64")
        columns[f"revenue_{w}d"] = revenue_w.cast("float64")
    for w in params.windows_days:
        for measure in ("orders", "revenue"):
            columns[f"{measure}_trend_{w}d"] = t[f"_{measure}_trend_{w}"].coalesce(0.0)
    days_since_last = days_between(cutoff, t._last_ordered_at)
    gap_mean = t._gap_mean.cast("float64")
    columns["days_since_last_order"] = days_since_last
    columns["purchase_gap_mean_days"] = gap_mean
    columns["purchase_gap_std_days"] = t._gap_std.cast("float64")
    # The mean gap is >= 1 day (distinct days), so the ratio is safe where it exists.
    columns["purchase_overdue_ratio"] = days_since_last / gap_mean
    columns["refund_share"] = t._orders_refunded.cast("float64") / t._orders_any_status.cast("float64")
    columns["top_category"] = t._top_category.cast("string")
    columns["distinct_categories"] = t._distinct_categories.coalesce(0).cast("int64")
    return t.select(**columns)
