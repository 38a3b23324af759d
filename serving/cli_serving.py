"""`crm-scoring score` (batch) and `crm-scoring serve` (the BentoML API).

Registered on the main app by `serving.cli`. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from features.errors import CrmScoringError
from serving.cli_common import console, errors_as_exit, load_settings, out


def score(
    profile: Annotated[Path, typer.Option("--profile", help="Profile store: folder of parquet/csv files or a DuckDB file.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Cut-off instant (ISO date or timestamp, UTC).")],
    store: Annotated[Path | None, typer.Option("--out", "--store", help="Score store folder (default: $CRMSCORE_STORE_DIR or <project dir>/scores); rejected rows go to its rejects.csv. `--store` as in the triggers commands.")] = None,
    tags: Annotated[Path | None, typer.Option("--tags", help="Tag rules YAML (default: $CRMSCORE_TAGS_FILE or the shipped rules).")] = None,
    emit_initial: Annotated[bool, typer.Option("--emit-initial", help="On the first run, emit 'entered' events for every tag (default: baseline only).")] = False,
) -> None:
    """Score every profile with the champion models; write a snapshot and the tag/segment events."""
    from serving.cli import _load_validated, _mlflow_errors_as_exit, _quiet_mlflow, _run_step

    with errors_as_exit(), _mlflow_errors_as_exit(), ExitStack() as held:
        from features.backend import connect
        from features.timeutil import to_utc_naive
        from serving.batch import score_profile
        from serving.models import load_model_set
        from serving.store import ScoreStore
        from serving.tags import load_tag_rules

        started = time.perf_counter()
        cut_off = to_utc_naive(as_of)
        settings = load_settings(store=store, tags=tags)
        score_store = ScoreStore(settings.resolved_store_dir)
        # A bad rules file (read in milliseconds) stops the command before it creates the store.
        rules = _run_step("load tag rules", lambda: load_tag_rules(settings.tags_file))
        # Before loading anything else: a second `score` on this store stops at once, before
        # it loads a profile beside the first one or rewrites the rejects file it named.
        held.enter_context(score_store.scoring_lock())
        _quiet_mlflow()
        models = _run_step("load champion models", lambda: load_model_set(settings, threads=os.cpu_count()))
        for line in models.warnings:
            console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
        con = connect(settings)
        # Rejected rows go beside the output (the profile may be read-only).
        rejects = settings.resolved_store_dir / "rejects.csv"
        loaded = _load_validated(con, Path(profile), rejects, settings, before=cut_off)

        def report(message: str) -> None:
            console.print(f"  [dim]{message}[/]", highlight=False)

        result = score_profile(
            loaded.profile, cut_off, models, rules, score_store,
            feature_params=settings.feature_params(), emit_initial=emit_initial, progress=report, locked=True,
        )
        table = Table("tag", "value", "customers", title=f"run {result.run_id}")
        for tag, counts in result.tag_counts.items():
            for value, n in sorted(counts.items(), key=lambda item: -item[1]):
                table.add_row(tag, value, f"{n:,}")
        for segment, n in result.segment_counts.items():
            table.add_row(f"segment {segment}", "", f"{n:,}")
        out.print(table)
        state = "re-run of an existing run; " if result.rerun else ""
        if result.backfill_of is not None:
            state += f"back-fill (run {result.backfill_of} has a later as_of): its changes are not events; "
        out.print(
            f"scored {result.rows:,} profiles as of {result.as_of:%Y-%m-%d %H:%M} with {result.models} in "
            f"{time.perf_counter() - started:.1f} s; {state}{result.new_events:,} new event(s) in the outbox; "
            f"snapshot {result.snapshot_path}",
            highlight=False,
        )


def _ensure_local_keys(settings, project_dir: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Environment for the server: configured keys, else a generated key file for local use."""
    env: dict[str, str] = {}
    if settings.resolved_api_keys():
        return env
    folder = project_dir / ".crm-scoring"
    folder.mkdir(mode=0o700, exist_ok=True)
    for name, variable in (("api_key", "CRMSCORE_API_KEYS_FILE"), ("admin_key", "CRMSCORE_ADMIN_KEYS_FILE")):
        path = folder / name
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32) + "\n")
            path.chmod(0o600)
        env[variable] = str(path)
    console.print(f"no API key configured: using the generated keys in {folder}/ (api_key, admin_key)", highlight=False)
    return env


class ServeError(CrmScoringError):
    """The API cannot start (its address is taken)."""


def check_port_free(host: str, port: int) -> None:
    """Raise `ServeError` if `host:port` cannot be bound: BentoML would print the address,
    then fail with a long traceback from its process manager."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (another server running? stop it, or pick another "
                "port: `crm-scoring serve --port N`, `make run PORT=N`)"
            ) from exc


def serve(
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (0.0.0.0 for all).")] = "127.0.0.1",
) -> None:
    """Serve the scoring API (BentoML) with the latest batch run: its snapshot and the model versions that scored it."""
    with errors_as_exit():
        from serving.tags import load_tag_rules

        settings = load_settings()
        # A bad rules file stops the command here, with its file:line:column problems; the
        # service itself would start and stay not ready.
        load_tag_rules(settings.tags_file)
        check_port_free(host, port)
        env = {**os.environ, **_ensure_local_keys(settings, Path(settings.project_dir).resolve())}
        bentoml = Path(sys.executable).with_name("bentoml")
        command = [str(bentoml), "serve", "serving.service:CrmScoring", "--host", host, "--port", str(port)]
        out.print(f"serving on http://{host}:{port} (API under /v1, docs at /v1/docs, health at /readyz)", highlight=False)
        exec_server(command, env)


def exec_server(command: list[str], env: dict[str, str]) -> None:
    """Replace this process with the server, so that a supervisor's signal (systemd, a
    container runtime, `kill PID`) reaches BentoML itself. Run as a child instead, a SIGTERM
    to this command stopped only the command and left BentoML serving on its own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


def _stale_reason(latest, settings) -> str | None:  # type: ignore[no-untyped-def]
    """Why `make run` should score again before serving: the latest batch run was scored with
    other models than the current champions (the API would serve the run's versions) or
    with other tag rules (the API would not start), or None."""
    from serving.tags import load_tag_rules
    from training.registry import champions

    versions = {info.name: str(info.version) for info in champions(settings)}
    if latest.models != versions:
        return "the latest batch run was scored with other models than the champions"
    if latest.rules_digest != load_tag_rules(settings.tags_file).digest:
        return "the latest batch run was scored with other tag rules"
    return None


def quickstart(
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 3000,
    data_dir: Annotated[Path, typer.Option("--data", help="Working folder of the demo data.")] = Path("data/demo"),
) -> None:
    """`make run`: train the demo models if no champion exists, batch-score if no snapshot exists (or the
    latest was scored with other champions or tag rules), then serve."""
    from serving.cli import _quiet_mlflow, demo

    with errors_as_exit():
        from features.errors import ProfileError
        from features.synthetic import DATA_END
        from serving.store import ScoreStore
        from training.registry import ModelNotFoundError, champions

        check_port_free("127.0.0.1", port)  # before a minute of training and scoring
        settings = load_settings()
        _quiet_mlflow()
        try:
            deployed = {info.name for info in champions(settings)}
        except ModelNotFoundError:
            deployed = set()
        if not deployed:
            out.print("no champion model yet: training the demo models (about a minute)")
            demo(out_dir=data_dir, customers=50_000, seed=7)
        else:
            out.print(f"champions found ({', '.join(sorted(deployed))}): not retraining")
        store = ScoreStore(settings.resolved_store_dir)
        latest = store.latest_run()
        why = "no batch snapshot yet" if latest is None else _stale_reason(latest, settings)
        if why and latest is not None and latest.as_of != DATA_END:
            # Not the demo's run: scoring the demo into this store would diff it against
            # someone's own data (or be a back-fill that changes nothing served).
            raise ProfileError(f"{why}: run `crm-scoring score --profile DIR --as-of DATE` on your profile, then serve")
        if why:
            profile_dir = data_dir / "profile"
            if not profile_dir.exists():
                raise ProfileError(f"{why} and no demo profile at {profile_dir}: run `crm-scoring score --profile DIR --as-of DATE` first")
            out.print(f"{why}: scoring {profile_dir} as of {DATA_END:%Y-%m-%d}")
            score(profile=profile_dir, as_of=DATA_END.date().isoformat())
        serve(port=port, host="127.0.0.1")
