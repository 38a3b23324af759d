"""The normalised unified profile that every feature family and label reads."""

from __future__ import annotations

from dataclasses import dataclass

import ibis


@dataclass(frozen=True)
class Profile:
    """Validated, typed profile tables (Ibis expressions on one backend).

    customers: customer_id (string), created_at (timestamp, UTC), then `attribute_columns`.
    orders:    order_id, customer_id, ordered_at, amount (float64), status, category, currency.
    events:    customer_id, occurred_at, event_type, event_id, channel.
    Optional columns are always present (null when the source had none).
    currency: the one currency of the orders' amounts (validation rejects the others), None
    when no order names one. Models and scores are in this currency; amounts are never converted.
    """

    customers: ibis.Table
    orders: ibis.Table
    events: ibis.Table
    attribute_columns: tuple[str, ...] = ()
    currency: str | None = None
