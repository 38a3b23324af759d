"""Short readable texts for per-record reasons ("142 days since the last order").

`reason_text(feature, value)` turns one feature value into a phrase a marketer can read in a
CRM. Feature names follow the feature families' naming rules (see `features.families.*`), so
templates are matched by pattern: exact names first, then the generated families
(`{type}_count_{w}d`, `days_since_last_{type}`, `orders_{w}d`, `attr_{name}`, ...). A feature no
template knows falls back to "feature = value", so a new column never breaks serving.

Values are what the model saw: numbers (None / NaN when missing) or category strings.
Pure functions, no state: nothing here is pickled with a model.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

#: (singular, plural) nouns of the known event types; unknown types use their name with spaces.
EVENT_NOUNS: dict[str, tuple[str, str]] = {
    "page_view": ("page view", "page views"),
    "pricing_page_view": ("pricing-page view", "pricing-page views"),
    "email_open": ("email open", "email opens"),
    "email_click": ("email click", "email clicks"),
    "form_submit": ("form submission", "form submissions"),
    "content_download": ("content download", "content downloads"),
    "demo_request": ("demo request", "demo requests"),
    "trial_start": ("trial start", "trial starts"),
    "app_login": ("app login", "app logins"),
    "support_ticket": ("support ticket", "support tickets"),
    "complaint": ("complaint", "complaints"),
    "unsubscribe": ("unsubscribe", "unsubscribes"),
    "coupon_redeemed": ("coupon redemption", "coupon redemptions"),
    "event": ("activity", "activities"),
    "events": ("activity", "activities"),
}

FUNNEL_STAGE_TEXT: dict[int, str] = {
    0: "no funnel activity yet",
    1: "engaged (clicked, submitted a form or downloaded content)",
    2: "evaluating (viewed pricing)",
    3: "sales-ready (requested a demo or started a trial)",
}


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def _number(value: Any) -> float | None:
    if _missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _days(value: float) -> str:
    if value < 1:
        return "less than a day"
    days = round(value)
    return "1 day" if days == 1 else f"{days:,} days"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _noun(event_type: str, n: float | None = None) -> str:
    name = event_type.replace("_", " ")
    singular, plural = EVENT_NOUNS.get(event_type, (f"{name} event", f"{name} events"))
    return singular if n is not None and n == 1 else plural


def _trend(value: float) -> str:
    if value <= -0.999:
        return "stopped"
    if value >= 0.999:
        return "started"
    if value > 0.2:
        return "rising"
    if value < -0.2:
        return "falling"
    return "steady"


def _counted(what: Callable[[float], str], window: str) -> Callable[[float | None], str]:
    def text(n: float | None) -> str:
        if not n:
            return f"no {what(0)} in the last {window} days"
        return f"{_count(n)} {what(n)} in the last {window} days"

    return text


# ---- exact names -----------------------------------------------------------------------

_NUMERIC: dict[str, Callable[[float], str]] = {
    "frequency": lambda v: f"{_count(v)} repeat purchase{'s' if v != 1 else ''}",
    "recency_days": lambda v: f"{_days(v)} between the first and the last purchase",
    "T_days": lambda v: f"first purchase {_days(v)} ago",
    "monetary_value": lambda v: f"repeat purchases average {_money(v)}",
    "orders_count": lambda v: f"{_count(v)} order{'s' if v != 1 else ''} in total",
    "revenue_total": lambda v: f"{_money(v)} spent in total",
    "avg_order_value": lambda v: f"average order value {_money(v)}",
    "days_since_last_order": lambda v: f"{_days(v)} since the last order",
    "days_since_first_order": lambda v: f"first order {_days(v)} ago",
    "rfm_recency_score": lambda v: f"RFM recency score {v:.0f} of 5",
    "rfm_frequency_score": lambda v: f"RFM frequency score {v:.0f} of 5",
    "rfm_monetary_score": lambda v: f"RFM monetary score {v:.0f} of 5",
    "purchase_gap_mean_days": lambda v: f"usually {_days(v)} between purchases",
    "purchase_gap_std_days": lambda v: f"purchase gaps vary by {_days(v)}",
    "purchase_overdue_ratio": lambda v: f"{v:.1f}x the usual gap since the last purchase",
    "refund_share": lambda v: f"{v:.0%} of orders refunded",
    "distinct_categories": lambda v: f"bought in {_count(v)} categor{'y' if v == 1 else 'ies'}",
    "funnel_stage": lambda v: FUNNEL_STAGE_TEXT.get(int(v), f"funnel stage {v:.0f}"),
    "has_demo_request": lambda v: "requested a demo" if v else "no demo request",
    "has_trial_start": lambda v: "started a trial" if v else "no trial started",
    "days_since_first_demo_or_trial": lambda v: f"first demo or trial request {_days(v)} ago",
    "days_since_created": lambda v: f"profile created {_days(v)} ago",
    "days_since_last_activity": lambda v: f"{_days(v)} since the last activity",
    "unsubscribed": lambda v: "unsubscribed from emails" if v else "still subscribed to emails",
}

#: Text for a missing value of an exact name (the feature is null when the thing never happened).
_MISSING: dict[str, str] = {
    "days_since_last_order": "no order yet",
    "days_since_first_order": "no order yet",
    "frequency": "no purchase yet",
    "recency_days": "no purchase yet",
    "T_days": "no purchase yet",
    "monetary_value": "no purchase yet",
    "avg_order_value": "no order yet",
    "purchase_gap_mean_days": "fewer than two purchase days",
    "purchase_gap_std_days": "fewer than three purchase days",
    "purchase_overdue_ratio": "no usual purchase rhythm yet",
    "refund_share": "no order yet",
    "days_since_first_demo_or_trial": "no demo or trial request",
    "days_since_last_activity": "no activity yet",
    "rfm_recency_score": "no purchase yet",
    "rfm_frequency_score": "no purchase yet",
    "rfm_monetary_score": "no purchase yet",
}

_CATEGORICAL: dict[str, Callable[[str], str]] = {
    "rfm_segment": lambda v: f"RFM segment '{v.replace('_', ' ')}'",
    "top_category": lambda v: f"buys mostly '{v}'",
}

# ---- patterns (first match wins; the exact names above are tried first) -------------------

_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str], float | None], str]]] = [
    (re.compile(r"^orders_(\d+)d$"), lambda m, v: _counted(lambda n: "order" if n == 1 else "orders", m[1])(v)),
    (re.compile(r"^revenue_(\d+)d$"), lambda m, v: f"{_money(v or 0)} revenue in the last {m[1]} days"),
    (
        re.compile(r"^(orders|revenue)_trend_(\d+)d$"),
        lambda m, v: f"{m[1]} {_trend(v or 0)} (last {m[2]} days vs the {m[2]} before)",
    ),
    (
        re.compile(r"^pricing_page_views_(\d+)d$"),
        lambda m, v: _counted(lambda n: _noun("pricing_page_view", n), m[1])(v),
    ),
    (re.compile(r"^complaints_(\d+)d$"), lambda m, v: _counted(lambda n: _noun("complaint", n), m[1])(v)),
    (re.compile(r"^support_tickets_(\d+)d$"), lambda m, v: _counted(lambda n: _noun("support_ticket", n), m[1])(v)),
    (
        re.compile(r"^silent_(\d+)d$"),
        lambda m, v: f"no activity in the last {m[1]} days" if v else f"active in the last {m[1]} days",
    ),
    (re.compile(r"^active_days_(\d+)d$"), lambda m, v: f"active on {_count(v or 0)} of the last {m[1]} days"),
    (re.compile(r"^events_count_(\d+)d$"), lambda m, v: _counted(lambda n: _noun("events", n), m[1])(v)),
    (re.compile(r"^(\w+?)_count_(\d+)d$"), lambda m, v: _counted(lambda n: _noun(m[1], n), m[2])(v)),
    (
        re.compile(r"^days_since_last_(\w+)$"),
        lambda m, v: f"no {_noun(m[1], 1)} yet" if v is None else f"{_days(v)} since the last {_noun(m[1], 1)}",
    ),
    (
        re.compile(r"^(\w+?)_trend_(\d+)d$"),
        lambda m, v: f"{_noun(m[1])} {_trend(v or 0)} (last {m[2]} days vs the {m[2]} before)",
    ),
    (
        re.compile(r"^attr_(\w+)_age_days$"),
        lambda m, v: f"{m[1].replace('_', ' ')} unknown" if v is None else f"{m[1].replace('_', ' ')} {_days(v)} ago",
    ),
]


def _plain(value: Any) -> str:
    if _missing(value):
        return "unknown"
    number = _number(value)
    if number is not None and not isinstance(value, str):
        return _count(number)
    return str(value)


@functools.lru_cache(maxsize=4096)
def _formatter(feature: str) -> Callable[[Any], str]:
    """The text function of one feature (pattern matching done once per feature name)."""
    if feature in _CATEGORICAL:
        template = _CATEGORICAL[feature]
        absent = f"no {feature.replace('_', ' ')}"
        return lambda value: absent if _missing(value) else template(str(value))
    if feature.startswith("attr_") and not feature.endswith("_age_days"):
        label = feature[len("attr_") :].replace("_", " ")
        return lambda value: f"{label}: {_plain(value)}"
    if feature in _NUMERIC:
        numeric = _NUMERIC[feature]
        absent = _MISSING.get(feature, f"{feature.replace('_', ' ')} unknown")

        def exact(value: Any) -> str:
            number = _number(value)
            return absent if number is None else numeric(number)

        return exact
    for pattern, template in _PATTERNS:
        match = pattern.match(feature)
        if match:
            return lambda value, m=match, t=template: t(m, _number(value))
    return lambda value: f"{feature} = {_plain(value)}"


def reason_text(feature: str, value: Any) -> str:
    """A short readable phrase for one feature value (falls back to "feature = value")."""
    try:
        return _formatter(feature)(value)
    except (TypeError, ValueError, KeyError):
        return f"{feature} = {_plain(value)}"  # an unexpected value type: still readable
