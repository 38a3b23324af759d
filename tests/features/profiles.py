"""Small hand-made profiles for feature and label tests."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from ibis.backends import BaseBackend

from features.profile import Profile
from features.validation import profile_from_frames


def make_profile(con: BaseBackend, customers: list[tuple[str, datetime]], orders: list[tuple]) -> Profile:
    """customers: (id, created_at); orders: (customer_id, ordered_at, amount[, status])."""
    customer_frame = pd.DataFrame(
        {
            "customer_id": pd.Series([c for c, _ in customers], dtype="str"),
            "created_at": pd.Series([t for _, t in customers], dtype="datetime64[us]"),
        }
    )
    order_frame = pd.DataFrame(
        {
            "order_id": pd.Series([f"o-{i}" for i in range(len(orders))], dtype="str"),
            "customer_id": pd.Series([o[0] for o in orders], dtype="str"),
            "ordered_at": pd.Series([o[1] for o in orders], dtype="datetime64[us]"),
            "amount": pd.Series([float(o[2]) for o in orders], dtype="float64"),
            "status": pd.Series([o[3] if len(o) > 3 else None for o in orders], dtype="str"),
        }
    )
    return profile_from_frames(con, customer_frame, order_frame).profile


def event_frame(rows: list[tuple[str, datetime, str]]) -> pd.DataFrame:
    """events: (customer_id, occurred_at, event_type)."""
    return pd.DataFrame(rows, columns=["customer_id", "occurred_at", "event_type"]).astype(
        {"customer_id": "string", "occurred_at": "datetime64[us]", "event_type": "string"}
    )
