"""Online features: the training feature code, compiled once, executed per request.

Building and compiling the full feature expression costs about a second and DuckDB
plans the resulting SQL in ~50 ms, far over a per-request budget. So at start-up:

1. a *template profile* is declared: empty tables with the profile contract's columns
   and the attribute columns the served models read, typed as the models were trained;
2. `features.pipeline.build_features` is compiled to SQL once at a sentinel as_of. Every
   as_of-dependent value in the families is derived inside the expression from the one
   as_of literal (see `features.timeutil.days_before`), so replacing that literal with a
   parameter makes the statement valid for any as_of (`compile_feature_statement`
   checks this by compiling at two sentinels);
3. each worker connection PREPAREs the statement once against its own temporary tables.

Per request the rows are inserted into the temporary tables and the prepared statement
runs with as_of bound. Same code, same SQL, same DuckDB: the parity test compares the
result with batch scoring to 1e-9.
"""

from __future__ import annotations

import queue
import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import duckdb
import ibis
import pandas as pd
import pyarrow as pa

from features.backend import connect
from features.errors import CrmScoringError
from features.families.attributes import ATTRIBUTE_PREFIX
from features.pipeline import FeatureParams, build_features
from features.profile import Profile
from features.schema import CUSTOMERS, EVENTS, ORDERS, arrow_schema

#: Table names of the template profile (temporary tables, one set per worker connection).
TABLE_NAMES = {"customers": "crm_online_customers", "orders": "crm_online_orders", "events": "crm_online_events"}

#: Placeholder of the as_of instant in the compiled statement.
PARAMETER = "CAST($1 AS TIMESTAMP)"
_SENTINELS = (datetime(2999, 12, 31, 23, 59, 59, 123456), datetime(2998, 11, 30, 22, 58, 58, 654321))
_AGE_SUFFIX = "_age_days"

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
        if name.endswith(_AGE_SUFFIX) and kind in ("double", "float"):
            columns[name[: -len(_AGE_SUFFIX)]] = AttributeColumn(name[: -len(_AGE_SUFFIX)], pa.timestamp("us"))
            continue
        arrow = _ARROW_OF_SIGNATURE.get(kind)
        if arrow is None:
            raise OnlineFeatureError(f"feature {feature} has signature type {kind}, which online scoring cannot feed")
        columns[name] = AttributeColumn(name, arrow)
    return tuple(columns.values())


def customer_schema(attributes: tuple[AttributeColumn, ...]) -> pa.Schema:
    return pa.schema([*CUSTOMER_SCHEMA, *[pa.field(a.name, a.arrow_type) for a in attributes]])


def _timestamp_literal_sql(as_of: datetime) -> str:
    """How the DuckDB compiler writes the as_of literal (`as_of_literal`) into SQL."""
    sql = str(ibis.to_sql(ibis.literal(as_of, type="timestamp").name("as_of_literal"), dialect="duckdb"))
    match = re.search(r"SELECT\s+(.*?)\s+AS\s+\"as_of_literal\"", sql, re.S)
    if match is None:
        raise OnlineFeatureError(f"cannot find the timestamp literal in {sql!r}")
    return match.group(1)


def compile_feature_statement(attributes: tuple[AttributeColumn, ...], params: FeatureParams) -> tuple[str, pa.Schema]:
    """The feature SQL over the template tables, with `$1` (the as_of timestamp) as parameter.

    Also returns the expression's Arrow schema: Ibis casts results to it when it executes
    an expression (DuckDB sums integers as DECIMAL), so raw results are cast the same way.
    """
    con = connect()
    schemas = {"customers": customer_schema(attributes), "orders": ORDER_SCHEMA, "events": EVENT_SCHEMA}
    tables = {k: con.create_table(TABLE_NAMES[k], schema.empty_table(), temp=True) for k, schema in schemas.items()}
    profile = Profile(tables["customers"], tables["orders"], tables["events"], tuple(a.name for a in attributes))
    texts = []
    for sentinel in _SENTINELS:
        expr = build_features(profile, sentinel, params)
        sql = str(ibis.to_sql(expr, dialect="duckdb"))
        literal = _timestamp_literal_sql(sentinel)
        if literal not in sql:
            raise OnlineFeatureError(f"the as_of literal {literal} does not appear in the compiled feature SQL")
        texts.append(sql.replace(literal, PARAMETER))
    if texts[0] != texts[1]:
        raise OnlineFeatureError(
            "the compiled feature SQL depends on as_of beyond its literal: a family computes an "
            "as_of-derived value in Python (use features.timeutil.days_before / last_observed_day)"
        )
    return texts[0], expr.schema().to_pyarrow()


class _Worker:
    """One DuckDB connection with its own template tables and prepared statements.

    A statement is prepared per as_of with the instant inlined: DuckDB plans a statement
    with a bound timestamp parameter on every execution (about twice the cost), while a
    prepared statement with the literal is planned once. Preparing is a string
    substitution plus ~30 ms of planning, so a few recent as_of values are kept.
    """

    def __init__(self, database: duckdb.DuckDBPyConnection, sql: str, schemas: dict[str, pa.Schema], cache_size: int) -> None:
        self.sql = sql
        self.cache_size = cache_size
        self.prepared: OrderedDict[str, str] = OrderedDict()  # as_of literal -> statement name
        self.con = database.cursor()
        self.con.execute("SET TimeZone = 'UTC'")
        for key, schema in schemas.items():
            self.con.register("_crm_empty", schema.empty_table())
            self.con.execute(f'CREATE TEMP TABLE "{TABLE_NAMES[key]}" AS SELECT * FROM _crm_empty')
            self.con.unregister("_crm_empty")

    def _statement(self, as_of: datetime) -> str:
        # Formatted from a datetime, never from request text: nothing to inject.
        literal = f"TIMESTAMP '{as_of.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
        name = self.prepared.get(literal)
        if name is not None:
            self.prepared.move_to_end(literal)
            return name
        name = f"crm_features_{len(self.prepared)}_{abs(hash(literal))}"
        self.con.execute(f"PREPARE {name} AS " + self.sql.replace(PARAMETER, literal))
        self.prepared[literal] = name
        if len(self.prepared) > self.cache_size:
            _, evicted = self.prepared.popitem(last=False)
            self.con.execute(f"DEALLOCATE PREPARE {evicted}")
        return name

    def run(self, tables: dict[str, pa.Table], as_of: datetime) -> pa.Table:
        for key, table in tables.items():
            name = TABLE_NAMES[key]
            self.con.execute(f'DELETE FROM "{name}"')
            if table.num_rows:
                self.con.register("_crm_rows", table)
                self.con.execute(f'INSERT INTO "{name}" SELECT * FROM _crm_rows')
                self.con.unregister("_crm_rows")
        return self.con.execute(f"EXECUTE {self._statement(as_of)}").fetch_arrow_table()


class OnlineFeatureBuilder:
    """Features for in-memory profiles with the training code (see the module docstring).

    Thread-safe: each call borrows one of `workers` connections. `prepare()` does the
    expensive part (compile + prepare) and is called once at service start-up.
    """

    def __init__(
        self,
        attributes: tuple[AttributeColumn, ...],
        params: FeatureParams = FeatureParams(),
        workers: int = 4,
        as_of_cache_size: int = 8,
    ) -> None:
        self.attributes = attributes
        self.params = params
        self.workers = workers
        self.as_of_cache_size = as_of_cache_size

    def prepare(self) -> OnlineFeatureBuilder:
        self.sql_, self.result_schema_ = compile_feature_statement(self.attributes, self.params)
        self.schemas_ = {"customers": customer_schema(self.attributes), "orders": ORDER_SCHEMA, "events": EVENT_SCHEMA}
        self._database = duckdb.connect(":memory:")
        self._pool: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for _ in range(self.workers):
            self._pool.put(_Worker(self._database, self.sql_, self.schemas_, self.as_of_cache_size))
        return self

    @contextmanager
    def _worker(self) -> Iterator[_Worker]:
        worker = self._pool.get()
        try:
            yield worker
        finally:
            self._pool.put(worker)

    def features(self, customers: pa.Table, orders: pa.Table, events: pa.Table, as_of: datetime) -> pd.DataFrame:
        """One row per customer created before as_of, ordered by customer_id (as in batch)."""
        tables = {
            "customers": customers.select(self.schemas_["customers"].names).cast(self.schemas_["customers"]),
            "orders": orders.select(ORDER_SCHEMA.names).cast(ORDER_SCHEMA),
            "events": events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA),
        }
        with self._worker() as worker:
            result = worker.run(tables, as_of)
        return result.cast(self.result_schema_).to_pandas()

