"""Validation of the unified profile: types, keys, amounts, references, currencies.

Pure Ibis: raw tables in (each with a 1-based `_row` column naming the source row),
normalised tables and rejected rows out. Every problem is collected before anything
fails, so one run tells the user everything that is wrong with their data.

Table-level problems (a missing required column, a column of an unusable type) are
fatal: they are raised together as one `ProfileError`. Row-level problems reject the
row; the caller writes the rejects and fails only above `max_reject_share`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import itertools
from dataclasses import dataclass, field
from datetime import datetime

import ibis
import ibis.expr.datatypes as dt
import numpy as np
import pyarrow as pa
from ibis.backends import BaseBackend
from ibis import _
from ibis.common.exceptions import IbisError

from features.errors import ProfileError, ProfileValidationError
from features.profile import Profile
from features.schema import CUSTOMERS, EVENTS, MAX_AMOUNT, ORDERS, TABLES, ColumnSpec, TableSpec
from features.timeutil import as_of_literal, to_utc_naive

ROW = "_row"
REJECT_COLUMN = "_reject_column"
REJECT_CODE = "_reject_code"
REJECT_REASON = "_reject_reason"
_INTERNAL = (ROW, REJECT_COLUMN, REJECT_CODE, REJECT_REASON)

_TIMESTAMP = dt.Timestamp()
_TIMESTAMP_UTC = dt.Timestamp(timezone="UTC")
_frame_ids = itertools.count()


@dataclass(frozen=True)
class Problem:
    """One kind of problem in one column, with how many rows have it and a few examples."""

    table: str
    column: str
    code: str
    count: int
    example_rows: tuple[int, ...]
    example_reason: str

    def describe(self) -> str:
        rows = ", ".join(str(r) for r in self.example_rows)
        more = ", ..." if self.count > len(self.example_rows) else ""
        return f"{self.table}.{self.column}: {self.count} row(s) {self.code} (rows {rows}{more}), e.g. {self.example_reason}"


@dataclass(frozen=True)
class TableReport:
    table: str
    rows_read: int
    rows_rejected: int
    duplicates_dropped: int = 0

    @property
    def rejected_share(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0


@dataclass(frozen=True)
class ValidationReport:
    tables: tuple[TableReport, ...]
    problems: tuple[Problem, ...]
    max_reject_share: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rows_rejected(self) -> int:
        return sum(t.rows_rejected for t in self.tables)

    @property
    def failing_tables(self) -> tuple[TableReport, ...]:
        return tuple(t for t in self.tables if t.rejected_share > self.max_reject_share)

    @property
    def ok(self) -> bool:
        return not self.failing_tables

    def summary(self) -> str:
        lines = []
        for t in self.tables:
            extra = f", {t.duplicates_dropped} duplicate event(s) dropped" if t.duplicates_dropped else ""
            lines.append(
                f"{t.table}: {t.rows_read} rows read, {t.rows_rejected} rejected ({t.rejected_share:.2%}){extra}"
            )
        lines.extend(p.describe() for p in self.problems)
        lines.extend(self.notes)
        return "\n".join(lines)

    def failure_message(self, rejects_path: object | None = None) -> str:
        parts = [
            f"{t.table}: {t.rows_rejected} of {t.rows_read} rows rejected ({t.rejected_share:.2%}), "
            f"above the {self.max_reject_share:.2%} limit"
            for t in self.failing_tables
        ]
        where = f"; rejected rows are in {rejects_path}" if rejects_path else ""
        return "; ".join(parts) + where


@dataclass(frozen=True)
class ValidationResult:
    profile: Profile
    rejects: Mapping[str, ibis.Table]  # per table: raw columns + _row + reject column/code/reason
    report: ValidationReport


def _kind_of(dtype: dt.DataType) -> str | None:
    if dtype.is_string():
        return "string"
    if dtype.is_timestamp() or dtype.is_date():
        return "timestamp"
    if dtype.is_numeric() and not dtype.is_boolean():
        return "number"
    if dtype.is_null():
        return "null"
    return None


def _schema_problems(name: str, table: ibis.Table, spec: TableSpec) -> list[str]:
    problems: list[str] = []
    schema = table.schema()
    for col in spec.columns:
        if col.name not in schema:
            if col.required:
                problems.append(f"{name}: required column '{col.name}' is missing")
            continue
        kind = _kind_of(schema[col.name])
        ok = {
            "string": ("string", "number", "null"),
            "timestamp": ("timestamp", "string", "null"),
            "number": ("number", "string", "null"),
        }[col.kind]
        if kind not in ok:
            problems.append(
                f"{name}: column '{col.name}' has type {schema[col.name]}, expected {col.kind}"
            )
    return problems


def _as_string(value: ibis.Value) -> ibis.Value:
    """Ids may arrive as integers; empty strings count as missing."""
    return (value if value.type().is_string() else value.cast("string")).nullif("")


def _as_timestamp(value: ibis.Value) -> ibis.Value:
    dtype = value.type()
    if dtype.is_timestamp():
        # Zone-aware -> UTC wall clock (the connection runs in UTC); naive values are UTC already.
        return value.cast(_TIMESTAMP) if dtype.timezone is not None else value
    if dtype.is_date():
        return value.cast(_TIMESTAMP)
    if dtype.is_null():
        return ibis.null(_TIMESTAMP)
    # Strings: offsets are honoured, naive strings are read as UTC.
    return value.cast("string").strip().try_cast(_TIMESTAMP_UTC).cast(_TIMESTAMP)


def _as_number(value: ibis.Value) -> ibis.Value:
    if value.type().is_null():
        return ibis.null("float64")
    if value.type().is_string():
        return value.strip().try_cast("float64")
    return value.cast("float64")


_CONVERTERS = {"string": _as_string, "timestamp": _as_timestamp, "number": _as_number}


def _checks_for(col: ColumnSpec, raw: ibis.Value, value: ibis.Value) -> list[tuple[ibis.Value, str, ibis.Value]]:
    """(condition, code, reason) for one column, most basic first."""
    shown = raw.cast("string")
    checks: list[tuple[ibis.Value, str, ibis.Value]] = []
    if col.required:
        # A blank id counts as missing too (`_as_string` maps it to null).
        missing = raw.isnull() | value.isnull() if col.kind == "string" else raw.isnull()
        checks.append((missing, "missing", ibis.literal(f"{col.name} is missing")))
    if col.kind == "timestamp":
        checks.append(
            (raw.notnull() & value.isnull(), "not_a_timestamp", f"{col.name} '" + shown + "' is not a timestamp")
        )
    if col.kind == "number":
        checks.append((raw.notnull() & value.isnull(), "not_a_number", f"{col.name} '" + shown + "' is not a number"))
        checks.append((value.isnan() | value.isinf(), "not_finite", ibis.literal(f"{col.name} is not a finite number")))
    return checks


def _typed_and_checks(
    table: ibis.Table, spec: TableSpec
) -> tuple[dict[str, ibis.Value], list[tuple[ibis.Value, str, str, ibis.Value]]]:
    """The typed contract columns of a raw table and its row checks (condition, column, code, reason)."""
    schema = table.schema()
    typed: dict[str, ibis.Value] = {}
    checks: list[tuple[ibis.Value, str, str, ibis.Value]] = []
    for col in spec.columns:
        if col.name in schema:
            raw = table[col.name]
            value = _CONVERTERS[col.kind](raw)
            for cond, code, reason in _checks_for(col, raw, value):
                checks.append((cond, col.name, code, reason))
        else:
            value = ibis.null({"string": "string", "timestamp": _TIMESTAMP, "number": "float64"}[col.kind])
        typed[col.name] = value
    return typed, checks


def _typed(table: ibis.Table, spec: TableSpec, attribute_columns: list[str]) -> ibis.Table:
    """The clean table of a raw table without rejects: typed contract columns and attributes only.

    Built straight from the raw table, not by projecting the checked one: a backend may
    keep work that feeds only unused check columns (DuckDB does not prune the semi-join
    behind an unknown-customer check: a hash probe of every event, in every family's scan).
    """
    typed, _checks = _typed_and_checks(table, spec)
    return table.select(**typed, **{a: table[a] for a in attribute_columns})


def _with_row_checks(table: ibis.Table, spec: TableSpec, attribute_columns: list[str]) -> ibis.Table:
    """Typed columns under their contract names, attributes, `_row`, and the first failing check.

    Raw values are not carried along (that would double the memory of the largest
    tables); rejected rows get them back by joining the raw table on `_row`.
    """
    typed, checks = _typed_and_checks(table, spec)
    return table.select(ROW, **typed, **{a: table[a] for a in attribute_columns}, **_first_failing(checks))


def _first_failing(checks: list[tuple[ibis.Value, str, str, ibis.Value]]) -> dict[str, ibis.Value]:
    if not checks:
        return {
            REJECT_COLUMN: ibis.null("string"),
            REJECT_CODE: ibis.null("string"),
            REJECT_REASON: ibis.null("string"),
        }
    return {
        REJECT_COLUMN: ibis.cases(*[(c, col) for c, col, _code, _r in checks], else_=ibis.null("string")),
        REJECT_CODE: ibis.cases(*[(c, code) for c, _col, code, _r in checks], else_=ibis.null("string")),
        REJECT_REASON: ibis.cases(*[(c, r) for c, _col, _code, r in checks], else_=ibis.null("string")),
    }


def _reject_where(table: ibis.Table, condition: ibis.Value, column: str, code: str, reason: ibis.Value) -> ibis.Table:
    """Add a check to rows that passed every earlier one.

    The condition is evaluated once into a column: written into each of the three reject
    columns, a semi-join condition (`isin` a table) would run three times.
    """
    marked = table.mutate(_fresh=table[REJECT_CODE].isnull() & condition)
    fresh = marked._fresh
    return marked.mutate(
        **{
            REJECT_COLUMN: ibis.ifelse(fresh, column, marked[REJECT_COLUMN]),
            REJECT_CODE: ibis.ifelse(fresh, code, marked[REJECT_CODE]),
            REJECT_REASON: ibis.ifelse(fresh, reason, marked[REJECT_REASON]),
        }
    ).drop("_fresh")


@ibis.udf.scalar.builtin(name="hash")
def _duckdb_hash(value: str) -> dt.UInt64:
    """DuckDB's native 64-bit hash (Ibis' `hash()` adds a cast through BIT that costs more than the hash)."""


def _on_duckdb(value: ibis.Value) -> bool:
    try:
        return ibis.get_backend(value).name == "duckdb"
    except IbisError:  # unbound tables: stay portable
        return False


def _has_duplicates(table: ibis.Table, key: str) -> bool:
    """Cheap pre-check: as many distinct 64-bit key hashes as keys proves the key unique
    (a hash collision only costs the exact check that follows).

    On the embedded DuckDB the hashes come back as one Arrow column (8 bytes a key) and
    are sorted by numpy: ~1 s for 30 M keys, where a DISTINCT over them costs ~6 CPU s.
    Other backends count the distinct hashes where the data lives.
    """
    keys = table.filter(table[key].notnull())
    if _on_duckdb(keys[key]):
        column = keys.select(_key_hash=_duckdb_hash(keys[key])).to_pyarrow()["_key_hash"]
        hashes = np.array(column.to_numpy(), copy=True)  # one writable array, whatever the chunks
        del column
        pa.default_memory_pool().release_unused()  # hand the Arrow buffers back before the feature build
        hashes.sort()
        return bool((hashes[1:] == hashes[:-1]).any())
    hashes = keys.select(_key_hash=keys[key].hash()).distinct()
    # Two independent scans: a shared filtered subquery would be materialised first.
    counts = table.aggregate(n=table[key].count()).cross_join(hashes.aggregate(distinct=hashes.count()))
    row = counts.to_pyarrow().to_pylist()[0]
    return row["n"] != row["distinct"]


def _reject_duplicates(table: ibis.Table, key: str) -> ibis.Table:
    if not _has_duplicates(table, key):
        return table
    passing = table.filter(table[key].notnull())
    dups = passing.group_by(key).aggregate(_dup_count=_.count()).filter(_._dup_count > 1)
    return _reject_where(
        table, table[key].isin(dups[key]), key, "duplicate", f"{key} '" + table[key] + "' appears more than once"
    )


def _rejected_customer_reasons(customers: ibis.Table) -> ibis.Table:
    """Why each rejected customer id was rejected: one row per id (`_rejected_id`, `_rejected_why`).

    A duplicate id wins over any other problem of its copies: fixing that copy would not
    make the id usable.
    """
    bad = customers.filter(customers[REJECT_CODE].notnull() & customers.customer_id.notnull())
    per_id = bad.group_by("customer_id").aggregate(
        _dup=(bad[REJECT_CODE] == "duplicate").any(),
        _first=bad[REJECT_REASON].argmin(bad[ROW]),
    )
    return per_id.select(
        _rejected_id=per_id.customer_id,
        _rejected_why=ibis.ifelse(per_id._dup, ibis.literal("duplicate customer_id"), per_id._first),
    )


def _reject_unknown_customers(
    table: ibis.Table, valid_ids: ibis.Column, rejected_customers: ibis.Table | None = None
) -> ibis.Table:
    """Reject rows whose customer is not among the valid ones.

    rejected_customers (`_rejected_customer_reasons`, None when no customer was rejected):
    a row of a customer that exists but was rejected says why, instead of looking unknown.
    The code stays `unknown_customer` either way.
    """
    if rejected_customers is None:
        return _reject_where(
            table,
            ~table.customer_id.isin(valid_ids),
            "customer_id",
            "unknown_customer",
            "customer_id '" + table.customer_id + "' is not a valid customer",
        )
    # At most one match per row (one reason per id): the join adds no rows.
    joined = table.left_join(rejected_customers, table.customer_id == rejected_customers._rejected_id)
    shown = "customer_id '" + joined.customer_id + "'"
    reason = ibis.ifelse(
        joined._rejected_id.isnull(),
        shown + " is not a valid customer",
        shown + " was rejected in customers (" + joined._rejected_why + ")",
    )
    checked = _reject_where(joined, ~joined.customer_id.isin(valid_ids), "customer_id", "unknown_customer", reason)
    return checked.drop("_rejected_id", "_rejected_why")


def _clean(table: ibis.Table, spec: TableSpec, attribute_columns: list[str]) -> ibis.Table:
    ok = table.filter(table[REJECT_CODE].isnull())
    return ok.select(*[c.name for c in spec.columns], *attribute_columns)


def _rejected(staged: ibis.Table, raw: ibis.Table) -> ibis.Table:
    """Rejected rows with their original values (raw columns) and the reason."""
    bad = staged.filter(staged[REJECT_CODE].notnull()).select(ROW, REJECT_COLUMN, REJECT_CODE, REJECT_REASON)
    return bad.inner_join(raw, ROW).select(ROW, REJECT_COLUMN, REJECT_CODE, REJECT_REASON, *[c for c in raw.columns if c != ROW])


def _empty_events() -> ibis.Table:
    schema = pa.schema(
        [("customer_id", pa.string()), ("occurred_at", pa.timestamp("us")), ("event_type", pa.string()), (ROW, pa.int64())]
    )
    return ibis.memtable(schema.empty_table())


def _currency_check(orders: ibis.Table, notes: list[str]) -> tuple[ibis.Table, str | None]:
    """One currency per profile: the most common one wins, other rows are rejected.
    Returns the orders and the profile's currency (None when no order names one)."""
    currencies = (
        orders.filter(orders.currency.notnull())
        .group_by("currency")
        .aggregate(n=_.count())
        .order_by([ibis.desc("n"), "currency"])
        .to_pyarrow()
        .to_pylist()
    )
    if len(currencies) <= 1:
        return orders, (currencies[0]["currency"] if currencies else None)
    main = currencies[0]["currency"]
    notes.append(
        "orders.currency: mixed currencies "
        + ", ".join(f"{c['currency']} ({c['n']} rows)" for c in currencies)
        + f"; the profile currency is taken to be {main} and other rows are rejected"
    )
    rejected = _reject_where(
        orders,
        orders.currency.notnull() & (orders.currency != main),
        "currency",
        "mixed_currency",
        "currency " + orders.currency + f" differs from the profile currency {main}",
    )
    return rejected, main


def _dedupe_events(events: ibis.Table) -> tuple[ibis.Table, int]:
    """At-least-once event pipelines repeat events: keep one row per event_id."""
    if not _has_duplicates(events, "event_id"):
        return events, 0
    counts = events.aggregate(distinct=_.event_id.nunique(), with_id=_.event_id.count()).to_pyarrow().to_pylist()[0]
    dropped = counts["with_id"] - counts["distinct"]
    with_id = events.filter(events.event_id.notnull())
    first = with_id.mutate(_rn=ibis.row_number().over(group_by="event_id", order_by=["occurred_at", "event_type"]))
    return first.filter(first._rn == 0).drop("_rn").union(events.filter(events.event_id.isnull())), dropped


def _problem_counts(staged: ibis.Table) -> list[dict[str, object]]:
    """One scan of a checked table: row counts per (column, code); code None = passed."""
    return staged.group_by([REJECT_COLUMN, REJECT_CODE]).aggregate(n=_.count()).to_pyarrow().to_pylist()


def _summarise(name: str, staged: ibis.Table, counts: list[dict[str, object]], dropped: int) -> tuple[TableReport, list[Problem]]:
    read = sum(int(r["n"]) for r in counts)
    failing = sorted((r for r in counts if r[REJECT_CODE] is not None), key=lambda r: (-int(r["n"]), r[REJECT_COLUMN], r[REJECT_CODE]))
    problems = []
    for r in failing:
        examples = (
            staged.filter((_[REJECT_COLUMN] == r[REJECT_COLUMN]) & (_[REJECT_CODE] == r[REJECT_CODE]))
            .order_by(ROW)
            .limit(3)
            .select(ROW, REJECT_REASON)
            .to_pyarrow()
            .to_pylist()
        )
        problems.append(
            Problem(name, r[REJECT_COLUMN], r[REJECT_CODE], int(r["n"]), tuple(e[ROW] for e in examples), examples[0][REJECT_REASON])
        )
    return TableReport(name, read, sum(int(r["n"]) for r in failing), dropped), problems


Stage = Callable[[str, ibis.Table], ibis.Table]


def lazy_stage(name: str, table: ibis.Table) -> ibis.Table:
    return table


def validate_profile(
    raw: Mapping[str, ibis.Table | None],
    max_reject_share: float = 0.01,
    stage: Stage = lazy_stage,
    before: datetime | None = None,
) -> ValidationResult:
    """Validate raw tables (each with a `_row` column) into a normalised `Profile`.

    Raises `ProfileError` for table-level problems (all of them at once). Row-level
    problems are returned as rejects and summarised in the report; this function does
    not raise for them (see `raise_for_rejects`). `stage(name, table)` may materialise a
    checked table that has rejects (the loader does), so the report, the rejects and the
    feature families read the same computed rows instead of re-running the checks.

    before: a run at this cut-off (`train --as-of`, `score --as-of`) reads nothing at or
    after it: orders and events from then on are left out before any check, so they can
    neither be rejected nor count toward the reject share. Rows whose time does not parse
    stay, and are rejected. Customers are master data and are all read.
    """
    tables: dict[str, ibis.Table] = {}
    fatal: list[str] = []
    for name, spec in TABLES.items():
        table = raw.get(name)
        if table is None:
            if name == "events":  # no behaviour is a valid profile
                table = _empty_events()
            else:
                fatal.append(f"{name}: table is missing")
                continue
        if ROW not in table.columns:
            raise ValueError(f"{name}: raw tables need a '{ROW}' column with source row numbers")
        fatal.extend(_schema_problems(name, table, spec))
        tables[name] = table
    if fatal:
        raise ProfileError("the profile does not match the contract: " + "; ".join(fatal))
    if before is not None:
        cutoff = as_of_literal(to_utc_naive(before))
        for name, column in (("orders", "ordered_at"), ("events", "occurred_at")):
            at = _CONVERTERS["timestamp"](tables[name][column])
            tables[name] = tables[name].filter(at.isnull() | (at < cutoff))

    attribute_columns = [c for c in tables["customers"].columns if c != ROW and c not in {s.name for s in CUSTOMERS.columns}]
    notes: list[str] = []

    specs = {"customers": CUSTOMERS, "orders": ORDERS, "events": EVENTS}
    attributes = {"customers": attribute_columns, "orders": [], "events": []}
    staged: dict[str, ibis.Table] = {}
    counts: dict[str, list[dict[str, object]]] = {}
    clean: dict[str, ibis.Table] = {}

    def finish(name: str, checked: ibis.Table) -> None:
        # One scan counts every problem. A table without any is served straight from the
        # typed projection of the raw table (no check is computed again); a table with
        # rejects is staged once so the report, the rejects and the features read the
        # same rows.
        counts[name] = _problem_counts(checked)
        if any(r[REJECT_CODE] is not None for r in counts[name]):
            checked = stage(name, checked)
            clean[name] = _clean(checked, specs[name], attributes[name])
        else:
            clean[name] = _typed(tables[name], specs[name], attributes[name])
        staged[name] = checked

    finish("customers", _reject_duplicates(_with_row_checks(tables["customers"], CUSTOMERS, attribute_columns), "customer_id"))
    valid_ids = clean["customers"].customer_id
    customers_rejected = any(r[REJECT_CODE] is not None for r in counts["customers"])
    # Only then can an order or event point at a customer that exists but was rejected.
    rejected_customers = _rejected_customer_reasons(staged["customers"]) if customers_rejected else None

    orders = _with_row_checks(tables["orders"], ORDERS, [])
    orders = _reject_where(
        orders, orders.amount < 0, "amount", "negative", "amount " + orders.amount.cast("string") + " is negative"
    )
    orders = _reject_where(
        orders,
        orders.amount > MAX_AMOUNT,
        "amount",
        "too_large",
        "amount " + orders.amount.cast("string") + f" is above {MAX_AMOUNT:g} (a unit error?)",
    )
    orders = _reject_duplicates(orders, "order_id")
    currency = None
    if "currency" in tables["orders"].columns:
        orders, currency = _currency_check(orders, notes)
    finish("orders", _reject_unknown_customers(orders, valid_ids, rejected_customers))
    finish("events", _reject_unknown_customers(_with_row_checks(tables["events"], EVENTS, []), valid_ids, rejected_customers))

    dropped = 0
    if "event_id" in tables["events"].columns:
        clean["events"], dropped = _dedupe_events(clean["events"])
    rejects = {name: _rejected(t, tables[name]) for name, t in staged.items()}

    reports: list[TableReport] = []
    problems: list[Problem] = []
    for name, t in staged.items():
        table_report, table_problems = _summarise(name, t, counts[name], dropped if name == "events" else 0)
        reports.append(table_report)
        problems.extend(table_problems)
    report = ValidationReport(tuple(reports), tuple(problems), max_reject_share, tuple(notes))
    profile = Profile(clean["customers"], clean["orders"], clean["events"], tuple(attribute_columns), currency)
    return ValidationResult(profile, rejects, report)


def raise_for_rejects(report: ValidationReport, rejects_path: object | None = None) -> None:
    """Fail when any table rejected more than the allowed share of its rows."""
    if not report.ok:
        raise ProfileValidationError(report.failure_message(rejects_path), report)


def profile_from_frames(
    con: BaseBackend,
    customers: object,
    orders: object,
    events: object | None = None,
    *,
    max_reject_share: float = 0.0,
) -> ValidationResult:
    """Validate in-memory tables (pandas DataFrames or pyarrow Tables) into a profile.

    Rows are numbered from 1 in the given order. With the default `max_reject_share`
    of 0, any rejected row raises `ProfileValidationError`.
    """
    raw: dict[str, ibis.Table | None] = {}
    for name, frame in (("customers", customers), ("orders", orders), ("events", events)):
        if frame is None:
            raw[name] = None
            continue
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        table = table.append_column(ROW, pa.array(range(1, table.num_rows + 1), type=pa.int64()))
        raw[name] = con.create_table(f"_raw_{name}_{next(_frame_ids)}", table, temp=True)
    result = validate_profile(raw, max_reject_share)
    raise_for_rejects(result.report)
    return result
