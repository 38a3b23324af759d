"""Time helpers shared by every family and label.

Backends disagree on date-difference functions (DuckDB's `datediff` counts boundaries,
Spark's rounds differently), so day gaps are computed explicitly from epoch seconds.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import ibis

SECONDS_PER_DAY = 86_400

_DURATION = re.compile(r"^\s*(\d+)\s*([dwm])\s*$", re.IGNORECASE)


def to_utc_naive(value: datetime | date | str) -> datetime:
    """Parse an as-of instant: ISO strings and dates are UTC midnight; aware values convert to UTC."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"'{value}' is not an ISO date or timestamp (e.g. 2025-07-01)") from exc
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def parse_horizon(text: str | int) -> int:
    """Horizon in days from '90d', '13w' or a bare number of days. ('m' is 30 days.)"""
    if isinstance(text, int):
        days = text
    else:
        match = _DURATION.match(str(text)) if not str(text).strip().isdigit() else None
        if str(text).strip().isdigit():
            days = int(str(text).strip())
        elif match:
            n, unit = int(match.group(1)), match.group(2).lower()
            days = n * {"d": 1, "w": 7, "m": 30}[unit]
        else:
            raise ValueError(f"horizon '{text}' is not a duration like 90d, 13w or 3m")
    if days <= 0:
        raise ValueError(f"horizon must be positive, got {days} days")
    return days


def horizon_end(as_of: datetime, horizon_days: int) -> datetime:
    return as_of + timedelta(days=horizon_days)


def day_number(ts: ibis.TimestampValue) -> ibis.IntegerValue:
    """Whole UTC days since 1970-01-01: the calendar day of a timestamp, comparable across backends."""
    return (ts.epoch_seconds() // SECONDS_PER_DAY).cast("int64")


def days_between(later: ibis.TimestampValue, earlier: ibis.TimestampValue) -> ibis.FloatingValue:
    """Exact elapsed days (fractional) between two timestamps."""
    return (later.epoch_seconds() - earlier.epoch_seconds()).cast("float64") / SECONDS_PER_DAY


def as_of_literal(as_of: datetime) -> ibis.TimestampScalar:
    return ibis.literal(to_utc_naive(as_of), type="timestamp")


def days_before(as_of: datetime, days: int) -> ibis.TimestampValue:
    """The instant `days` days before as_of, derived from `as_of_literal` inside the expression.

    Deriving every as_of-dependent value in the expression (not in Python) leaves the as_of
    literal as the only place the instant appears in compiled SQL, so the online scorer can
    compile the feature query once and bind as_of as a parameter per request.
    """
    return as_of_literal(as_of) - ibis.interval(days=days)


def last_observed_day(as_of: datetime) -> ibis.IntegerValue:
    """`as_of_day_number` as an expression of the as_of literal (see `days_before` for why)."""
    return day_number(as_of_literal(as_of) - ibis.interval(microseconds=1))


def as_of_day_number(as_of: datetime) -> int:
    """Calendar day number of the last observed day: the day of the instant just before as_of."""
    last = to_utc_naive(as_of) - timedelta(microseconds=1)
    return (last - datetime(1970, 1, 1)) // timedelta(days=1)
