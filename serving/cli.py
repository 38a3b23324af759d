"""The `crm-scoring` command line.

Every command exits 0 on success and non-zero with a one-line reason otherwise.
Heavy libraries are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from serving.cli_common import console, load_settings, out
from serving.cli_common import errors_as_exit as _errors_as_exit
from serving.cli_common import fail as _fail

app = typer.Typer(
    name="crm-scoring",
    help="Predictive scores and tags for CRM/CDP teams: features, models, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _check_environment() -> None:
    """Say which `CRMSCORE_` variables no setting reads (a misspelt one would do nothing)."""
    from serving.settings import unknown_variables

    for line in unknown_variables(os.environ):
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


data_app = typer.Typer(help="Generate, import and validate unified-profile data.", no_args_is_help=True)
features_app = typer.Typer(help="Build point-in-time feature tables.", no_args_is_help=True)
models_app = typer.Typer(help="List, promote and roll back the registered models (MLflow aliases).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
from serving.cli_triggers import triggers_app  # noqa: E402 - typer/rich only; commands import lazily
app.add_typer(triggers_app, name="triggers")


T = TypeVar("T")

ProfileOption = Annotated[Path, typer.Option("--profile", help="Profile store: folder of parquet/csv files or a DuckDB file.")]


@contextmanager
def _step(label: str) -> Iterator[None]:
    """A spinner while a step runs, then a line with its duration."""
    start = time.perf_counter()
    with console.status(f"{label} ..."):
        yield
    console.print(f"[green]✓[/] {label} ({time.perf_counter() - start:.1f} s)")


def _run_step(label: str, fn: Callable[[], T]) -> T:
    with _step(label):
        return fn()


@data_app.command("generate")
def data_generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the profile into.")],
    customers: Annotated[int, typer.Option("--customers", min=1, help="Number of profiles.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 42,
) -> None:
    """Write a synthetic unified profile with ground truth (truth.parquet)."""
    with _errors_as_exit():
        from features.synthetic import generate_profile
        from features.synthetic_io import write_synthetic_profile

        generated = _run_step(f"generate {customers:,} profiles (seed {seed})", lambda: generate_profile(customers, seed))
        written = _run_step(f"write {out_dir}", lambda: write_synthetic_profile(generated, out_dir))
        table = Table("file", "rows", title="synthetic profile")
        for name in ("customers", "orders", "events", "truth"):
            table.add_row(name, f"{getattr(generated, name).num_rows:,}")
        out.print(table)
        out.print(f"wrote {len(written)} files to {out_dir}")


@data_app.command("import-cdnow")
def data_import_cdnow(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the profile into.")],
    sample: Annotated[bool, typer.Option("--sample", help="The 2,357-customer sample instead of the full 23,570.")] = False,
) -> None:
    """Convert the CDNOW data shipped inside lifetimes into a unified profile (no network)."""
    with _errors_as_exit():
        from features.cdnow import cdnow_to_profile
        from features.io import read_cdnow_transactions, write_profile_tables

        converted = cdnow_to_profile(read_cdnow_transactions(sample=sample))
        write_profile_tables({"customers": converted.customers, "orders": converted.orders}, out_dir)
        out.print(
            f"CDNOW {'sample' if sample else 'full'}: {len(converted.customers):,} customers, "
            f"{len(converted.orders):,} orders written to {out_dir}"
        )


@data_app.command("validate")
def data_validate(
    profile: ProfileOption,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="Rejects file (default: rejects.csv beside the profile).")
    ] = None,
) -> None:
    """Check a profile store against the contract and report every problem at once."""
    with _errors_as_exit():
        from features.backend import connect
        from features.errors import ProfileValidationError
        from features.io import read_raw_profile, write_rejects
        from features.validation import validate_profile

        settings = load_settings()
        rejects_path = rejects or _default_rejects_path(profile)
        con = connect(settings)
        result = _run_step("validate", lambda: validate_profile(read_raw_profile(con, profile), settings.max_reject_share))
        report = result.report
        _print_report(report)
        if report.rows_rejected:
            write_rejects(result.rejects, rejects_path)
            out.print(f"{report.rows_rejected:,} rejected row(s) written to {rejects_path}")
        if not report.ok:
            raise ProfileValidationError(report.failure_message(rejects_path), report)
        out.print("[green]profile is valid[/]" if not report.rows_rejected else "profile is usable (rejects below the limit)")


def _load_validated(con, profile: Path, rejects_path: Path, settings, before=None):  # type: ignore[no-untyped-def]
    """Load and validate a profile store, saying how many rows went to the rejects file.

    before: the run's cut-off; orders and events at or after it are not read at all.
    """
    from features.io import load_profile

    what = f"load and validate {profile}" + (f" before {before:%Y-%m-%d %H:%M:%S}" if before is not None else "")
    loaded = _run_step(
        what,
        lambda: load_profile(con, profile, rejects_path=rejects_path, max_reject_share=settings.max_reject_share, before=before),
    )
    if loaded.report.rows_rejected:
        console.print(f"[yellow]![/] {loaded.report.rows_rejected:,} row(s) rejected; see {loaded.rejects_path}")
    return loaded


def _default_rejects_path(profile: Path) -> Path:
    return profile / "rejects.csv" if profile.is_dir() else profile.with_name(profile.stem + ".rejects.csv")


def _print_report(report) -> None:  # type: ignore[no-untyped-def]
    table = Table("table", "rows read", "rejected", "share", title="validation")
    for t in report.tables:
        table.add_row(t.table, f"{t.rows_read:,}", f"{t.rows_rejected:,}", f"{t.rejected_share:.2%}")
    out.print(table)
    for problem in report.problems:
        out.print(f"- {problem.describe()}", highlight=False)
    for note in report.notes:
        out.print(f"- {note}", highlight=False)


@features_app.command("build")
def features_build(
    profile: ProfileOption,
    as_of: Annotated[str, typer.Option("--as-of", help="Cut-off instant (UTC), e.g. 2025-07-01.")],
    out_file: Annotated[Path, typer.Option("--out", help="Output Parquet file.")],
) -> None:
    """Build the point-in-time feature table (one row per profile created before --as-of)."""
    with _errors_as_exit():
        from features.backend import connect
        from features.io import check_output_file, write_parquet
        from features.pipeline import build_features
        from features.timeutil import to_utc_naive

        settings = load_settings()
        cutoff = to_utc_naive(as_of)
        check_output_file(out_file, "--out")  # before loading and building, not at the write
        rejects_path = out_file.with_name(out_file.stem + ".rejects.csv")
        con = connect(settings)
        loaded = _load_validated(con, profile, rejects_path, settings, before=cutoff)
        expr = build_features(loaded.profile, cutoff, settings.feature_params())
        _run_step(f"build features as of {cutoff:%Y-%m-%d %H:%M:%S} -> {out_file}", lambda: write_parquet(expr, out_file))
        import pyarrow.parquet as pq

        meta = pq.read_metadata(out_file)
        out.print(f"{meta.num_rows:,} rows x {meta.num_columns} columns written to {out_file}")


@app.command("demo")
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Working folder for the demo.")] = Path("data/demo"),
    customers: Annotated[int, typer.Option("--customers", min=100)] = 50_000,
    seed: Annotated[int, typer.Option("--seed")] = 7,
) -> None:
    """Generate a synthetic profile, validate it, build its features, train all models and promote them."""
    with _errors_as_exit(), _mlflow_errors_as_exit():
        from features.synthetic import DATA_END, TRUTH_AS_OF, TRUTH_HORIZON_DAYS

        start = time.perf_counter()
        profile_dir = out_dir / "profile"
        data_generate(out_dir=profile_dir, customers=customers, seed=seed)
        features_file = out_dir / "features.parquet"
        features_build(profile=profile_dir, as_of=TRUTH_AS_OF.isoformat(), out_file=features_file)
        # Train at the end of the data: validation then falls on the truth window [TRUTH_AS_OF, DATA_END).
        outcomes = _train_and_report(
            tasks=list(TRAIN_TASKS), profile=profile_dir, as_of=DATA_END.isoformat(), horizon=f"{TRUTH_HORIZON_DAYS}d"
        )
        from training.tracking import tracking_uri

        out.print(f"demo done in {time.perf_counter() - start:.0f} s:")
        out.print(f"- profile: {profile_dir} (ground truth in truth.parquet)", highlight=False)
        out.print(f"- features as of {TRUTH_AS_OF:%Y-%m-%d}: {features_file}", highlight=False)
        uri = tracking_uri(load_settings())
        out.print(f"- MLflow store: {uri} (browse: mlflow ui --backend-store-uri {uri})", highlight=False)
        out.print("- report: notebooks/model_report.ipynb; registry: crm-scoring models list", highlight=False)
        for o in outcomes:
            if o.version is not None:
                state = "champion" if o.decision is not None and o.decision.promoted else "candidate"
                out.print(f"- models:/{o.model_name}/{o.version} ({state})", highlight=False)
        _fail_if_any_failed(outcomes)


# --------------------------------------------------------------------------------------
# train and models (MLflow)
# --------------------------------------------------------------------------------------


class TrainTask(str, Enum):
    lead = "lead"
    churn = "churn"
    ltv = "ltv"
    all = "all"


#: The order `train all` runs the models in.
TRAIN_TASKS: tuple[str, ...] = ("lead", "churn", "ltv")


def _quiet_mlflow() -> None:
    # MLflow logs INFO/WARNING chatter (store migrations, pickling advice) that would bury the
    # progress lines; its errors still raise.
    import mlflow  # noqa: F401 - configures its loggers on import; override after

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def _mlflow_errors_as_exit() -> Iterator[None]:
    """MLflow errors the training layer did not translate (e.g. an unreachable server): one line."""
    try:
        yield
    except Exception as exc:
        # SQLAlchemy and alembic: a store MLflow cannot open or migrate (not a database, a
        # migration left half-done by a crash).
        if type(exc).__name__ == "MlflowException" or type(exc).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "alembic"):
            message = str(getattr(exc, "message", exc)).strip().splitlines()
            _fail(f"MLflow: {message[0] if message else type(exc).__name__}")
        raise


@dataclass
class _TrainOutcome:
    model_name: str
    result: Any = None
    run_id: str | None = None
    version: str | None = None
    decision: Any = None
    error: str | None = None


def _progress() -> Callable[[str], None]:
    """Training progress as dim lines (kept in CI logs, where the spinner is not shown)."""

    def report(message: str) -> None:
        console.print(f"  [dim]{message}[/]", highlight=False)

    return report


def _train_one(outcome: _TrainOutcome, task: str, cache: Any, as_of: Any, horizon_days: int, settings: Any, promote: bool) -> None:
    """Train, log and gate one model, filling `outcome` as it goes (so a late failure keeps the version)."""
    from training import registry, train
    from training.tracking import log_training_result

    name = outcome.model_name
    progress = _progress()

    def fit() -> Any:
        # The models' configs keep their defaults but for the feature parameters (configured PII columns).
        if task == "ltv":
            config = train.LtvConfig(features=cache.params)
            return train.train_ltv(cache.source, as_of, horizon_days, config, progress=progress)
        config = train.ClassifierConfig(features=cache.params)
        return train.train_classifier(cache.source, task, as_of, horizon_days, config, progress=progress, cache=cache)

    outcome.result = _run_step(f"train {name}", fit)
    outcome.run_id, outcome.version = _run_step(f"log {name} to MLflow", lambda: log_training_result(outcome.result, settings))
    if promote:
        outcome.decision = _run_step(
            f"promotion gate for {name} v{outcome.version}",
            lambda: registry.promote(name, outcome.version, settings=settings, validation=outcome.result.validation),
        )
        decision = outcome.decision
        if decision.promoted:
            mark = "[green]promoted[/]"
        else:
            mark = "[yellow]kept the champion[/]" if decision.champion_version else "[yellow]not promoted[/]"
        console.print(f"  {mark}: {escape(decision.reason)}", highlight=False)


def _train_and_report(
    tasks: list[str], profile: Path, as_of: str, horizon: str, rejects: Path | None = None, promote: bool = True
) -> list[_TrainOutcome]:
    """Load the profile once, then train, log and (by default) promote each model; print the summary."""
    from features.backend import connect
    from features.errors import CrmScoringError
    from features.timeutil import parse_horizon, to_utc_naive
    from training.datasets import FeatureCache
    from training.results import TASK_TO_MODEL
    from training.tracking import configure, tracking_uri

    settings = load_settings()
    cutoff = to_utc_naive(as_of)
    horizon_days = parse_horizon(horizon)
    rejects_path = rejects or _default_rejects_path(profile)
    con = connect(settings)
    loaded = _load_validated(con, profile, rejects_path, settings, before=cutoff)
    # The store is opened (and created if missing) only once the input is known to be usable.
    _quiet_mlflow()
    _run_step(f"open the MLflow store {tracking_uri(settings)}", lambda: configure(settings))
    console.print(f"as of {cutoff:%Y-%m-%d %H:%M:%S}, horizon {horizon_days} days", highlight=False)
    # lead and churn share cut-offs, hence feature tables: build each once (lazily).
    cache = FeatureCache(loaded.profile, cutoff, settings.feature_params(), progress=_progress())
    outcomes = []
    for task in tasks:
        # One model failing (too few positives, a fit that does not converge) must not cost the others.
        outcome = _TrainOutcome(TASK_TO_MODEL[task])
        outcomes.append(outcome)
        try:
            _train_one(outcome, task, cache, cutoff, horizon_days, settings, promote)
        except (CrmScoringError, ValueError) as exc:
            outcome.error = " ".join(str(exc).split())
            console.print(f"[red]✗[/] {outcome.model_name}: {outcome.error}", highlight=False)
    _print_training_summary(outcomes)
    return outcomes


def _gate_text(decision: Any) -> str:
    """The gate's own numbers: both models scored on the candidate's validation rows."""
    if decision is None:
        return "not run (--no-promote)"
    if decision.candidate_value is None or decision.champion_value is None:
        return decision.reason.split(":")[0]  # "no champion yet", "forced ...", "champion vN cannot be scored ..."
    return f"{decision.candidate_value:.4f} vs v{decision.champion_version} {decision.champion_value:.4f}"


def _print_training_summary(outcomes: list[_TrainOutcome]) -> None:
    from training.model_card import baseline_metrics

    table = Table(
        "model", "version", "primary metric (out of time)", "baselines", "gate: candidate vs champion", "promoted",
        title="training",
    )
    for o in outcomes:
        if o.error is not None:
            table.add_row(o.model_name, o.version or "-", "-", "-", "-", f"[red]failed[/]: {o.error}")
            continue
        primary = o.result.primary_metric
        value = o.result.metrics.get(primary.name, float("nan"))
        baselines = baseline_metrics(o.result.metrics, primary.name)
        baseline_text = ", ".join(f"{b} {v:.4f}" for b, v in sorted(baselines.items())) or "-"
        d = o.decision
        promoted = "-" if d is None else ("[green]yes[/]" if d.promoted else "[yellow]no[/]") + (" (forced)" if d.forced else "")
        table.add_row(o.model_name, str(o.version), f"{primary.name} {value:.4f}", baseline_text, _gate_text(d), promoted)
    out.print(table)


def _fail_if_any_failed(outcomes: list[_TrainOutcome]) -> None:
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        _fail(f"{len(failed)} of {len(outcomes)} model(s) failed: " + "; ".join(f"{o.model_name}: {o.error}" for o in failed))


@app.command("train")
def train(
    task: Annotated[TrainTask, typer.Argument(help="Which model to train (all: lead, churn and ltv).")],
    profile: ProfileOption,
    as_of: Annotated[str, typer.Option("--as-of", help="Cut-off instant (UTC): nothing at or after it is read.")],
    horizon: Annotated[str, typer.Option("--horizon", help="Label / prediction horizon, e.g. 90d or 39w.")] = "90d",
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="Rejects file (default: rejects.csv beside the profile).")
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Run the promotion gate after logging each model.")
    ] = True,
) -> None:
    """Train out-of-time, log each model to MLflow, register it and run the promotion gate."""
    with _errors_as_exit(), _mlflow_errors_as_exit():
        tasks = list(TRAIN_TASKS) if task is TrainTask.all else [task.value]
        outcomes = _train_and_report(tasks, profile, as_of, horizon, rejects=rejects, promote=promote)
        _fail_if_any_failed(outcomes)


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option("--name", help="Only this model (lead_scoring, churn_propensity, customer_ltv).")] = None,
) -> None:
    """Every registered version with its aliases, window and primary metric."""
    with _errors_as_exit(), _mlflow_errors_as_exit():
        from training import registry
        from training.results import MODEL_NAMES
        from training.tracking import tracking_uri

        settings = load_settings()
        _quiet_mlflow()
        if name is not None and name not in MODEL_NAMES:
            raise registry.ModelNotFoundError(f"unknown model {name!r}; registered models are {', '.join(MODEL_NAMES)}")
        infos = registry.list_models(settings, names=(name,) if name else MODEL_NAMES)
        if not infos:
            out.print(f"no registered models in {tracking_uri(settings)}", highlight=False)
            return
        table = Table("model", "version", "aliases", "as of", "horizon", "primary metric", "best baseline", "created", title="models")
        for i in infos:
            best = i.best_baseline()
            table.add_row(
                i.name,
                i.version,
                ", ".join(i.aliases) or "-",
                (i.as_of or "-")[:10],
                f"{i.horizon_days} d" if i.horizon_days else "-",
                f"{i.primary_metric} {i.primary_value:.4f}" if i.primary_value is not None else (i.primary_metric or "-"),
                f"{best[0]} {best[1]:.4f}" if best else "-",
                f"{i.created_at:%Y-%m-%d %H:%M}" if i.created_at else "-",
            )
        out.print(table)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model: lead_scoring, churn_propensity or customer_ltv.")],
    version: Annotated[int, typer.Argument(help="Version number to make champion (see `models list`).", min=1)],
    force: Annotated[bool, typer.Option("--force", help="Skip the gate and move the champion alias anyway.")] = False,
) -> None:
    """Make VERSION the champion if it is not worse than the current one on its validation window."""
    with _errors_as_exit(), _mlflow_errors_as_exit():
        from training import registry

        settings = load_settings()
        _quiet_mlflow()
        decision = _run_step(f"promotion gate for {name} v{version}", lambda: registry.promote(name, str(version), force, settings))
        if not decision.promoted:
            _fail(decision.summary())
        out.print(decision.summary(), highlight=False, soft_wrap=True)


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Registered model: lead_scoring, churn_propensity or customer_ltv.")],
) -> None:
    """Give the champion alias back to the previous champion."""
    with _errors_as_exit(), _mlflow_errors_as_exit():
        from training import registry

        settings = load_settings()
        _quiet_mlflow()
        result = registry.rollback(name, settings)
        out.print(f"{result.name}: champion v{result.from_version} -> v{result.to_version}", highlight=False)


def main() -> None:  # pragma: no cover - console entry point helper
    app()



def _register_serving_commands() -> None:
    from serving.cli_serving import quickstart, score, serve

    app.command("score")(score)
    app.command("serve")(serve)
    app.command("quickstart")(quickstart)


_register_serving_commands()


if __name__ == "__main__":  # pragma: no cover - after every command is registered
    sys.exit(app())
