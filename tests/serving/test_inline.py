"""`serving.inline.inline_customers`: request bodies from any profile store the batch reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serving.inline import inline_customers
from serving.schemas import ScoreRequest


def test_a_csv_profile_without_events(tmp_path: Path) -> None:
    # CSV tables, no events table (DESIGN: events may be absent), a zone offset and ids
    # that look like numbers: what `crm-scoring score` reads, the request carries.
    pd.DataFrame(
        {"customer_id": ["7", "8", "9"], "created_at": ["2024-01-01T10:00:00+02:00", "2024-02-01 00:00:00", "2024-03-01"], "region": ["emea", None, "apac"]}
    ).to_csv(tmp_path / "customers.csv", index=False)
    pd.DataFrame(
        {"order_id": [11, 12, 13], "customer_id": ["7", "7", "9"], "ordered_at": ["2024-05-01T12:00:00Z", "2024-04-01T12:00:00Z", "2024-06-01"], "amount": ["19.9", "5", "7.25"]}
    ).to_csv(tmp_path / "orders.csv", index=False)

    customers = inline_customers(tmp_path, ["9", "7", "nobody"])

    assert customers == [
        {
            "customer_id": "7",
            "created_at": "2024-01-01T08:00:00.000000Z",
            "attributes": {"region": "emea"},
            "orders": [
                {"order_id": "11", "ordered_at": "2024-05-01T12:00:00.000000Z", "amount": 19.9},
                {"order_id": "12", "ordered_at": "2024-04-01T12:00:00.000000Z", "amount": 5.0},
            ],
            "events": [],
        },
        {
            "customer_id": "9",
            "created_at": "2024-03-01T00:00:00.000000Z",
            "attributes": {"region": "apac"},
            "orders": [{"order_id": "13", "ordered_at": "2024-06-01T00:00:00.000000Z", "amount": 7.25}],
            "events": [],
        },
    ]
    ScoreRequest.model_validate({"as_of": "2024-07-01T00:00:00Z", "customers": customers})


def test_a_parquet_profile_with_events_and_zoned_timestamps(tmp_path: Path) -> None:
    zoned = pd.Timestamp("2024-01-01T23:30:00", tz="America/New_York")  # 04:30 the next day in UTC
    pd.DataFrame({"customer_id": ["a"], "created_at": [zoned], "vip": [True]}).to_parquet(tmp_path / "customers.parquet")
    pd.DataFrame(
        {"order_id": ["o1"], "customer_id": ["a"], "ordered_at": [zoned], "amount": [3.5], "currency": ["EUR"], "status": [None]}
    ).to_parquet(tmp_path / "orders.parquet")
    pd.DataFrame(
        {"customer_id": ["a", "b"], "occurred_at": [zoned, zoned], "event_type": ["page_view", "page_view"], "event_id": [1, 2], "channel": ["web", None]}
    ).to_parquet(tmp_path / "events.parquet")

    (customer,) = inline_customers(tmp_path, ["a"])

    assert customer["created_at"] == "2024-01-02T04:30:00.000000Z"
    assert customer["attributes"] == {"vip": True}
    assert customer["orders"] == [{"order_id": "o1", "ordered_at": "2024-01-02T04:30:00.000000Z", "amount": 3.5, "currency": "EUR"}]
    assert customer["events"] == [{"occurred_at": "2024-01-02T04:30:00.000000Z", "event_type": "page_view", "event_id": "1", "channel": "web"}]
    ScoreRequest.model_validate({"as_of": "2024-07-01T00:00:00Z", "customers": [customer]})
