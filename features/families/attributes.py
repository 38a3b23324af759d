"""Attribute family: every extra customer column ("static tag") becomes a feature by itself.

Naming rule: an attribute feature is `attr_` + the column name made column-safe (lower
case, runs of other characters -> `_`): `industry` -> `attr_industry`, `Company Size` ->
`attr_company_size`. No other family uses the `attr_` prefix, so attribute names can never
collide with behavioural features, whatever the customers table holds. Two source columns
that map to the same name are an error.

By the column's type:

- numeric: as is (integers stay integers; decimals become float64);
- boolean: 0/1 integer (null stays null);
- string (and uuid): kept as a string, to be encoded as a categorical by the model. This
  family does not cap the number of distinct values: `AttributeParams.max_categories` is
  carried for the model's encoder, which groups values outside the top N (learned on the
  training population, so training and serving agree);
- timestamp or date: `attr_<name>_age_days`, exact days from the value to as_of. A value at
  or after as_of is unknown at as_of (point in time), so its age is null;
- a column of nulls only (no type): a float64 null column, so the feature set stays stable;
- anything else (lists, structs, binary, ...): an error naming the column; list it in
  `AttributeParams.exclude_columns` to leave it out.

PII: columns named in `AttributeParams.pii_columns` never appear. Names are compared
case-insensitively after the same column-safe normalisation (`E-Mail` matches `e_mail`,
`First Name` matches `first_name`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import ibis
import ibis.expr.datatypes as dt

from features.population import eligible_customers
from features.profile import Profile
from features.schema import DEFAULT_PII_COLUMNS
from features.timeutil import as_of_literal, days_between, to_utc_naive

ATTRIBUTE_PREFIX = "attr_"

AttributeKind = Literal["numeric", "boolean", "categorical", "age_days", "empty"]


@dataclass(frozen=True)
class AttributeParams:
    """Which customer columns are never features, and the categorical cap for the model's encoder."""

    pii_columns: tuple[str, ...] = DEFAULT_PII_COLUMNS
    max_categories: int = 50
    exclude_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_categories, int) or isinstance(self.max_categories, bool) or self.max_categories < 1:
            raise ValueError(f"AttributeParams.max_categories must be a positive integer, got {self.max_categories!r}")


@dataclass(frozen=True)
class AttributeFeature:
    """How one customer column becomes one feature column."""

    source: str
    column: str
    kind: AttributeKind


#: The suffix of a timestamp attribute's feature (`attr_<name>_age_days`).
AGE_SUFFIX = "_age_days"


def normalise_name(name: str) -> str:
    """Lower case, runs of other characters -> `_` (used for feature names and PII matching)."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _kind_of(name: str, dtype: dt.DataType) -> AttributeKind:
    if dtype.is_boolean():
        return "boolean"
    if dtype.is_numeric():
        return "numeric"
    if dtype.is_string() or dtype.is_uuid():
        return "categorical"
    if dtype.is_timestamp() or dtype.is_date():
        return "age_days"
    if dtype.is_null():
        return "empty"
    raise ValueError(
        f"customers.{name} has type {dtype}, which cannot become a feature "
        "(numbers, booleans, strings and timestamps can); add it to AttributeParams.exclude_columns"
    )


def attribute_plan(profile: Profile, params: AttributeParams = AttributeParams()) -> tuple[AttributeFeature, ...]:
    """The attribute features of this profile, in column order, PII and excluded columns left out."""
    hidden = {normalise_name(n) for n in (*params.pii_columns, *params.exclude_columns)}
    schema = profile.customers.schema()
    plan: list[AttributeFeature] = []
    for source in profile.attribute_columns:
        safe = normalise_name(source)
        if safe in hidden:
            continue
        kind = _kind_of(source, schema[source])
        if kind != "age_days" and safe.endswith(AGE_SUFFIX):
            # Online scoring reads a float `attr_<x>_age_days` feature as the age of a
            # timestamp attribute `<x>` (a model's signature keeps no more): a number of that
            # name would be fed from the wrong request field.
            raise ValueError(
                f"customers.{source} is {schema[source]}, but feature names ending in {AGE_SUFFIX} are the ages of "
                f"timestamp attributes; rename the column (say, to {safe[: -len(AGE_SUFFIX)]}_age) or add it to "
                "AttributeParams.exclude_columns"
            )
        suffix = AGE_SUFFIX if kind == "age_days" else ""
        plan.append(AttributeFeature(source, f"{ATTRIBUTE_PREFIX}{safe or 'unnamed'}{suffix}", kind))
    clashes = sorted(c for c, n in Counter(f.column for f in plan).items() if n > 1)
    if clashes:
        sources = [f.source for f in plan if f.column in clashes]
        raise ValueError(f"customer columns {sources} map to the same feature name(s) {clashes}; rename one")
    return tuple(plan)


def _feature(value: ibis.Value, kind: AttributeKind, cutoff: ibis.TimestampScalar) -> ibis.Value:
    dtype = value.type()
    if kind == "boolean":
        return value.cast("int64")
    if kind == "numeric":
        return value.cast("float64") if dtype.is_decimal() else value
    if kind == "categorical":
        return value.cast("string")
    if kind == "empty":
        return value.cast("float64")
    # age_days: zone-aware values are read in UTC (the backend session runs in UTC).
    ts = value.cast(dt.Timestamp())
    return ibis.ifelse(ts < cutoff, days_between(cutoff, ts), ibis.null("float64"))


def attribute_features(profile: Profile, as_of: datetime, params: AttributeParams = AttributeParams()) -> ibis.Table:
    """Attribute features at `as_of`: one row per eligible customer (see the module docstring)."""
    plan = attribute_plan(profile, params)
    cutoff = as_of_literal(to_utc_naive(as_of))
    population = eligible_customers(profile, as_of)
    right = profile.customers.select("customer_id", *[f.source for f in plan]).rename(_agg_customer_id="customer_id")
    t = population.left_join(right, population.customer_id == right._agg_customer_id)
    return t.select(
        customer_id=t.customer_id,
        **{f.column: _feature(t[f.source], f.kind, cutoff) for f in plan},
    )
