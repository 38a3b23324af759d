"""Turn rows of a profile folder into `POST /v1/score` request bodies.

Used by the parity tests and the online benchmark, and handy for trying the API on a
profile store: the request carries exactly what the batch read for those customers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

PROFILE_KEYS = {"customer_id", "created_at"}


def iso_utc(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_value(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return iso_utc(value)
    return value.item() if hasattr(value, "item") else value


def inline_customers(profile: Path | str, customer_ids: list[str]) -> list[dict[str, Any]]:
    """The request's `customers` list for these ids, with every order and event of each
    (a Parquet profile folder: `customers.parquet`, `orders.parquet`, `events.parquet`)."""
    profile = Path(profile)
    customers = pd.read_parquet(profile / "customers.parquet")
    orders = pd.read_parquet(profile / "orders.parquet")
    events = pd.read_parquet(profile / "events.parquet")
    wanted = customers[customers.customer_id.isin(customer_ids)]
    order_groups = dict(tuple(orders[orders.customer_id.isin(customer_ids)].groupby("customer_id")))
    event_groups = dict(tuple(events[events.customer_id.isin(customer_ids)].groupby("customer_id")))
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
                    "order_id": o["order_id"],
                    "ordered_at": iso_utc(o["ordered_at"]),
                    "amount": float(o["amount"]),
                }
                order.update({k: json_value(o[k]) for k in ("status", "category", "currency") if k in o and json_value(o[k]) is not None})
                customer["orders"].append(order)
        if cid in event_groups:
            for e in event_groups[cid].to_dict(orient="records"):
                event = {"occurred_at": iso_utc(e["occurred_at"]), "event_type": e["event_type"]}
                event.update({k: json_value(e[k]) for k in ("event_id", "channel") if k in e and json_value(e[k]) is not None})
                customer["events"].append(event)
        body.append(customer)
    return body
