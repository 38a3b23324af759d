"""CDNOW (Fader, Hardie & Lee 2005) as a unified profile.

CDNOW customers are the cohort that made a first purchase in Q1 1997, so each
profile is created at its first purchase. There is no behaviour (no events table).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class CdnowProfile:
    customers: pd.DataFrame
    orders: pd.DataFrame


def cdnow_to_profile(transactions: pd.DataFrame) -> CdnowProfile:
    """Convert CDNOW purchases (customer_id, ordered_on YYYYMMDD, quantity, amount) to profile tables."""
    ordered_at = pd.to_datetime(transactions["ordered_on"].astype(str), format="%Y%m%d").astype("datetime64[us]")
    orders = pd.DataFrame(
        {
            "order_id": [f"o-{i + 1}" for i in range(len(transactions))],
            "customer_id": transactions["customer_id"].astype(str).to_numpy(),
            "ordered_at": ordered_at.to_numpy(),
            "amount": transactions["amount"].astype("float64").to_numpy(),
            "quantity": transactions["quantity"].astype("int64").to_numpy(),
            "currency": "USD",
        }
    )
    first = orders.groupby("customer_id", sort=False)["ordered_at"].min()
    customers = pd.DataFrame({"customer_id": first.index.astype(str), "created_at": first.to_numpy()})
    # Numeric id order (1, 2, ..., 10) reads better than string order.
    customers = customers.iloc[customers["customer_id"].astype(int).argsort(kind="stable")].reset_index(drop=True)
    return CdnowProfile(customers=customers, orders=orders)
