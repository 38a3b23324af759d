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
    """

    customers: ibis.Table
    orders: ibis.Table
    events: ibis.Table
    attribute_columns: tuple[str, ...] = ()
