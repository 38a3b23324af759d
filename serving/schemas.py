"""Request and response bodies of the scoring API (pydantic, unknown fields rejected).

Timestamps are ISO 8601; a value without a zone is read as UTC (as in the profile
contract). A timestamp more than `FUTURE_TOLERANCE` ahead of the clock is an input error.
`as_of` is checked here; the ~70 timestamps of a typical customer are checked in one pass
over the Arrow columns the engine builds from them (`latest_allowed`,
`future_timestamp_locs`): a Python validator per timestamp cost 0.13 of the 0.20 ms that
validating such a request took. Limits that protect the service (orders and events per
customer) are part of the schema so a client learns them from the OpenAPI document; the
customers-per-request limit is a setting and is checked by the service (413).

Errors raised here become 422 responses whose `loc` is the field path, e.g.
`["body", "customers", 0, "orders", 3, "amount"]`. `hide_input_in_errors` keeps field
values (which may be personal data) out of exception strings and therefore out of logs.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Clock skew tolerated before a timestamp counts as "in the future".
FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_ORDERS_PER_CUSTOMER = 10_000
MAX_EVENTS_PER_CUSTOMER = 50_000
MAX_ATTRIBUTES = 200
MAX_CUSTOMER_IDS = 10_000

# No control characters: ids travel in headers, CSV exports and (prefixed) inside batched queries.
Identifier = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
ShortText = Annotated[str, Field(min_length=1, max_length=256)]
AttributeValue = str | bool | int | float | None


def utc_naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class _FutureLimit:
    """Now + FUTURE_TOLERANCE, read from the clock at most once a second: a request has
    dozens of timestamps, and the tolerance is minutes."""

    def __init__(self) -> None:
        self._read_at = -math.inf
        self._limit = datetime.min

    def __call__(self) -> datetime:
        tick = time.monotonic()
        if tick - self._read_at > 1.0:
            self._limit = now_utc() + FUTURE_TOLERANCE
            self._read_at = tick
        return self._limit


_future_limit = _FutureLimit()


#: The message of a timestamp beyond `latest_allowed()`.
FUTURE_TIMESTAMP = "timestamp is in the future"


def latest_allowed() -> datetime:
    """The latest timestamp a request may hold (naive UTC): now + FUTURE_TOLERANCE."""
    return _future_limit()


def _not_future(value: datetime) -> datetime:
    value = utc_naive(value)
    if value > _future_limit():
        raise ValueError(FUTURE_TIMESTAMP)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, str_strip_whitespace=True)


class OrderIn(_Strict):
    order_id: Identifier
    ordered_at: datetime
    amount: float = Field(ge=0, allow_inf_nan=False)
    status: ShortText | None = None
    category: ShortText | None = None
    currency: Annotated[str, Field(min_length=3, max_length=3)] | None = None


class EventIn(_Strict):
    occurred_at: datetime
    event_type: ShortText
    event_id: Identifier | None = None
    channel: ShortText | None = None


class CustomerIn(_Strict):
    customer_id: Identifier
    created_at: datetime
    attributes: dict[str, AttributeValue] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)
    orders: list[OrderIn] = Field(default_factory=list, max_length=MAX_ORDERS_PER_CUSTOMER)
    events: list[EventIn] = Field(default_factory=list, max_length=MAX_EVENTS_PER_CUSTOMER)

    @field_validator("attributes")
    @classmethod
    def _finite_numbers(cls, value: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
        for name, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"attribute {name!r} is not a finite number")
        return value


class ScoreRequest(_Strict):
    as_of: datetime | None = Field(
        default=None, description="Cut-off instant; default: now, truncated to the minute (shares query plans)."
    )
    customers: list[CustomerIn] = Field(min_length=1)

    @field_validator("as_of")
    @classmethod
    def _as_of_not_future(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _not_future(value)


def future_timestamp_locs(customers: list[CustomerIn]) -> list[tuple[str | int, ...]]:
    """Field paths of the customers' timestamps beyond `latest_allowed()` (created_at,
    ordered_at, occurred_at), in request order."""
    limit = latest_allowed()
    locs: list[tuple[str | int, ...]] = []
    for i, customer in enumerate(customers):
        if utc_naive(customer.created_at) > limit:
            locs.append(("body", "customers", i, "created_at"))
        for field, items, stamp in (("orders", customer.orders, "ordered_at"), ("events", customer.events, "occurred_at")):
            locs += [("body", "customers", i, field, j, stamp) for j, item in enumerate(items) if utc_naive(getattr(item, stamp)) > limit]
    return locs


class ScoreByIdRequest(_Strict):
    customer_ids: list[Identifier] = Field(min_length=1, max_length=MAX_CUSTOMER_IDS)


class ScoreResponse(BaseModel):
    results: list[dict[str, Any]]


class ScoreByIdResponse(BaseModel):
    results: list[dict[str, Any]]
    missing: list[str]
    run_id: str | None = None
    as_of: str | None = None


class ModelsResponse(BaseModel):
    models: list[dict[str, Any]]
    snapshot: dict[str, Any] | None = None
