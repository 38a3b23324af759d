"""The feature table: every selected family joined onto the eligible customers.

One row per eligible customer (created_at < as_of), key `customer_id`, rows ordered by
`customer_id`, columns in registry order (then each family's own order) whatever order
the caller names the families in, so a model's feature columns are stable.

Adding a family: import its params and function, add a `FeatureParams` field named like
the family, and one `FeatureFamily` line in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import ibis

from features.families.attributes import AttributeParams, attribute_features
from features.families.engagement import EngagementParams, engagement_features
from features.families.funnel import FunnelParams, funnel_features
from features.families.rfm import RfmParams, rfm_features
from features.families.transactions import TransactionParams, transaction_features
from features.population import eligible_customers
from features.profile import Profile

KEY = "customer_id"

#: The version of the feature definitions. Raise it when a column keeps its name but changes
#: meaning: models record the version they were trained with, and serving refuses a model of
#: another version (its inputs would be computed differently from what it learned).
#: 1: until 2026-12-06.
#: 2: engagement totals (`events_count_*`, `days_since_last_event`, `active_days_30d`) count
#:    every event type, not only the known ones.
FEATURE_DEFINITIONS_VERSION = 2

#: Columns that more than one family produces with one definition, so each family is
#: complete on its own; the table keeps the first family's copy. Any other repeated
#: column name is an error (two meanings under one name).
SHARED_COLUMNS: frozenset[str] = frozenset({"days_since_last_order"})


@dataclass(frozen=True)
class FeatureParams:
    """Per-family parameters; the field name is the family name."""

    rfm: RfmParams = field(default_factory=RfmParams)
    transactions: TransactionParams = field(default_factory=TransactionParams)
    engagement: EngagementParams = field(default_factory=EngagementParams)
    funnel: FunnelParams = field(default_factory=FunnelParams)
    attributes: AttributeParams = field(default_factory=AttributeParams)


FamilyFunction = Callable[[Profile, datetime, Any], ibis.Table]


@dataclass(frozen=True)
class FeatureFamily:
    name: str  # also the FeatureParams field holding its params
    build: FamilyFunction


#: Every family, in output column order.
FAMILIES: tuple[FeatureFamily, ...] = (
    FeatureFamily("rfm", rfm_features),
    FeatureFamily("transactions", transaction_features),
    FeatureFamily("engagement", engagement_features),
    FeatureFamily("funnel", funnel_features),
    FeatureFamily("attributes", attribute_features),
)


def family_names() -> tuple[str, ...]:
    return tuple(f.name for f in FAMILIES)


def _selected_families(families: Sequence[str] | None) -> tuple[FeatureFamily, ...]:
    if families is None:
        return FAMILIES
    if isinstance(families, str):
        families = [families]  # a bare name would otherwise be read letter by letter
    unknown = sorted(set(families) - set(family_names()))
    if unknown:
        raise ValueError(f"unknown feature families {unknown}; known: {', '.join(family_names())}")
    if not families:
        raise ValueError("select at least one feature family")
    wanted = set(families)
    return tuple(f for f in FAMILIES if f.name in wanted)


def family_tables(
    profile: Profile,
    as_of: datetime,
    params: FeatureParams = FeatureParams(),
    families: Sequence[str] | None = None,
) -> tuple[tuple[str, ibis.Table], ...]:
    """(family name, table) for each selected family, in registry order: `customer_id` and
    the columns the feature table takes from that family (a shared column from its first
    family only). Each table has one row per eligible customer, in no particular order.

    `build_features` joins these onto the eligible customers; online scoring runs them as
    separate statements and puts the columns together itself (`serving.online`).
    Raises ValueError for an unknown family or when two families produce a column of the
    same name that is not in `SHARED_COLUMNS`.
    """
    owner: dict[str, str] = {}
    tables = []
    for family in _selected_families(families):
        part = family.build(profile, as_of, getattr(params, family.name))
        clashes = [c for c in part.columns if c in owner and c not in SHARED_COLUMNS]
        if clashes:
            raise ValueError(
                f"feature family '{family.name}' repeats column(s) "
                + ", ".join(f"{c} (from '{owner[c]}')" for c in clashes)
            )
        new_columns = [c for c in part.columns if c != KEY and c not in owner]
        owner.update({c: family.name for c in new_columns})
        tables.append((family.name, part.select(KEY, *new_columns)))
    return tuple(tables)


def build_features(
    profile: Profile,
    as_of: datetime,
    params: FeatureParams = FeatureParams(),
    families: Sequence[str] | None = None,
) -> ibis.Table:
    """The feature table at `as_of` (an Ibis expression; nothing runs until it is executed).

    families: names from `family_names()`; None means all. Raises ValueError as
    `family_tables` does.
    """
    table = eligible_customers(profile, as_of).select(KEY)
    for _, part in family_tables(profile, as_of, params, families):
        # Every family already has one row per eligible customer; the left join keeps
        # the row set exactly that of `eligible_customers` even if one did not.
        right = part.select(*[c for c in part.columns if c != KEY], _family_key=part[KEY])
        table = table.left_join(right, table[KEY] == right._family_key).drop("_family_key")
    return table.order_by(KEY)


def feature_columns(table: ibis.Table) -> tuple[str, ...]:
    """Model inputs: every column but the key, in table order."""
    return tuple(c for c in table.columns if c != KEY)


def categorical_feature_columns(table: ibis.Table) -> tuple[str, ...]:
    """Feature columns a model must encode as categories (strings and booleans)."""
    schema = table.schema()
    return tuple(c for c in feature_columns(table) if schema[c].is_string() or schema[c].is_boolean())
