"""Turn rows of a profile store into `POST /v1/score` request bodies.

Used by the parity tests and the online benchmark, and handy for trying the API on a
profile store: the request carries the rows the batch reads for those customers. Any
profile store `crm-scoring score` reads works: a folder of Parquet or CSV tables (events
may be absent) or a DuckDB file, read by the batch's own reader (`features.io`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from features.backend import connect
from features.io import read_raw_profile
from features.validation import ROW

PROFILE_KEYS = {"customer_id", "created_at"}


def iso_utc(value: Any) -> str:
    """ISO 8601 in UTC with a "Z" (a naive time is UTC, as in the profile contract)."""
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_value(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return iso_utc(value)
    return value.item() if hasattr(value, "item") else value


def _rows_of(profile: Path, customer_ids: list[str]) -> dict[str, pd.DataFrame | None]:
    """The raw rows of these customers per table (None for an absent table), in file order."""
    con = connect()
    try:
        tables = {}
        for name, table in read_raw_profile(con, profile).items():
            if table is None:
                tables[name] = None
                continue
            selected = table.filter(table.customer_id.cast("string").isin(customer_ids)).order_by(ROW).drop(ROW)
            rows = selected.to_pyarrow().to_pandas()
            rows["customer_id"] = rows["customer_id"].astype(str)
            tables[name] = rows
        return tables
    finally:
        con.disconnect()


def inline_customers(profile: Path | str, customer_ids: list[str]) -> list[dict[str, Any]]:
    """The request's `customers` list for these ids, with every order and event of each,
    in the customers table's order (ids not in it are left out)."""
    customer_ids = [str(c) for c in customer_ids]
    tables = _rows_of(Path(profile), customer_ids)
    wanted, orders, events = tables["customers"], tables["orders"], tables["events"]
    assert wanted is not None and orders is not None  # read_raw_profile requires both
    order_groups = dict(tuple(orders.groupby("customer_id")))
    event_groups = dict(tuple(events.groupby("customer_id"))) if events is not None else {}
    body = []
    for row in wanted.to_dict(orient="records"):
        cid = row["customer_id"]
        customer: dict[str, Any] = {
            "customer_id": cid,
            "created_at": iso_utc(row["created_at"]),
            "attributes": {k: json_value(v) for k, v in row.items() if k not in PROFILE_KEYS},
            "orders": [],
            "events": [],
        }
        if cid in order_groups:
            for o in order_groups[cid].to_dict(orient="records"):
                order = {
                    "order_id": str(o["order_id"]),
                    "ordered_at": iso_utc(o["ordered_at"]),
                    "amount": float(o["amount"]),
                }
                order.update({k: json_value(o[k]) for k in ("status", "category", "currency") if k in o and json_value(o[k]) is not None})
                customer["orders"].append(order)
        if cid in event_groups:
            for e in event_groups[cid].to_dict(orient="records"):
                event = {"occurred_at": iso_utc(e["occurred_at"]), "event_type": e["event_type"]}
                event.update({k: str(json_value(e[k])) for k in ("event_id", "channel") if k in e and json_value(e[k]) is not None})
                customer["events"].append(event)
        body.append(customer)
    return body
