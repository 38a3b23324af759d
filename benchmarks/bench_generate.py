"""Benchmark: generate a synthetic unified profile and write it as Parquet.

Goal: 1,000,000 customers (about 10,000,000 orders and 30,000,000 events with
``SyntheticParams.benchmark()``) generated and written in at most 60 s with at
most 6 GB peak RSS on a 2-core machine.

    .venv/bin/python benchmarks/bench_generate.py --customers 1000000 --repeats 3

Prints one row per repeat and the median; peak RSS is the process maximum
(``ru_maxrss``), so it covers every repeat.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from features.synthetic import SyntheticParams, generate_profile
from features.synthetic_io import write_synthetic_profile

GOAL_SECONDS = 60.0
GOAL_RSS_GB = 6.0


def _peak_rss_gb() -> float:
    # Linux reports kilobytes, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024**3 if sys.platform == "darwin" else 1024**2)


def run_once(n_customers: int, seed: int, params: SyntheticParams, out_dir: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    profile = generate_profile(n_customers, seed, params)
    t1 = time.perf_counter()
    paths = write_synthetic_profile(profile, out_dir)
    t2 = time.perf_counter()
    return {
        "customers": profile.customers.num_rows,
        "orders": profile.orders.num_rows,
        "events": profile.events.num_rows,
        "generate_s": t1 - t0,
        "write_s": t2 - t1,
        "total_s": t2 - t0,
        "files_mb": sum(p.stat().st_size for p in paths) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--params",
        choices=("benchmark", "default"),
        default="benchmark",
        help="SyntheticParams.benchmark() (about 10 orders and 30 events per customer) or the defaults",
    )
    args = parser.parse_args(argv)
    params = SyntheticParams.benchmark() if args.params == "benchmark" else SyntheticParams()

    rows = []
    print(
        f"{'run':>6} {'customers':>10} {'orders':>11} {'events':>11} "
        f"{'generate s':>11} {'write s':>8} {'total s':>8} {'files MB':>9}"
    )
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="crm-bench-") as tmp:
            r = run_once(args.customers, args.seed + i, params, Path(tmp))
        rows.append(r)
        print(
            f"{i + 1:>6} {r['customers']:>10,} {r['orders']:>11,} {r['events']:>11,} "
            f"{r['generate_s']:>11.1f} {r['write_s']:>8.1f} {r['total_s']:>8.1f} {r['files_mb']:>9.0f}"
        )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    rss = _peak_rss_gb()
    print(
        f"{'median':>6} {med['customers']:>10,.0f} {med['orders']:>11,.0f} {med['events']:>11,.0f} "
        f"{med['generate_s']:>11.1f} {med['write_s']:>8.1f} {med['total_s']:>8.1f} {med['files_mb']:>9.0f}"
    )
    print(f"peak RSS: {rss:.2f} GB")
    ok = med["total_s"] <= GOAL_SECONDS and rss <= GOAL_RSS_GB
    print(
        f"goal (1,000,000 customers: <= {GOAL_SECONDS:.0f} s, <= {GOAL_RSS_GB:.0f} GB): "
        f"{'met' if ok else 'NOT met'} at {args.customers:,} customers"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
