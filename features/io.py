"""The only module of `features` that touches files: profile stores, rejects, outputs, CDNOW.

A profile store is a folder holding `customers`, `orders` and `events` as
`<table>.parquet` or `<table>.csv` (events may be absent), or a DuckDB file with
tables of those names. Tables are read by DuckDB (no pandas round trip), numbered
by source row (1-based, `_row`), validated, and the clean rows are materialised
once so every feature family reads them without re-parsing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import ibis
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from ibis.backends import BaseBackend

from features.errors import ProfileError
from features.profile import Profile
from features.schema import TABLES
from features.validation import (
    REJECT_CODE,
    REJECT_COLUMN,
    REJECT_REASON,
    ROW,
    ValidationReport,
    raise_for_rejects,
    lazy_stage,
    validate_profile,
)

PROFILE_FORMATS = ("parquet", "csv")
DUCKDB_SUFFIXES = (".duckdb", ".db", ".ddb")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _find_table_file(folder: Path, name: str) -> Path | None:
    found = [folder / f"{name}.{fmt}" for fmt in PROFILE_FORMATS if (folder / f"{name}.{fmt}").exists()]
    if len(found) > 1:
        raise ProfileError(f"{folder}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _register_file(con: BaseBackend, path: Path, name: str) -> ibis.Table:
    view = f"_raw_{name}"
    if path.suffix == ".parquet":
        # file_row_number is the exact 0-based position in the file, whatever the scan order.
        sql = f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS {ROW} FROM read_parquet({_sql_string(str(path))}, file_row_number = true)"
        con.raw_sql(f"CREATE OR REPLACE TEMP VIEW {view} AS {sql}")
    else:
        # Required columns are read as text and typed by validation (so one bad value
        # rejects one row instead of failing the read); attributes are auto-detected
        # over the whole file. A fresh table's rowid follows the file order.
        spec = TABLES[name]
        header = _csv_header(path)
        forced = {c.name: "VARCHAR" for c in spec.columns if c.name in header}
        options = "header = true, sample_size = -1"
        # DuckDB cannot parse an empty struct (`types = {}`): a header with none of the
        # contract's columns is read without the option, and validation names them all.
        if forced:
            types = ", ".join(f"{_sql_string(k)}: {_sql_string(v)}" for k, v in forced.items())
            options += f", types = {{{types}}}"
        con.raw_sql(
            f"CREATE OR REPLACE TEMP TABLE {view}_src AS SELECT * FROM read_csv({_sql_string(str(path))}, {options})"
        )
        con.raw_sql(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT *, rowid + 1 AS {ROW} FROM {view}_src")
    return con.table(view)


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            raise ProfileError(f"{path}: the file is empty (no header row)") from None


def _register_duckdb(con: BaseBackend, path: Path) -> dict[str, ibis.Table | None]:
    con.raw_sql(f"ATTACH {_sql_string(str(path))} AS profile_store (READ_ONLY)")
    present = {r[0] for r in con.raw_sql("SELECT table_name FROM information_schema.tables WHERE table_catalog = 'profile_store'").fetchall()}
    raw: dict[str, ibis.Table | None] = {}
    for name in TABLES:
        if name not in present:
            raw[name] = None
            continue
        con.raw_sql(f"CREATE OR REPLACE TEMP VIEW _raw_{name} AS SELECT *, rowid + 1 AS {ROW} FROM profile_store.main.{name}")
        raw[name] = con.table(f"_raw_{name}")
    return raw


def read_raw_profile(con: BaseBackend, path: Path) -> dict[str, ibis.Table | None]:
    """Raw tables of a profile store, each with a `_row` column; absent tables are None."""
    path = Path(path)
    if not path.exists():
        raise ProfileError(f"profile store {path} does not exist")
    if path.is_file():
        if path.suffix.lower() in DUCKDB_SUFFIXES:
            return _register_duckdb(con, path)
        raise ProfileError(f"{path}: a profile store is a folder of parquet/csv files or a DuckDB file ({', '.join(DUCKDB_SUFFIXES)})")
    raw: dict[str, ibis.Table | None] = {}
    for name in TABLES:
        found = _find_table_file(path, name)
        raw[name] = _register_file(con, found, name) if found else None
    missing = [n for n in ("customers", "orders") if raw[n] is None]
    if missing:
        raise ProfileError(
            f"profile store {path} has no {' and no '.join(missing)} table "
            f"(expected {', '.join(f'{m}.parquet or {m}.csv' for m in missing)})"
        )
    return raw


@dataclass(frozen=True)
class LoadedProfile:
    profile: Profile
    report: ValidationReport
    rejects_path: Path | None


def load_profile(
    con: BaseBackend,
    path: Path,
    *,
    rejects_path: Path,
    max_reject_share: float = 0.01,
    materialize: bool = True,
    before: datetime | None = None,
) -> LoadedProfile:
    """Read, validate and (by default) materialise a profile store once.

    Rejected rows are written to `rejects_path` (CSV: table, row, column, reason,
    record as JSON). Raises `ProfileValidationError` when a table rejects more than
    `max_reject_share` of its rows, after writing the rejects. `before`: orders and events
    at or after this cut-off are not read (`validate_profile`).
    """
    def stage(name: str, table: ibis.Table) -> ibis.Table:
        return con.create_table(f"_staged_{name}", table, temp=True, overwrite=True)

    raw = read_raw_profile(con, path)
    result = validate_profile(raw, max_reject_share, stage if materialize else lazy_stage, before=before)
    written = write_rejects(result.rejects, rejects_path) if result.report.rows_rejected else None
    raise_for_rejects(result.report, written)
    profile = result.profile
    return LoadedProfile(profile, result.report, written)


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    return str(value)


def write_rejects(rejects: dict[str, ibis.Table], path: Path) -> Path:
    """One CSV for all tables: table, row, column, code, reason and the original record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["table", "row", "column", "code", "reason", "record"])
        for name, table in rejects.items():
            for batch in table.order_by(ROW).to_pyarrow_batches():
                for rec in batch.to_pylist():
                    record = {k: _jsonable(v) for k, v in rec.items() if k not in (ROW, REJECT_COLUMN, REJECT_CODE, REJECT_REASON)}
                    writer.writerow([name, rec[ROW], rec[REJECT_COLUMN], rec[REJECT_CODE], rec[REJECT_REASON], json.dumps(record)])
    tmp.replace(path)
    return path


def check_output_file(path: Path, what: str = "the output") -> None:
    """Raise `IsADirectoryError` when `path`, where a file is to be written, is a folder
    (callers check before long work, `write_parquet` again at the write)."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder: give the file's path, e.g. {Path(path) / 'features.parquet'}")


def write_parquet(expr: ibis.Table, path: Path) -> Path:
    """Stream an expression's result to Parquet (atomically: write then rename)."""
    path = Path(path)
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        expr.to_parquet(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left beside the target
        raise
    return path


def write_profile_tables(tables: dict[str, pa.Table | pd.DataFrame], out_dir: Path) -> list[Path]:
    """Write profile tables as `<name>.parquet` into a folder (deterministic bytes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        target = out_dir / f"{name}.parquet"
        pq.write_table(table, target)
        written.append(target)
    return written


def cdnow_file(sample: bool) -> Path:
    """The CDNOW transaction file shipped inside the installed lifetimes package."""
    name = "CDNOW_sample.txt" if sample else "CDNOW_master.txt"
    path = Path(str(resources.files("lifetimes") / "datasets" / name))
    if not path.exists():
        raise ProfileError(f"{name} is not in the installed lifetimes package ({path})")
    return path


def read_cdnow_transactions(sample: bool) -> pd.DataFrame:
    """CDNOW purchases: customer_id (str), ordered_on (date as YYYYMMDD int), quantity, amount.

    The sample's customer ids are its own 1..2357 numbering (the id used by the
    published summaries); the master file's are the master ids.
    """
    path = cdnow_file(sample)
    if sample:
        names = ["master_id", "customer_id", "ordered_on", "quantity", "amount"]
        frame = pd.read_csv(path, sep=r"\s+", header=None, names=names, dtype={"master_id": str, "customer_id": str})
    else:
        names = ["customer_id", "ordered_on", "quantity", "amount"]
        frame = pd.read_csv(path, sep=r"\s+", header=0, names=names, dtype={"customer_id": str})
    frame["customer_id"] = frame["customer_id"].str.lstrip("0")
    return frame[["customer_id", "ordered_on", "quantity", "amount"]]
