"""The score store: batch runs, their snapshots, and the event outbox.

Layout of ``store_dir`` (default ``<project_dir>/scores``, setting ``CRMSCORE_STORE_DIR``)::

    scores.sqlite              runs + events (the outbox); SQLite in WAL mode
    snapshots/<run_id>.parquet one scored snapshot per run
    deliver.lock               held by the one `triggers deliver` process at a time
    score.lock                 held by the one `crm-scoring score` process at a time

``crm-scoring score``, ``serve`` and ``triggers deliver`` are separate processes that may run at
the same time, hence SQLite in WAL mode (readers never block the writer) with a busy timeout.

Write then swap. A batch run writes its Parquet snapshot under a temporary name in
``snapshots/``, fsyncs it and renames it into place, then commits the run row and its events in
ONE SQLite transaction (`ScoreStore.commit_run`). Until that commit nothing points at the new
snapshot: a crash before it leaves the previous latest run and the outbox exactly as they were
(an orphan Parquet file is harmless and is overwritten by the rerun; orphan temporary files are
removed by the next write). Event ids are deterministic and inserted with INSERT OR IGNORE, so
committing the same run again adds nothing and leaves the delivery state of its events alone.

Only runs with a row in ``runs`` exist for readers: `latest_run`, `previous_run`, `runs`.

Timestamps are stored as fixed-width ISO UTC text (``2025-07-01T00:00:00.000000Z``), so the
database stays readable with the sqlite3 shell and text order is time order.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import CrmScoringError
from serving.events import (
    EVENT_COLUMNS,
    EVENT_CONTENT_COLUMNS,
    STATUS_DEAD,
    STATUS_DELIVERED,
    STATUS_PENDING,
    STATUSES,
    format_timestamp,
    parse_timestamp,
)

if TYPE_CHECKING:
    import pandas as pd

DATABASE_NAME = "scores.sqlite"
SNAPSHOT_DIR = "snapshots"
LOCK_NAME = "deliver.lock"
SCORE_LOCK_NAME = "score.lock"
SCHEMA_VERSION = 1
#: How long a connection waits for another process's write lock before failing.
BUSY_TIMEOUT_SECONDS = 30.0

#: Event columns bound per row on insert; the rest are the run's constants or delivery defaults.
_VARYING_COLUMNS: tuple[str, ...] = ("id", "type", "customer_id", "name", "value", "previous_value", "next_value")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
_TEMP_SUFFIX = ".tmp"


def temp_path(final: Path) -> Path:
    """A temp name beside `final` for writing it then renaming: hidden, with the writer's pid,
    so the next snapshot write removes it if this process dies first (and only then)."""
    return final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TEMP_SUFFIX}"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    as_of           TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    parent_run_id   TEXT,
    rows            INTEGER NOT NULL,
    models          TEXT NOT NULL,
    rules_digest    TEXT NOT NULL,
    events_created  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_as_of ON runs (as_of, created_at);
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    type            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    as_of           TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    name            TEXT NOT NULL,
    value           TEXT,
    previous_value  TEXT,
    next_value      TEXT,
    created_at      TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    delivered_at    TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (next_attempt_at, seq) WHERE status = 'pending';
"""


class StoreError(CrmScoringError):
    """The score store cannot do what was asked (bad run id, missing snapshot, newer schema, ...)."""


class SnapshotNotFoundError(StoreError):
    """A run's snapshot file is missing."""


class StoreLockedError(StoreError):
    """Another process holds the delivery or the scoring lock of this store."""


@dataclass(frozen=True)
class RunRecord:
    """One committed batch run. Datetimes are naive UTC.

    ``events_created`` is filled by the store (the number of events the run's commits inserted);
    the value passed to `ScoreStore.commit_run` is ignored.
    """

    run_id: str
    as_of: datetime
    created_at: datetime
    parent_run_id: str | None
    rows: int
    models: dict[str, str] = field(default_factory=dict)
    rules_digest: str = ""
    events_created: int = 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # pragma: no cover - e.g. Windows quirks: keep the file
        return True
    return True


def fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable (POSIX); not possible (nor needed) on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class ScoreStore:
    """Runs, snapshots and the outbox in one directory. Safe to share between threads.

    Construction does no I/O; the database is opened on first use and the directory is created
    on the first write. Reading a store that does not exist yet returns "nothing" (no run, no
    events) without creating anything, so `serve` can start before the first batch.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None

    def __repr__(self) -> str:
        return f"ScoreStore({str(self.directory)!r})"

    # ----------------------------------------------------------------------------------
    # connection
    # ----------------------------------------------------------------------------------

    @property
    def database_path(self) -> Path:
        return self.directory / DATABASE_NAME

    def exists(self) -> bool:
        """Whether a batch has ever written to this store."""
        return self.database_path.exists()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._conn_pid = None

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        """The shared connection; None when the store does not exist and `create` is false."""
        if self._conn is not None and self._conn_pid == os.getpid():
            return self._conn
        # A connection inherited through fork() must not be used by the child.
        self._conn = None
        if not self.database_path.exists():
            if not create:
                return None
            self.directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.database_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.database_path} cannot be read as a score store ({exc})") from exc
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{self.database_path} was written by a newer crm-scoring (schema {version}, this one knows {SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            if not create:
                # Created by a writer that has not committed its schema yet: nothing to read.
                conn.close()
                return None
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                conn.close()
                raise
        # WAL makes a commit durable against a crash of the process; NORMAL skips the fsync of
        # every commit (a power loss may undo the last deliveries: they are sent again, which
        # at-least-once allows). `commit_run` asks for FULL.
        conn.execute("PRAGMA synchronous = NORMAL")
        # Inserting a big run touches the id index at random places: give it room (64 MB).
        conn.execute("PRAGMA cache_size = -65536")
        self._conn = conn
        self._conn_pid = os.getpid()
        return conn

    @contextmanager
    def _write(self, *, synchronous_full: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception)."""
        with self._lock:
            conn = self._connection(create=True)
            assert conn is not None
            if synchronous_full:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                if synchronous_full:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            conn = self._connection(create=False)
            if conn is None:
                return []
            return conn.execute(sql, params).fetchall()

    # ----------------------------------------------------------------------------------
    # snapshots
    # ----------------------------------------------------------------------------------

    @staticmethod
    def _check_run_id(run_id: str) -> str:
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise StoreError(f"run id {run_id!r} is not usable as a file name (letters, digits, '_', '-', '.')")
        return run_id

    def snapshot_path(self, run_id: str) -> Path:
        return self.directory / SNAPSHOT_DIR / f"{self._check_run_id(run_id)}.parquet"

    def _remove_orphan_temp_files(self, folder: Path) -> None:
        # Names from `temp_path`: the snapshots', the meta files' and the feature tables'.
        # Temp names carry the writer's pid: only files of processes that are gone are removed,
        # never the one a concurrent batch is still writing.
        for path in folder.glob(f".*{_TEMP_SUFFIX}"):
            parts = path.name.split(".")
            try:
                pid = int(parts[-3])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                path.unlink(missing_ok=True)

    def write_snapshot(self, run_id: str, snapshot: pd.DataFrame) -> Path:
        """Write a run's snapshot atomically: temp file, fsync, rename. Returns the final path.

        Rewriting an existing run's snapshot (a rerun) replaces it in one rename; readers see
        either the old or the new file, never a partial one.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        final = self.snapshot_path(run_id)
        folder = final.parent
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_orphan_temp_files(folder)
        temp = temp_path(final)
        try:
            table = pa.Table.from_pandas(snapshot, preserve_index=False)
            pq.write_table(table, temp, compression="zstd")
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(folder)
        return final

    def read_snapshot(self, run_id: str, columns: list[str] | None = None) -> pd.DataFrame:
        import pandas as pd

        path = self.snapshot_path(run_id)
        if not path.exists():
            raise SnapshotNotFoundError(f"no snapshot for run {run_id} at {path}")
        return pd.read_parquet(path, columns=columns)

    # ----------------------------------------------------------------------------------
    # runs
    # ----------------------------------------------------------------------------------

    def commit_run(self, run: RunRecord, events: pd.DataFrame) -> int:
        """Record a run and its events in one transaction; returns how many events are new.

        The run's snapshot must already be in place (`write_snapshot`): a committed run always
        has one. Committing a run that exists keeps its original ``created_at`` and parent and
        inserts no event: its events were committed with it, and those missing now were
        pruned after delivery (`prune_delivered`) and must not be sent again. Existing events
        keep their delivery state. ``run.events_created`` is ignored: the store counts.
        """
        self._check_run_id(run.run_id)
        if not self.snapshot_path(run.run_id).exists():
            raise StoreError(f"write the snapshot of run {run.run_id} before committing it")
        missing = [c for c in EVENT_CONTENT_COLUMNS if c not in events.columns]
        if missing:
            raise StoreError(f"the events frame lacks column(s) {', '.join(missing)}")
        if len(events) and (events["run_id"] != run.run_id).any():
            raise StoreError(f"the events frame holds events of another run than {run.run_id}")
        # Checked here: INSERT OR IGNORE would silently skip a row breaking a NOT NULL constraint.
        required = ["id", "type", "run_id", "as_of", "customer_id", "name", "created_at"]
        incomplete = [c for c in required if events[c].isna().any()]
        if incomplete:
            raise StoreError(f"the events frame has missing values in {', '.join(incomplete)}")
        # The run's constants go into the statement as literals (safe: a validated run id and
        # timestamps we format ourselves); binding only what varies per event makes the insert
        # of half a million events some 15 % faster.
        as_of = self._run_constant(events, "as_of")
        created_at = self._run_constant(events, "created_at")
        statement = (
            f"INSERT OR IGNORE INTO events ({', '.join(_VARYING_COLUMNS)}, run_id, as_of, created_at, status, attempts, "
            f"next_attempt_at) VALUES ({', '.join('?' * len(_VARYING_COLUMNS))}, '{run.run_id}', '{as_of}', "
            f"'{created_at}', '{STATUS_PENDING}', 0, '{created_at}')"
        )
        rows = self._event_rows(events)
        with self._write(synchronous_full=True) as conn:
            before = conn.total_changes
            known = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone() is not None
            if len(events) and not known:
                conn.executemany(statement, rows)
            inserted = conn.total_changes - before
            conn.execute(
                """
                INSERT INTO runs (run_id, as_of, created_at, parent_run_id, rows, models, rules_digest, events_created)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id) DO UPDATE SET events_created = runs.events_created + excluded.events_created
                """,
                (
                    run.run_id,
                    format_timestamp(run.as_of),
                    format_timestamp(run.created_at),
                    run.parent_run_id,
                    int(run.rows),
                    json.dumps(dict(sorted(run.models.items()))),
                    run.rules_digest,
                    inserted,
                ),
            )
        return inserted

    @staticmethod
    def _run_constant(events: pd.DataFrame, column: str) -> str:
        """The one value a run's events share in `column`, as stored text ('' when no events)."""
        values = events[column].unique() if len(events) else []
        if len(values) > 1:
            raise StoreError(f"the events of one run must share one {column}; found {len(values)}")
        if not len(values):
            return ""
        import pandas as pd

        value = values[0]
        try:
            moment = parse_timestamp(value) if isinstance(value, str) else pd.Timestamp(value).to_pydatetime()
            return format_timestamp(moment)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"the events' {column} {values[0]!r} is not a timestamp") from exc

    @staticmethod
    def _event_rows(events: pd.DataFrame) -> Iterator[tuple[Any, ...]]:
        """The per-event values for executemany (`_VARYING_COLUMNS` order), missing values as None.

        A new event is pending, never attempted and due at its creation, whatever delivery
        state the frame carries (INSERT OR IGNORE never touches an existing row anyway).
        """
        columns = [events[c].astype(object).where(events[c].notna(), None).tolist() for c in _VARYING_COLUMNS]
        return zip(*columns, strict=True)

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"],
            as_of=parse_timestamp(row["as_of"]),
            created_at=parse_timestamp(row["created_at"]),
            parent_run_id=row["parent_run_id"],
            rows=int(row["rows"]),
            models=json.loads(row["models"]),
            rules_digest=row["rules_digest"],
            events_created=int(row["events_created"]),
        )

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return self._run(rows[0]) if rows else None

    def latest_run(self) -> RunRecord | None:
        """The committed run with the greatest as_of (ties: the latest created_at)."""
        rows = self._read("SELECT * FROM runs ORDER BY as_of DESC, created_at DESC, run_id DESC LIMIT 1")
        return self._run(rows[0]) if rows else None

    def previous_run(self, as_of: datetime, exclude_run_id: str | None = None) -> RunRecord | None:
        """The run a new run at `as_of` diffs against: the latest committed run with as_of <= the
        given one, other than `exclude_run_id` (ties: the latest created_at).

        Runs at the same as_of count (a re-score of the same day with new models diffs against
        the earlier one, whose events were already sent), hence `exclude_run_id` for the run
        being made.
        """
        rows = self._read(
            "SELECT * FROM runs WHERE as_of <= ? AND run_id != ? ORDER BY as_of DESC, created_at DESC, run_id DESC LIMIT 1",
            (format_timestamp(as_of), exclude_run_id or ""),
        )
        return self._run(rows[0]) if rows else None

    def runs(self) -> list[RunRecord]:
        """Every committed run, oldest as_of first."""
        return [self._run(r) for r in self._read("SELECT * FROM runs ORDER BY as_of, created_at, run_id")]

    # ----------------------------------------------------------------------------------
    # outbox
    # ----------------------------------------------------------------------------------
    # One `triggers deliver` process at a time (see `delivery_lock`), so "claiming" is simply
    # reading the due events: no per-row lease that a killed process would leave behind.

    def event_counts(self) -> dict[str, int]:
        """Number of events by status (every status present, zero when none)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._read("SELECT status, COUNT(*) AS n FROM events GROUP BY status"):
            counts[row["status"]] = int(row["n"])
        return counts

    def due_events(self, now: datetime, limit: int = 500) -> list[dict[str, Any]]:
        """Pending events whose next attempt is due at `now`, oldest due first, then in outbox order."""
        rows = self._read(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE status = 'pending' AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, seq LIMIT ?",
            (format_timestamp(now), int(limit)),
        )
        return [dict(r) for r in rows]

    def next_attempt_at(self) -> datetime | None:
        """When the earliest pending event is due (None when nothing is pending)."""
        rows = self._read("SELECT MIN(next_attempt_at) AS t FROM events WHERE status = 'pending'")
        return parse_timestamp(rows[0]["t"]) if rows and rows[0]["t"] is not None else None

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        rows = self._read(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?", (event_id,))
        return dict(rows[0]) if rows else None

    def mark_delivered(self, event_id: str, at: datetime) -> None:
        """A 2xx answer: the event is delivered (this attempt counts)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE events SET status = 'delivered', attempts = attempts + 1, delivered_at = ?, last_error = NULL "
                "WHERE id = ? AND status = 'pending'",
                (format_timestamp(at), event_id),
            )

    def record_failure(self, event_id: str, error: str, next_attempt_at: datetime) -> None:
        """A failed attempt: count it, keep the reason, schedule the next one."""
        with self._write() as conn:
            conn.execute(
                "UPDATE events SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (error[:500], format_timestamp(next_attempt_at), event_id),
            )

    def dead_letter(self, event_id: str, error: str) -> None:
        """The last allowed attempt failed: stop trying (`requeue_dead` brings it back)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE events SET status = 'dead', attempts = attempts + 1, last_error = ? WHERE id = ? AND status = 'pending'",
                (error[:500], event_id),
            )

    def requeue_dead(self, now: datetime) -> int:
        """Dead letters back to pending with a fresh attempt budget (after fixing the receiver)."""
        if not self.exists():
            return 0
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = ? WHERE status = 'dead'",
                (format_timestamp(now),),
            )
            return int(cursor.rowcount)

    def prune_delivered(self, delivered_before: datetime) -> int:
        """Delete delivered events delivered before the instant; returns how many.

        Pending and dead-lettered events are never pruned. A run keeps its record, so a
        re-run of it does not bring its pruned events back (`commit_run` inserts events only
        for a new run).
        """
        if not self.exists():
            return 0
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM events WHERE status = 'delivered' AND delivered_at < ?", (format_timestamp(delivered_before),)
            )
            return int(cursor.rowcount)

    def iter_events(self, status: str | None = None, batch_size: int = 5_000) -> Iterator[dict[str, Any]]:
        """Every event (or those with `status`) in outbox order, i.e. the order runs were committed
        and, within a run, diff order (per customer, exits before entries).

        Commit order is created_at order but for two batches overlapping in time; it is stable
        and cheap (the rowid), unlike a sort on (created_at, id) that would also scramble a
        customer's exits and entries. One SELECT read in batches on its own connection: a
        consistent view even while a batch or a delivery writes.
        """
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown event status {status!r}; one of {', '.join(STATUSES)}")
        with self._lock:
            if self._connection(create=False) is None:
                return
        # A connection of its own: its read transaction is independent of writes made through
        # the shared one while the caller consumes the iterator.
        conn = sqlite3.connect(self.database_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        conn.row_factory = sqlite3.Row
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
        params: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            params = (status,)
        try:
            cursor = conn.execute(sql + " ORDER BY seq", params)
            while batch := cursor.fetchmany(batch_size):
                for row in batch:
                    yield dict(row)
        finally:
            conn.close()

    # ----------------------------------------------------------------------------------
    # delivery lock
    # ----------------------------------------------------------------------------------

    def delivery_lock(self) -> AbstractContextManager[None]:
        """Exclusive right to deliver this store's events (one `triggers deliver` at a time)."""
        return self._exclusive(LOCK_NAME, f"another `crm-scoring triggers deliver` is delivering the events of {self.directory}")

    def scoring_lock(self) -> AbstractContextManager[None]:
        """Exclusive right to add a run (one `crm-scoring score` at a time): a run reads the
        latest runs when it starts and diffs against them, so two at once would both diff
        against the same previous run and send contradictory events."""
        return self._exclusive(
            SCORE_LOCK_NAME, f"another `crm-scoring score` is writing a run to {self.directory}; run this one when it is done"
        )

    @contextmanager
    def _exclusive(self, name: str, busy: str) -> Iterator[None]:
        """An OS file lock (flock) on `name`, or StoreLockedError(busy) at once: released by
        the kernel when the process dies, even by kill -9, so a resumed run never waits for a
        stale lock."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        handle = open(path, "a+")  # noqa: SIM115 - held for the duration of the context
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows: no cross-process exclusion
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    raise StoreLockedError(busy) from exc
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()


__all__ = [
    "DATABASE_NAME",
    "RunRecord",
    "STATUS_DEAD",
    "STATUS_DELIVERED",
    "STATUS_PENDING",
    "ScoreStore",
    "SnapshotNotFoundError",
    "StoreError",
    "StoreLockedError",
]
