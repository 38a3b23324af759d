"""RFM family: the BG/NBD / Gamma-Gamma summary statistics, RFM quintile scores and segments.

Statistics use lifetimes' names with units (see DESIGN.md, "Time semantics"):

* `frequency` (x): distinct purchase days - 1 (same-day orders are one transaction);
* `recency_days` (t_x): days from the first to the last purchase day;
* `T_days` (T): days from the first purchase day to the last observed day, i.e. the
  calendar day of the instant just before as_of (`as_of_day_number`);
* `monetary_value` (zbar): mean revenue of the repeat purchase days (the first purchase
  day excluded, same-day orders summed); 0 when x = 0, as lifetimes reports it.

CRM-style columns: `orders_count`, `revenue_total`, `avg_order_value` (per order, not per
day), `days_since_last_order` and `days_since_first_order`: exact elapsed days (fractional)
from the last / first completed order to as_of. `days_since_last_order` has the same
definition as in the transactions family, so each family is complete on its own and the
pipeline keeps one copy.

Customers without a purchase before as_of (leads) keep their row: `orders_count` 0 and
`revenue_total` 0.0 (well defined), while x, t_x, T, zbar, the day counts, the average order
value and the scores are null: BG/NBD is undefined without a first purchase, and a null x can
never be mistaken for a one-time buyer (x = 0). Their `rfm_segment` is 'lead'.

RFM scores (1..5, 5 best) rank the customers with >= 1 purchase: recency by whole days
from the last purchase day to the last observed day (T - t_x, fewer is better), frequency
by distinct purchase days (x + 1), monetary by `revenue_total`. score = 1 + floor(5 *
percent_rank), capped at 5, so ties always share a score (ntile would split them
arbitrarily, and a score must not depend on row order). Scores are relative to the
population at as_of unless `RfmParams.score_edges` freezes them (see `rfm_score_edges`),
which online scoring needs: a single scored customer has no population to rank in.

`rfm_segment` maps R and FM = ceil((F + M) / 2) onto the usual RFM segment grid (see
`_segment`; the vocabulary is `RFM_SEGMENTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import ibis
from ibis import _

from features.population import completed_orders, eligible_customers
from features.profile import Profile
from features.timeutil import as_of_literal, day_number, days_between, last_observed_day

SCORE_LEVELS = 5
LEAD_SEGMENT = "lead"

RFM_COLUMNS: tuple[str, ...] = (
    "frequency",
    "recency_days",
    "T_days",
    "monetary_value",
    "orders_count",
    "revenue_total",
    "avg_order_value",
    "days_since_last_order",
    "days_since_first_order",
    "rfm_recency_score",
    "rfm_frequency_score",
    "rfm_monetary_score",
    "rfm_segment",
)

#: The segment vocabulary, best first (the order of `_segment`'s rules does not matter: they are disjoint).
RFM_SEGMENTS: tuple[str, ...] = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new",
    "promising",
    "needs_attention",
    "at_risk",
    "cant_lose",
    "hibernating",
    "lost",
)


@dataclass(frozen=True)
class RfmScoreEdges:
    """Frozen score thresholds: index k-2 holds the edge a value must reach for score >= k (k = 2..5).

    recency: maximum whole days since the last purchase day, T_days - recency_days
    (score >= k iff days <= edge);
    frequency: minimum distinct purchase days; monetary: minimum `revenue_total`
    (score >= k iff value >= edge). An unreachable level has an infinite edge.
    """

    recency: tuple[float, float, float, float]
    frequency: tuple[float, float, float, float]
    monetary: tuple[float, float, float, float]


@dataclass(frozen=True)
class RfmParams:
    """Parameters of the RFM family.

    score_edges: None ranks customers within the population at as_of (batch scoring,
    training); fixed edges (from `rfm_score_edges` on a reference build) make a customer's
    scores independent of who else is scored (online scoring).
    """

    score_edges: RfmScoreEdges | None = None


def purchase_sequence(profile: Profile, as_of: datetime) -> ibis.Table:
    """Completed purchases before as_of, each with its purchase day and the gap to the one before.

    Columns: `customer_id`, `ordered_at`, `amount`, `category`; `day`: the UTC calendar day
    number; `day_gap`: days since the customer's previous purchase in time order (null for
    the first, 0 for another order on the same day); `first_day`: the customer's first
    purchase day. Same-day orders are one transaction (DESIGN.md, "Time semantics"), so a
    customer's purchase days are the first order's day plus one per positive `day_gap`,
    and the gaps between consecutive distinct purchase days are exactly the positive
    `day_gap` values.

    One sort of the orders per customer replaces a (customer, day) grouping of the orders
    (almost one group per order: the costliest step of the family on 10 M orders). The
    transactions family reads its purchases and gaps from this same expression, so a query
    holding both families computes it once.
    """
    orders = completed_orders(profile)
    orders = orders.filter(orders.ordered_at < as_of_literal(as_of))
    orders = orders.select("customer_id", "ordered_at", "amount", "category", day=day_number(orders.ordered_at))
    in_time_order = ibis.window(group_by="customer_id", order_by="ordered_at")
    return orders.mutate(
        day_gap=orders.day - orders.day.lag().over(in_time_order),
        first_day=orders.day.min().over(in_time_order),
    )


def rfm_features(profile: Profile, as_of: datetime, params: RfmParams = RfmParams()) -> ibis.Table:
    """One row per eligible customer (created_at < as_of), keyed `customer_id`; see the module doc."""
    cutoff = as_of_literal(as_of)
    last_observed_day_number = last_observed_day(as_of)

    purchases = purchase_sequence(profile, as_of)
    new_day = purchases.day_gap.isnull() | (purchases.day_gap > 0)
    repeat_day = purchases.day != purchases.first_day
    per_customer = purchases.group_by("customer_id").aggregate(
        first_day=_.day.min(),
        last_day=_.day.max(),
        purchase_day_count=ibis.ifelse(new_day, 1, ibis.null("int8")).count(),
        orders_count=_.count(),
        revenue_total=_.amount.sum(),
        repeat_revenue=ibis.ifelse(repeat_day, purchases.amount, 0.0).sum(),
        first_ordered_at=_.ordered_at.min(),
        last_ordered_at=_.ordered_at.max(),
    )
    x = per_customer.purchase_day_count - 1
    buyers = per_customer.mutate(
        frequency=x,
        recency_days=per_customer.last_day - per_customer.first_day,
        T_days=last_observed_day_number - per_customer.first_day,
        # zbar: mean revenue of the repeat purchase days = revenue after the first day / repeat days.
        monetary_value=ibis.ifelse(x > 0, per_customer.repeat_revenue / x.cast("float64"), 0.0),
        avg_order_value=per_customer.revenue_total / per_customer.orders_count.cast("float64"),
        days_since_last_order=days_between(cutoff, per_customer.last_ordered_at),
        days_since_first_order=days_between(cutoff, per_customer.first_ordered_at),
    )
    buyers = _with_scores(buyers, params.score_edges)
    buyers = buyers.mutate(rfm_segment=_segment(buyers.rfm_recency_score, buyers.rfm_frequency_score, buyers.rfm_monetary_score))

    eligible = eligible_customers(profile, as_of).select("customer_id")
    joined = eligible.left_join(buyers, "customer_id")
    return joined.select(
        customer_id=joined.customer_id,
        frequency=joined.frequency,
        recency_days=joined.recency_days,
        T_days=joined.T_days,
        monetary_value=joined.monetary_value,
        orders_count=joined.orders_count.fill_null(0),
        revenue_total=joined.revenue_total.fill_null(0.0),
        avg_order_value=joined.avg_order_value,
        days_since_last_order=joined.days_since_last_order,
        days_since_first_order=joined.days_since_first_order,
        rfm_recency_score=joined.rfm_recency_score,
        rfm_frequency_score=joined.rfm_frequency_score,
        rfm_monetary_score=joined.rfm_monetary_score,
        rfm_segment=joined.rfm_segment.fill_null(LEAD_SEGMENT),
    )


def _score_from_percent_rank(percent_rank: ibis.FloatingValue) -> ibis.IntegerValue:
    return ibis.least((percent_rank * SCORE_LEVELS).floor() + 1, SCORE_LEVELS).cast("int8")


def _rank_score(key: ibis.Value) -> ibis.IntegerValue:
    """1..5 from the percent rank over all buyers (key ascending = better); ties share a score."""
    return _score_from_percent_rank(ibis.percent_rank().over(order_by=key))


def _with_level_score(table: ibis.Table, key: ibis.Value, name: str, *, descending: bool) -> ibis.Table:
    """The same score as `_rank_score`, for a key with few distinct values (days, counts).

    percent_rank = rows ranked before / (rows - 1). Counting rows per distinct value and
    ranking those few values costs a small group-by and a join instead of a full sort.
    """
    keyed = table.mutate(_score_key=key)
    levels = keyed.group_by("_score_key").aggregate(_level_rows=_.count())
    order = ibis.desc("_score_key") if descending else ibis.asc("_score_key")
    up_to_here = levels._level_rows.sum().over(ibis.cumulative_window(order_by=order))
    rows = levels._level_rows.sum().over()
    rank = (up_to_here - levels._level_rows).cast("float64") / ibis.greatest(rows - 1, 1).cast("float64")
    levels = levels.select("_score_key", **{name: _score_from_percent_rank(rank)})
    return keyed.join(levels, "_score_key").drop("_score_key")


def _edge_score(value: ibis.NumericValue, edges: tuple[float, ...], *, lower_is_better: bool) -> ibis.IntegerValue:
    score = ibis.literal(1, "int8")
    for edge in edges:
        if math.isinf(edge):
            continue  # an unreachable level
        reached = value <= edge if lower_is_better else value >= edge
        score = score + reached.cast("int8")
    return score.cast("int8")


def _recency_key(table: ibis.Table) -> ibis.IntegerValue:
    """Whole days from the last purchase day to the last observed day."""
    return table.T_days - table.recency_days


def _with_scores(buyers: ibis.Table, edges: RfmScoreEdges | None) -> ibis.Table:
    purchase_days = buyers.frequency + 1
    if edges is None:
        # Recency and frequency take few distinct values; revenue is nearly unique, so it is sorted.
        scored = _with_level_score(buyers, _recency_key(buyers), "rfm_recency_score", descending=True)
        scored = _with_level_score(scored, purchase_days, "rfm_frequency_score", descending=False)
        return scored.mutate(rfm_monetary_score=_rank_score(scored.revenue_total))
    return buyers.mutate(
        rfm_recency_score=_edge_score(_recency_key(buyers), edges.recency, lower_is_better=True),
        rfm_frequency_score=_edge_score(purchase_days, edges.frequency, lower_is_better=False),
        rfm_monetary_score=_edge_score(buyers.revenue_total, edges.monetary, lower_is_better=False),
    )


def _segment(r: ibis.IntegerValue, f: ibis.IntegerValue, m: ibis.IntegerValue) -> ibis.StringValue:
    """The common R x FM segment grid (FM = mean of F and M, rounded up); covers all 25 cells once.

    FM:        1        2        3        4        5
    R=5      new    potential potential champions champions
    R=4   promising potential potential   loyal     loyal
    R=3   needs_att needs_att needs_att   loyal     loyal
    R=2   hibernat. hibernat.  at_risk  at_risk  cant_lose
    R=1     lost      lost     at_risk  at_risk  cant_lose
    """
    fm = (f.cast("int16") + m.cast("int16") + 1) // 2
    return ibis.cases(
        ((r == 5) & (fm >= 4), "champions"),
        ((r >= 3) & (fm >= 4), "loyal"),
        ((r <= 2) & (fm == 5), "cant_lose"),
        ((r <= 2) & (fm >= 3), "at_risk"),
        ((r >= 4) & (fm >= 2), "potential_loyalist"),
        ((r == 5) & (fm == 1), "new"),
        ((r == 4) & (fm == 1), "promising"),
        (r == 3, "needs_attention"),
        (r == 2, "hibernating"),
        (r == 1, "lost"),
        else_=ibis.null("string"),
    )


def rfm_score_edges(features: ibis.Table) -> RfmScoreEdges:
    """Freeze the score thresholds of a built RFM table (runs three small group-bys).

    Scoring the same population with the returned edges reproduces its scores exactly:
    scores are monotone in their key, so score >= k iff the key reaches the best key
    value seen with score k or above.
    """
    buyers = features.filter(features.rfm_recency_score.notnull())
    return RfmScoreEdges(
        recency=_edges(buyers, "rfm_recency_score", _recency_key(buyers), lower_is_better=True),
        frequency=_edges(buyers, "rfm_frequency_score", buyers.frequency + 1, lower_is_better=False),
        monetary=_edges(buyers, "rfm_monetary_score", buyers.revenue_total, lower_is_better=False),
    )


def _edges(buyers: ibis.Table, score: str, key: ibis.Value, *, lower_is_better: bool) -> tuple[float, float, float, float]:
    bound = key.max() if lower_is_better else key.min()
    rows = buyers.group_by(level=buyers[score]).aggregate(bound=bound).to_pyarrow().to_pylist()
    per_level = {r["level"]: float(r["bound"]) for r in rows}
    unreachable = -math.inf if lower_is_better else math.inf
    edges: list[float] = []
    best = unreachable
    # Walk down from 5: the edge of level k is the loosest bound over levels >= k.
    for level in range(SCORE_LEVELS, 1, -1):
        if level in per_level:
            best = max(best, per_level[level]) if lower_is_better else min(best, per_level[level])
        edges.append(best)
    edges.reverse()
    return (edges[0], edges[1], edges[2], edges[3])
