"""Benchmark: `crm-scoring features build` on a large generated profile.

Goal (issue 2): 1,000,000 customers / 10,000,000 orders / 30,000,000 events in at
most 30 s wall and 6 GB peak memory on 2 cores. The build runs as a separate process
(the real CLI), so its wall time and peak RSS are measured alone; generation is not
counted. The profile is generated once into --work (reused when present).

Each run also reports its CPU seconds (user + system over all threads) and the load
average: on a shared 2-core machine the wall time follows the load, the CPU time much
less, so compare changes by CPU time (or alternate runs) when the load is not ~1.

    .venv/bin/python benchmarks/bench_features.py --customers 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _generate(profile_dir: Path, customers: int, seed: int) -> dict[str, int]:
    marker = profile_dir / "bench_rows.json"
    if marker.exists():
        rows = json.loads(marker.read_text())
        if rows.get("customers") == customers and rows.get("seed") == seed:
            return rows
    from features.synthetic import SyntheticParams, generate_profile
    from features.synthetic_io import write_synthetic_profile

    generated = generate_profile(customers, seed, SyntheticParams.benchmark())
    write_synthetic_profile(generated, profile_dir)
    rows = {
        "customers": customers,
        "seed": seed,
        "orders": generated.orders.num_rows,
        "events": generated.events.num_rows,
    }
    marker.write_text(json.dumps(rows))
    return rows


@dataclass(frozen=True)
class CliRun:
    wall_s: float
    cpu_s: float  # user + system, all threads
    peak_gb: float
    stdout: str


def run_cli_measured(argv: list[str], cwd: Path = REPO, env: dict[str, str] | None = None) -> CliRun:
    """Run `crm-scoring <argv>` in a fresh process; its wall time, CPU time and peak RSS alone."""
    script = (
        "import resource, sys\n"
        "sys.argv = ['crm-scoring', *sys.argv[1:]]\n"
        "from serving.cli import app\n"
        "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print('PEAK_KB', usage.ru_maxrss, file=sys.stderr)\n"
        "print('CPU_S', usage.ru_utime + usage.ru_stime, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"crm-scoring {' '.join(argv[:2])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    lines = result.stderr.splitlines()
    peak_kb = next(int(line.split()[1]) for line in lines if line.startswith("PEAK_KB"))
    cpu = next(float(line.split()[1]) for line in lines if line.startswith("CPU_S"))
    return CliRun(wall, cpu, peak_kb / 1024**2, result.stdout)


def _run_build(profile_dir: Path, out_file: Path, as_of: str) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (GB) of one `features build` process."""
    run = run_cli_measured(["features", "build", "--profile", str(profile_dir), "--as-of", as_of, "--out", str(out_file)])
    return run.wall_s, run.cpu_s, run.peak_gb


def _load() -> str:
    """The 1-minute load average: other processes on the 2 cores inflate the wall time."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "bench-out" / "features")
    args = parser.parse_args()

    from features.synthetic import TRUTH_AS_OF

    profile_dir = args.work / f"profile-{args.customers}"
    start = time.perf_counter()
    rows = _generate(profile_dir, args.customers, args.seed)
    generated_in = time.perf_counter() - start
    print(
        f"profile: {rows['customers']:,} customers, {rows['orders']:,} orders, {rows['events']:,} events "
        f"(ready in {generated_in:.1f} s)"
    )
    runs = []
    for i in range(args.repeats):
        load_before = _load()
        wall, cpu, peak = _run_build(profile_dir, args.work / "features.parquet", TRUTH_AS_OF.isoformat())
        runs.append((wall, cpu, peak))
        print(f"run {i + 1}: wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {peak:.2f} GB (load before {load_before}, after {_load()})")
    walls = [w for w, _, _ in runs]
    cpus = [c for _, c, _ in runs]
    peaks = [p for _, _, p in runs]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| step | median wall s | min | max | median CPU s | peak RSS GB (max) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| features build (load+validate+all families+write) | {statistics.median(walls):.1f} | "
        f"{min(walls):.1f} | {max(walls):.1f} | {statistics.median(cpus):.1f} | {max(peaks):.2f} |"
    )
    print(f"goal: <= 30 s and <= 6 GB -> {'met' if statistics.median(walls) <= 30 and max(peaks) <= 6 else 'NOT met'}")


if __name__ == "__main__":
    main()
