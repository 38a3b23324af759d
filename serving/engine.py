"""The online scoring engine: the served run's models + tag rules + compiled features + its snapshot.

One `ScoringEngine` is immutable once built; the service swaps in a new one on reload
(so a failed reload keeps the old one serving). It answers:

* `score_inline` - inline profiles, features by the compiled training code
  (`serving.online`), scores and tags exactly as the batch computes them, with
  percentiles and hysteresis state taken from the latest batch snapshot;
* `score_by_ids` - rows of the latest batch snapshot (Parquet sorted by customer_id,
  so DuckDB reads only the row groups that can hold the ids).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import CrmScoringError
from features.families.attributes import normalise_name
from features.pipeline import FeatureParams
from serving.batch import features_path, online_feature_params, read_meta
from serving.events import json_timestamp
from serving.models import ModelSet, check_attribute_inputs, load_model_set
from serving.feature_process import FeatureProcess, FeatureProcessConfig, FeatureProcesses
from serving.online import AttributeColumn, OnlineFeatureBuilder, attribute_columns_for
from serving.schemas import CustomerIn, ScoreRequest, latest_allowed, now_utc, timestamp_problems, utc_naive
from serving.scoring import KEY, PERCENTILE_OF, PercentileReference, add_reasons, not_eligible_result, render_result, score_records
from serving.store import RunRecord, ScoreStore
from serving.tags import TAG_COLUMN_PREFIX, AlignedPreviousTags, TagRules, load_tag_rules
from training.config import TrainingSettings


logger = logging.getLogger("crm_scoring.serving")

#: Joins a request's private prefix to its ids inside a micro-batch (not a valid id character in practice).
_NAMESPACE_SEPARATOR = "\x1f"

#: `normalise_name` of an attribute name as clients send it: the same few names arrive in
#: every request, and the regular expression cost ~3 us a name (bounded: names are input).
_attribute_name = functools.lru_cache(maxsize=4096)(normalise_name)


class InputError(CrmScoringError):
    """Request content the models cannot use; `problems` are (field path, message) pairs."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems[:5]))


@dataclass(frozen=True)
class SnapshotView:
    """The latest batch run as online scoring uses it."""

    run: RunRecord
    path: Path
    reference: PercentileReference
    meta: dict[str, Any]
    tag_columns: tuple[str, ...]
    features_path: Path | None = None
    #: The snapshot's tag and segment columns (hysteresis state), in memory: the customer
    #: ids as an index and each column's values in that order.
    tag_index: pd.Index | None = None
    tag_values: dict[str, np.ndarray] = field(default_factory=dict)

    def previous_tags(self, customer_ids: list[str]) -> AlignedPreviousTags | None:
        """The tag values of these customers, one per id (None where the snapshot lacks the
        customer), as hysteresis reads them."""
        if self.tag_index is None:
            return None
        positions = self.tag_index.get_indexer(customer_ids)
        present = positions >= 0
        rows = positions[present]
        values: dict[str, np.ndarray] = {}
        for column, snapshot_values in self.tag_values.items():
            if column.startswith(TAG_COLUMN_PREFIX):  # segments hold no hysteresis state
                values[column] = np.full(len(customer_ids), None, dtype=object)
                values[column][present] = snapshot_values[rows]
        return AlignedPreviousTags(values)

    def rows(self, customer_ids: list[str], columns: list[str] | None = None, path: Path | None = None) -> pd.DataFrame:
        """These customers' rows of the snapshot (or of the run's `path`, its features).

        Raises `SnapshotUnavailableError` when the file cannot be read any more.
        """
        wanted = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        source = path or self.path
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            ids = pa.table({"customer_id": pa.array(customer_ids, type=pa.string())})
            con.register("wanted_ids", ids)
            return con.execute(
                f"SELECT {wanted} FROM read_parquet(?) WHERE customer_id IN (SELECT customer_id FROM wanted_ids)",
                [str(source)],
            ).fetch_arrow_table().to_pandas()
        except (duckdb.IOException, duckdb.InvalidInputException, OSError) as exc:
            raise SnapshotUnavailableError(
                f"the batch run {self.run.run_id}'s file {source} cannot be read ({str(exc).splitlines()[0]}): "
                "run `crm-scoring score`, then reload"
            ) from exc
        finally:
            con.close()


class NoSnapshotError(CrmScoringError):
    """The store holds no batch run yet, so there is no population to score against."""


class SnapshotUnavailableError(CrmScoringError):
    """The latest snapshot's files cannot be read any more (moved, deleted, truncated)."""


class SnapshotMismatchError(CrmScoringError):
    """No batch run at the latest as_of was scored with the tag rules the server loads."""


def served_run(runs: list[RunRecord], rules: TagRules) -> RunRecord:
    """The batch run the API serves: the newest run at the latest as_of.

    The API answers with the model versions and tags of that run (see `build_engine`):
    what the latest batch run told the CRM. A rollback reaches the API the way a promotion
    does, through `score` (a new run, see `serving.batch.choose_run_id`), then a reload.
    Raises `SnapshotMismatchError` when that run was scored with other tag rules than the
    server's: serving an older run of the server's rules instead would contradict the
    events the newest run has just sent (a reload then answers 409 and keeps the old run).
    """
    latest = max(run.as_of for run in runs)
    run = max((run for run in runs if run.as_of == latest), key=lambda run: (run.created_at, run.run_id))
    if not run.rules_digest or run.rules_digest == rules.digest:
        return run
    raise SnapshotMismatchError(
        f"the latest batch run {run.run_id} (as_of {run.as_of:%Y-%m-%d %H:%M}) was scored with other tag rules: "
        f"{rules.source} (sha256 {rules.digest[:12]}) are not the run's (sha256 {run.rules_digest[:12]}). Start the server "
        f"with the run's rules (CRMSCORE_TAGS_FILE), or run `crm-scoring score --profile DIR --as-of DATE` with DATE at or "
        f"after {run.as_of:%Y-%m-%d %H:%M} and the server's rules, then reload"
    )


def _warn_if_not_the_champions(run: RunRecord, settings: TrainingSettings | None) -> None:
    """Log when the served run's versions are not the current champions: a promotion or a
    rollback since the run (it reaches the API through `score`, then a reload)."""
    from training.registry import ModelNotFoundError, champions

    try:
        current = {info.name: str(info.version) for info in champions(settings)}
    except ModelNotFoundError:
        return
    if current and current != run.models:
        logger.warning(
            "serving the model versions of batch run %s (%s); the champions are now %s: run `crm-scoring score`, then reload, to serve them",
            run.run_id,
            ", ".join(f"{name} v{version}" for name, version in sorted(run.models.items())),
            ", ".join(f"{name} v{version}" for name, version in sorted(current.items())),
        )


def load_snapshot_view(store: ScoreStore, run: RunRecord) -> SnapshotView:
    """The snapshot of `run` as online scoring reads it."""
    path = store.snapshot_path(run.run_id)
    schema = pq.read_schema(path)
    scores = pq.read_table(path, columns=[c for c in PERCENTILE_OF.values() if c in schema.names]).to_pandas()
    tag_columns = tuple(c for c in schema.names if c.startswith(("tag_", "segment_")))
    stored_features = features_path(store, run.run_id)
    tag_index, tag_values = None, {}
    if tag_columns:
        tags = pq.read_table(path, columns=[KEY, *tag_columns])
        tag_index = pd.Index(tags.column(KEY).to_numpy(zero_copy_only=False), dtype=object)
        tag_values = {c: tags.column(c).to_numpy(zero_copy_only=False) for c in tag_columns}
    return SnapshotView(
        run,
        path,
        PercentileReference.from_scores(scores),
        read_meta(store, run.run_id),
        tag_columns,
        stored_features if stored_features.exists() else None,
        tag_index,
        tag_values,
    )


def default_as_of() -> datetime:
    """The first whole minute after now: everything a request holds up to now is before it
    (features read `< as_of`; a lead created seconds ago is scored), and requests within a
    minute share one prepared query."""
    return now_utc().replace(second=0, microsecond=0) + timedelta(minutes=1)


def _convert_attribute(column: AttributeColumn, value: Any) -> Any:
    """The attribute value as the column's type, or ValueError naming what was expected."""
    if value is None:
        return None
    kind = column.arrow_type
    if pa.types.is_string(kind):
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    if pa.types.is_timestamp(kind):
        if not isinstance(value, str):
            raise ValueError("expected an ISO 8601 timestamp string")
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("expected an ISO 8601 timestamp string") from None
        return utc_naive(parsed)
    if pa.types.is_boolean(kind):
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if pa.types.is_integer(kind):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ValueError("expected an integer")
        bounds = np.iinfo(kind.to_pandas_dtype())
        if not bounds.min <= value <= bounds.max:
            raise ValueError(f"expected an integer from {bounds.min} to {bounds.max}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError("expected a finite number") from None
    largest = float(np.finfo(kind.to_pandas_dtype()).max)  # float32 columns hold less than float64
    if not math.isfinite(number) or abs(number) > largest:
        raise ValueError(f"expected a finite number of at most {largest:g}")
    return number


def _drop_repeated_events(columns: dict[str, list[Any]]) -> None:
    """Keep one row per event_id, in place: repeated deliveries of one event count once,
    the earliest copy (by occurred_at, then event_type) as in batch validation
    (`features.validation._dedupe_events`), at the row of the first copy."""
    present = [event_id for event_id in columns["event_id"] if event_id is not None]
    if len(set(present)) == len(present):
        return
    first_row: dict[str, int] = {}
    keep: list[int] = []
    names = list(columns)
    for row, event_id in enumerate(columns["event_id"]):
        earlier = first_row.get(event_id) if event_id is not None else None
        if earlier is None:
            if event_id is not None:
                first_row[event_id] = row
            keep.append(row)
            continue
        # Compared as UTC instants: a request may mix zoned and zone-less (UTC) timestamps.
        if (_instant(columns["occurred_at"][row]), columns["event_type"][row]) < (
            _instant(columns["occurred_at"][earlier]),
            columns["event_type"][earlier],
        ):
            for name in names:
                columns[name][earlier] = columns[name][row]
    for name in names:
        values = columns[name]
        columns[name] = [values[row] for row in keep]


def _instant(value: datetime) -> datetime:
    """The UTC instant, or the earliest datetime when a zone offset carries it out of range
    (that copy is then kept, and the request refused with its field path)."""
    try:
        return utc_naive(value)
    except ValueError:
        return datetime.min


_EARLIEST = np.datetime64(datetime.min, "us")


def _holds_suspect_timestamps(tables: tuple[pa.Table, pa.Table, pa.Table]) -> bool:
    """Whether a created_at, ordered_at or occurred_at is beyond `latest_allowed()` or, in
    UTC, before year 1 (one vectorized pass over the Arrow columns, which hold zoned values
    converted to UTC; the columns are required, so they hold no nulls)."""
    limit = np.datetime64(latest_allowed(), "us")
    columns = (tables[0].column("created_at"), tables[1].column("ordered_at"), tables[2].column("occurred_at"))
    for column in columns:
        for chunk in column.chunks:
            if len(chunk):
                values = chunk.to_numpy()
                if values.max() > limit or values.min() < _EARLIEST:
                    return True
    return False


#: One request's column values for the customers, orders and events tables (`ScoringEngine._columns`).
_RequestColumns = tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]]]


@dataclass(frozen=True)
class PreparedBatch:
    """Requests of a micro-batch with their features computed (`ScoringEngine.prepare_batch`).

    outcomes: an `InputError` for each request that failed its checks, None for the others;
    features: per distinct as_of, the (request number, id prefix) pairs and their feature rows.
    """

    engine: ScoringEngine
    requests: list[ScoreRequest]
    outcomes: list[list[dict[str, Any]] | InputError | None]
    features: list[tuple[datetime, list[tuple[int, str]], pd.DataFrame]]


@dataclass
class ScoringEngine:
    models: ModelSet
    rules: TagRules
    builder: OnlineFeatureBuilder | FeatureProcess | FeatureProcesses
    snapshot: SnapshotView | None
    loaded_at: datetime = field(default_factory=now_utc)

    # ----------------------------------------------------------------------------------
    # Inline profiles
    # ----------------------------------------------------------------------------------

    def _tables(self, customers: list[CustomerIn], namespace: str = "") -> tuple[pa.Table, pa.Table, pa.Table]:
        """Arrow tables of one request's customers; `namespace` prefixes customer and order ids
        so several requests can share one feature query without their ids colliding.
        Raises `InputError` with every problem of the request."""
        columns, problems = self._columns(customers, namespace)
        tables = self._arrow_tables([columns])
        if _holds_suspect_timestamps(tables):
            problems += timestamp_problems(customers)
        if problems:
            raise InputError(problems)
        return tables

    def _arrow_tables(self, parts: list[_RequestColumns]) -> tuple[pa.Table, pa.Table, pa.Table]:
        """The customers, orders and events tables of several requests' columns, in order."""
        schemas = self.builder.schemas_
        tables = []
        for n, kind in enumerate(("customers", "orders", "events")):
            columns = parts[0][n] if len(parts) == 1 else {name: [v for part in parts for v in part[n][name]] for name in parts[0][n]}
            # Zoned timestamps become UTC as Arrow converts them (zone-less ones are UTC already).
            tables.append(pa.table(columns, schema=schemas[kind]))
        return tables[0], tables[1], tables[2]

    def _columns(self, customers: list[CustomerIn], namespace: str) -> tuple[_RequestColumns, list[tuple[tuple[str | int, ...], str]]]:
        """One request's column values (customers, orders, events) and its problems, except
        the timestamps' (`timestamp_problems`, checked on the Arrow tables).

        The columns are filled a customer's orders and events at a time (a request holds
        tens of them per customer); the rare duplicates take the slower paths.
        """
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: dict[str, int] = {}
        order_ids: set[str] = set()
        attributes = self.builder.attributes
        by_name = {a.name: a for a in attributes}
        # The batch-scored population's currency (runs from before it was recorded: none):
        # amounts are never converted, so an order in another currency would be misread.
        population_currency = self.snapshot.meta.get("currency") if self.snapshot is not None else None
        customer_cols: dict[str, list[Any]] = {"customer_id": [], "created_at": [], **{a.name: [] for a in attributes}}
        order_cols: dict[str, list[Any]] = {n: [] for n in ("order_id", "customer_id", "ordered_at", "amount", "status", "category", "currency")}
        event_cols: dict[str, list[Any]] = {n: [] for n in ("customer_id", "occurred_at", "event_type", "event_id", "channel")}
        for i, customer in enumerate(customers):
            cid = customer.customer_id
            if cid in seen:
                problems.append((("body", "customers", i, "customer_id"), f"duplicate customer_id (also customers[{seen[cid]}])"))
                continue
            seen[cid] = i
            key = namespace + cid
            customer_cols["customer_id"].append(key)
            customer_cols["created_at"].append(customer.created_at)
            values: dict[str, Any] = {}
            given_as: dict[str, str] = {}
            for name_in_request, raw in customer.attributes.items():
                name = _attribute_name(name_in_request)
                column = by_name.get(name)
                if column is None:
                    continue  # attributes no served model reads (and PII) are ignored
                if name in given_as:  # e.g. "industry" and "Industry": which one counts?
                    problems.append(
                        (("body", "customers", i, "attributes", name_in_request), f"the same attribute as {given_as[name]!r}")
                    )
                    continue
                given_as[name] = name_in_request
                try:
                    values[name] = _convert_attribute(column, raw)
                except ValueError as exc:
                    problems.append((("body", "customers", i, "attributes", name_in_request), str(exc)))
            for a in attributes:
                customer_cols[a.name].append(values.get(a.name))
            orders = customer.orders
            currencies = {o.currency for o in orders if o.currency}
            if len(currencies) > 1:
                problems.append((("body", "customers", i, "orders"), f"mixed currencies {sorted(currencies)}"))
            if population_currency is not None and currencies - {population_currency}:
                problems += [
                    (
                        ("body", "customers", i, "orders", j, "currency"),
                        f"currency {o.currency} differs from {population_currency}, the currency of the scored population "
                        "and the models (amounts are not converted)",
                    )
                    for j, o in enumerate(orders)
                    if o.currency and o.currency != population_currency
                ]
            ids = [o.order_id for o in orders]
            if len(set(ids)) == len(ids) and order_ids.isdisjoint(ids):
                order_ids.update(ids)
            else:
                kept = []
                for j, order in enumerate(orders):
                    if order.order_id in order_ids:
                        problems.append((("body", "customers", i, "orders", j, "order_id"), "duplicate order_id"))
                        continue
                    order_ids.add(order.order_id)
                    kept.append(order)
                orders, ids = kept, [o.order_id for o in kept]
            order_cols["order_id"] += [namespace + x for x in ids] if namespace else ids
            order_cols["customer_id"] += [key] * len(orders)
            order_cols["ordered_at"] += [o.ordered_at for o in orders]
            order_cols["amount"] += [o.amount for o in orders]
            order_cols["status"] += [o.status for o in orders]
            order_cols["category"] += [o.category for o in orders]
            order_cols["currency"] += [o.currency for o in orders]
            events = customer.events
            event_cols["customer_id"] += [key] * len(events)
            event_cols["occurred_at"] += [e.occurred_at for e in events]
            event_cols["event_type"] += [e.event_type for e in events]
            event_cols["event_id"] += [e.event_id for e in events]
            event_cols["channel"] += [e.channel for e in events]
        _drop_repeated_events(event_cols)
        return (customer_cols, order_cols, event_cols), problems

    def _previous_tags(self, customer_ids: list[str]) -> AlignedPreviousTags | None:
        return self.snapshot.previous_tags(customer_ids) if self.snapshot is not None else None

    def score_inline(self, request: ScoreRequest) -> list[dict[str, Any]]:
        """The output contract for each customer of one request (in request order)."""
        (outcome,) = self.score_inline_many([request])
        if isinstance(outcome, InputError):
            raise outcome
        return outcome

    def score_inline_many(self, requests: list[ScoreRequest]) -> list[list[dict[str, Any]] | InputError]:
        """Several requests with one feature query per distinct as_of (micro-batching).

        Each request's ids get a private prefix inside the query, so two requests may carry
        the same customer; a request with invalid content gets its own `InputError` and
        does not affect the others. Results equal scoring each request alone.
        """
        return self.finish_batch(self.prepare_batch(requests))

    def prepare_batch(self, requests: list[ScoreRequest]) -> PreparedBatch:
        """The first half of `score_inline_many`: checks, then the features (DuckDB).

        Split from `finish_batch` so the service can compute the next batch's features
        while this one is scored (DuckDB runs without the GIL).
        """
        outcomes: list[list[dict[str, Any]] | InputError | None] = [None] * len(requests)
        groups: dict[datetime, list[tuple[int, str, _RequestColumns]]] = {}
        for k, request in enumerate(requests):
            as_of = request.as_of if request.as_of is not None else default_as_of()
            namespace = f"{k}{_NAMESPACE_SEPARATOR}" if len(requests) > 1 else ""
            columns, problems = self._columns(request.customers, namespace)
            if problems:  # with its timestamps' problems too, if any
                try:
                    self._tables(request.customers, namespace)
                except InputError as exc:
                    outcomes[k] = exc
                continue
            groups.setdefault(as_of, []).append((k, namespace, columns))
        features = []
        for as_of, members in groups.items():
            # One Arrow table per kind for the whole batch: building them costs mostly per
            # table, and DuckDB's INSERT scan and the IPC stream to the feature process cost
            # per Arrow batch (~0.2 ms less per insert for 8 requests).
            tables = self._arrow_tables([columns for _, _, columns in members])
            if _holds_suspect_timestamps(tables):  # rare: find the requests, score the others
                for k, _, _ in members:
                    if problems := timestamp_problems(requests[k].customers):
                        outcomes[k] = InputError(problems)
                members = [member for member in members if outcomes[member[0]] is None]
                if not members:
                    continue
                tables = self._arrow_tables([columns for _, _, columns in members])
            features.append((as_of, [(k, namespace) for k, namespace, _ in members], self.builder.features(*tables, as_of)))
        return PreparedBatch(self, requests, outcomes, features)

    def finish_batch(self, batch: PreparedBatch) -> list[list[dict[str, Any]] | InputError]:
        """The second half of `score_inline_many`: scores, tags and the output contract."""
        if batch.engine is not self:
            raise CrmScoringError("a prepared batch is finished by the engine that prepared it")
        outcomes = list(batch.outcomes)
        for as_of, members, features in batch.features:
            results = self._score_features(features, as_of)
            for k, namespace in members:
                outcomes[k] = [
                    results.get(namespace + c.customer_id) or not_eligible_result(c.customer_id, self.models, as_of)
                    for c in batch.requests[k].customers
                ]
        return [o if o is not None else [] for o in outcomes]

    def _score_features(self, features: pd.DataFrame, as_of: datetime) -> dict[str, dict[str, Any]]:
        """Output-contract objects keyed by the (possibly prefixed) customer id."""
        if not len(features):
            return {}
        keys = features[KEY].astype(str).tolist()
        originals = [key.split(_NAMESPACE_SEPARATOR, 1)[-1] for key in keys]
        rows = score_records(
            features,
            self.models,
            self.rules,
            reference=self.snapshot.reference if self.snapshot else None,
            previous_tags=self._previous_tags(originals),
        )
        by_key: dict[str, dict[str, Any]] = {}
        for key, original, row in zip(keys, originals, rows, strict=True):
            row[KEY] = original
            by_key[key] = render_result(row, self.models, self.rules, as_of)
        return by_key

    # ----------------------------------------------------------------------------------
    # Snapshot lookups
    # ----------------------------------------------------------------------------------

    def score_by_ids(self, customer_ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
        if self.snapshot is None:
            return [], list(customer_ids)
        rows = self.snapshot.rows(list(dict.fromkeys(customer_ids)))
        rows = self._with_reasons(rows)
        as_of = self.snapshot.run.as_of
        found = {str(r[KEY]): render_result(r, self.models, self.rules, as_of, versions=self.snapshot.run.models) for r in rows.to_dict(orient="records")}
        results = [found[c] for c in dict.fromkeys(customer_ids) if c in found]
        missing = [c for c in dict.fromkeys(customer_ids) if c not in found]
        return results, missing

    def _with_reasons(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Reasons for snapshot rows, from the run's stored features (same models as the run)."""
        if self.snapshot is None or rows.empty or self.snapshot.features_path is None:
            return rows
        try:
            features = self.snapshot.rows(rows[KEY].astype(str).tolist(), path=self.snapshot.features_path)
        except SnapshotUnavailableError as exc:  # the scores are there; only the reasons are missing
            logger.warning("by-id answers without reasons: %s", exc)
            return rows
        features = features.set_index(KEY).loc[rows[KEY].astype(str)].reset_index()
        return add_reasons(rows.reset_index(drop=True), features, self.models)

    # ----------------------------------------------------------------------------------
    # Health
    # ----------------------------------------------------------------------------------

    def probe(self) -> None:
        """Score one synthetic buyer and one lead end to end; raises if anything fails."""
        as_of = default_as_of()
        request = ScoreRequest.model_validate(
            {
                "as_of": as_of.isoformat(),
                "customers": [
                    {
                        "customer_id": "__probe_buyer__",
                        "created_at": (as_of - timedelta(days=400)).isoformat(),
                        "orders": [
                            {"order_id": f"__probe_{k}__", "ordered_at": (as_of - timedelta(days=30 * k + 1)).isoformat(), "amount": 20.0 + k}
                            for k in range(3)
                        ],
                        "events": [{"occurred_at": (as_of - timedelta(days=2)).isoformat(), "event_type": "page_view"}],
                    },
                    {"customer_id": "__probe_lead__", "created_at": (as_of - timedelta(days=10)).isoformat()},
                ],
            }
        )
        results = self.score_inline(request)
        for result in results:
            for name, prediction in result["predictions"].items():
                if prediction is None:
                    continue
                values = [v for k, v in prediction.items() if k in ("probability", "clv") and v is not None]
                if not all(np.isfinite(values)):
                    raise CrmScoringError(f"probe prediction {name} is not finite: {values}")

    def close(self) -> None:
        """Release what the engine holds outside this process (the feature process, if any)."""
        close = getattr(self.builder, "close", None)
        if callable(close):
            close()

    def describe(self) -> dict[str, Any]:
        snapshot = None
        if self.snapshot is not None:
            run = self.snapshot.run
            snapshot = {"run_id": run.run_id, "as_of": json_timestamp(run.as_of), "rows": run.rows, "models": run.models}
        return {"models": [m.describe() for m in self.models.models.values()], "snapshot": snapshot}


def build_engine(
    store_dir: Path,
    tags_file: Path | None,
    training_settings: TrainingSettings | None = None,
    *,
    feature_params: FeatureParams = FeatureParams(),
    workers: int = 4,
    parallelism: int = 2,
    feature_process: bool = False,
    pin_threads: bool = True,
    prediction_threads: int | None = None,
) -> ScoringEngine:
    """Load the served batch run (`served_run`), its model versions and the rules, compile
    the features, run the probe.

    Raises `NoSnapshotError` before any batch run: the API's scores are relative to the
    latest batch-scored population; `SnapshotMismatchError` when the latest runs were scored
    with other tag rules; `ModelLoadError` when a version of the run cannot be loaded.

    feature_params: as for batch scoring (`Settings.feature_params`: the PII columns), with
    the latest snapshot's RFM score edges.
    feature_process: compute online features in a child process (`serving.feature_process`:
    what the API does) instead of in this one. workers / parallelism / pin_threads: table
    sets, DuckDB connections per table set and CPU pinning of the feature builder (see
    `serving.online`). prediction_threads: LightGBM threads (default: the count the models
    were trained with, one); results do not depend on it. For a micro-batch, most of the
    models' time is TreeSHAP for the reasons, which spreads over rows: 8 customers'
    finishing took 4.3 ms with one thread, 3.2 ms with two (two cores, medians of 12 runs).
    """
    store = ScoreStore(store_dir)
    runs = store.runs() if store.exists() else []
    if not runs:
        # Without the batch population an inline score would depend on the other customers
        # of its micro-batch (RFM scores are quintiles, percentiles are ranks).
        raise NoSnapshotError(
            f"no batch snapshot in {store_dir}: run `crm-scoring score --profile DIR --as-of DATE`, then reload; "
            "inline scores need the batch-scored population (RFM score edges, percentiles)"
        )
    rules = load_tag_rules(tags_file)
    run = served_run(runs, rules)
    _warn_if_not_the_champions(run, training_settings)
    # The run's versions, not the champion alias: a promotion reaches the API through a
    # batch run (then a reload), so by-id and inline answers always come from one model
    # and percentiles rank its scores among its own, and a restart between a promotion and
    # the next batch run still serves.
    models = load_model_set(training_settings, threads=prediction_threads, versions=run.models)
    for line in models.warnings:
        logger.warning("%s", line)
    check_attribute_inputs(models, feature_params.attributes)
    snapshot = load_snapshot_view(store, run)
    attributes = attribute_columns_for(models.input_types())
    params = online_feature_params(snapshot.meta, feature_params)
    builder: OnlineFeatureBuilder | FeatureProcess | FeatureProcesses
    if feature_process:
        config = FeatureProcessConfig(attributes, params, workers=1, parallelism=parallelism, pin_threads=pin_threads)
        builder = FeatureProcesses(config).start() if parallelism > 1 else FeatureProcess(config).start()
    else:
        builder = OnlineFeatureBuilder(attributes, params, workers=workers, parallelism=parallelism, pin_threads=pin_threads).prepare()
    engine = ScoringEngine(models, rules, builder, snapshot)
    try:
        engine.probe()
    except BaseException:
        engine.close()
        raise
    return engine
