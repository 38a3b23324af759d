"""Online features in child processes: `OnlineFeatureBuilder` behind a pipe, one process per statement group.

Why a process: DuckDB's Python client takes the GIL back between the tasks of a query
(to check for Ctrl-C), dozens of times per feature query. In the API process the GIL is
busy with requests and scoring, and each of those hand-overs waits its turn: measured
here, a feature query that takes 17 ms alone took 80 ms next to one busy Python thread,
and 28 ms when it ran in a child process instead. So the service computes features in a
child (its own interpreter, nothing else running there) while its own threads parse
requests and score the previous batch.

The same holds between two DuckDB connections of one process, so the statements are
split into groups (`FeatureProcesses`) and each group runs in a child of its own.

A child runs this module (`python -m serving.feature_process --in FD --out FD`) with
the same `OnlineFeatureBuilder` the in-process engine uses, so the results are the same
(tested). Messages are pickled tuples over a private pipe (`multiprocessing.connection`);
Arrow tables go inside them as Arrow IPC streams (~0.1 ms for a batch's tables; pickling
a table costs far more, and a sliced table pickles its parent's whole buffers):

* parent -> child: the configuration first, then ("features", as_of, tables) or ("stop",);
* child -> parent: ("ready", result_schema, statement groups, tables read) or ("failed", message) once,
  then per request ("table", table) or ("error", message).

A child is sent only the tables its statements read (`reads_`): the events child gets no
orders, the orders child no events.

A child that dies or stops answering is replaced on the next call (which waits for it);
the call that saw it fail raises `OnlineFeatureError`.

The child starts with larger allocator caches (`ALLOCATOR_ENVIRONMENT`): on every
execution DuckDB allocates a 2,048-value vector for each column of each intermediate
chunk (hundreds for the wide engagement statement) and frees them at the end. By
default jemalloc's thread cache keeps 20 blocks of a size and glibc's 7, and the rest
goes back to the arenas and is page-faulted back in on the next request. Measured on an
8-customer batch (median of 5 alternating runs): the five statements 14.3 -> 9.0 ms
together, engagement 6.8 -> 3.6 ms.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import pandas as pd
import pyarrow as pa

from features.pipeline import FeatureParams
from serving.online import AttributeColumn, OnlineFeatureError, feature_frame, put_together, template_schemas

logger = logging.getLogger("crm_scoring.serving")

#: Environment of the child on top of the parent's (a variable the parent already has wins,
#: so an operator can change or empty them). DuckDB's bundled jemalloc reads
#: DUCKDB_JE_MALLOC_CONF: up to 1,024 cached blocks per large size class, and no cache
#: collection every 64 KB of allocation. GLIBC_TUNABLES: up to 2,000 cached chunks per
#: small size. Both are ignored where they do not apply (another allocator or libc).
ALLOCATOR_ENVIRONMENT = {
    "DUCKDB_JE_MALLOC_CONF": "tcache_nslots_large:1024,tcache_gc_incr_bytes:1073741824",
    "GLIBC_TUNABLES": "glibc.malloc.tcache_count=2000",
}


class FeatureProcessClosedError(OnlineFeatureError):
    """The feature process was closed on purpose (its engine was replaced by a reload)."""


@dataclass(frozen=True)
class FeatureProcessConfig:
    """What the child needs to build its `OnlineFeatureBuilder`."""

    attributes: tuple[AttributeColumn, ...]
    params: FeatureParams
    workers: int = 1
    parallelism: int = 2
    as_of_cache_size: int = 8
    pin_threads: bool = True
    #: The statement groups (None: the child splits the statements into `parallelism`
    #: groups itself) and the one this child runs (None: all, side by side on threads).
    groups: tuple[tuple[int, ...], ...] | None = None
    run_group: int | None = None


class _RemoteBuilder:
    """The `OnlineFeatureBuilder` interface (`attributes`, `params`, `schemas_`, `feature_table`,
    `features`) of features computed in child processes. `start_timeout` bounds a child's
    start-up (compile + plan, a few seconds), `call_timeout` one feature query."""

    def __init__(self, config: FeatureProcessConfig, start_timeout: float = 120.0, call_timeout: float = 60.0) -> None:
        self.config = config
        self.attributes = config.attributes
        self.params = config.params
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.schemas_ = template_schemas(config.attributes)
        self._lock = threading.Lock()
        self._closed = False

    def feature_table(self, customers: pa.Table, orders: pa.Table, events: pa.Table, as_of: datetime) -> pa.Table:
        raise NotImplementedError

    def features(self, customers: pa.Table, orders: pa.Table, events: pa.Table, as_of: datetime) -> pd.DataFrame:
        """One row per customer created before as_of, ordered by customer_id (as in batch)."""
        return feature_frame(self.feature_table(customers, orders, events, as_of))


class FeatureProcess(_RemoteBuilder):
    """Features computed in one child process.

    Thread-safe: calls take turns on the one pipe (the service computes one batch's
    features at a time anyway).
    """

    def __init__(self, config: FeatureProcessConfig, start_timeout: float = 120.0, call_timeout: float = 60.0) -> None:
        super().__init__(config, start_timeout, call_timeout)
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: Connection | None = None
        self._answers: Connection | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> FeatureProcess:
        """Start the child and wait until its statements are prepared; raises `OnlineFeatureError` if it cannot."""
        with self._lock:
            self._spawn()
        return self

    def _spawn(self) -> None:
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        command = [sys.executable, "-m", "serving.feature_process", "--in", str(to_child_read), "--out", str(from_child_write)]
        try:
            process = subprocess.Popen(
                command,
                pass_fds=(to_child_read, from_child_write),
                stdin=subprocess.DEVNULL,
                env=child_environment(os.environ),
            )
        finally:
            os.close(to_child_read)
            os.close(from_child_write)
        self._process = process
        self._requests = Connection(to_child_write, readable=False)
        self._answers = Connection(from_child_read, writable=False)
        try:
            self._requests.send(self.config)
            answer = self._receive(self.start_timeout, "start")
        except OnlineFeatureError:
            self._stop_child()
            raise
        if answer[0] != "ready":
            self._stop_child()
            raise OnlineFeatureError(f"the feature process could not start: {answer[1]}")
        self.result_schema_: pa.Schema = answer[1]
        self.groups_: tuple[tuple[int, ...], ...] = answer[2]
        self.reads_: frozenset[str] = answer[3]
        logger.info("online features in child process %d", process.pid)

    def _receive(self, timeout: float, what: str) -> tuple[Any, ...]:
        assert self._answers is not None and self._process is not None
        try:
            if not self._answers.poll(timeout):
                raise OnlineFeatureError(f"the feature process did not answer ({what}) within {timeout:g} s")
            return self._answers.recv()
        except (EOFError, OSError) as exc:
            code = self._process.poll()
            raise OnlineFeatureError(f"the feature process stopped ({what}; exit code {code})") from exc

    def _stop_child(self) -> None:
        process, self._process = self._process, None
        for connection in (self._requests, self._answers):
            if connection is not None:
                connection.close()
        self._requests = self._answers = None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the child (after the call in progress, if any). Later calls raise `OnlineFeatureError`."""
        with self._lock:
            self._closed = True
            if self._requests is not None and self._process is not None and self._process.poll() is None:
                try:
                    self._requests.send(("stop",))
                    self._process.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._stop_child()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ---- the builder's interface -------------------------------------------------------

    def feature_table(self, customers: pa.Table, orders: pa.Table, events: pa.Table, as_of: datetime) -> pa.Table:
        """The feature table as Arrow, typed as the full feature expression (computed in the child;
        with `FeatureProcessConfig.run_group`, that group's columns only)."""
        tables = {"customers": customers, "orders": orders, "events": events}
        streams = {key: _to_ipc(tables[key]) for key in self.reads_}
        with self._lock:
            self._ask(as_of, streams)
            return self._answer()

    def _ask(self, as_of: datetime, streams: dict[str, bytes]) -> None:
        """Send a request (the caller holds the lock); starts a new child if this one is gone."""
        if self._closed:
            raise FeatureProcessClosedError("the feature process was closed (the models were reloaded)")
        if self._process is None or self._process.poll() is not None:
            logger.warning("the feature process is not running: starting a new one")
            self._stop_child()
            self._spawn()
        assert self._requests is not None
        try:
            self._requests.send(("features", as_of, streams))  # the child types the tables
        except OSError as exc:
            self._stop_child()  # replaced on the next call
            raise OnlineFeatureError(f"the feature process stopped: {exc}") from exc

    def _answer(self) -> pa.Table:
        """The answer to the request sent by `_ask` (the caller holds the lock)."""
        try:
            answer = self._receive(self.call_timeout, "features")
        except OnlineFeatureError:
            self._stop_child()  # replaced on the next call
            raise
        if answer[0] != "table":
            raise OnlineFeatureError(f"online features failed: {answer[1]}")
        return _from_ipc(answer[1])


class FeatureProcesses(_RemoteBuilder):
    """The builder interface over one feature process per statement group.

    DuckDB connections of one process do not run side by side well: measured on this
    machine (8 customers, all five statements per call), one caller took 19.7 ms per call,
    two threads at once 24.2 and 28.0 ms each (38 in a noisier try), two processes at once
    18.0 and 18.8 ms each.
    So the statements are split into `parallelism` groups of about equal cost (by the
    first child, which times them), each group runs in a process of its own, and their
    columns are put together here (`serving.online.put_together`).
    """

    def __init__(self, config: FeatureProcessConfig, start_timeout: float = 120.0, call_timeout: float = 60.0) -> None:
        super().__init__(config, start_timeout, call_timeout)
        self._children: list[FeatureProcess] = []

    def start(self) -> FeatureProcesses:
        """Start the children and wait until each has prepared its statements; raises `OnlineFeatureError` if one cannot."""
        first = FeatureProcess(replace(self.config, groups=None, run_group=0), self.start_timeout, self.call_timeout)
        first.start()
        children = [first]
        try:
            for number in range(1, len(first.groups_)):
                config = replace(self.config, groups=first.groups_, run_group=number)
                children.append(FeatureProcess(config, self.start_timeout, self.call_timeout).start())
        except BaseException:
            for child in children:
                child.close()
            raise
        self._children = children
        self.result_schema_: pa.Schema = first.result_schema_
        self.groups_ = first.groups_
        return self

    def close(self) -> None:
        """Stop every child (after the call in progress, if any). Later calls raise `FeatureProcessClosedError`."""
        with self._lock:
            self._closed = True
            for child in self._children:
                child.close()

    @property
    def pids(self) -> list[int | None]:
        return [child.pid for child in self._children]

    @property
    def pid(self) -> int | None:
        return self._children[0].pid if self._children else None

    def feature_table(self, customers: pa.Table, orders: pa.Table, events: pa.Table, as_of: datetime) -> pa.Table:
        """The feature table as Arrow, typed as the full feature expression."""
        tables = {"customers": customers, "orders": orders, "events": events}
        encoded: dict[str, bytes] = {}
        parts: list[pa.Table] = []
        failure: OnlineFeatureError | None = None
        with self._lock:
            asked = []
            for child in self._children:
                with child._lock:
                    try:
                        for key in child.reads_ - encoded.keys():
                            encoded[key] = _to_ipc(tables[key])
                        child._ask(as_of, {key: encoded[key] for key in child.reads_})
                        asked.append(child)
                    except OnlineFeatureError as exc:
                        failure = failure or exc
            # Every child that was asked is answered before anything is raised: an unread
            # answer would be taken for the next request's.
            for child in asked:
                with child._lock:
                    try:
                        parts.append(child._answer())
                    except OnlineFeatureError as exc:
                        failure = failure or exc
        if failure is not None:
            raise failure
        return put_together(parts, self.result_schema_)


def _pin_process(number: int) -> None:
    """Run this process on the `number`-th CPU it may use (round robin), so the processes of
    the statement groups run on different cores (see `serving.online._CpuPinner`)."""
    if not hasattr(os, "sched_getaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[number % len(cpus)]})


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The feature process's environment: the parent's, plus `ALLOCATOR_ENVIRONMENT` where the parent sets nothing."""
    return {**ALLOCATOR_ENVIRONMENT, **parent}


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


# --------------------------------------------------------------------------------------
# The child
# --------------------------------------------------------------------------------------


def _serve(requests: Connection, answers: Connection) -> None:
    from serving.online import OnlineFeatureBuilder

    config: FeatureProcessConfig = requests.recv()
    try:
        builder = OnlineFeatureBuilder(
            config.attributes,
            config.params,
            workers=config.workers,
            as_of_cache_size=config.as_of_cache_size,
            parallelism=config.parallelism,
            pin_threads=config.pin_threads,
            groups=config.groups,
            run_group=config.run_group,
        ).prepare()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        answers.send(("failed", f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return
    # Ibis and the compiled expressions stay for the process's life: keep collections off them.
    gc.freeze()
    if config.run_group is not None and config.pin_threads:
        _pin_process(config.run_group)
    answers.send(("ready", builder.result_schema_, builder.groups_, builder.reads_))
    while True:
        try:
            message = requests.recv()
        except EOFError:
            return  # the parent is gone
        if message[0] == "stop":
            return
        _, as_of, streams = message
        try:
            # A table this child's statements do not read is not sent: it stays empty.
            tables = {
                name: _from_ipc(streams[name]) if name in streams else schema.empty_table()
                for name, schema in builder.schemas_.items()
            }
            table = builder.feature_table(tables["customers"], tables["orders"], tables["events"], as_of)
        except Exception as exc:  # noqa: BLE001 - one failed query is the caller's error, not the child's end
            answers.send(("error", f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        answers.send(("table", _to_ipc(table)))
        builder.clear()  # off the next request's path: the parent scores and answers meanwhile


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.feature_process", description=__doc__.split("\n\n")[0])
    parser.add_argument("--in", dest="read_fd", type=int, required=True, help="File descriptor of requests.")
    parser.add_argument("--out", dest="write_fd", type=int, required=True, help="File descriptor of answers.")
    args = parser.parse_args(argv)
    _serve(Connection(args.read_fd, writable=False), Connection(args.write_fd, readable=False))


if __name__ == "__main__":
    main()
