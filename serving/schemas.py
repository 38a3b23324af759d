"""Request and response bodies of the scoring API (pydantic, unknown fields rejected).

Timestamps are ISO 8601; a value without a zone is read as UTC (as in the profile
contract). A timestamp more than `FUTURE_TOLERANCE` ahead of the clock is an input error.
`as_of` is checked here; the ~70 timestamps of a typical customer are checked against the
clock in one pass over the Arrow columns the engine builds from them (`latest_allowed`,
`timestamp_problems`): a Python validator per timestamp that converted and compared cost
0.13 of the 0.20 ms that validating such a request took. Numbers are refused as
timestamps (pydantic would read them as seconds since 1970). Limits that protect the
service (orders and events per customer) are part of the schema so a client learns them
from the OpenAPI document; the customers-per-request limit is a setting and is checked by
the service (413).

Errors raised here become 422 responses whose `loc` is the field path, e.g.
`["body", "customers", 0, "orders", 3, "amount"]`. `hide_input_in_errors` keeps field
values (which may be personal data) out of exception strings and therefore out of logs.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, WithJsonSchema, field_validator

from features.schema import MAX_AMOUNT

#: Clock skew tolerated before a timestamp counts as "in the future".
FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_ORDERS_PER_CUSTOMER = 10_000
MAX_EVENTS_PER_CUSTOMER = 50_000
MAX_ATTRIBUTES = 200
MAX_CUSTOMER_IDS = 10_000

# No control characters: ids travel in headers, CSV exports and (prefixed) inside batched queries.
Identifier = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
ShortText = Annotated[str, Field(min_length=1, max_length=256)]
#: A customer id to look up in a batch snapshot: any id a batch run may hold (batch scoring
#: takes every string, so a tab or a line break cannot make a scored customer unfindable).
LookupId = Annotated[str, Field(min_length=1, max_length=4096)]

#: The message of a zoned timestamp whose UTC instant falls outside datetime's years.
OUT_OF_RANGE = "timestamp is outside the years 0001-9999 once converted to UTC"


def utc_naive(value: datetime) -> datetime:
    """The UTC instant of `value` (naive values are UTC already); ValueError when a zone
    offset carries it past year 1 or 9999."""
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise ValueError(OUT_OF_RANGE) from None


def _timestamp_text(value: Any) -> Any:
    """Timestamps are ISO 8601 text: pydantic would read a number, or text of digits only
    such as the basic-format date "20250615", as seconds since 1970."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        raise ValueError("a timestamp is ISO 8601 text with dashes, such as 2025-06-15 or 2025-06-15T09:30:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_timestamp_text)]


def _attribute_value(value: Any) -> Any:
    """Text, a finite number, true/false or null; the column the model reads decides the rest
    (`serving.engine`). One check per value, so that an error's path ends at the attribute."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value
    raise ValueError("an attribute is text, a number, true/false or null")


AttributeName = Annotated[str, Field(min_length=1, max_length=256)]
AttributeValue = Annotated[
    Any, BeforeValidator(_attribute_value), WithJsonSchema({"type": ["string", "number", "integer", "boolean", "null"]})
]


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
    ordered_at: Timestamp
    # Strict: true or "44.69" are not amounts. The bound is a unit error in any currency, and
    # keeps sums of amounts finite.
    amount: Annotated[float, Strict()] = Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)
    status: ShortText | None = None
    category: ShortText | None = None
    currency: Annotated[str, Field(min_length=3, max_length=3)] | None = None


class EventIn(_Strict):
    occurred_at: Timestamp
    event_type: ShortText
    event_id: Identifier | None = None
    channel: ShortText | None = None


class CustomerIn(_Strict):
    customer_id: Identifier
    created_at: Timestamp
    attributes: dict[AttributeName, AttributeValue] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)
    # fail_fast: the first invalid order (event) of a customer ends that list's checks, so a
    # body of thousands of broken items cannot make a response of millions of errors.
    orders: list[OrderIn] = Field(default_factory=list, max_length=MAX_ORDERS_PER_CUSTOMER, fail_fast=True)
    events: list[EventIn] = Field(default_factory=list, max_length=MAX_EVENTS_PER_CUSTOMER, fail_fast=True)


class ScoreRequest(_Strict):
    as_of: Timestamp | None = Field(
        default=None, description="Cut-off instant; default: now, rounded up to the next whole minute (shares query plans)."
    )
    customers: list[CustomerIn] = Field(min_length=1)

    @field_validator("as_of")
    @classmethod
    def _as_of_not_future(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _not_future(value)


def timestamp_problems(customers: list[CustomerIn]) -> list[tuple[tuple[str | int, ...], str]]:
    """(field path, message) of the customers' timestamps beyond `latest_allowed()` or outside
    datetime's years in UTC (created_at, ordered_at, occurred_at), in request order."""
    limit = latest_allowed()
    problems: list[tuple[tuple[str | int, ...], str]] = []

    def check(value: datetime, *loc: str | int) -> None:
        try:
            if utc_naive(value) > limit:
                problems.append((("body", *loc), FUTURE_TIMESTAMP))
        except ValueError as exc:
            problems.append((("body", *loc), str(exc)))

    for i, customer in enumerate(customers):
        check(customer.created_at, "customers", i, "created_at")
        for j, order in enumerate(customer.orders):
            check(order.ordered_at, "customers", i, "orders", j, "ordered_at")
        for j, event in enumerate(customer.events):
            check(event.occurred_at, "customers", i, "events", j, "occurred_at")
    return problems


class ScoreByIdRequest(_Strict):
    customer_ids: list[LookupId] = Field(min_length=1, max_length=MAX_CUSTOMER_IDS)


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
