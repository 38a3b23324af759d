"""The unified-profile contract: table names, required columns and their kinds.

Everything else in `features` relies on these names. Internally all timestamps are
naive UTC (`timestamp` without zone); ids are strings; amounts are float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

ColumnKind = Literal["string", "timestamp", "number"]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: ColumnKind
    required: bool = True
    is_key: bool = False  # non-null; unique when the table has a single key column


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    # Only the customers table keeps unknown columns (they are attributes).
    keeps_extra_columns: bool = False

    @property
    def required(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.required)

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


CUSTOMERS = TableSpec(
    "customers",
    (
        ColumnSpec("customer_id", "string", is_key=True),
        ColumnSpec("created_at", "timestamp"),
    ),
    keeps_extra_columns=True,
)
ORDERS = TableSpec(
    "orders",
    (
        ColumnSpec("order_id", "string", is_key=True),
        ColumnSpec("customer_id", "string"),
        ColumnSpec("ordered_at", "timestamp"),
        ColumnSpec("amount", "number"),
        ColumnSpec("status", "string", required=False),
        ColumnSpec("category", "string", required=False),
        ColumnSpec("currency", "string", required=False),
    ),
)
EVENTS = TableSpec(
    "events",
    (
        ColumnSpec("customer_id", "string"),
        ColumnSpec("occurred_at", "timestamp"),
        ColumnSpec("event_type", "string"),
        ColumnSpec("event_id", "string", required=False),
        ColumnSpec("channel", "string", required=False),
    ),
)
TABLES: dict[str, TableSpec] = {t.name: t for t in (CUSTOMERS, ORDERS, EVENTS)}

#: Only orders with this status count as purchases (a missing status counts too).
COMPLETED_STATUS = "completed"
#: Orders with this status feed the refund share.
REFUNDED_STATUSES = ("refunded", "returned")

#: Event types with funnel meaning and engagement columns of their own. The vocabulary is
#: free: other types are kept and count in the engagement totals (events, recency, active days).
KNOWN_EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "pricing_page_view",
    "email_open",
    "email_click",
    "form_submit",
    "content_download",
    "demo_request",
    "trial_start",
    "app_login",
    "support_ticket",
    "complaint",
    "unsubscribe",
    "coupon_redeemed",
)

#: The largest order amount accepted (batch rejects the row, the API answers 422): more is a
#: unit error in any currency, and would let sums of amounts overflow to infinity.
MAX_AMOUNT = 1e12

#: Customer columns that are never features and never logged, unless configured otherwise.
DEFAULT_PII_COLUMNS: tuple[str, ...] = (
    "email",
    "phone",
    "phone_number",
    "mobile",
    "name",
    "first_name",
    "last_name",
    "full_name",
    "address",
    "street",
    "postal_code",
    "zip",
    "ip_address",
    "birth_date",
    "date_of_birth",
)


#: Arrow type of each column kind in validated (clean) profile tables.
ARROW_TYPE_OF_KIND: dict[ColumnKind, pa.DataType] = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us"),
    "number": pa.float64(),
}


def arrow_schema(spec: TableSpec) -> pa.Schema:
    """The Arrow schema of a validated table's contract columns (attributes not included)."""
    return pa.schema([(c.name, ARROW_TYPE_OF_KIND[c.kind]) for c in spec.columns])
