"""Online features: the training feature code, compiled once, executed per request.

Building and compiling the full feature expression costs about a second and DuckDB
plans the resulting SQL in ~50 ms, far over a per-request budget. So at start-up:

1. a *template profile* is declared: empty tables with the profile contract's columns
   and the attribute columns the served models read, typed as the models were trained;
2. each of `features.pipeline.family_tables` (a family's columns, one row per eligible
   customer: what `build_features` joins onto the eligible customers) is compiled to SQL
   once at a sentinel as_of. Every as_of-dependent value in the families is derived inside
   the expression from the one as_of literal (see `features.timeutil.days_before`), so
   replacing that literal with a parameter makes a statement valid for any as_of
   (`compile_feature_statements` checks this by compiling at two sentinels);
3. each worker holds its own copy of the template tables and a few DuckDB connections,
   each of which PREPAREs its share of the family statements once per as_of.

Per request the rows replace a worker's table contents and the family statements run
side by side on its connections (DuckDB releases the GIL; each connection's helper thread
is pinned to its own core, and loads the tables only its statements read, the orders or
the events, before running them; one of them loads the customers, which all read, too);
their columns are put together as `build_features` joins them (the eligible customers
ordered by customer_id; a shared column is kept from its first family), and the start-up
check `combined_schema` refuses a layout that differs from the full expression's. The
statements leave out `build_features`' join onto the eligible customers and its ORDER BY:
each family already has one row per eligible customer, and the rows are sorted here
(measured: 16 instead of 21 ms of DuckDB for the five statements, 8 customers; the wide
join and sort each allocate vectors for every column). Same code, same DuckDB: the
parity tests compare the result with batch scoring to 1e-9.

Why per family: a feature query's cost is mostly fixed (DuckDB allocates vectors for
every column of every operator, whatever the row count); the five family statements
cost about what the joined one does (~16 ms in all here), so two connections halve the
wait. (The API runs each group of statements in a process of its own,
`serving.feature_process.FeatureProcesses`: two connections of one process wait for
each other's GIL hand-overs.) Keeping the plans takes two precautions (measured: ~20 ms per execution instead
of ~50 ms with a re-plan, one customer with 20 orders and 50 events):

* the catalog never changes after the statements are prepared (DuckDB then re-plans
  every statement on its next execution): the rows go in through views registered once at
  start-up over mutable Arrow sources (`_Rows`), never a view registered per request;
* the online database plans without table statistics (`ONLINE_DISABLED_OPTIMIZERS`). A
  plan built on statistics is only valid for the rows it saw: prepared over empty tables,
  DuckDB proves the filters always false and the plan returns no row at all once the
  request's rows are in. Without them the plan holds for any content.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import ibis
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.backend import connect
from features.errors import CrmScoringError
from features.families.attributes import AGE_SUFFIX, ATTRIBUTE_PREFIX
from features.pipeline import KEY, FeatureParams, build_features, family_tables
from features.profile import Profile
from features.schema import CUSTOMERS, EVENTS, KNOWN_EVENT_TYPES, ORDERS, arrow_schema

logger = logging.getLogger("crm_scoring.serving")

#: Table names of the template profile (one set per worker, in the worker's own schema).
TABLE_NAMES = {"customers": "crm_online_customers", "orders": "crm_online_orders", "events": "crm_online_events"}
#: How the compiled SQL names the template tables' schema (they are compiled as temporary
#: tables); each worker's statements name its own schema instead.
_COMPILED_SCHEMA = '"temp"."main".'

#: Placeholder of the as_of instant in the compiled statement.
PARAMETER = "CAST($1 AS TIMESTAMP)"
_SENTINELS = (datetime(2999, 12, 31, 23, 59, 59, 123456), datetime(2998, 11, 30, 22, 58, 58, 654321))

#: Optimizers that build the plan from table statistics (min/max, null flags, sizes of a
#: string): off in the online database so a prepared plan stays valid whatever rows the
#: temporary tables hold later. The others only reorder or simplify the plan.
#: `join_filter_pushdown` only adds per-execution work here (dynamic filters built from each
#: join's few build rows): ~0.3-0.5 ms less for the engagement statement of 8 customers.
ONLINE_DISABLED_OPTIMIZERS = ("statistics_propagation", "compressed_materialization", "row_group_pruner", "join_filter_pushdown")

#: Rows per Arrow batch when fetching a family's result. DuckDB reserves every column's
#: buffers for a whole batch up front (1,000,000 rows by default: ~1.5 ms of allocation
#: per family statement for a few result rows); its own vector size fits a request.
ARROW_BATCH_ROWS = 2048

#: Arrow type of an attribute column per MLflow signature type of its feature.
_ARROW_OF_SIGNATURE = {
    "string": pa.string(),
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "datetime": pa.timestamp("us"),
}

CUSTOMER_SCHEMA = arrow_schema(CUSTOMERS)
ORDER_SCHEMA = arrow_schema(ORDERS)
EVENT_SCHEMA = arrow_schema(EVENTS)


class OnlineFeatureError(CrmScoringError):
    """The online feature statement cannot be built or run."""


@dataclass(frozen=True)
class AttributeColumn:
    """An attribute the served models read: its profile column name and Arrow type."""

    name: str
    arrow_type: pa.DataType

    @property
    def is_timestamp(self) -> bool:
        return pa.types.is_timestamp(self.arrow_type)


def attribute_columns_for(input_types: dict[str, str]) -> tuple[AttributeColumn, ...]:
    """The customers' attribute columns that produce the models' `attr_*` features.

    The attribute family names a feature `attr_<name>` (`attr_<name>_age_days` for a
    timestamp), so the template column is `<name>` with the type that gives the feature
    the model was trained with (a double `..._age_days` feature comes from a timestamp).
    """
    columns: dict[str, AttributeColumn] = {}
    for feature, kind in sorted(input_types.items()):
        if not feature.startswith(ATTRIBUTE_PREFIX):
            continue
        name = feature[len(ATTRIBUTE_PREFIX) :]
        if name.endswith(AGE_SUFFIX) and kind in ("double", "float"):
            columns[name[: -len(AGE_SUFFIX)]] = AttributeColumn(name[: -len(AGE_SUFFIX)], pa.timestamp("us"))
            continue
        arrow = _ARROW_OF_SIGNATURE.get(kind)
        if arrow is None:
            raise OnlineFeatureError(f"feature {feature} has signature type {kind}, which online scoring cannot feed")
        columns[name] = AttributeColumn(name, arrow)
    return tuple(columns.values())


def customer_schema(attributes: tuple[AttributeColumn, ...]) -> pa.Schema:
    return pa.schema([*CUSTOMER_SCHEMA, *[pa.field(a.name, a.arrow_type) for a in attributes]])


def template_schemas(attributes: tuple[AttributeColumn, ...]) -> dict[str, pa.Schema]:
    """The template profile's tables: the contract's columns plus the served attributes."""
    return {"customers": customer_schema(attributes), "orders": ORDER_SCHEMA, "events": EVENT_SCHEMA}


def template_tables(schemas: dict[str, pa.Schema], customers: pa.Table, orders: pa.Table, events: pa.Table) -> dict[str, pa.Table]:
    """The three tables with the template tables' columns and types."""
    given = {"customers": customers, "orders": orders, "events": events}
    return {
        name: table if (table := given[name]).schema.equals(schema) else table.select(schema.names).cast(schema)
        for name, schema in schemas.items()
    }


def _timestamp_literal_sql(as_of: datetime) -> str:
    """How the DuckDB compiler writes the as_of literal (`as_of_literal`) into SQL."""
    sql = str(ibis.to_sql(ibis.literal(as_of, type="timestamp").name("as_of_literal"), dialect="duckdb"))
    match = re.search(r"SELECT\s+(.*?)\s+AS\s+\"as_of_literal\"", sql, re.S)
    if match is None:
        raise OnlineFeatureError(f"cannot find the timestamp literal in {sql!r}")
    return match.group(1)


@dataclass(frozen=True)
class FamilyStatement:
    """One feature family's SQL over the template tables, with `PARAMETER` for as_of."""

    family: str
    sql: str
    #: The columns the family adds to the feature table (besides the key), in order.
    columns: tuple[str, ...] = ()

    @property
    def tables(self) -> frozenset[str]:
        """The template tables the statement reads (keys of `TABLE_NAMES`)."""
        return frozenset(key for key, name in TABLE_NAMES.items() if f'"{name}"' in self.sql)


def combined_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The columns of the family tables put together: the key, then each family's columns
    not already present (a shared column is kept from its first family), as `build_features` does."""
    fields = [schemas[0].field(KEY)]
    seen = {KEY}
    for schema in schemas:
        for item in schema:
            if item.name not in seen:
                seen.add(item.name)
                fields.append(item)
    return pa.schema(fields)


def feature_frame(table: pa.Table) -> pd.DataFrame:
    """The feature table as pandas for the models, converted on the calling thread: for a
    micro-batch's few rows, handing ~120 columns to Arrow's thread pool costs more than
    converting them (measured for 8 customers: features 0.6 ms and scoring 0.3 ms faster
    than with threads and one block per column; the same values and dtypes either way)."""
    return table.to_pandas(use_threads=False)


def combine_family_tables(tables: list[pa.Table]) -> pa.Table:
    """The family results as one table ordered by customer_id (see `combined_schema`); each
    family must hold the same customers."""
    names: list[str] = [KEY]
    seen = {KEY}
    columns: list[pa.ChunkedArray] = []
    key: pa.ChunkedArray | None = None
    for table in tables:
        # Only the columns this family adds are reordered; a table already in order is kept.
        own = [name for name in table.column_names if name not in seen]
        seen.update(own)
        table = _sorted_by_key(table.select([KEY, *own]))
        if key is None:
            key = table.column(KEY)
            columns.append(key)
        elif not table.column(KEY).equals(key):
            raise OnlineFeatureError("the feature families returned different customers")
        names += own
        columns += table.columns[1:]
    return pa.Table.from_arrays(columns, names=names)


def put_together(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """The feature table of `schema` from tables that each hold some families' columns
    (the builders of the statement groups, `OnlineFeatureBuilder.run_group`)."""
    combined = combine_family_tables(tables)
    if sorted(combined.column_names) != sorted(schema.names):
        raise OnlineFeatureError("the statement groups' columns differ from the full feature expression's")
    return cast_columns(combined.select(schema.names), schema)


def _sorted_by_key(table: pa.Table) -> pa.Table:
    # Arrow orders strings by their bytes, as DuckDB's ORDER BY does (binary collation).
    order = pc.sort_indices(table.column(KEY))
    if pc.all(pc.equal(order, pa.array(range(len(order)), type=order.type))).as_py() is not False:
        return table
    return table.take(order)


def cast_columns(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table.cast(schema)` that converts only the columns whose type differs (a small
    table's cast costs mostly per column, not per value); a table of that schema already
    is returned as it is (measured: 0.26 ms per 8-customer batch for nothing to convert)."""
    if table.schema.equals(schema):
        return table
    if table.schema.names != schema.names:
        raise OnlineFeatureError("the feature table's columns differ from the full feature expression's")
    columns = table.columns
    for i, (column, target) in enumerate(zip(columns, schema, strict=True)):
        if column.type != target.type:
            columns[i] = column.cast(target.type)
    return pa.Table.from_arrays(columns, schema=schema)


def compile_feature_statements(
    attributes: tuple[AttributeColumn, ...], params: FeatureParams
) -> tuple[tuple[FamilyStatement, ...], pa.Schema]:
    """Each family's SQL over the template tables, with `$1` (the as_of timestamp) as parameter.

    Also returns the full feature expression's Arrow schema: Ibis casts results to it
    when it executes an expression (DuckDB sums integers as DECIMAL), so the combined
    family results are cast the same way. Raises `OnlineFeatureError` when a statement
    depends on as_of beyond its literal or the families do not add up to the full table.
    """
    con = connect()
    schemas = template_schemas(attributes)
    tables = {k: con.create_table(TABLE_NAMES[k], schema.empty_table(), temp=True) for k, schema in schemas.items()}
    profile = Profile(tables["customers"], tables["orders"], tables["events"], tuple(a.name for a in attributes))
    statements = []
    family_schemas = []
    compiled = [family_tables(profile, sentinel, params) for sentinel in _SENTINELS]
    for (family, expr), (_, other) in zip(*compiled, strict=True):
        texts = []
        for sentinel, table in zip(_SENTINELS, (expr, other), strict=True):
            sql = str(ibis.to_sql(table, dialect="duckdb"))
            literal = _timestamp_literal_sql(sentinel)
            if literal not in sql:
                raise OnlineFeatureError(f"the as_of literal {literal} does not appear in the compiled {family} SQL")
            texts.append(sql.replace(literal, PARAMETER))
        if texts[0] != texts[1]:
            raise OnlineFeatureError(
                f"the compiled {family} feature SQL depends on as_of beyond its literal: the family computes an "
                "as_of-derived value in Python (use features.timeutil.days_before / last_observed_day)"
            )
        statements.append(FamilyStatement(family, texts[0], tuple(c for c in expr.columns if c != KEY)))
        family_schemas.append(expr.schema().to_pyarrow())
    full = build_features(profile, _SENTINELS[0], params).schema().to_pyarrow()
    if combined_schema(family_schemas).names != full.names:
        raise OnlineFeatureError("the feature families do not add up to the columns of the full feature table")
    return tuple(statements), full


def _cost_probe_tables(schemas: dict[str, pa.Schema], as_of: datetime, customers: int = 8) -> dict[str, pa.Table]:
    """A typical micro-batch for timing the statements: `customers` buyers with 20 orders in
    the last year and 50 events of every known type in the last 90 days each."""
    ids = [f"probe-{c}" for c in range(customers)]
    orders = [(c, k) for c in range(customers) for k in range(20)]
    events = [(c, k) for c in range(customers) for k in range(50)]
    rows = {
        "customers": {"customer_id": ids, "created_at": [as_of - timedelta(days=400)] * customers},
        "orders": {
            "order_id": [f"probe-{c}-{k}" for c, k in orders],
            "customer_id": [ids[c] for c, _ in orders],
            "ordered_at": [as_of - timedelta(days=18 * k + c + 1) for c, k in orders],
            "amount": [10.0 + k for _, k in orders],
            "status": ["completed"] * len(orders),
            "category": [f"category-{k % 3}" for _, k in orders],
        },
        "events": {
            "customer_id": [ids[c] for c, _ in events],
            "occurred_at": [as_of - timedelta(hours=43 * k + c + 1) for c, k in events],
            "event_type": [KNOWN_EVENT_TYPES[k % len(KNOWN_EVENT_TYPES)] for _, k in events],
        },
    }
    tables = {}
    for name, schema in schemas.items():
        size = len(rows[name]["customer_id"])
        tables[name] = pa.table({f.name: rows[name].get(f.name, pa.nulls(size, f.type)) for f in schema}, schema=schema)
    return tables


def _partition(costs: list[float], groups: int, reads: list[frozenset[str]] | None = None) -> tuple[tuple[int, ...], ...]:
    """Statement indexes split into `groups` of about equal total cost (largest first).

    reads: the tables each statement reads. Statements that read the same tables beyond
    those every statement reads then stay together when there are enough such units for
    the groups, so each of those tables is read by one group only, which loads it itself
    (`_Worker.run`): the loads then run side by side too.
    """
    units: list[list[int]] = [[i] for i in range(len(costs))]
    if reads is not None:
        common = frozenset.intersection(*reads) if reads else frozenset()
        by_tables: dict[frozenset[str], list[int]] = {}
        for index, tables in enumerate(reads):
            private = tables - common
            if private:
                by_tables.setdefault(private, []).append(index)
            else:
                by_tables[frozenset({f"statement {index}"})] = [index]  # free to go anywhere
        if len(by_tables) >= groups:
            units = list(by_tables.values())
    loads = [0.0] * groups
    members: list[list[int]] = [[] for _ in range(groups)]
    for unit in sorted(units, key=lambda u: -sum(costs[i] for i in u)):
        target = loads.index(min(loads))
        members[target] += unit
        loads[target] += sum(costs[i] for i in unit)
    return tuple(tuple(sorted(m)) for m in members if m)


class _Connection:
    """One DuckDB connection of a worker with its share of the statements, prepared per as_of.

    A statement is prepared per as_of with the instant inlined: DuckDB re-plans a
    statement with a bound timestamp parameter on every execution, while a prepared
    statement with the literal is planned once. Preparing costs ~30 ms of planning for
    all the families, so a few recent as_of values are kept.
    """

    def __init__(
        self,
        database: duckdb.DuckDBPyConnection,
        statements: list[tuple[int, str]],
        cache_size: int,
        own_tables: dict[str, tuple[str, _Rows]] | None = None,
    ) -> None:
        self.statements = statements  # (index among the families, SQL over this worker's tables)
        self.cache_size = cache_size
        self.prepared: OrderedDict[str, list[str]] = OrderedDict()  # as_of literal -> statement names
        self.con = database.cursor()
        self.con.execute("SET TimeZone = 'UTC'")
        # The tables only this connection's statements read: it loads them itself.
        self.own_tables = own_tables or {}
        for key, (table, rows) in self.own_tables.items():
            _prepare_insert(self.con, key, table, rows)

    def load(self, tables: dict[str, pa.Table]) -> None:
        for key, (_, rows) in self.own_tables.items():
            _insert(self.con, key, rows, tables[key])

    def load_and_execute(self, tables: dict[str, pa.Table], as_of: datetime) -> list[tuple[int, pa.Table]]:
        self.load(tables)
        return self.execute(as_of)

    def _names(self, as_of: datetime) -> list[str]:
        # Formatted from a datetime, never from request text: nothing to inject.
        literal = f"TIMESTAMP '{as_of.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
        names = self.prepared.get(literal)
        if names is not None:
            self.prepared.move_to_end(literal)
            return names
        tag = f"{len(self.prepared)}_{abs(hash(literal))}"
        names = []
        for index, sql in self.statements:
            name = f"crm_features_{index}_{tag}"
            self.con.execute(f"PREPARE {name} AS " + sql.replace(PARAMETER, literal))
            names.append(name)
        self.prepared[literal] = names
        if len(self.prepared) > self.cache_size:
            _, evicted = self.prepared.popitem(last=False)
            for name in evicted:
                self.con.execute(f"DEALLOCATE PREPARE {name}")
        return names

    def execute(self, as_of: datetime) -> list[tuple[int, pa.Table]]:
        names = self._names(as_of)
        return [
            (index, self.con.execute(f"EXECUTE {name}").fetch_arrow_table(ARROW_BATCH_ROWS))
            for (index, _), name in zip(self.statements, names, strict=True)
        ]


class _Rows:
    """The rows one table gets at the next load. DuckDB reads them through the Arrow C
    stream interface whenever a statement over this object runs, so the worker's INSERTs
    are prepared once (planning them per request cost ~0.15 ms each)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.table = schema.empty_table()

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


def _prepare_insert(con: duckdb.DuckDBPyConnection, key: str, table: str, rows: _Rows, create: bool = False) -> None:
    # Registered once, before any statement is prepared (see the module doc).
    con.register(f"crm_rows_{key}", rows)
    if create:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM crm_rows_{key}")
    con.execute(f"PREPARE crm_insert_{key} AS INSERT INTO {table} SELECT * FROM crm_rows_{key}")


def _insert(con: duckdb.DuckDBPyConnection, key: str, rows: _Rows, table: pa.Table) -> None:
    """Append `table` to the template table `key` through `con`'s prepared INSERT."""
    if not table.num_rows:
        return
    rows.table = table
    try:
        con.execute(f"EXECUTE crm_insert_{key}")
    finally:
        rows.table = table.schema.empty_table()  # the request's rows are not kept


class _Worker:
    """One set of template tables (a schema of the online database) and its connections.

    A table that the statements of only one connection read is loaded by that connection,
    on its helper thread, just before its statements. The others (the customers) are
    loaded on the helper thread of the `lead` connection, before its own table, while the
    other connections load theirs; those wait for the shared tables only before running
    their statements. The loads of a request then run side by side, as the statements do
    (measured, 8 customers, pauses of 20 ms between calls: 16.8 -> 15.8 and 18.4 -> 16.9
    ms p50 against loading the shared tables first; the lead is the cheapest group).
    """

    def __init__(
        self,
        database: duckdb.DuckDBPyConnection,
        number: int,
        statements: tuple[FamilyStatement, ...],
        schemas: dict[str, pa.Schema],
        groups: tuple[tuple[int, ...], ...],
        cache_size: int,
        lead: int = 0,
    ) -> None:
        self.lead = lead
        self.schema = f"crm_online_{number}"
        self.loader = database.cursor()
        self.loader.execute(f'CREATE SCHEMA "{self.schema}"')
        self._rows = {key: _Rows(schema) for key, schema in schemas.items()}
        self._holds_rows = False
        tables = {key: f'"{self.schema}"."{TABLE_NAMES[key]}"' for key in schemas}
        readers = {key: {g for g, group in enumerate(groups) for i in group if key in statements[i].tables} for key in schemas}
        owner = {key: min(found) for key, found in readers.items() if len(found) == 1 and len(groups) > 1}
        # A table no statement of these groups reads is never loaded.
        self.shared_tables = [key for key in schemas if key not in owner and readers[key]]
        for key, rows in self._rows.items():
            _prepare_insert(self.loader, key, tables[key], rows, create=True)
            self.loader.execute(f"PREPARE crm_delete_{key} AS DELETE FROM {tables[key]}")
        sqls = [self._own_tables(s.sql) for s in statements]
        self.connections = [
            _Connection(
                database,
                [(i, sqls[i]) for i in group],
                cache_size,
                {key: (tables[key], self._rows[key]) for key, g in owner.items() if g == number_in_groups},
            )
            for number_in_groups, group in enumerate(groups)
        ]

    def _own_tables(self, sql: str) -> str:
        if _COMPILED_SCHEMA not in sql:
            raise OnlineFeatureError(f"the compiled feature SQL does not name the template tables as {_COMPILED_SCHEMA}")
        return sql.replace(_COMPILED_SCHEMA, f'"{self.schema}".')

    def clear(self) -> None:
        """Empty the tables (a no-op when they are) and vacuum the deleted rows.

        A DELETE only marks rows deleted; they stay in the tables' row groups, and every
        later scan walks past them. Over a few hundred requests the tables grew to ~100,000
        deleted rows and an 8-customer batch's statements took 22.6 instead of 15.5 ms.
        DuckDB vacuums an in-memory table when the database is checkpointed (since 1.4);
        the checkpoint changes no catalog entry, so the prepared statements stay planned.
        It is safe next to other connections' transactions (they keep their snapshot). A
        failed checkpoint is logged and the call goes on: the rows are deleted already,
        only the vacuum is missed (the next clear tries again).
        """
        if self._holds_rows:
            for key in self._rows:
                self.loader.execute(f"EXECUTE crm_delete_{key}")
            self._holds_rows = False
            try:
                self.loader.execute("CHECKPOINT")
            except duckdb.Error as exc:
                logger.warning("online feature tables not vacuumed (the next clear retries): %s", exc)

    def _empty(self, tables: dict[str, pa.Table]) -> None:
        """Empty the tables before `tables` go in (and remember whether they hold rows then)."""
        self.clear()
        self._holds_rows = any(table.num_rows for table in tables.values())

    def _load_shared(self, tables: dict[str, pa.Table]) -> None:
        for key in self.shared_tables:
            _insert(self.loader, key, self._rows[key], tables[key])

    def load(self, tables: dict[str, pa.Table]) -> None:
        """Replace the rows of every table (one after the other)."""
        self._empty(tables)
        self._load_shared(tables)
        for connection in self.connections:
            connection.load(tables)

    def run(self, tables: dict[str, pa.Table], as_of: datetime, pool: ThreadPoolExecutor | None) -> pa.Table:
        """The family statements on these rows, side by side on the worker's connections.
        The rows stay in the tables until the next load or `clear`."""
        self._empty(tables)
        results: list[tuple[int, pa.Table]] = []
        if pool is None or len(self.connections) == 1:
            self._load_shared(tables)
            for connection in self.connections:
                results += connection.load_and_execute(tables, as_of)
        else:
            # Every group on a helper thread, the caller only waits: measured ~3 ms faster
            # than the caller running a group itself (it then competes for the GIL). All of
            # them are waited for before an error is raised: the worker goes back to the
            # pool afterwards, and a helper still using its connections would overlap the
            # next call's.
            futures = self._submit(tables, as_of, pool)
            wait(futures)
            for future in futures:
                results += future.result()
        ordered = [table for _, table in sorted(results, key=lambda item: item[0])]
        return combine_family_tables(ordered)

    def _submit(
        self, tables: dict[str, pa.Table], as_of: datetime, pool: ThreadPoolExecutor
    ) -> list[Future[list[tuple[int, pa.Table]]]]:
        """Each connection's loads and statements on a helper thread; the lead's thread loads
        the shared tables first, and the others wait for them before their statements."""
        shared_loaded = threading.Event()
        failures: list[BaseException] = []

        def lead(connection: _Connection) -> list[tuple[int, pa.Table]]:
            try:
                self._load_shared(tables)
            except BaseException as exc:
                failures.append(exc)
                raise
            finally:
                shared_loaded.set()  # also on failure: the others stop waiting
            return connection.load_and_execute(tables, as_of)

        def follow(connection: _Connection) -> list[tuple[int, pa.Table]]:
            connection.load(tables)
            shared_loaded.wait()
            if failures:
                raise OnlineFeatureError(f"the shared feature tables were not loaded: {failures[0]}") from failures[0]
            return connection.execute(as_of)

        return [pool.submit(lead if n == self.lead else follow, c) for n, c in enumerate(self.connections)]


class _CpuPinner:
    """Thread initializer: the n-th helper thread runs only on the n-th CPU this process may
    use (round robin), so the statements of one request run on different cores.

    Why: between two requests the helpers sleep, and on this kind of (virtual) machine a
    woken thread is often put on the core that woke it while the other core idles, so the
    "parallel" statements ran one after the other. Measured in a loop with 20 ms pauses
    between calls (about the pause between two micro-batches under load): 17.9-21.7 ms per
    call unpinned, 15.6-17.2 ms pinned; equal without pauses. No-op where the platform
    cannot pin (`os.sched_setaffinity` missing) or only one CPU is allowed.
    """

    def __init__(self) -> None:
        self._started = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if not hasattr(os, "sched_setaffinity"):
            return
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return
        with self._lock:
            number, self._started = self._started, self._started + 1
        os.sched_setaffinity(0, {cpus[number % len(cpus)]})  # 0: the calling thread


class OnlineFeatureBuilder:
    """Features for in-memory profiles with the training code (see the module docstring).

    Thread-safe: each call borrows one of `workers` table sets. The family statements are
    split into `parallelism` groups of about equal cost (`groups_`; or the given `groups`),
    and each worker runs its groups side by side on as many DuckDB connections, on helper
    threads pinned to their own CPUs unless `pin_threads` is false (`_CpuPinner`).
    With `run_group` it runs only that group, and its tables hold only those families'
    columns: `serving.feature_process` runs each group in a process of its own and puts
    the columns together (`put_together`). `prepare()` does the expensive part (compile +
    plan) and is called once at service start-up.
    """

    def __init__(
        self,
        attributes: tuple[AttributeColumn, ...],
        params: FeatureParams = FeatureParams(),
        workers: int = 4,
        as_of_cache_size: int = 8,
        parallelism: int = 2,
        pin_threads: bool = True,
        groups: tuple[tuple[int, ...], ...] | None = None,
        run_group: int | None = None,
    ) -> None:
        self.attributes = attributes
        self.params = params
        self.workers = workers
        self.as_of_cache_size = as_of_cache_size
        self.parallelism = parallelism
        self.pin_threads = pin_threads
        self.groups = groups
        self.run_group = run_group

    def prepare(self) -> OnlineFeatureBuilder:
        self.statements_, self.result_schema_ = compile_feature_statements(self.attributes, self.params)
        self.schemas_ = template_schemas(self.attributes)
        self._database = duckdb.connect(":memory:")
        self._database.execute(f"SET disabled_optimizers = '{','.join(ONLINE_DISABLED_OPTIMIZERS)}'")
        # One thread per statement: a request's rows fit in one vector, and the statements
        # already run side by side.
        self._database.execute("SET threads = 1")
        if self.groups is None:
            costs = self._statement_costs()
            self.groups_ = _partition(
                costs,
                max(1, min(self.parallelism, len(self.statements_))),
                [statement.tables for statement in self.statements_],
            )
        else:
            if sorted(i for group in self.groups for i in group) != list(range(len(self.statements_))):
                raise OnlineFeatureError(f"the statement groups {self.groups} do not cover the {len(self.statements_)} families once each")
            costs = [1.0] * len(self.statements_)
            self.groups_ = self.groups
        if self.run_group is not None and not 0 <= self.run_group < len(self.groups_):
            raise OnlineFeatureError(f"no statement group {self.run_group} among {len(self.groups_)}")
        running = self.groups_ if self.run_group is None else (self.groups_[self.run_group],)
        group_costs = [sum(costs[i] for i in group) for group in running]
        lead = group_costs.index(min(group_costs))  # loads the shared tables too (`_Worker`)
        families = sorted(i for group in running for i in group)
        self.run_schema_ = self.result_schema_ if self.run_group is None else self._schema_of(families)
        #: The template tables the statements run here read (a table not among them may be left empty).
        self.reads_ = frozenset(key for i in families for key in self.statements_[i].tables)
        self._pool: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for number in range(self.workers):
            self._pool.put(_Worker(self._database, number, self.statements_, self.schemas_, running, self.as_of_cache_size, lead))
        helpers = self.workers * len(running) if len(running) > 1 else 0
        self._helpers = (
            ThreadPoolExecutor(
                helpers, thread_name_prefix="crm-online-features", initializer=_CpuPinner() if self.pin_threads else None
            )
            if helpers
            else None
        )
        return self

    def _schema_of(self, families: list[int]) -> pa.Schema:
        """The result schema's key and the columns of these families (in family order)."""
        names = [KEY, *(c for i in families for c in self.statements_[i].columns)]
        return pa.schema([self.result_schema_.field(name) for name in names])

    def _statement_costs(self) -> list[float]:
        """Seconds per family statement on a typical small batch (`_cost_probe_tables`), to
        balance the connections. On empty tables the families rank differently: the event
        families' cost grows most with the rows."""
        probe = _Worker(self._database, -1, self.statements_, self.schemas_, ((*range(len(self.statements_)),),), 1)
        probe.load(_cost_probe_tables(self.schemas_, _SENTINELS[0]))
        connection = probe.connections[0]
        costs = []
        for (_, sql) in connection.statements:
            statement = sql.replace(PARAMETER, f"TIMESTAMP '{_SENTINELS[0]:%Y-%m-%d %H:%M:%S.%f}'")
            connection.con.execute("PREPARE crm_cost AS " + statement)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                connection.con.execute("EXECUTE crm_cost").fetch_arrow_table(ARROW_BATCH_ROWS)
                best = min(best, time.perf_counter() - started)
            connection.con.execute("DEALLOCATE PREPARE crm_cost")
            costs.append(best)
        # Before any worker prepares: dropping a schema later would make them re-plan.
        probe.loader.execute(f'DROP SCHEMA "{probe.schema}" CASCADE')
        return costs

    @contextmanager
    def _worker(self) -> Iterator[_Worker]:
        worker = self._pool.get()
        try:
            yield worker
        finally:
            self._pool.put(worker)

    def clear(self) -> None:
        """Empty every worker's tables now, so the next call only inserts its rows (the
        feature process does this while it waits for the next request)."""
        workers = [self._pool.get() for _ in range(self.workers)]
        try:
            for worker in workers:
                worker.clear()
        finally:
            for worker in workers:
                self._pool.put(worker)

    def tables(self, customers: pa.Table, orders: pa.Table, events: pa.Table) -> dict[str, pa.Table]:
        """The three tables with the template tables' columns and types."""
        return template_tables(self.schemas_, customers, orders, events)

    def feature_table(self, customers: pa.Table, orders: pa.Table, events: pa.Table, as_of: datetime) -> pa.Table:
        """The feature table as Arrow, typed as the full feature expression."""
        tables = self.tables(customers, orders, events)
        with self._worker() as worker:
            result = worker.run(tables, as_of, self._helpers)
        return cast_columns(result, self.run_schema_)

    def features(self, customers: pa.Table, orders: pa.Table, events: pa.Table, as_of: datetime) -> pd.DataFrame:
        """One row per customer created before as_of, ordered by customer_id (as in batch)."""
        return feature_frame(self.feature_table(customers, orders, events, as_of))
