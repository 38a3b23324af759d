"""The `crm-scoring` command line.

Every command exits 0 on success and non-zero with a one-line reason otherwise.
Heavy libraries are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="crm-scoring",
    help="Predictive scores and tags for CRM/CDP teams: features, models, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Generate, import and validate unified-profile data.", no_args_is_help=True)
features_app = typer.Typer(help="Build point-in-time feature tables.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")

console = Console(stderr=True)
out = Console()

T = TypeVar("T")

ProfileOption = Annotated[Path, typer.Option("--profile", help="Profile store: folder of parquet/csv files or a DuckDB file.")]


def _fail(message: str, code: int = 1) -> None:
    # One line, no traceback: the reason is the message.
    console.print(f"[bold red]error:[/] {' '.join(str(message).split())}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors_as_exit() -> Iterator[None]:
    from features.errors import CrmScoringError

    try:
        yield
    except (CrmScoringError, ValueError, FileNotFoundError, PermissionError) as exc:
        _fail(str(exc))


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


def _settings():  # type: ignore[no-untyped-def]
    from features.settings import Settings

    return Settings()


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

        settings = _settings()
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
        from features.io import load_profile, write_parquet
        from features.pipeline import build_features
        from features.timeutil import to_utc_naive

        settings = _settings()
        cutoff = to_utc_naive(as_of)
        rejects_path = out_file.with_name(out_file.stem + ".rejects.csv")
        con = connect(settings)
        loaded = _run_step(
            f"load and validate {profile}",
            lambda: load_profile(con, profile, rejects_path=rejects_path, max_reject_share=settings.max_reject_share),
        )
        if loaded.report.rows_rejected:
            console.print(f"[yellow]![/] {loaded.report.rows_rejected:,} row(s) rejected; see {loaded.rejects_path}")
        expr = build_features(loaded.profile, cutoff, pii_columns=settings.pii_columns)
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
    """Generate a synthetic profile, validate it and build its features."""
    with _errors_as_exit():
        from features.synthetic import TRUTH_AS_OF

        profile_dir = out_dir / "profile"
        data_generate(out_dir=profile_dir, customers=customers, seed=seed)
        features_file = out_dir / "features.parquet"
        features_build(profile=profile_dir, as_of=TRUTH_AS_OF.isoformat(), out_file=features_file)
        out.print(f"demo done: profile in {profile_dir}, features in {features_file}")


def main() -> None:  # pragma: no cover - console entry point helper
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
