"""RFM family on hand-made profiles: BG/NBD statistics, boundaries, leads, scores, segments."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import ibis
import pandas as pd
import pytest

from features.backend import connect
from features.families.rfm import (
    LEAD_SEGMENT,
    RFM_COLUMNS,
    RFM_SEGMENTS,
    RfmParams,
    _segment,
    rfm_features,
    rfm_score_edges,
)
from tests.features.profiles import make_profile

AS_OF = datetime(2024, 2, 1)
US = timedelta(microseconds=1)


@pytest.fixture(scope="module")
def con():
    return connect()


def rows(table: ibis.Table) -> dict[str, dict]:
    return {r["customer_id"]: r for r in table.to_pyarrow().to_pylist()}


def test_same_day_purchases_are_one_transaction(con):
    profile = make_profile(
        con,
        [("a", datetime(2023, 12, 1))],
        [
            ("a", datetime(2024, 1, 1, 10), 10),
            ("a", datetime(2024, 1, 1, 15), 5),  # same day as the first: part of the first transaction
            ("a", datetime(2024, 1, 5, 9), 20),
            ("a", datetime(2024, 1, 5, 23, 59), 30),
            ("a", datetime(2024, 1, 10, 12), 4),
        ],
    )
    a = rows(rfm_features(profile, AS_OF))["a"]
    assert a["frequency"] == 2  # three purchase days
    assert a["recency_days"] == 9  # Jan 1 -> Jan 10
    assert a["T_days"] == 30  # Jan 1 -> Jan 31, the last observed day
    assert a["monetary_value"] == pytest.approx((50 + 4) / 2)  # repeat days only, same-day orders summed
    assert a["orders_count"] == 5
    assert a["revenue_total"] == pytest.approx(69)
    assert a["avg_order_value"] == pytest.approx(69 / 5)
    assert a["days_since_last_order"] == pytest.approx(21.5)  # Jan 10 12:00 -> Feb 1 00:00
    assert a["days_since_first_order"] == pytest.approx(31 - 10 / 24)


def test_one_time_buyer_has_zero_frequency_and_zero_monetary_value(con):
    profile = make_profile(
        con, [("a", datetime(2024, 1, 1))], [("a", datetime(2024, 1, 20, 8), 12), ("a", datetime(2024, 1, 20, 9), 3)]
    )
    a = rows(rfm_features(profile, AS_OF))["a"]
    assert (a["frequency"], a["recency_days"], a["T_days"], a["monetary_value"]) == (0, 0, 11, 0.0)
    assert a["orders_count"] == 2 and a["revenue_total"] == pytest.approx(15)


def test_only_completed_orders_count(con):
    profile = make_profile(
        con,
        [("a", datetime(2023, 12, 1)), ("b", datetime(2023, 12, 1))],
        [
            ("a", datetime(2024, 1, 2), 10, "completed"),
            ("a", datetime(2024, 1, 3), 20, "COMPLETED"),  # status is case-insensitive
            ("a", datetime(2024, 1, 4), 40, None),  # no status: counts
            ("a", datetime(2024, 1, 5), 80, "cancelled"),
            ("a", datetime(2024, 1, 6), 160, "refunded"),
            ("a", datetime(2024, 1, 7), 320, "pending"),
            ("b", datetime(2024, 1, 2), 99, "cancelled"),  # b has no purchase: a lead
        ],
    )
    result = rows(rfm_features(profile, AS_OF))
    a, b = result["a"], result["b"]
    assert (a["orders_count"], a["revenue_total"], a["frequency"], a["recency_days"]) == (3, 70.0, 2, 2)
    assert a["monetary_value"] == pytest.approx(30)
    assert b["orders_count"] == 0 and b["frequency"] is None and b["rfm_segment"] == LEAD_SEGMENT


def test_order_at_as_of_is_not_counted_and_one_microsecond_before_is(con):
    profile = make_profile(
        con,
        [("a", datetime(2023, 12, 1))],
        [
            ("a", datetime(2024, 1, 1), 10),
            ("a", AS_OF - US, 20),
            ("a", AS_OF, 40),
        ],
    )
    a = rows(rfm_features(profile, AS_OF))["a"]
    assert (a["orders_count"], a["revenue_total"], a["frequency"]) == (2, 30.0, 1)
    assert (a["recency_days"], a["T_days"]) == (30, 30)  # Jan 31 is the last purchase and last observed day
    assert a["days_since_last_order"] == pytest.approx(1e-6 / 86_400)


def test_T_counts_to_the_last_observed_day(con):
    profile = make_profile(con, [("a", datetime(2023, 12, 1))], [("a", datetime(2024, 1, 1, 18), 10)])
    # At midnight nothing of Feb 1 is observed yet; one microsecond later Feb 1 is.
    assert rows(rfm_features(profile, AS_OF))["a"]["T_days"] == 30
    assert rows(rfm_features(profile, AS_OF - US))["a"]["T_days"] == 30
    assert rows(rfm_features(profile, AS_OF + US))["a"]["T_days"] == 31
    assert rows(rfm_features(profile, datetime(2024, 1, 31, 12)))["a"]["T_days"] == 30


def test_one_row_per_eligible_customer_including_leads(con):
    profile = make_profile(
        con,
        [
            ("buyer", datetime(2023, 12, 1)),
            ("lead", datetime(2024, 1, 15)),
            ("created_at_as_of", AS_OF),  # not eligible: created_at < as_of is required
            ("future", datetime(2024, 3, 1)),
        ],
        [("buyer", datetime(2024, 1, 2), 10), ("created_at_as_of", datetime(2024, 1, 2), 10)],
    )
    table = rfm_features(profile, AS_OF)
    assert table.columns == ("customer_id", *RFM_COLUMNS)
    result = rows(table)
    assert sorted(result) == ["buyer", "lead"]
    lead = result["lead"]
    assert lead["orders_count"] == 0 and lead["revenue_total"] == 0.0
    for column in ("frequency", "recency_days", "T_days", "monetary_value", "avg_order_value",
                   "days_since_last_order", "days_since_first_order",
                   "rfm_recency_score", "rfm_frequency_score", "rfm_monetary_score"):
        assert lead[column] is None, column
    assert lead["rfm_segment"] == LEAD_SEGMENT


FIVE = ("c1", "c2", "c3", "c4", "c5")


def _population(con, *, with_tie: bool = False):
    """c_i buys on i days, i * 10 each time, last i days before 2024-01-01: c5 buys most, least recently.

    with_tie adds "tie", identical to c3 on every axis.
    """
    names = FIVE + (("tie",) if with_tie else ())
    orders = []
    for i, c in enumerate(FIVE, start=1):
        orders += [(c, datetime(2024, 1, 1) - timedelta(days=10 * d + i), 10.0 * i) for d in range(i)]
    if with_tie:
        orders += [("tie", datetime(2024, 1, 1) - timedelta(days=10 * d + 3), 30.0) for d in range(3)]
    return make_profile(con, [(c, datetime(2023, 1, 1)) for c in names], orders)


def test_scores_are_quintiles_among_buyers(con):
    profile = _population(con)
    lead = make_profile(con, [("lead", datetime(2023, 1, 1))], [])
    profile = replace(profile, customers=profile.customers.union(lead.customers))
    result = rows(rfm_features(profile, datetime(2024, 1, 1)))
    assert [result[c]["rfm_frequency_score"] for c in FIVE] == [1, 2, 3, 4, 5]
    assert [result[c]["rfm_recency_score"] for c in FIVE] == [5, 4, 3, 2, 1]
    assert [result[c]["rfm_monetary_score"] for c in FIVE] == [1, 2, 3, 4, 5]
    assert result["lead"]["rfm_recency_score"] is None  # leads are not ranked
    assert result["c1"]["rfm_segment"] == "new"  # most recent, one purchase, smallest spend
    assert result["c5"]["rfm_segment"] == "cant_lose"  # best F and M, least recent


def test_ties_share_a_score(con):
    result = rows(rfm_features(_population(con, with_tie=True), datetime(2024, 1, 1)))
    for score in ("rfm_recency_score", "rfm_frequency_score", "rfm_monetary_score"):
        assert result["tie"][score] == result["c3"][score]


def test_frozen_edges_reproduce_the_scores_and_score_one_customer_alone(con):
    profile = _population(con, with_tie=True)
    as_of = datetime(2024, 1, 1)
    batch = rfm_features(profile, as_of)
    edges = rfm_score_edges(batch)
    frozen = rows(rfm_features(profile, as_of, RfmParams(score_edges=edges)))
    assert frozen == rows(batch)
    # Alone, c2 would rank first on everything; with the edges it keeps its population scores.
    alone = replace(
        profile,
        customers=profile.customers.filter(profile.customers.customer_id == "c2"),
        orders=profile.orders.filter(profile.orders.customer_id == "c2"),
    )
    assert rows(rfm_features(alone, as_of, RfmParams(score_edges=edges)))["c2"] == frozen["c2"]


def test_segment_grid_covers_every_score_cell_once():
    grid = ibis.memtable(
        pd.DataFrame([(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)], columns=["r", "f", "m"])
    )
    out = grid.mutate(segment=_segment(grid.r, grid.f, grid.m)).to_pandas()
    assert out.segment.notna().all()
    assert set(out.segment) <= set(RFM_SEGMENTS)

    def seg(r: int, f: int, m: int) -> str:
        return out[(out.r == r) & (out.f == f) & (out.m == m)].segment.item()

    assert seg(5, 5, 5) == "champions"
    assert seg(4, 5, 4) == "loyal"
    assert seg(5, 2, 3) == "potential_loyalist"
    assert seg(5, 1, 1) == "new"
    assert seg(4, 1, 1) == "promising"
    assert seg(3, 3, 3) == "needs_attention"
    assert seg(2, 4, 3) == "at_risk"
    assert seg(1, 5, 5) == "cant_lose"
    assert seg(2, 1, 2) == "hibernating"
    assert seg(1, 1, 1) == "lost"
