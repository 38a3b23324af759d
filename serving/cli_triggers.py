"""`crm-scoring triggers ...`: deliver the tag/segment events as signed webhooks, or export them.

    triggers deliver --url URL [--max-attempts N] [--backoff S] [--max-backoff S] [--timeout S]
                     [--concurrency N] [--wait/--no-wait] [--store DIR]
    triggers export --format jsonl|csv [--pending | --status STATUS] [--store DIR]
    triggers requeue [--store DIR]
    triggers prune --older-than DAYS [--store DIR]

The rules of delivery (one event per POST, signature, retries, 410, dead letters, waiting)
are in `serving.delivery`; the event JSON in `serving.events`. Heavy imports stay inside the
commands so `--help` is fast.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.table import Table

from serving.cli_common import console, out
from serving.cli_common import errors_as_exit as _errors_as_exit
from serving.cli_common import fail as _fail

triggers_app = typer.Typer(
    help="Deliver tag/segment events to a webhook (Standard Webhooks signatures) or export them as files.",
    no_args_is_help=True,
)


StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Score store folder (default: $CRMSCORE_STORE_DIR or <project>/scores)."),
]

#: Columns of `export --format csv`: the event's content, flat (``name`` is the tag or segment).
CSV_COLUMNS: tuple[str, ...] = (
    "id", "type", "timestamp", "customer_id", "name", "value", "previous_value", "next_value", "as_of", "run_id",
)


class ExportFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"


class EventStatus(str, Enum):
    pending = "pending"
    delivered = "delivered"
    dead = "dead"


def _open_store(store: Path | None):  # type: ignore[no-untyped-def]
    """The store to read: an error if the folder does not exist (a wrong --store, or no batch run yet)."""
    from serving.cli_common import load_settings
    from serving.store import ScoreStore, StoreError

    settings = load_settings()
    directory = store if store is not None else settings.resolved_store_dir
    if not directory.is_dir():
        raise StoreError(f"no score store at {directory}: run `crm-scoring score` first or pass --store")
    return settings, ScoreStore(directory)


@triggers_app.command("deliver")
def deliver(
    url: Annotated[str, typer.Option("--url", help="Webhook endpoint (http or https); one event per POST.")],
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, help="Attempts per event before it is dead-lettered.")] = 10,
    backoff: Annotated[float, typer.Option("--backoff", min=0.001, help="First retry delay in seconds; doubles on each retry.")] = 1.0,
    max_backoff: Annotated[float, typer.Option("--max-backoff", min=0.001, help="Longest retry delay (also caps Retry-After).")] = 300.0,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds per request (connect, send, each read).")] = 10.0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Requests in flight (different customers).")] = 4,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Wait for scheduled retries until nothing is pending (default), or make one pass over what is due now."),
    ] = True,
    store: StoreOption = None,
) -> None:
    """POST pending events, signed; retry with back-off; dead-letter after --max-attempts.

    The signing secret is read from CRMSCORE_WEBHOOK_SECRET (whsec_<base64> or any string).

    Exit 0 when every event is delivered; otherwise 1 with the reason (dead letters, events left pending, 410 Gone).

    Safe to kill and run again: at worst the events in flight are sent twice (same webhook-id).
    """
    with _errors_as_exit():
        from serving.delivery import DeliveryPolicy, check_url, display_url, require_secret
        from serving.delivery import deliver as run_delivery

        settings, score_store = _open_store(store)
        check_url(url)
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else None
        require_secret(secret)  # a configuration error fails even when nothing is pending
        policy = DeliveryPolicy(
            max_attempts=max_attempts, backoff=backoff, max_backoff=max_backoff, timeout=timeout, concurrency=concurrency, wait=wait
        )
        before = score_store.event_counts()
        if not before["pending"]:
            out.print(f"nothing to deliver ({before['delivered']:,} delivered, {before['dead']:,} dead)", highlight=False)
            return
        target = display_url(url)
        with console.status(f"delivering {before['pending']:,} pending event(s) to {target} ...") as status:

            def progress(report) -> None:  # type: ignore[no-untyped-def]
                status.update(
                    f"delivering to {target}: {report.delivered:,} delivered, {report.retried:,} retried, {report.dead:,} dead"
                )

            report = run_delivery(score_store, url, secret, policy, on_progress=progress)
        table = Table("delivered", "retried", "dead-lettered", "still pending", "attempts", "time", title=f"deliver -> {target}")
        table.add_row(
            f"{report.delivered:,}", f"{report.retried:,}", f"{report.dead:,}", f"{report.pending:,}",
            f"{report.attempts:,}", f"{report.elapsed:.1f} s",
        )
        out.print(table)
        if report.status_codes:
            codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(report.status_codes.items()))
            out.print(f"answers: {codes}", highlight=False)
        reason = report.failure_reason()
        if reason:
            _fail(reason)


@triggers_app.command("export")
def export(
    format: Annotated[ExportFormat, typer.Option("--format", help="jsonl: one event JSON per line (the webhook body); csv: flat columns.")],  # noqa: A002
    pending: Annotated[bool, typer.Option("--pending", help="Only events not delivered yet (same as --status pending).")] = False,
    status: Annotated[EventStatus | None, typer.Option("--status", help="Only events with this delivery status.")] = None,
    spreadsheet_safe: Annotated[
        bool,
        typer.Option(
            "--spreadsheet-safe",
            help="csv: prefix text cells that start with = + - @ (or their full-width forms, a tab or a carriage return) "
            "with ' so a spreadsheet shows "
            "them instead of running them as formulas (the ids then differ from the store's: not for CRM imports).",
        ),
    ] = False,
    store: StoreOption = None,
) -> None:
    """Write events to standard output (all of them by default), in outbox order.

    For CRMs that import files; jsonl lines are the webhook bodies (with their id). Values are written
    as stored (a CRM import needs the exact ids); use --spreadsheet-safe for a CSV that people open in a
    spreadsheet, since customer ids come from the profile. Exporting marks nothing delivered.
    """
    with _errors_as_exit():
        if pending and status not in (None, EventStatus.pending):
            raise ValueError("--pending and --status are exclusive")
        if spreadsheet_safe and format is not ExportFormat.csv:
            raise ValueError("--spreadsheet-safe applies to --format csv only")
        wanted = "pending" if pending else (status.value if status is not None else None)
        _, score_store = _open_store(store)
        try:
            _write_events(score_store, wanted, format, sys.stdout, spreadsheet_safe=spreadsheet_safe)
        except BrokenPipeError:
            # `export | head`: the reader has all it wants. Silence the final flush and stop.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None


#: First characters that make a spreadsheet read a cell as a formula (OWASP's CSV injection
#: list), and the full-width forms of = + - @, which spreadsheets in East Asian locales can
#: take for the ASCII ones.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_cell(value: object) -> object:
    """`value`, with a leading ' when it is text a spreadsheet would run as a formula."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


def _write_events(score_store, wanted: str | None, format: ExportFormat, stream: TextIO, *, spreadsheet_safe: bool = False) -> None:  # type: ignore[no-untyped-def]  # noqa: A002
    from serving.events import event_body

    if format is ExportFormat.jsonl:
        for row in score_store.iter_events(wanted):
            stream.write(json.dumps(event_body(row), separators=(",", ":"), ensure_ascii=False))
            stream.write("\n")
    else:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in score_store.iter_events(wanted):
            body = event_body(row)
            data = body["data"]
            cells = [
                body["id"], body["type"], body["timestamp"], data["customer_id"],
                data.get("tag", data.get("segment")), data.get("value"), data.get("previous_value"),
                data.get("next_value"), data["as_of"], data["run_id"],
            ]
            writer.writerow([spreadsheet_cell(c) for c in cells] if spreadsheet_safe else cells)
    stream.flush()


@triggers_app.command("requeue")
def requeue(store: StoreOption = None) -> None:
    """Put dead-lettered events back to pending with a fresh attempt budget (after fixing the receiver)."""
    with _errors_as_exit():
        from serving.delivery import utc_now

        _, score_store = _open_store(store)
        count = score_store.requeue_dead(utc_now())
        out.print(f"{count:,} dead-lettered event(s) back to pending", highlight=False)


@triggers_app.command("prune")
def prune(
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, help="Delete events delivered more than this many days ago.")
    ],
    store: StoreOption = None,
) -> None:
    """Delete delivered events from the outbox (pending and dead-lettered ones are kept)."""
    with _errors_as_exit():
        from datetime import timedelta

        from serving.delivery import utc_now

        _, score_store = _open_store(store)
        cutoff = utc_now() - timedelta(days=older_than)
        count = score_store.prune_delivered(cutoff)
        counts = score_store.event_counts()
        out.print(
            f"{count:,} event(s) delivered before {cutoff:%Y-%m-%d %H:%M} UTC deleted; "
            f"{counts['pending']:,} pending, {counts['delivered']:,} delivered, {counts['dead']:,} dead left",
            highlight=False,
        )
