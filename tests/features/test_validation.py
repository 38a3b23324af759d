"""Every kind of bad profile input: the message names it, the rejects file keeps it."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from features.backend import connect
from features.errors import ProfileError, ProfileValidationError
from features.io import load_profile

GOOD_CUSTOMERS = pd.DataFrame(
    {
        "customer_id": [f"c-{i}" for i in range(1, 11)],
        "created_at": ["2025-01-01T00:00:00"] * 10,
        "industry": ["retail"] * 5 + ["saas"] * 5,
        "email": [f"p{i}@example.com" for i in range(1, 11)],
    }
)
GOOD_ORDERS = pd.DataFrame(
    {
        "order_id": [f"o-{i}" for i in range(1, 11)],
        "customer_id": [f"c-{i}" for i in range(1, 11)],
        "ordered_at": ["2025-02-01T10:00:00"] * 10,
        "amount": [10.0 * i for i in range(1, 11)],
        "currency": ["USD"] * 10,
    }
)
GOOD_EVENTS = pd.DataFrame(
    {
        "customer_id": ["c-1", "c-2", "c-3"],
        "occurred_at": ["2025-01-05T08:00:00Z"] * 3,
        "event_type": ["page_view", "pricing_page_view", "demo_request"],
    }
)


def write_profile(folder: Path, fmt: str = "csv", customers=None, orders=None, events=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "customers": GOOD_CUSTOMERS if customers is None else customers,
        "orders": GOOD_ORDERS if orders is None else orders,
        "events": GOOD_EVENTS if events is None else events,
    }
    for name, frame in tables.items():
        if frame is False:
            continue
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def load(folder: Path, share: float = 1.0):
    return load_profile(connect(), folder, rejects_path=folder / "rejects.csv", max_reject_share=share)


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_good_profile_loads_without_rejects(tmp_path: Path) -> None:
    loaded = load(write_profile(tmp_path), share=0.0)
    assert loaded.report.rows_rejected == 0
    assert loaded.rejects_path is None and not (tmp_path / "rejects.csv").exists()
    customers = loaded.profile.customers.to_pandas()
    assert len(customers) == 10
    assert list(loaded.profile.attribute_columns) == ["industry", "email"]
    events = loaded.profile.events.to_pandas()
    # "Z" is UTC; stored naive.
    assert events.occurred_at.iloc[0] == pd.Timestamp("2025-01-05 08:00:00")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_required_columns_are_all_named(tmp_path: Path, fmt: str) -> None:
    folder = write_profile(
        tmp_path,
        fmt,
        customers=GOOD_CUSTOMERS.drop(columns=["created_at"]),
        orders=GOOD_ORDERS.drop(columns=["amount"]),
    )
    with pytest.raises(ProfileError) as err:
        load(folder)
    message = str(err.value)
    assert "customers: required column 'created_at' is missing" in message
    assert "orders: required column 'amount' is missing" in message


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_table_with_none_of_its_required_columns_names_them_all(tmp_path: Path, fmt: str) -> None:
    # A CSV header without any contract column once reached DuckDB as `types = {}`: a parser error.
    customers = pd.DataFrame({"id": ["1"], "created": ["2024-01-01"]})
    folder = write_profile(tmp_path, fmt, customers=customers)
    with pytest.raises(ProfileError) as err:
        load(folder)
    message = str(err.value)
    assert "customers: required column 'customer_id' is missing" in message
    assert "customers: required column 'created_at' is missing" in message
    assert "orders:" not in message and "events:" not in message


def test_data_validate_names_the_missing_columns_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "customers.csv").write_text("id,created\n1,2024-01-01\n")
    (folder / "orders.csv").write_text("order_id,customer_id,ordered_at,amount\n")
    result = CliRunner().invoke(app, ["data", "validate", "--profile", str(folder)])
    assert result.exit_code == 1
    # CliRunner turns an escaped exception into exit code 1 too: only typer's exit is a clean failure.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the profile does not match the contract: customers: required column 'customer_id' is missing; "
        "customers: required column 'created_at' is missing"
    ]


def test_missing_table_is_named(tmp_path: Path) -> None:
    folder = write_profile(tmp_path, orders=False)
    with pytest.raises(ProfileError, match="no orders table"):
        load(folder)


def test_events_table_may_be_absent(tmp_path: Path) -> None:
    loaded = load(write_profile(tmp_path, events=False), share=0.0)
    assert loaded.profile.events.count().execute() == 0


def test_column_of_unusable_type_is_named(tmp_path: Path) -> None:
    customers = GOOD_CUSTOMERS.assign(created_at=[True] * 10)
    folder = write_profile(tmp_path, "parquet", customers=customers)
    with pytest.raises(ProfileError, match="customers: column 'created_at' has type boolean, expected timestamp"):
        load(folder)


@pytest.mark.parametrize(
    ("table", "change", "column", "code", "reason"),
    [
        ("orders", {"amount": "ten"}, "amount", "not_a_number", "amount 'ten' is not a number"),
        ("orders", {"amount": -5.0}, "amount", "negative", "amount -5.0 is negative"),
        ("orders", {"amount": 1e308}, "amount", "too_large", "amount 1e+308 is above 1e+12 (a unit error?)"),
        ("orders", {"ordered_at": "31/02/2025"}, "ordered_at", "not_a_timestamp", "ordered_at '31/02/2025' is not a timestamp"),
        ("orders", {"customer_id": "c-999"}, "customer_id", "unknown_customer", "customer_id 'c-999' is not a valid customer"),
        ("orders", {"order_id": None}, "order_id", "missing", "order_id is missing"),
        ("orders", {"currency": "EUR"}, "currency", "mixed_currency", "currency EUR differs from the profile currency USD"),
        ("customers", {"created_at": "yesterday"}, "created_at", "not_a_timestamp", "created_at 'yesterday' is not a timestamp"),
        ("customers", {"customer_id": ""}, "customer_id", "missing", "customer_id is missing"),
        ("events", {"customer_id": "ghost"}, "customer_id", "unknown_customer", "customer_id 'ghost' is not a valid customer"),
        ("events", {"event_type": None}, "event_type", "missing", "event_type is missing"),
        ("events", {"occurred_at": "not a time"}, "occurred_at", "not_a_timestamp", "occurred_at 'not a time' is not a timestamp"),
    ],
)
def test_bad_value_rejects_the_row(tmp_path: Path, table: str, change: dict, column: str, code: str, reason: str) -> None:
    frames = {"customers": GOOD_CUSTOMERS.copy(), "orders": GOOD_ORDERS.copy(), "events": GOOD_EVENTS.copy()}
    bad = frames[table].astype(object)
    for col, value in change.items():
        bad.loc[1, col] = value  # second data row
    frames[table] = bad
    folder = write_profile(tmp_path, "csv", **frames)

    # Above the limit: the run fails, says why, and still writes the rejects.
    with pytest.raises(ProfileValidationError) as err:
        load(folder, share=0.0)
    assert f"{table}: 1 of {len(bad)} rows rejected" in str(err.value)
    assert "rejects.csv" in str(err.value)
    rows = read_rejects(folder / "rejects.csv")
    own = [r for r in rows if r["table"] == table]
    assert [(r["row"], r["column"], r["code"], r["reason"]) for r in own] == [("2", column, code, reason)]
    # A rejected customer takes its orders and events along, each with its own reason.
    assert all(r["code"] == "unknown_customer" for r in rows if r["table"] != table)
    record = json.loads(own[0]["record"])
    assert set(record) == set(bad.columns)  # the whole original row is kept

    # Below the limit: the run goes on without the row and reports it.
    loaded = load(folder, share=0.5)
    problem = next(p for p in loaded.report.problems if p.table == table)
    assert (problem.column, problem.code, problem.count) == (column, code, 1)
    kept = getattr(loaded.profile, table).count().execute()
    assert kept == len(bad) - 1


def test_duplicate_keys_reject_every_copy(tmp_path: Path) -> None:
    customers = GOOD_CUSTOMERS.copy()
    customers.loc[4, "customer_id"] = "c-1"
    folder = write_profile(tmp_path, customers=customers)
    loaded = load(folder)
    rows = read_rejects(folder / "rejects.csv")
    dup = [r for r in rows if r["table"] == "customers"]
    assert [(r["row"], r["code"]) for r in dup] == [("1", "duplicate"), ("5", "duplicate")]
    assert dup[0]["reason"] == "customer_id 'c-1' appears more than once"
    # c-1's order and event now point at no valid customer: rejected too, not silently
    # dropped, and the reason names the duplicate; c-5 is gone, so its order is unknown.
    assert [(r["table"], r["row"], r["code"], r["reason"]) for r in rows if r["table"] != "customers"] == [
        ("orders", "1", "unknown_customer", "customer_id 'c-1' was rejected in customers (duplicate customer_id)"),
        ("orders", "5", "unknown_customer", "customer_id 'c-5' is not a valid customer"),
        ("events", "1", "unknown_customer", "customer_id 'c-1' was rejected in customers (duplicate customer_id)"),
    ]
    assert loaded.profile.customers.count().execute() == 8


def test_rows_of_a_rejected_customer_say_why_it_was_rejected(tmp_path: Path) -> None:
    customers = GOOD_CUSTOMERS.astype(object)
    customers.loc[1, "created_at"] = "yesterday"  # c-2: a bad value
    customers.loc[4, "customer_id"] = "c-3"  # c-3 twice ...
    customers.loc[4, "created_at"] = "soon"  # ... and this copy has a bad value too: the duplicate wins
    folder = write_profile(tmp_path, customers=customers, events=False)
    loaded = load(folder)
    reasons = {r["row"]: r["reason"] for r in read_rejects(folder / "rejects.csv") if r["table"] == "orders"}
    assert reasons == {
        "2": "customer_id 'c-2' was rejected in customers (created_at 'yesterday' is not a timestamp)",
        "3": "customer_id 'c-3' was rejected in customers (duplicate customer_id)",
        "5": "customer_id 'c-5' is not a valid customer",
    }
    problem = next(p for p in loaded.report.problems if p.table == "orders")
    assert (problem.code, problem.count) == ("unknown_customer", 3)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    orders = GOOD_ORDERS.astype(object)
    orders.loc[0, "amount"] = -1.0
    orders.loc[3, "ordered_at"] = "garbage"
    orders.loc[6, "customer_id"] = "nobody"
    customers = GOOD_CUSTOMERS.astype(object)
    customers.loc[9, "created_at"] = "soon"
    folder = write_profile(tmp_path, customers=customers, orders=orders)
    with pytest.raises(ProfileValidationError) as err:
        load(folder, share=0.01)
    codes = {(p.table, p.code) for p in err.value.report.problems}
    assert codes == {
        ("orders", "negative"),
        ("orders", "not_a_timestamp"),
        ("orders", "unknown_customer"),
        ("customers", "not_a_timestamp"),
    }
    # Order 10 belongs to the rejected customer c-10.
    assert len(read_rejects(folder / "rejects.csv")) == 5


def test_mixed_currencies_are_reported(tmp_path: Path) -> None:
    orders = GOOD_ORDERS.copy()
    orders.loc[[2, 5], "currency"] = "EUR"
    folder = write_profile(tmp_path, orders=orders)
    loaded = load(folder)
    assert any("mixed currencies USD (8 rows), EUR (2 rows)" in note for note in loaded.report.notes)
    assert loaded.report.tables[1].rows_rejected == 2
    assert loaded.profile.currency == "USD"  # what the models and scores are in


def test_the_profile_currency_is_known_or_none(tmp_path: Path) -> None:
    assert load(write_profile(tmp_path / "usd")).profile.currency == "USD"
    assert load(write_profile(tmp_path / "none", orders=GOOD_ORDERS.drop(columns="currency"))).profile.currency is None
    blank = GOOD_ORDERS.assign(currency=None)
    assert load(write_profile(tmp_path / "blank", orders=blank)).profile.currency is None


def test_timestamps_with_offsets_become_utc_and_naive_ones_are_utc(tmp_path: Path) -> None:
    orders = GOOD_ORDERS.copy()
    orders["ordered_at"] = ["2025-02-01T12:00:00+02:00"] + ["2025-02-01 10:00:00"] * 9
    loaded = load(write_profile(tmp_path, orders=orders), share=0.0)
    got = loaded.profile.orders.order_by("order_id").to_pandas().set_index("order_id").ordered_at
    assert got["o-1"] == pd.Timestamp("2025-02-01 10:00:00")
    assert got["o-2"] == pd.Timestamp("2025-02-01 10:00:00")


def test_duplicate_event_ids_are_deduplicated_and_counted(tmp_path: Path) -> None:
    events = pd.concat([GOOD_EVENTS, GOOD_EVENTS.iloc[[0]]], ignore_index=True)
    events["event_id"] = ["e1", "e2", "e3", "e1"]
    loaded = load(write_profile(tmp_path, events=events), share=0.0)
    assert loaded.profile.events.count().execute() == 3
    assert loaded.report.tables[2].duplicates_dropped == 1


def test_numeric_ids_keep_their_text(tmp_path: Path) -> None:
    customers = GOOD_CUSTOMERS.assign(customer_id=[f"{i:05d}" for i in range(1, 11)])
    orders = GOOD_ORDERS.assign(customer_id=[f"{i:05d}" for i in range(1, 11)])
    loaded = load(write_profile(tmp_path, "csv", customers=customers, orders=orders, events=False), share=0.0)
    assert sorted(loaded.profile.customers.to_pandas().customer_id)[0] == "00001"


def test_duckdb_file_store(tmp_path: Path) -> None:
    path = tmp_path / "profile.duckdb"
    with duckdb.connect(str(path)) as db:
        for name, frame in (("customers", GOOD_CUSTOMERS), ("orders", GOOD_ORDERS)):
            db.register("frame", frame)
            db.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
            db.unregister("frame")
    loaded = load_profile(connect(), path, rejects_path=tmp_path / "rejects.csv", max_reject_share=0.0)
    assert loaded.profile.orders.count().execute() == 10
    assert loaded.profile.events.count().execute() == 0


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load(tmp_path / "nope")


def test_loading_does_not_modify_the_source_files(tmp_path: Path) -> None:
    folder = write_profile(tmp_path, "parquet")
    before = {p.name: p.read_bytes() for p in folder.glob("*.parquet")}
    load(folder, share=0.0)
    assert {p.name: p.read_bytes() for p in folder.glob("*.parquet")} == before


def test_as_of_parsing_is_utc() -> None:
    from features.timeutil import parse_horizon, to_utc_naive

    assert to_utc_naive("2025-07-01T02:00:00+02:00") == datetime(2025, 7, 1)
    assert to_utc_naive("2025-07-01T00:00:00Z") == datetime(2025, 7, 1)
    assert parse_horizon("13w") == 91 and parse_horizon("90d") == 90 and parse_horizon("365") == 365
    with pytest.raises(ValueError, match="not a duration"):
        parse_horizon("soon")


def test_a_run_reads_no_order_or_event_at_or_after_its_cut_off(tmp_path: Path) -> None:
    """`train --as-of T` reads nothing at or after T: a broken order or event dated from T on
    is neither rejected nor counted toward the reject share; one whose time does not parse
    is still rejected (it cannot be placed before or after T)."""
    cutoff = datetime(2025, 3, 1)
    orders = pd.concat(
        [
            GOOD_ORDERS,
            pd.DataFrame(
                {
                    "order_id": ["late-1", "late-2", "bad-time"],
                    "customer_id": ["c-1", "ghost", "c-2"],
                    "ordered_at": ["2025-03-01T00:00:00", "2025-04-01T00:00:00", "someday"],
                    "amount": [-5.0, 10.0, 1.0],
                    "currency": ["USD"] * 3,
                }
            ),
        ],
        ignore_index=True,
    )
    events = pd.concat(
        [GOOD_EVENTS, pd.DataFrame({"customer_id": ["ghost"], "occurred_at": ["2025-03-02T00:00:00Z"], "event_type": ["x"]})],
        ignore_index=True,
    )
    folder = write_profile(tmp_path, orders=orders, events=events)

    loaded = load_profile(connect(), folder, rejects_path=folder / "rejects.csv", max_reject_share=1.0, before=cutoff)

    assert [(r["table"], r["code"]) for r in read_rejects(folder / "rejects.csv")] == [("orders", "not_a_timestamp")]
    assert sorted(loaded.profile.orders.order_id.to_pyarrow().to_pylist()) == sorted(GOOD_ORDERS["order_id"])
    assert loaded.profile.events.count().to_pyarrow().as_py() == len(GOOD_EVENTS)
    # Without a cut-off (`data validate`) every row is checked.
    everything = load_profile(connect(), folder, rejects_path=tmp_path / "all.csv", max_reject_share=1.0)
    assert everything.report.rows_rejected == 4
