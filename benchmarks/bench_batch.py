"""Benchmark: `crm-scoring score` (batch) on 1,000,000 generated profiles.

Goal (issue 4): score 1,000,000 customers (all models, tags, diff, outbox) in at most
90 s and 8 GB on 2 cores. Each run is the real CLI in a separate process (wall time and
peak RSS of that process alone). Models: the champions of a project trained with
`crm-scoring demo --customers 20000` (made once in --project, reused when present; the
online benchmark uses the same folder). The profile: benchmarks/bench_features.py's
generated 1 M profile (made once, reused).

Runs, into a fresh score store each repeat:
1. first run at 2025-06-01 (baseline snapshot, no events);
2. second run at 2025-06-15 (diff with the first -> events in the outbox);
3. re-run of 2025-06-15 (same run id: no new events).

    .venv/bin/python benchmarks/bench_batch.py --customers 1000000 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("crm-scoring"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_features import _generate, run_cli_measured  # noqa: E402


def _env(project: Path, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSCORE_") and k != "MLFLOW_TRACKING_URI"}
    env.update(CRMSCORE_PROJECT_DIR=str(project), CRMSCORE_STORE_DIR=str(store))
    return env


def _ensure_models(project: Path) -> None:
    if (project / "mlruns" / "mlflow.db").exists():
        listed = subprocess.run([CLI, "models", "list"], cwd=project, env=_env(project, project / "scores"), capture_output=True, text=True)
        if listed.returncode == 0 and listed.stdout.count("champion") >= 3:
            return
    project.mkdir(parents=True, exist_ok=True)
    print("training the benchmark models (crm-scoring demo --customers 20000) ...", flush=True)
    subprocess.run(
        [CLI, "demo", "--customers", "20000", "--out", str(project / "demo")],
        cwd=project, env=_env(project, project / "scores"), check=True, capture_output=True,
    )


def _score(project: Path, store: Path, profile: Path, as_of: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and the CLI's output for one `score` process."""
    run = run_cli_measured(["score", "--profile", str(profile), "--as-of", as_of], cwd=project, env=_env(project, store))
    return run.wall_s, run.peak_gb, " ".join(run.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile-work", type=Path, default=REPO / "bench-out" / "features")
    parser.add_argument("--project", type=Path, default=REPO / "bench-out" / "online")
    args = parser.parse_args()

    profile = args.profile_work / f"profile-{args.customers}"
    rows = _generate(profile, args.customers, args.seed)
    print(f"profile: {rows['customers']:,} customers, {rows['orders']:,} orders, {rows['events']:,} events")
    _ensure_models(args.project)

    steps = (("first run 2025-06-01 (baseline)", "2025-06-01"), ("second run 2025-06-15 (diff, events)", "2025-06-15"), ("re-run 2025-06-15", "2025-06-15"))
    results: dict[str, list[tuple[float, float, str]]] = {name: [] for name, _ in steps}
    for _ in range(args.repeats):
        store = args.project / "bench-scores"
        shutil.rmtree(store, ignore_errors=True)
        for name, as_of in steps:
            results[name].append(_score(args.project, store, profile, as_of))
            print(f"  {name}: {results[name][-1][0]:.1f} s, {results[name][-1][1]:.2f} GB", flush=True)

    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load:.1f}")
    print("| run | median wall s | min | max | peak RSS GB (max) | new events |")
    print("|---|---|---|---|---|---|")
    for name, _ in steps:
        walls = [w for w, _, _ in results[name]]
        peaks = [p for _, p, _ in results[name]]
        events = re.search(r"([\d,]+) new event", results[name][-1][2])
        print(f"| {name} | {statistics.median(walls):.1f} | {min(walls):.1f} | {max(walls):.1f} | {max(peaks):.2f} | {events.group(1) if events else '?'} |")
    worst = max(statistics.median([w for w, _, _ in results[name]]) for name, _ in steps)
    peak = max(p for name, _ in steps for _, p, _ in results[name])
    print(f"goal: <= 90 s and <= 8 GB per run -> {'met' if worst <= 90 and peak <= 8 else 'NOT met'}")


if __name__ == "__main__":
    main()
