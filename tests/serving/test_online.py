"""Online features (`serving.online`, `serving.feature_process`) equal the batch's feature rows.

The batch run at AS_OF keeps its feature table (`<run_id>.features.parquet`, computed by
`features.pipeline.build_features` over the whole profile); online features for the same
customers at the same as_of must match it column for column. The statements are prepared
once and then reused while the template tables' rows change, so a plan that depended on
the rows it was prepared with would show up here as wrong or missing rows.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.errors import CrmScoringError
from serving.batch import features_path, online_feature_params, read_meta
from serving.engine import ScoringEngine, build_engine
from serving.feature_process import (
    ALLOCATOR_ENVIRONMENT,
    FeatureProcess,
    FeatureProcessClosedError,
    FeatureProcessConfig,
    FeatureProcesses,
)
from serving.inline import inline_customers
from serving.online import (
    TABLE_NAMES,
    OnlineFeatureBuilder,
    OnlineFeatureError,
    _partition,
    cast_columns,
    combine_family_tables,
    put_together,
)
from serving.schemas import ScoreRequest
from serving.store import ScoreStore
from tests.serving.conftest import AS_OF, TrainedProject
from training.config import TrainingSettings

pytestmark = pytest.mark.slow

AS_OF_TEXT = f"{AS_OF}T00:00:00Z"


@pytest.fixture(scope="module")
def engine(trained_project: TrainedProject) -> ScoringEngine:
    settings = TrainingSettings(project_dir=trained_project.root, tracking_uri=trained_project.env["CRMSCORE_TRACKING_URI"])
    return build_engine(trained_project.root / "scores", None, settings, workers=1)


@pytest.fixture(scope="module")
def batch_features(trained_project: TrainedProject) -> pd.DataFrame:
    store = ScoreStore(trained_project.root / "scores")
    latest = store.latest_run()
    assert latest is not None
    return pd.read_parquet(features_path(store, latest.run_id)).set_index("customer_id")


@pytest.fixture(scope="module")
def kinds(batch_features: pd.DataFrame) -> dict[str, list[str]]:
    """Customer ids of each shape: leads without activity, leads with events, buyers."""
    no_orders = batch_features.orders_count.fillna(0) == 0
    quiet = batch_features.get("events_count_90d", pd.Series(0, index=batch_features.index)).fillna(0) == 0
    return {
        "quiet lead": list(batch_features.index[no_orders & quiet][:3]),
        "active lead": list(batch_features.index[no_orders & ~quiet][:3]),
        "buyer": list(batch_features.index[~no_orders][:6]),
    }


def _tables(engine: ScoringEngine, trained_project: TrainedProject, ids: list[str]) -> tuple[pa.Table, pa.Table, pa.Table]:
    request = ScoreRequest.model_validate({"as_of": AS_OF_TEXT, "customers": inline_customers(trained_project.profile, ids)})
    return engine._tables(request.customers)


def _assert_rows_equal(online: pd.DataFrame, batch: pd.DataFrame, ids: list[str]) -> None:
    online = online.set_index("customer_id")
    assert sorted(online.index) == sorted(ids)
    expected = batch.loc[online.index, online.columns]
    for column in online.columns:
        got, want = online[column], expected[column]
        if pd.api.types.is_float_dtype(want.dtype) or pd.api.types.is_float_dtype(got.dtype):
            np.testing.assert_allclose(got.to_numpy(dtype=float), want.to_numpy(dtype=float), rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=column)
        else:
            assert got.astype(object).where(got.notna(), None).tolist() == want.astype(object).where(want.notna(), None).tolist(), column


def test_prepared_statements_hold_while_the_rows_change(engine, trained_project, batch_features, kinds) -> None:
    builder = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1).prepare()
    as_of = datetime.fromisoformat(AS_OF)
    # One shape after another on the same prepared statements: empty first (the plans are
    # made on empty tables), then single customers of each kind, then a mixed batch.
    sequence = [[], *([cid] for ids in kinds.values() for cid in ids), [i for ids in kinds.values() for i in ids]]
    for ids in sequence:
        if not ids:
            empty = builder.features(*(schema.empty_table() for schema in builder.schemas_.values()), as_of)
            # Same columns (the attributes come in the served models' order, the batch in the profile's).
            assert empty.empty and sorted(empty.columns) == sorted(batch_features.reset_index().columns)
            continue
        _assert_rows_equal(builder.features(*_tables(engine, trained_project, ids), as_of), batch_features, ids)
    (worker,) = [builder._pool.get()]
    assert all(len(connection.prepared) == 1 for connection in worker.connections)  # planned once, reused


def test_clear_empties_the_tables_between_calls(engine, trained_project, batch_features, kinds, caplog) -> None:
    builder = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1).prepare()
    as_of = datetime.fromisoformat(AS_OF)
    worker = builder._pool.get()
    builder._pool.put(worker)

    def rows() -> int:
        return sum(worker.loader.execute(f'SELECT count(*) FROM "{worker.schema}"."{name}"').fetchone()[0] for name in TABLE_NAMES.values())

    def stored_rows() -> int:
        # Rows held in the tables' storage, deleted or not (DELETE only marks them).
        sizes = worker.loader.execute("SELECT estimated_size FROM duckdb_tables() WHERE schema_name = ?", [worker.schema]).fetchall()
        return sum(size for (size,) in sizes)

    first, second = kinds["buyer"][:2], kinds["active lead"][:1]
    for _ in range(3):
        builder.features(*_tables(engine, trained_project, first), as_of)
    assert rows() > 0  # kept until the next call or clear()
    builder.clear()
    assert rows() == 0
    assert stored_rows() == 0  # the deleted rows were vacuumed, not left for every scan to skip
    builder.clear()  # nothing to clear: a no-op
    _assert_rows_equal(builder.features(*_tables(engine, trained_project, second), as_of), batch_features, second)
    # Without a clear in between, the next call still sees only its own rows.
    _assert_rows_equal(builder.features(*_tables(engine, trained_project, first), as_of), batch_features, first)

    # A failing checkpoint costs only the vacuum: the rows are gone, it is logged, calls go on.
    class FailingCheckpoint:
        def __init__(self, connection: Any) -> None:
            self.connection = connection

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "CHECKPOINT":
                raise duckdb.IOException("checkpoint refused")
            return self.connection.execute(sql, *args)

    real_loader = worker.loader
    worker.loader = FailingCheckpoint(real_loader)
    with caplog.at_level(logging.WARNING, logger="crm_scoring.serving"):
        builder.clear()
    worker.loader = real_loader
    assert rows() == 0 and stored_rows() > 0
    assert "not vacuumed" in caplog.text and "checkpoint refused" in caplog.text
    _assert_rows_equal(builder.features(*_tables(engine, trained_project, second), as_of), batch_features, second)


def test_every_family_statement_runs_side_by_side_and_in_sequence(engine, trained_project, batch_features, kinds) -> None:
    ids = [i for group in kinds.values() for i in group]
    as_of = datetime.fromisoformat(AS_OF)
    for parallelism in (1, 2, 5):
        builder = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1, parallelism=parallelism).prepare()
        assert len(builder.groups_) == min(parallelism, len(builder.statements_))
        assert sorted(i for group in builder.groups_ for i in group) == list(range(len(builder.statements_)))
        _assert_rows_equal(builder.features(*_tables(engine, trained_project, ids), as_of), batch_features, ids)
        worker = builder._pool.get()
        owned = [key for connection in worker.connections for key in connection.own_tables]
        # Every table is loaded exactly once: by the worker, or by the one connection that reads it.
        assert sorted(worker.shared_tables + owned) == sorted(TABLE_NAMES)
        if parallelism == 2:  # the default: orders and events each loaded beside the other's statements
            assert worker.shared_tables == ["customers"] and sorted(owned) == ["events", "orders"]


def test_a_failed_shared_load_fails_the_call_without_stranding_the_other_connections(engine, trained_project, batch_features, kinds, monkeypatch) -> None:
    import concurrent.futures

    import serving.online as online

    builder = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1, parallelism=2).prepare()
    worker = builder._pool.get()
    builder._pool.put(worker)
    assert worker.shared_tables == ["customers"] and 0 <= worker.lead < len(worker.connections)
    as_of = datetime.fromisoformat(AS_OF)
    ids = kinds["buyer"][:2]
    real_insert = online._insert

    def refuse_customers(con: Any, key: str, rows: Any, table: pa.Table) -> None:
        if key == "customers":
            raise duckdb.IOException("disk says no")
        real_insert(con, key, rows, table)

    monkeypatch.setattr(online, "_insert", refuse_customers)
    caller = concurrent.futures.ThreadPoolExecutor(1)
    call = caller.submit(builder.features, *_tables(engine, trained_project, ids), as_of)
    try:
        with pytest.raises((duckdb.IOException, OnlineFeatureError), match="disk says no"):
            call.result(timeout=60)  # the connections that waited for the customers gave up too
    finally:
        caller.shutdown(wait=False)  # a stranded call must fail the test, not hang it
    monkeypatch.setattr(online, "_insert", real_insert)
    _assert_rows_equal(builder.features(*_tables(engine, trained_project, ids), as_of), batch_features, ids)


def test_a_failed_group_is_reported_only_once_every_group_is_done(engine, trained_project, kinds, monkeypatch) -> None:
    # The worker goes back to the pool when the call ends: no helper may still be using its connections.
    import serving.online as online

    builder = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1, parallelism=2).prepare()
    worker = builder._pool.get()
    builder._pool.put(worker)
    failing, slow = worker.connections
    finished: list[bool] = []
    real_load, real_execute = online._Connection.load, online._Connection.execute

    def load(self: Any, tables: dict[str, pa.Table]) -> None:
        if self is failing:
            raise duckdb.IOException("table load refused")
        real_load(self, tables)

    def execute(self: Any, as_of: datetime) -> Any:
        result = real_execute(self, as_of)
        if self is slow:
            time.sleep(0.5)
            finished.append(True)
        return result

    monkeypatch.setattr(online._Connection, "load", load)
    monkeypatch.setattr(online._Connection, "execute", execute)
    with pytest.raises(duckdb.IOException, match="table load refused"):
        builder.features(*_tables(engine, trained_project, kinds["buyer"][:2]), datetime.fromisoformat(AS_OF))
    assert finished == [True]


def test_partition_keeps_the_statements_of_a_table_together() -> None:
    reads = [frozenset(r) for r in ({"c", "o"}, {"c", "o"}, {"c", "e"}, {"c", "e"}, {"c"})]
    costs = [3.2, 4.0, 6.3, 0.8, 0.3]
    assert set(_partition(costs, 2, reads)) == {(0, 1), (2, 3, 4)}
    # Costs alone would put the funnel (3) beside rfm and transactions (then both read the events).
    assert set(_partition([2.2, 4.0, 6.3, 0.8, 0.3], 2)) == {(0, 1, 3), (2, 4)}
    assert set(_partition([2.2, 4.0, 6.3, 0.8, 0.3], 2, reads)) == {(0, 1, 4), (2, 3)}
    # Fewer such units than groups: split by statement.
    assert len(_partition(costs, 5, reads)) == 5


def test_cast_columns_converts_only_what_differs() -> None:
    table = pa.table({"customer_id": ["a"], "n": pa.array([2], pa.decimal128(38, 0)), "x": [1.5]})
    schema = pa.schema([("customer_id", pa.string()), ("n", pa.int64()), ("x", pa.float64())])
    assert cast_columns(table, schema).equals(table.cast(schema))
    typed = table.cast(schema)
    assert cast_columns(typed, schema) is typed  # nothing to convert: the table itself
    with pytest.raises(OnlineFeatureError, match="columns differ"):
        cast_columns(table.select(["customer_id", "x", "n"]), schema)


def test_old_as_of_statements_are_evicted(engine, trained_project) -> None:
    builder = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1, as_of_cache_size=2).prepare()
    tables = [schema.empty_table() for schema in builder.schemas_.values()]  # no rows: the statements still run
    for day in (1, 2, 3, 1):
        builder.features(*tables, datetime(2025, 6, day))
    worker = builder._pool.get()
    assert all(len(connection.prepared) == 2 for connection in worker.connections)


def test_family_tables_are_put_together_by_customer() -> None:
    first = pa.table({"customer_id": ["b", "a"], "x": [2, 1]})
    other = pa.table({"customer_id": ["a", "c"], "y": [3, 4]})
    with pytest.raises(OnlineFeatureError, match="different customers"):
        combine_family_tables([first, other])
    shared = pa.table({"customer_id": ["a", "b"], "x": [9, 9], "z": [5, 6]})
    combined = combine_family_tables([first, shared])
    assert combined.column_names == ["customer_id", "x", "z"]
    assert combined.to_pydict() == {"customer_id": ["a", "b"], "x": [1, 2], "z": [5, 6]}


def test_the_feature_process_equals_the_in_process_builder(engine, trained_project, kinds, monkeypatch) -> None:
    ids = [i for group in kinds.values() for i in group]
    tables = _tables(engine, trained_project, ids)
    as_of = datetime.fromisoformat(AS_OF)
    # The child gets the allocator settings the parent does not set itself; the parent's own win.
    monkeypatch.delenv("DUCKDB_JE_MALLOC_CONF", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")
    process = FeatureProcess(FeatureProcessConfig(engine.builder.attributes, engine.builder.params)).start()
    try:
        environ = Path(f"/proc/{process.pid}/environ")
        if environ.exists():
            variables = dict(item.split("=", 1) for item in environ.read_text().split("\0") if "=" in item)
            assert variables["DUCKDB_JE_MALLOC_CONF"] == ALLOCATOR_ENVIRONMENT["DUCKDB_JE_MALLOC_CONF"]
            assert variables["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=7"
        remote = process.features(*tables, as_of)
        pd.testing.assert_frame_equal(remote, engine.builder.features(*tables, as_of))
    finally:
        process.close()
    with pytest.raises(FeatureProcessClosedError):
        process.features(*tables, as_of)


def test_a_dead_feature_process_is_replaced(engine, trained_project, kinds) -> None:
    tables = _tables(engine, trained_project, kinds["buyer"][:2])
    as_of = datetime.fromisoformat(AS_OF)
    process = FeatureProcess(FeatureProcessConfig(engine.builder.attributes, engine.builder.params)).start()
    try:
        expected = process.features(*tables, as_of)
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process._process is not None and process._process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pd.testing.assert_frame_equal(process.features(*tables, as_of), expected)  # a new child answered
        assert process.pid not in (None, first)
    finally:
        process.close()


def test_one_process_per_statement_group_equals_the_in_process_builder(engine, trained_project, kinds) -> None:
    ids = [i for group in kinds.values() for i in group]
    tables = _tables(engine, trained_project, ids)
    as_of = datetime.fromisoformat(AS_OF)
    processes = FeatureProcesses(FeatureProcessConfig(engine.builder.attributes, engine.builder.params, parallelism=2)).start()
    try:
        groups = processes.groups_
        assert len(groups) == 2 and sorted(i for group in groups for i in group) == list(range(len(engine.builder.statements_)))
        assert len(set(processes.pids)) == 2 and None not in processes.pids
        # Each child is sent only the tables its statements read, and every table goes to one.
        statements = engine.builder.statements_
        for child, group in zip(processes._children, groups, strict=True):
            assert child.reads_ == frozenset().union(*(statements[i].tables for i in group))
        assert frozenset().union(*(child.reads_ for child in processes._children)) == {"customers", "orders", "events"}
        assert all(len(child.reads_) < 3 for child in processes._children)  # the orders and the events split here
        expected = engine.builder.feature_table(*tables, as_of)
        remote = processes.feature_table(*tables, as_of)
        assert remote.schema.equals(expected.schema) and remote.equals(expected)
        pd.testing.assert_frame_equal(processes.features(*tables, as_of), engine.builder.features(*tables, as_of))
        # A group's child dies: the call that sees it may fail (every other child is still
        # answered, so the pipes stay in step); the next one has a new child and the same rows.
        second = processes.pids[1]
        assert second is not None
        os.kill(second, signal.SIGKILL)
        try:
            processes.feature_table(*tables, as_of)
        except OnlineFeatureError:
            pass
        assert processes.feature_table(*tables, as_of).equals(expected)
        assert processes.pids[1] not in (None, second)
    finally:
        processes.close()
    with pytest.raises(FeatureProcessClosedError):
        processes.feature_table(*tables, as_of)


def test_a_builder_runs_only_its_statement_group(engine, trained_project, kinds) -> None:
    tables = _tables(engine, trained_project, kinds["buyer"][:3])
    as_of = datetime.fromisoformat(AS_OF)
    groups = ((0, 2), (1, 3, 4))  # not contiguous: the columns are put back in family order
    builders = [
        OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1, groups=groups, run_group=g).prepare()
        for g in range(2)
    ]
    parts = [builder.feature_table(*tables, as_of) for builder in builders]
    statements = engine.builder.statements_
    for part, group in zip(parts, groups, strict=True):
        assert part.column_names == ["customer_id", *(c for i in group for c in statements[i].columns)]
    assert put_together(parts, engine.builder.result_schema_).equals(engine.builder.feature_table(*tables, as_of))
    with pytest.raises(OnlineFeatureError, match="do not cover"):
        OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, groups=((0, 1),), run_group=0).prepare()


def test_the_engine_through_the_feature_process_scores_as_in_process(engine, trained_project, kinds) -> None:
    settings = TrainingSettings(project_dir=trained_project.root, tracking_uri=trained_project.env["CRMSCORE_TRACKING_URI"])
    remote = build_engine(trained_project.root / "scores", None, settings, feature_process=True)
    try:
        ids = [i for group in kinds.values() for i in group]
        request = ScoreRequest.model_validate({"as_of": AS_OF_TEXT, "customers": inline_customers(trained_project.profile, ids)})
        assert remote.score_inline(request) == engine.score_inline(request)
    finally:
        remote.close()
    assert isinstance(FeatureProcessClosedError("x"), CrmScoringError)


def test_online_params_come_from_the_snapshot(trained_project) -> None:
    store = ScoreStore(trained_project.root / "scores")
    latest = store.latest_run()
    assert latest is not None
    assert online_feature_params(read_meta(store, latest.run_id)) != online_feature_params({})  # RFM edges of the population


def test_helper_threads_are_pinned_to_distinct_cpus_unless_turned_off(engine) -> None:
    import os
    import threading

    def cpus_of_helpers(builder: OnlineFeatureBuilder) -> list[frozenset[int]]:
        assert builder._helpers is not None
        barrier = threading.Barrier(2)  # both helpers busy at once: each task on its own thread

        def affinity() -> frozenset[int]:
            barrier.wait(timeout=10)
            return frozenset(os.sched_getaffinity(0))

        return [f.result() for f in [builder._helpers.submit(affinity) for _ in range(2)]]

    allowed = frozenset(os.sched_getaffinity(0))
    pinned = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1, parallelism=2).prepare()
    floating = OnlineFeatureBuilder(engine.builder.attributes, engine.builder.params, workers=1, parallelism=2, pin_threads=False).prepare()
    if len(allowed) >= 2:
        first, second = cpus_of_helpers(pinned)
        assert len(first) == len(second) == 1 and first != second
    assert cpus_of_helpers(floating) == [allowed, allowed]
