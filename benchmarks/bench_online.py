"""Benchmark: online latency of `POST /v1/score` (issue 4), side by side with `mlflow models serve`.

Goal (issue 4): one customer with 20 orders and 50 events per request, from a load
generator in another process; p50 / p99 latency and throughput at 1, 8 and 32
concurrent clients; p99 <= 50 ms at 8 clients with no errors. The peer is
`mlflow models serve` of the churn model alone (`models:/churn_propensity@champion`,
`--env-manager local`, one worker like ours), fed the churn model's precomputed feature
row for the same customer: it runs one model on ready-made features, while our server
validates the raw profile, computes every feature from the orders and events (DuckDB),
runs three models with reasons, percentiles and tags. The ratio compares unequal work.

Steps: prepare a trained project in --out (reused when it already has champions):
`crm-scoring demo --customers 20000`, then always `crm-scoring score --as-of 2025-06-15`
(the API serves only a snapshot of the current champions); start `crm-scoring serve` and `mlflow models serve` (own process groups,
killed at the end); build the request (a real buyer with >= 20 orders and >= 50 events
before as_of, trimmed to the latest 20 and 50); check both servers answer it (and that
mlflow's churn probability equals ours); then for every repeat, server and concurrency
run the load generator as a separate process: `wrk` when installed (`--client auto`;
C, one thread, one keep-alive connection per client, closed loop, a warm-up run then
the measured run), else this script's `_client` (asyncio + httpx, the same loop; the
requests completing inside the --duration window after --warmup count). A non-2xx
answer or a socket error anywhere, warm-up included, is an error. The Python client
costs ~1 ms of CPU per request on the same two cores as the server and adds its own
pauses to the tail, so its figures are the pessimistic ones. Finally, with the servers stopped, the
request's phases are timed in this process (the pieces of `engine.score_inline`) and
`score_inline` is timed with 1, 8 and 32 customers in one call (what request
micro-batching would buy). The table shows medians over --repeats with the range of
the 1-minute load average at the start of the measurements.

    .venv/bin/python benchmarks/bench_online.py --repeats 3 --duration 15          # wrk if installed
    .venv/bin/python benchmarks/bench_online.py --repeats 3 --duration 15 --client httpx

Exits 1 when any request failed (non-200 or transport error), 2 when set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLI = str(BIN / "crm-scoring")
MLFLOW = str(BIN / "mlflow")
API_KEY = "bench-online-key-0123456789abcdef"
MODELS = ("lead_scoring", "churn_propensity", "customer_ltv")
ORDERS, EVENTS = 20, 50


# --------------------------------------------------------------------------------------
# Load generator (runs as a separate process: `bench_online.py _client ...`)
# --------------------------------------------------------------------------------------


async def _load(url: str, body: bytes, headers: dict[str, str], clients: int, warmup: float, duration: float) -> dict[str, Any]:
    """Closed loop: `clients` coroutines send back to back; requests completing inside the window count."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    done: list[tuple[float, float, str]] = []  # (completed at, latency s, status)
    async with httpx.AsyncClient(limits=limits, timeout=120.0, headers=headers) as client:
        start = time.perf_counter() + warmup
        stop_at = start + duration

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body)
                    await response.aread()
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                ended = time.perf_counter()
                done.append((ended, ended - started, status))

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(worker() for _ in range(clients)))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        total = time.perf_counter() - (start - warmup)
    window = [(latency, status) for ended, latency, status in done if start <= ended <= stop_at]
    statuses: dict[str, int] = {}
    for _, status in window:
        statuses[status] = statuses.get(status, 0) + 1
    everywhere: dict[str, int] = {}  # incl. warm-up and the drain after the window: errors count there too
    for _, _, status in done:
        everywhere[status] = everywhere.get(status, 0) + 1
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "latencies": [latency for latency, _ in window],
        "statuses": statuses,
        "statuses_all": everywhere,
        "wall": duration,
        "client_cpu": cpu,
        "total": total,
    }


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_online.py _client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    headers["content-type"] = "application/json"
    result = asyncio.run(_load(args.url, args.body.read_bytes(), headers, args.clients, args.warmup, args.duration))
    json.dump(result, sys.stdout)


# --------------------------------------------------------------------------------------
# Project, servers, request bodies
# --------------------------------------------------------------------------------------


def project_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSCORE_") and k != "MLFLOW_TRACKING_URI"}
    env.update(CRMSCORE_PROJECT_DIR=str(root), CRMSCORE_API_KEYS=API_KEY)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _has_champions(root: Path) -> bool:
    if not (root / "mlruns" / "mlflow.db").exists():
        return False
    code = (
        "import sys\nfrom mlflow import MlflowClient\n"
        f"c = MlflowClient({_tracking_uri(root)!r})\n"
        f"sys.exit(0 if all(c.get_model_version_by_alias(n, 'champion') for n in {MODELS!r}) else 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return result.returncode == 0


def _tracking_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def _cli(root: Path, *args: str) -> None:
    started = time.perf_counter()
    result = subprocess.run([CLI, *args], cwd=root, env=project_env(root), capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"crm-scoring {args[0]} failed (exit {result.returncode})")
    print(f"  crm-scoring {' '.join(args[:1])}: {time.perf_counter() - started:.0f} s", flush=True)


def prepare(root: Path, customers: int, as_of: str) -> Path:
    """The project folder with champions and a batch snapshot at as_of; returns the profile folder."""
    root.mkdir(parents=True, exist_ok=True)
    profile = root / "demo" / "profile"
    if _has_champions(root) and (profile / "orders.parquet").exists():
        print(f"reusing the trained project in {root}", flush=True)
    else:
        print(f"preparing {root}: demo with {customers:,} customers (about a minute) ...", flush=True)
        _cli(root, "demo", "--customers", str(customers), "--out", str(root / "demo"))
    # Always: the API serves only a snapshot scored with the current champions and rules,
    # and a re-run with the same ones rewrites the same run (seconds for the demo).
    _cli(root, "score", "--profile", str(profile), "--as-of", as_of)
    return profile


def build_customer(profile: Path, as_of: str) -> dict[str, Any]:
    """A real buyer with >= 20 orders and >= 50 events before as_of, trimmed to the latest 20 and 50.

    Of the qualifying buyers, the one with the fewest orders (then events) is taken, so
    trimming drops as little history as possible; the choice is deterministic.
    """
    import pandas as pd

    cut = pd.Timestamp(as_of)
    orders = pd.read_parquet(profile / "orders.parquet")
    events = pd.read_parquet(profile / "events.parquet")
    orders = orders[orders.ordered_at < cut]
    events = events[events.occurred_at < cut]
    counts = pd.DataFrame({"o": orders.groupby("customer_id").size(), "e": events.groupby("customer_id").size()}).fillna(0)
    fit = counts[(counts.o >= ORDERS) & (counts.e >= EVENTS)].reset_index(names="customer_id")
    if fit.empty:
        raise SystemExit(f"no customer with >= {ORDERS} orders and >= {EVENTS} events before {as_of}: use more --customers")
    cid = fit.sort_values(["o", "e", "customer_id"]).iloc[0].customer_id
    from serving.inline import iso_utc, inline_customers

    customer = inline_customers(profile, [cid])[0]
    before = iso_utc(cut)
    # ISO-8601 UTC strings of one format sort in time order.
    customer["orders"] = sorted((o for o in customer["orders"] if o["ordered_at"] < before), key=lambda o: (o["ordered_at"], o["order_id"]))[-ORDERS:]
    customer["events"] = sorted((e for e in customer["events"] if e["occurred_at"] < before), key=lambda e: (e["occurred_at"], e.get("event_id", "")))[-EVENTS:]
    assert len(customer["orders"]) == ORDERS and len(customer["events"]) == EVENTS
    return customer


class Server:
    """A server in its own process group (killed with the group at the end)."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str], ready_url: str, log: Path) -> None:
        self.name = name
        self.ready_url = ready_url
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300.0) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(self.ready_url, timeout=2.0).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} not ready after {timeout:.0f} s; see {self.log}")

    def _descendants(self) -> list[int]:
        """Pids below the server (bentoml's worker runs in a process group of its own)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            below = self._descendants()
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
            for pid in below:  # only our own server's children, by pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not self._log_file.closed:
            self._log_file.close()


def _in_process_engine(root: Path) -> Any:
    """The same engine the service builds (same champions, rules, snapshot), in this process."""
    for key in [k for k in os.environ if k.startswith("CRMSCORE_") or k == "MLFLOW_TRACKING_URI"]:
        del os.environ[key]
    os.environ["CRMSCORE_PROJECT_DIR"] = str(root)
    from serving.engine import build_engine
    from serving.settings import CrmScoringSettings

    settings = CrmScoringSettings()
    return build_engine(
        settings.resolved_store_dir, settings.tags_file, settings, workers=settings.online_workers, parallelism=settings.online_parallelism
    )


def mlflow_body(engine: Any, score_body: dict[str, Any]) -> tuple[bytes, float]:
    """The churn model's feature row for the request's customer as a `dataframe_split` body, and our churn probability."""
    import math

    import pandas as pd

    from serving.schemas import ScoreRequest

    request = ScoreRequest.model_validate(score_body)
    customers, orders, events = engine._tables(request.customers)
    features = engine.builder.features(customers, orders, events, request.as_of)
    churn = engine.models.get("churn_propensity")
    frame = features[list(churn.feature_columns)]
    probability = float(churn.predict_frame(frame)["probability"].iloc[0])
    data = []
    for value in frame.iloc[0].tolist():
        if hasattr(value, "item"):
            value = value.item()
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            value = None
        data.append(value)
    body = {"dataframe_split": {"columns": list(frame.columns), "data": [data]}}
    return json.dumps(body).encode(), probability


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


def run_client(url: str, body_file: Path, headers: list[str], clients: int, warmup: float, duration: float, tool: str) -> dict[str, Any]:
    """One load-generator run; `tool` is "wrk" (C, see `_run_wrk`) or "httpx" (this script's `_client`)."""
    if tool == "wrk":
        return _run_wrk(url, body_file, headers, clients, warmup, duration)
    command = [sys.executable, __file__, "_client", "--url", url, "--body", str(body_file), "--clients", str(clients)]
    command += ["--warmup", str(warmup), "--duration", str(duration)]
    for header in headers:
        command += ["--header", header]
    load = os.getloadavg()[0]
    result = subprocess.run(command, capture_output=True, text=True, timeout=warmup + duration + 300)
    if result.returncode != 0:
        raise SystemExit(f"load generator failed: {result.stderr[-2000:]}")
    raw = json.loads(result.stdout)
    latencies = sorted(raw["latencies"])
    ok = raw["statuses"].get("200", 0)
    errors = sum(raw["statuses_all"].values()) - raw["statuses_all"].get("200", 0)

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return 1000 * latencies[min(len(latencies) - 1, max(0, round(q * len(latencies)) - 1))]

    return {
        "p50": pct(0.50),
        "p99": pct(0.99),
        "rps": ok / raw["wall"],
        "requests": len(latencies),
        "errors": errors,
        "statuses": raw["statuses_all"],
        "client_cpu": raw["client_cpu"] / raw["total"],
        "load": load,
    }


_WRK_SCRIPT = """wrk.method = "POST"
local f = assert(io.open({body!r}, "rb"))
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/json"
{headers}
"""


def _wrk_ms(text: str) -> float:
    """A wrk duration ("812.00us", "42.53ms", "1.20s") in milliseconds."""
    for suffix, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    raise ValueError(f"unexpected wrk duration {text!r}")


def _run_wrk(url: str, body_file: Path, headers: list[str], clients: int, warmup: float, duration: float) -> dict[str, Any]:
    """wrk (Debian's package): one thread, `clients` keep-alive connections, closed loop, --latency.

    A warm-up run first (wrk has no warm-up option), then the measured run. Errors are
    non-2xx answers and socket errors of either run.
    """
    import re

    lines = [f'wrk.headers[{k.strip()!r}] = {v.strip()!r}' for k, v in (h.split(":", 1) for h in headers)]
    script = body_file.with_suffix(".lua")
    script.write_text(_WRK_SCRIPT.format(body=str(body_file), headers="\n".join(lines)))

    def wrk(seconds: float) -> tuple[str, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(
            ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "60s", "-s", str(script), url],
            capture_output=True, text=True, timeout=seconds + 300,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise SystemExit(f"wrk failed: {result.stderr[-2000:]}")
        return result.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def errors(out: str) -> int:
        count = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
        socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        return count + (sum(int(n) for n in socket.groups()) if socket else 0)

    warm, _ = wrk(warmup)
    load = os.getloadavg()[0]
    out, cpu = wrk(duration)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    failed = errors(warm) + errors(out)
    return {
        "p50": _wrk_ms(percentiles["50"]),
        "p99": _wrk_ms(percentiles["99"]),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "errors": failed,
        "statuses": {"200": requests - errors(out), "errors": failed},
        "client_cpu": cpu / duration,
        "load": load,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def phase_breakdown(engine: Any, body: bytes, repeats: int) -> list[tuple[str, list[float]]]:
    """Time one request's phases in this process, single-threaded (ms per phase).

    Each phase calls the engine's own functions in the order `engine.score_inline` does
    (the feature phase is split into the DuckDB execution and the rest of
    `OnlineFeatureBuilder.features`); the last row times `score_inline` itself.
    """
    import numpy as np

    from serving.engine import default_as_of
    from serving.schemas import ScoreRequest
    from serving.scoring import KEY, REASON_COLUMNS, _population, predict_columns, render_result
    from serving.tags import evaluate_tag_columns

    builder = engine.builder
    timings: dict[str, list[float]] = {}

    def tick(name: str, since: float) -> float:
        now = time.perf_counter()
        timings.setdefault(name, []).append(1000 * (now - since))
        return now

    for i in range(repeats + 10):
        t = time.perf_counter()
        request = ScoreRequest.model_validate(json.loads(body))
        t = tick("parse JSON + pydantic validation", t)
        as_of = request.as_of if request.as_of is not None else default_as_of()
        customers, orders, events = engine._tables(request.customers)
        t = tick("_tables (Python lists -> Arrow)", t)
        builder.feature_table(customers, orders, events, as_of)
        t = tick("features: DuckDB (replace rows, run the family statements, combine)", t)
        features = builder.features(customers, orders, events, as_of)
        t = tick("features: whole OnlineFeatureBuilder.features (again)", t)
        ids = features[KEY].astype(str).tolist()
        previous = engine._previous_tags(ids)
        t = tick("previous tags (in-memory snapshot index)", t)
        for model in engine.models.models.values():
            rows = np.flatnonzero(_population(features, model))
            if len(rows) == 0:
                continue
            subset = features.iloc[rows]
            if model.predict_with_reasons is not None and model.name in REASON_COLUMNS:
                model.predict_with_reasons(subset, 3)
                t = tick(f"predict {model.name} with reasons", t)
            else:
                model.predict_values(subset)
                t = tick(f"predict {model.name}", t)
        scores = predict_columns(features, engine.models)
        t = tick("predict_columns as a whole (all models, reasons)", t)
        scores = scores.with_percentiles(engine.snapshot.reference if engine.snapshot else None)
        t = tick("percentiles", t)
        tags = evaluate_tag_columns(engine.rules, scores.by_name(), len(scores.keys), previous)
        t = tick("evaluate_tag_columns", t)
        rendered = [render_result(row, engine.models, engine.rules, as_of) for row in scores.records(tags)]
        t = tick("records + render_result", t)
        json.dumps({"results": rendered})
        t = tick("response JSON", t)
        engine.score_inline(request)
        tick("engine.score_inline end to end (separate call)", t)
        if i < 10:  # warm-up
            for values in timings.values():
                values.pop()
    return list(timings.items())


def batch_scaling(engine: Any, customer: dict[str, Any], as_of: str, sizes: list[int], repeats: int) -> list[tuple[int, float]]:
    """Median ms of one `score_inline` call with n copies of the customer (distinct ids)."""
    import copy

    from serving.schemas import ScoreRequest

    out = []
    for n in sizes:
        customers = []
        for k in range(n):
            c = copy.deepcopy(customer)
            c["customer_id"] = f"{customer['customer_id']}-{k}"
            for order in c["orders"]:
                order["order_id"] = f"{order['order_id']}-{k}"
            customers.append(c)
        request = ScoreRequest.model_validate({"as_of": as_of, "customers": customers})
        for _ in range(3):
            engine.score_inline(request)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.score_inline(request)
            times.append(1000 * (time.perf_counter() - started))
        out.append((n, statistics.median(times)))
    return out


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "online", help="Project folder (reused).")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--as-of", default="2025-06-15")
    parser.add_argument("--concurrency", default="1,8,32", help="Comma-separated client counts.")
    parser.add_argument("--duration", type=float, default=15.0, help="Measured seconds per setting.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Warm-up seconds per setting (not measured).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per setting; the table shows medians.")
    parser.add_argument("--port", type=int, default=3917)
    parser.add_argument("--mlflow-port", type=int, default=5917)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--skip-default-as-of", action="store_true", help="Skip the rows without as_of.")
    parser.add_argument("--phases", type=int, default=200, help="In-process timed requests for the phase breakdown (0: skip).")
    parser.add_argument(
        "--client", choices=("auto", "wrk", "httpx"), default="auto",
        help="Load generator: wrk (C; Debian's package `wrk`), or this script's asyncio + httpx client; auto: wrk when installed.",
    )
    args = parser.parse_args()
    import shutil

    tool = ("wrk" if shutil.which("wrk") else "httpx") if args.client == "auto" else args.client
    if tool == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # duckdb fetch_arrow_table (as the engine calls it)
    root = args.out.resolve()
    levels = [int(c) for c in args.concurrency.split(",")]

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores; load generator: {tool}", flush=True)
    profile = prepare(root, args.customers, args.as_of)
    as_of_text = f"{args.as_of}T00:00:00Z"
    customer = build_customer(profile, args.as_of)
    score_body = {"as_of": as_of_text, "customers": [customer]}
    bodies = {"as_of": json.dumps(score_body).encode(), "now": json.dumps({"customers": [customer]}).encode()}
    print(f"request: customer {customer['customer_id']}, {len(customer['orders'])} orders, {len(customer['events'])} events, "
          f"{len(bodies['as_of']):,} bytes", flush=True)

    servers: list[Server] = []
    try:
        ours = Server(
            "crm-scoring serve",
            [CLI, "serve", "--port", str(args.port)],
            root,
            project_env(root),
            f"http://127.0.0.1:{args.port}/readyz",
            root / "serve.log",
        )
        servers.append(ours)
        peer = None
        if not args.skip_mlflow:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSCORE_")}
            env["MLFLOW_TRACKING_URI"] = _tracking_uri(root)
            env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow execs `uvicorn`
            peer = Server(
                "mlflow models serve",
                [MLFLOW, "models", "serve", "-m", "models:/churn_propensity@champion", "--env-manager", "local",
                 "--port", str(args.mlflow_port), "--workers", "1"],
                root,
                env,
                f"http://127.0.0.1:{args.mlflow_port}/ping",
                root / "mlflow-serve.log",
            )
            servers.append(peer)
        for server in servers:
            print(f"{server.name} ready in {server.wait_ready():.1f} s", flush=True)

        import httpx

        auth = f"Authorization:Bearer {API_KEY}"
        score_url = f"http://127.0.0.1:{args.port}/v1/score"
        check = httpx.post(score_url, content=bodies["as_of"], headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}, timeout=60)
        if check.status_code != 200:
            raise SystemExit(f"our server answered {check.status_code}: {check.text[:500]}")
        ours_churn = check.json()["results"][0]["predictions"]["churn"]["probability"]
        files = {}
        for name, body in bodies.items():
            files[name] = root / f"body_{name}.json"
            files[name].write_bytes(body)

        print("in-process engine (feature row for mlflow, phase breakdown) ...", flush=True)
        engine = _in_process_engine(root)
        mlflow_url = f"http://127.0.0.1:{args.mlflow_port}/invocations"
        if peer is not None:
            body, probability = mlflow_body(engine, score_body)
            files["mlflow"] = root / "body_mlflow.json"
            files["mlflow"].write_bytes(body)
            answer = httpx.post(mlflow_url, content=body, headers={"content-type": "application/json"}, timeout=60)
            if answer.status_code != 200:
                raise SystemExit(f"mlflow answered {answer.status_code}: {answer.text[:500]}")
            theirs = answer.json()["predictions"][0]["probability"]
            print(f"churn probability: ours {ours_churn:.12f} / in-process {probability:.12f} / mlflow {theirs:.12f}; "
                  f"mlflow body {len(body):,} bytes", flush=True)
            if abs(theirs - ours_churn) > 1e-9:
                print("WARNING: mlflow's churn probability differs from ours", flush=True)

        settings: list[tuple[str, str, str, list[str]]] = [("crm-scoring", score_url, "as_of", [auth])]
        if not args.skip_default_as_of:
            settings.append(("crm-scoring (no as_of)", score_url, "now", [auth]))
        if peer is not None:
            settings.append(("mlflow serve (churn only)", mlflow_url, "mlflow", []))
        results: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for clients in levels:
                for label, url, body_key, headers in settings:
                    r = run_client(url, files[body_key], headers, clients, args.warmup, args.duration, tool)
                    results.setdefault((label, clients), []).append(r)
                    print(f"  run {repeat + 1}/{args.repeats} {label:<26} c={clients:<3} p50 {r['p50']:7.1f} ms  "
                          f"p99 {r['p99']:7.1f} ms  {r['rps']:7.1f} req/s  errors {r['errors']}  "
                          f"client CPU {100 * r['client_cpu']:.0f}%  load {r['load']:.2f}", flush=True)

        print()
        print(f"{'server':<27} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7} {'requests':>9} {'load1':>11}")
        for (label, clients), rows in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            loads = [r["load"] for r in rows]
            print(f"{label:<27} {clients:>7} {_median(rows, 'p50'):8.1f} {_median(rows, 'p99'):8.1f} "
                  f"{_median(rows, 'rps'):8.1f} {sum(r['errors'] for r in rows):>7} {sum(r['requests'] for r in rows):>9} "
                  f"{min(loads):5.2f}-{max(loads):<5.2f}")
        if peer is not None:
            print("\nours / mlflow (crm-scoring with as_of vs mlflow serve of the churn model on precomputed features;")
            print("ours also validates the raw profile, builds every feature in DuckDB, runs 3 models + reasons + tags):")
            print(f"{'clients':>7} {'p50 ratio':>10} {'p99 ratio':>10} {'req/s ratio':>12}")
            for clients in levels:
                a, b = results[("crm-scoring", clients)], results[("mlflow serve (churn only)", clients)]
                print(f"{clients:>7} {_median(a, 'p50') / _median(b, 'p50'):9.1f}x {_median(a, 'p99') / _median(b, 'p99'):9.1f}x "
                      f"{_median(a, 'rps') / _median(b, 'rps'):11.2f}x")
        goal = results.get(("crm-scoring", 8))
        if goal:
            p99 = _median(goal, "p99")
            errs = sum(r["errors"] for r in goal)
            met = p99 <= 50 and errs == 0
            print(f"\ngoal p99 <= 50 ms at 8 clients with no errors: p99 {p99:.1f} ms, {errs} errors -> {'met' if met else 'NOT met'}")

        if args.phases > 0:
            # Stop the servers first so the breakdown runs on a machine without them.
            for server in servers:
                server.stop()
            print(f"\nphases of one request in process (single thread, {args.phases} runs after 10 warm-up; "
                  f"load {os.getloadavg()[0]:.2f}):")
            print(f"{'phase':<62} {'median ms':>10} {'p90 ms':>8}")
            for name, values in phase_breakdown(engine, bodies["as_of"], args.phases):
                ordered = sorted(values)
                print(f"{name:<62} {statistics.median(ordered):10.2f} {ordered[int(0.9 * (len(ordered) - 1))]:8.2f}")
            print(f"\nscore_inline with n customers in one call (in process, load {os.getloadavg()[0]:.2f}):")
            for n, ms in batch_scaling(engine, customer, as_of_text, levels, max(5, args.phases // 10)):
                print(f"  n={n:<3} {ms:8.1f} ms per call  {ms / n:7.1f} ms per customer")

        errors = {label: sum(r["errors"] for r in rows) for (label, _), rows in results.items()}
        if any(errors.values()):
            statuses: dict[str, int] = {}
            for rows in results.values():
                for r in rows:
                    for k, v in r["statuses"].items():
                        if k != "200":
                            statuses[k] = statuses.get(k, 0) + v
            print(f"\nERRORS: {statuses}; see {root}/serve.log and {root}/mlflow-serve.log", file=sys.stderr)
            raise SystemExit(1)
    finally:
        for server in servers:
            server.stop()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client_main(sys.argv[2:])
    else:
        try:
            main()
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
                raise SystemExit(2) from None
            raise
