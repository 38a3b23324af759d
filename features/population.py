"""Who is scored at an as-of instant."""

from __future__ import annotations

from datetime import datetime

import ibis

from features.profile import Profile
from features.schema import COMPLETED_STATUS
from features.timeutil import as_of_literal


def completed_orders(profile: Profile) -> ibis.Table:
    """Orders that count as purchases: status `completed`, or no status given."""
    o = profile.orders
    return o.filter(o.status.isnull() | (o.status.lower() == COMPLETED_STATUS))


def eligible_customers(profile: Profile, as_of: datetime) -> ibis.Table:
    """Profiles that exist before as_of (customer_id, created_at): one feature row each."""
    c = profile.customers
    return c.filter(c.created_at < as_of_literal(as_of)).select("customer_id", "created_at")


def restrict_to_before(profile: Profile, cutoff: datetime) -> Profile:
    """The profile as it was known just before `cutoff`: nothing at or after it is readable.

    Training at as_of T uses this so no code path can read a row dated >= T.
    """
    limit = as_of_literal(cutoff)
    return Profile(
        customers=profile.customers.filter(profile.customers.created_at < limit),
        orders=profile.orders.filter(profile.orders.ordered_at < limit),
        events=profile.events.filter(profile.events.occurred_at < limit),
        attribute_columns=profile.attribute_columns,
        currency=profile.currency,
    )
