"""Benchmark: the RFM family on DuckDB against lifetimes' summary_data_from_transaction_data.

Both compute x, t_x, T and zbar (daily periods, same-day purchases merged) from the
same generated orders: `rfm_features` reads them as a DuckDB table and is executed to
pyarrow (Ibis expression build and SQL compilation included); lifetimes gets a pandas
DataFrame. Loading the data is not timed. Goal: rfm at least 5x faster.

    .venv/bin/python benchmarks/bench_rfm_vs_lifetimes.py --customers 1000000 --orders 10000000 --repeats 3

Prints one row per run, the medians and their ratio, and checks on the buyers that both
give the same x, t_x, T and zbar.
"""

from __future__ import annotations

import argparse
import statistics
import os
import time
from dataclasses import dataclass
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.backend import connect
from features.families.rfm import rfm_features
from features.profile import Profile

GOAL_RATIO = 5.0
T = TypeVar("T")
AS_OF = datetime(2024, 1, 1)
HISTORY_DAYS = 730
US_PER_DAY = 86_400_000_000


def generate_orders(n_customers: int, n_orders: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """Customers (all created before the history) and completed orders in the 2 years before AS_OF.

    Order counts per customer are skewed (Zipf-like via a gamma mix) so some buy once and a
    few buy very often; about a tenth of the customers never buy (leads).
    """
    rng = np.random.default_rng(seed)
    weights = rng.gamma(0.5, 1.0, n_customers)
    weights[rng.random(n_customers) < 0.1] = 0.0
    buyer = rng.choice(n_customers, size=n_orders, p=weights / weights.sum())
    start_us = int((AS_OF - timedelta(days=HISTORY_DAYS) - datetime(1970, 1, 1)) / timedelta(microseconds=1))
    ordered_us = start_us + rng.integers(0, HISTORY_DAYS * US_PER_DAY, size=n_orders)
    amount = np.round(rng.lognormal(3.0, 0.8, size=n_orders), 2)

    ids = pc.binary_join_element_wise("c", pa.array(np.arange(n_customers)).cast(pa.string()), "")
    customers = pa.table(
        {
            "customer_id": ids,
            "created_at": pa.array(np.full(n_customers, start_us - US_PER_DAY), type=pa.timestamp("us")),
        }
    )
    orders = pa.table(
        {
            "order_id": pa.array(np.arange(n_orders)).cast(pa.string()),
            "customer_id": ids.take(pa.array(buyer)),
            "ordered_at": pa.array(ordered_us, type=pa.timestamp("us")),
            "amount": pa.array(amount, type=pa.float64()),
            "status": pa.nulls(n_orders, type=pa.string()),
            "category": pa.nulls(n_orders, type=pa.string()),
            "currency": pa.nulls(n_orders, type=pa.string()),
        }
    )
    return customers, orders


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float  # process CPU time, all threads: the work done, whatever else runs on the machine


def _timed(fn: Callable[[], T]) -> tuple[Timing, T]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


def time_rfm(profile: Profile) -> tuple[Timing, pa.Table]:
    return _timed(lambda: rfm_features(profile, AS_OF).to_pyarrow())


def time_lifetimes(transactions: pd.DataFrame) -> tuple[Timing, pd.DataFrame]:
    # Imported here: lifetimes is slow to import and only this side needs it.
    from lifetimes.utils import summary_data_from_transaction_data

    return _timed(
        lambda: summary_data_from_transaction_data(
            transactions,
            "customer_id",
            "ordered_at",
            monetary_value_col="amount",
            # The last observed day: the calendar day of the instant just before as_of.
            observation_period_end=(AS_OF - timedelta(microseconds=1)).date().isoformat(),
            freq="D",
        )
    )


def compare(ours: pa.Table, theirs: pd.DataFrame) -> str:
    """Largest absolute difference per statistic over the buyers (lifetimes has no rows for leads)."""
    frame = ours.to_pandas().set_index("customer_id")
    buyers = frame[frame["orders_count"] > 0]
    theirs = theirs.add_prefix("lifetimes_")
    merged = buyers.join(theirs, how="inner")
    parts = [f"buyers {len(buyers):,} (lifetimes {len(theirs):,}, both {len(merged):,})"]
    for name, ours_col, theirs_col in (
        ("x", "frequency", "lifetimes_frequency"),
        ("t_x", "recency_days", "lifetimes_recency"),
        ("T", "T_days", "lifetimes_T"),
        ("zbar", "monetary_value", "lifetimes_monetary_value"),
    ):
        parts.append(f"{name} {(merged[ours_col] - merged[theirs_col]).abs().max():.3g}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    customers, orders = generate_orders(args.customers, args.orders, args.seed)
    con = connect()
    if args.threads:
        con.raw_sql(f"SET threads = {int(args.threads)}")
    profile = Profile(
        customers=con.create_table("bench_customers", customers, temp=True),
        orders=con.create_table("bench_orders", orders, temp=True),
        events=con.create_table(
            "bench_events",
            schema={"customer_id": "string", "occurred_at": "timestamp", "event_type": "string", "event_id": "string", "channel": "string"},
            temp=True,
        ),
    )
    transactions = orders.select(["customer_id", "ordered_at", "amount"]).to_pandas()
    threads = con.raw_sql("SELECT current_setting('threads')").fetchone()[0]
    print(
        f"{customers.num_rows:,} customers, {orders.num_rows:,} orders; data ready in {time.perf_counter() - t0:.1f} s "
        f"(DuckDB threads: {threads}; lifetimes is single-threaded pandas {pd.__version__})"
    )

    rfm_runs: list[Timing] = []
    lifetimes_runs: list[Timing] = []
    lifetimes_error: str | None = None
    ours = theirs = None
    print(f"load average before: {os.getloadavg()[0]:.1f} (other work on the machine inflates wall times)")
    print(f"{'run':>4} {'rfm wall (s)':>13} {'rfm cpu (s)':>12} {'lifetimes wall (s)':>19} {'lifetimes cpu (s)':>18}")
    for run in range(1, args.repeats + 1):
        timing, ours = time_rfm(profile)
        rfm_runs.append(timing)
        row = f"{run:>4} {timing.wall_s:>13.2f} {timing.cpu_s:>12.2f}"
        if lifetimes_error is None:
            try:
                timing, theirs = time_lifetimes(transactions)
                lifetimes_runs.append(timing)
                row += f" {timing.wall_s:>19.2f} {timing.cpu_s:>18.2f}"
            except Exception as exc:  # report, do not hide: lifetimes' utils are unmaintained
                lifetimes_error = f"{type(exc).__name__}: {exc}"
                row += f" {'crashed':>19}"
        print(row, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    def median(runs: list[Timing], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    print()
    print(f"{'median':<30} {'wall (s)':>9} {'cpu (s)':>9}")
    print(f"{'rfm_features (DuckDB)':<30} {median(rfm_runs, 'wall_s'):>9.2f} {median(rfm_runs, 'cpu_s'):>9.2f}")
    if lifetimes_error is not None:
        print(f"lifetimes crashed on pandas {pd.__version__}: {lifetimes_error}")
        return 1
    print(f"{'lifetimes summary_data_from_*':<30} {median(lifetimes_runs, 'wall_s'):>9.2f} {median(lifetimes_runs, 'cpu_s'):>9.2f}")
    ratio = median(lifetimes_runs, "wall_s") / median(rfm_runs, "wall_s")
    cpu_ratio = median(lifetimes_runs, "cpu_s") / median(rfm_runs, "cpu_s")
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(f"{'speed-up (lifetimes / rfm)':<30} {ratio:>8.1f}x {cpu_ratio:>8.1f}x   goal >= {GOAL_RATIO:.0f}x wall: {verdict}")
    assert ours is not None and theirs is not None
    print("max |lifetimes - rfm|: " + compare(ours, theirs))
    return 0 if ratio >= GOAL_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
