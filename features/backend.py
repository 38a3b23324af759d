"""The embedded feature backend: an in-process DuckDB reached through Ibis."""

from __future__ import annotations

import ibis
from ibis.backends import BaseBackend

from features.settings import FeatureSettings


def connect(settings: FeatureSettings | None = None, database: str = ":memory:") -> BaseBackend:
    """A DuckDB connection that reads and writes naive timestamps as UTC.

    `settings` sets DuckDB's threads and memory limit; without it DuckDB's own defaults
    apply (the environment is read only where settings are constructed, at the edge).
    """
    con = ibis.duckdb.connect(database)
    # All timestamps are UTC: casting TIMESTAMPTZ -> TIMESTAMP must not shift them.
    con.raw_sql("SET TimeZone = 'UTC'")
    # The CLI shows its own progress; DuckDB's bar would interleave with it.
    con.raw_sql("SET enable_progress_bar = false")
    if settings is not None and settings.duckdb_threads:
        con.raw_sql(f"SET threads = {int(settings.duckdb_threads)}")
    if settings is not None and settings.duckdb_memory_limit:
        con.raw_sql(f"SET memory_limit = '{settings.duckdb_memory_limit}'")
    return con
