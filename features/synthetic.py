"""Synthetic unified profiles with known ground truth.

The generator simulates a well-defined latent process and records, beside the
observable ``customers`` / ``orders`` / ``events`` tables, the exact latent state
and the oracle probabilities in a ``truth`` table. Later models are tested
against it: a model can at best match the oracle, and the BG/NBD and
Gamma-Gamma parameters used here must be recovered by the LTV fitters.

The process (every rate is per day; time is measured in days from DATA_START):

1. **Arrivals.** Leads (profiles) arrive over [DATA_START, DATA_END) with an
   intensity that grows exponentially, has a yearly cycle, a weekend dip and a
   working-hours profile. Attributes are drawn independently per profile.
2. **Intent.** ``intent = intercept + sum(attribute effects) + Normal(0, sd)``.
3. **Lead funnel.** A continuous-time Markov chain over the stages
   aware -> engaged -> evaluating -> converted (absorbing), any of them -> lost,
   evaluating -> engaged (stalls) and, rarely, lost -> engaged (re-engagement).
   A transition rate is ``base * exp(elasticity * intent)``. Conversion is the
   first completed order. ``conversion_probability`` gives the exact chance of
   converting within a horizon from a stage (matrix exponential of the generator).
4. **Purchases (after conversion).** Pure BG/NBD: ``lambda ~ Gamma(r, rate=alpha)``
   (purchases per day), ``p ~ Beta(a, b)``; repeat purchases are Poisson(lambda)
   and after each *repeat* purchase the customer dies with probability p (as in
   Fader, Hardie & Lee 2005: a customer with x = 0 repeats is alive). Order values
   are Gamma-Gamma: ``nu ~ Gamma(q, rate=gamma)``, each value ``~ Gamma(p, rate=nu)``.
   lambda, p and nu are independent of intent and attributes, so the converted
   population is an exact BG/NBD / Gamma-Gamma sample. Purchases are in continuous
   time: two purchases of one customer on the same calendar day (rare with the
   defaults) merge into one transaction in the day-based BG/NBD statistics.
5. **Behaviour.** Events are Poisson processes. While a lead, the rates depend on
   the current stage and (mildly) on intent, plus point events on entering a
   stage (form_submit, demo_request, trial_start, ...). While an alive customer,
   engagement rates scale with ``(lambda / mean lambda) ** elasticity`` and
   support_ticket / complaint rates with ``(p / mean p) ** elasticity``; after the
   latent death the rates fade exponentially to a small residual. Unsubscribe is
   a single event, much more likely after loss or death; email events stop after it.
6. **Noise orders.** A few refunded / cancelled orders follow completed ones
   (never precede them, so they do not leak future purchases).

Everything observable before an instant is a noisy function of the latent path up
to that instant, and the future depends on the past only through the latent state
(stage and intent for leads; alive, lambda, p for customers). The truth table's
probabilities condition on exactly that state, so no model beats them in expectation.

Timestamps are naive UTC with millisecond precision (stored as ``timestamp('us')``).
Only numpy and pyarrow are used; no file I/O here (see ``features.synthetic_io``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import KNOWN_EVENT_TYPES

__all__ = [
    "DATA_END",
    "DATA_START",
    "EVENT_CHANNELS",
    "FUNNEL_STAGES",
    "TRUTH_AS_OF",
    "TRUTH_HORIZON_DAYS",
    "SyntheticParams",
    "SyntheticProfile",
    "conversion_probability",
    "generate_profile",
]

#: First instant of observed data (naive UTC).
DATA_START = datetime(2023, 7, 1)
#: Exclusive end of observed data (naive UTC): every timestamp is < DATA_END.
DATA_END = datetime(2025, 7, 1)
#: Horizon of the oracle probabilities and realised labels in the truth table.
TRUTH_HORIZON_DAYS = 90
#: Cut-off of the truth table: the window [TRUTH_AS_OF, TRUTH_AS_OF + 90 d) ends at DATA_END.
TRUTH_AS_OF = DATA_END - timedelta(days=TRUTH_HORIZON_DAYS)

#: Lead-funnel stages of the latent Markov chain (order fixes the integer codes).
FUNNEL_STAGES: tuple[str, ...] = ("aware", "engaged", "evaluating", "converted", "lost")
_CONVERTED = FUNNEL_STAGES.index("converted")
_LOST = FUNNEL_STAGES.index("lost")

#: Channel of each event type (fixed: the channel carries no extra signal).
EVENT_CHANNELS: dict[str, str] = {
    "page_view": "web",
    "pricing_page_view": "web",
    "email_open": "email",
    "email_click": "email",
    "form_submit": "web",
    "content_download": "web",
    "demo_request": "web",
    "trial_start": "app",
    "app_login": "app",
    "support_ticket": "service",
    "complaint": "service",
    "unsubscribe": "email",
    "coupon_redeemed": "web",
}
_EMAIL_TYPES = ("email_open", "email_click")

_MS_PER_DAY = 86_400_000
_SPAN_DAYS = (DATA_END - DATA_START).days
_TRUTH_AS_OF_DAYS = float((TRUTH_AS_OF - DATA_START).days)
_EPOCH = datetime(1970, 1, 1)
_DATA_START_MS = int((DATA_START - _EPOCH).total_seconds()) * 1000

# (value, share, intent effect)
Level = tuple[str, float, float]


@dataclass(frozen=True)
class SyntheticParams:
    """Every parameter of the latent process. Rates are per day unless stated.

    The defaults give, per profile, about 1 order (incl. refunded / cancelled) and
    40 events, with about 36 % of the leads converting by DATA_END; ``benchmark()``
    gives about 10 orders and 30 events per profile.
    """

    # --- arrivals ---------------------------------------------------------------
    #: Lead arrival intensity grows as exp(annual_growth * years since DATA_START).
    annual_growth: float = 0.4
    #: Relative amplitude of the yearly cycle (peak in October, trough in April).
    seasonality_amplitude: float = 0.15
    #: Day of year of the seasonal peak.
    seasonality_peak_day: int = 280
    #: Arrival intensity on Saturdays and Sundays relative to weekdays.
    weekend_factor: float = 0.35
    #: Relative arrival intensity per UTC hour of day (24 values).
    arrival_hour_weights: tuple[float, ...] = (
        1, 1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 8, 8, 8, 7, 6, 4, 3, 2, 2, 1, 1,
    )  # fmt: skip

    # --- attributes: (value, share, effect on intent) -----------------------------
    industries: tuple[Level, ...] = (
        ("software", 0.22, 0.5),
        ("financial_services", 0.14, 0.3),
        ("healthcare", 0.12, 0.1),
        ("retail", 0.14, 0.0),
        ("manufacturing", 0.12, -0.2),
        ("media", 0.08, -0.1),
        ("education", 0.08, -0.4),
        ("other", 0.10, -0.3),
    )
    company_sizes: tuple[Level, ...] = (
        ("1-10", 0.25, -0.4),
        ("11-50", 0.25, 0.0),
        ("51-200", 0.20, 0.2),
        ("201-1000", 0.15, 0.3),
        ("1001-5000", 0.10, 0.1),
        ("5000+", 0.05, -0.1),
    )
    regions: tuple[Level, ...] = (
        ("north_america", 0.42, 0.1),
        ("emea", 0.33, 0.0),
        ("apac", 0.17, -0.1),
        ("latam", 0.08, -0.2),
    )
    acquisition_channels: tuple[Level, ...] = (
        ("organic_search", 0.28, 0.0),
        ("paid_search", 0.20, 0.1),
        ("referral", 0.10, 0.6),
        ("social", 0.15, -0.4),
        ("email", 0.10, -0.1),
        ("events", 0.07, 0.4),
        ("partner", 0.10, 0.3),
    )
    job_levels: tuple[Level, ...] = (
        ("individual_contributor", 0.35, -0.3),
        ("manager", 0.30, 0.1),
        ("director", 0.18, 0.3),
        ("vp", 0.10, 0.5),
        ("c_level", 0.07, 0.4),
    )
    #: intent = intent_intercept + sum of attribute effects + Normal(0, intent_noise_sd).
    #: The noise is small on purpose: intent must be learnable from what a CRM can see
    #: (attributes, behaviour), or no model could approach the oracle that knows it.
    intent_intercept: float = -0.2
    intent_noise_sd: float = 0.1

    # --- lead funnel (continuous-time Markov chain) -------------------------------
    #: (from, to, base rate per day, intent elasticity): rate = base * exp(elasticity * intent).
    #: "converted" must be absorbing; "lost" is absorbing unless given transitions (by default
    #: a few lost leads re-engage, so silence lowers the conversion chance without zeroing it).
    funnel_transitions: tuple[tuple[str, str, float, float], ...] = (
        ("aware", "engaged", 0.030, 1.0),
        ("aware", "lost", 0.020, -1.0),
        ("engaged", "evaluating", 0.025, 1.0),
        ("engaged", "lost", 0.015, -1.0),
        ("evaluating", "converted", 0.040, 1.0),
        ("evaluating", "engaged", 0.010, -0.5),
        ("evaluating", "lost", 0.015, -1.0),
        ("lost", "engaged", 0.0015, 0.5),
    )
    #: (stage, event type, rate per day at intent 0) while a lead sits in the stage.
    lead_event_rates: tuple[tuple[str, str, float], ...] = (
        ("aware", "page_view", 0.10),
        ("aware", "email_open", 0.06),
        ("aware", "email_click", 0.008),
        ("aware", "content_download", 0.006),
        ("aware", "pricing_page_view", 0.003),
        ("engaged", "page_view", 0.35),
        ("engaged", "email_open", 0.12),
        ("engaged", "email_click", 0.04),
        ("engaged", "content_download", 0.04),
        ("engaged", "pricing_page_view", 0.03),
        ("engaged", "form_submit", 0.01),
        ("evaluating", "page_view", 0.50),
        ("evaluating", "pricing_page_view", 0.15),
        ("evaluating", "content_download", 0.06),
        ("evaluating", "email_open", 0.12),
        ("evaluating", "email_click", 0.05),
        ("evaluating", "form_submit", 0.02),
        ("evaluating", "app_login", 0.25),
        ("evaluating", "support_ticket", 0.005),
        ("lost", "page_view", 0.01),
        ("lost", "email_open", 0.015),
        ("lost", "email_click", 0.001),
    )
    #: Lead event rates are multiplied by exp(lead_event_intent_elasticity * intent).
    lead_event_intent_elasticity: float = 0.3
    #: (stage, event type, probability, mean delay in days): point events on entering a stage
    #: ("aware" is entered at created_at).
    stage_entry_events: tuple[tuple[str, str, float, float], ...] = (
        ("aware", "form_submit", 0.75, 0.001),
        ("engaged", "form_submit", 0.40, 0.5),
        ("engaged", "content_download", 0.50, 0.2),
        ("evaluating", "demo_request", 0.60, 0.5),
        ("evaluating", "trial_start", 0.45, 1.0),
    )

    # --- purchases: BG/NBD (time unit: day) ----------------------------------------
    #: lambda ~ Gamma(shape=bgnbd_r, rate=bgnbd_alpha): repeat purchases per day.
    bgnbd_r: float = 0.5
    bgnbd_alpha: float = 50.0
    #: p ~ Beta(bgnbd_a, bgnbd_b): death probability after each repeat purchase.
    bgnbd_a: float = 0.8
    bgnbd_b: float = 2.5

    # --- order values: Gamma-Gamma (USD) -----------------------------------------------
    #: nu ~ Gamma(shape=gg_q, rate=gg_gamma); each order value ~ Gamma(shape=gg_p, rate=nu).
    #: Population mean order value = gg_p * gg_gamma / (gg_q - 1).
    gg_p: float = 6.0
    gg_q: float = 3.8
    gg_gamma: float = 15.0

    # --- behaviour of customers ---------------------------------------------------------
    #: (event type, rate per day for an alive customer with lambda = mean lambda).
    customer_engagement_rates: tuple[tuple[str, float], ...] = (
        ("app_login", 0.36),
        ("page_view", 0.24),
        ("email_open", 0.18),
        ("email_click", 0.045),
        ("pricing_page_view", 0.012),
        ("content_download", 0.012),
        ("coupon_redeemed", 0.012),
        ("form_submit", 0.006),
    )
    #: Engagement rates scale with (lambda / mean lambda) ** engagement_lambda_elasticity.
    engagement_lambda_elasticity: float = 1.0
    #: (event type, rate per day for an alive customer with p = mean p).
    customer_service_rates: tuple[tuple[str, float], ...] = (
        ("support_ticket", 0.004),
        ("complaint", 0.0008),
    )
    #: Service rates scale with (p / mean p) ** service_dropout_elasticity.
    service_dropout_elasticity: float = 1.0
    #: After death, customer event rates decay as exp(-days since death / engagement_fade_days) ...
    engagement_fade_days: float = 5.0
    #: ... towards this share of the alive rate (dormant customers still open the odd email).
    dead_residual_share: float = 0.01
    #: Unsubscribe hazard per day while a lead is not lost / a customer is alive.
    unsubscribe_hazard_active: float = 0.0004
    #: Probability of unsubscribing after the lead is lost or the customer dies ...
    unsubscribe_prob_after_loss: float = 0.3
    #: ... after an exponential delay with this mean (days).
    unsubscribe_delay_days: float = 45.0
    #: Multiplies every Poisson event rate (not the point-event probabilities, not purchases).
    activity_scale: float = 1.0

    # --- orders ---------------------------------------------------------------------------
    #: (category, share) of order categories.
    order_categories: tuple[tuple[str, float], ...] = (
        ("subscription", 0.40),
        ("add_on", 0.25),
        ("services", 0.15),
        ("training", 0.10),
        ("hardware", 0.10),
    )
    #: Probability that an order is in the customer's favourite category (else drawn by share).
    category_loyalty: float = 0.6
    #: Probability that a completed order is followed by a refunded / cancelled order.
    refunded_order_prob: float = 0.03
    cancelled_order_prob: float = 0.02
    #: Mean delay (days) of such an order after the completed one.
    noise_order_delay_days: float = 3.0

    def __post_init__(self) -> None:
        known_stages = set(FUNNEL_STAGES)
        known_types = set(KNOWN_EVENT_TYPES)
        for name in ("industries", "company_sizes", "regions", "acquisition_channels", "job_levels"):
            levels = getattr(self, name)
            _check(len(levels) > 0 and all(s >= 0 for _, s, _ in levels), f"{name}: shares must be >= 0")
            _check(sum(s for _, s, _ in levels) > 0, f"{name}: shares must not all be 0")
        for src, dst, rate, _ in self.funnel_transitions:
            _check(src in known_stages and dst in known_stages, f"unknown funnel stage in {src}->{dst}")
            _check(src != dst and rate >= 0, f"bad funnel transition {src}->{dst}")
            _check(src != "converted", "converted is absorbing")
        pairs = [(src, dst) for src, dst, _, _ in self.funnel_transitions]
        _check(len(set(pairs)) == len(pairs), "a funnel transition is listed twice")
        for stage, etype, rate in self.lead_event_rates:
            _check(stage in known_stages and stage != "converted", f"bad stage {stage!r} in lead_event_rates")
            _check(etype in known_types and rate >= 0, f"bad lead event rate {etype!r}")
        for stage, etype, prob, delay in self.stage_entry_events:
            _check(stage in known_stages and stage != "converted", f"bad stage {stage!r} in stage_entry_events")
            _check(etype in known_types and 0 <= prob <= 1 and delay >= 0, f"bad entry event {etype!r}")
        for etype, rate in (*self.customer_engagement_rates, *self.customer_service_rates):
            _check(etype in known_types and rate >= 0, f"bad customer event rate {etype!r}")
        for name in ("bgnbd_r", "bgnbd_alpha", "bgnbd_a", "bgnbd_b", "gg_p", "gg_q", "gg_gamma"):
            _check(getattr(self, name) > 0, f"{name} must be > 0")
        _check(len(self.arrival_hour_weights) == 24 and min(self.arrival_hour_weights) >= 0, "24 hour weights")
        _check(self.engagement_fade_days > 0 and self.unsubscribe_delay_days > 0, "fade/delay days must be > 0")
        for name in (
            "dead_residual_share",
            "unsubscribe_prob_after_loss",
            "category_loyalty",
            "refunded_order_prob",
            "cancelled_order_prob",
            "weekend_factor",
        ):
            _check(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1]")
        _check(0 <= self.seasonality_amplitude < 1, "seasonality_amplitude must be in [0, 1)")
        _check(self.activity_scale >= 0 and self.intent_noise_sd >= 0, "activity_scale, intent_noise_sd >= 0")
        _check(self.noise_order_delay_days >= 0 and self.unsubscribe_hazard_active >= 0, "must be >= 0")
        _check(len(self.order_categories) > 0 and sum(s for _, s in self.order_categories) > 0, "categories")

    @classmethod
    def benchmark(cls) -> SyntheticParams:
        """Heavier activity for the feature benchmarks.

        With 1,000,000 customers this gives about 10,000,000 orders and
        30,000,000 events (about 10 orders and 30 events per profile): more
        leads convert, customers buy more often and die less.
        """
        return cls(
            intent_intercept=0.6,
            bgnbd_r=0.8,
            bgnbd_alpha=10.0,
            bgnbd_a=0.6,
            bgnbd_b=12.0,
            activity_scale=0.21,
        )

    @property
    def mean_lambda(self) -> float:
        """Population mean purchase rate per day, r / alpha."""
        return self.bgnbd_r / self.bgnbd_alpha

    @property
    def mean_dropout(self) -> float:
        """Population mean dropout probability, a / (a + b)."""
        return self.bgnbd_a / (self.bgnbd_a + self.bgnbd_b)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"SyntheticParams: {message}")


@dataclass(frozen=True)
class SyntheticProfile:
    """The generated tables and how they were made.

    Ids are plain strings; low-cardinality string columns (attributes, status,
    category, currency, event_type, channel, stages) are dictionary-encoded
    strings. Parquet files written by ``features.synthetic_io`` read back as plain
    strings.
    """

    customers: pa.Table
    orders: pa.Table
    events: pa.Table
    truth: pa.Table
    params: SyntheticParams
    seed: int
    n_customers: int
    data_start: datetime = field(default=DATA_START)
    data_end: datetime = field(default=DATA_END)
    truth_as_of: datetime = field(default=TRUTH_AS_OF)
    truth_horizon_days: int = field(default=TRUTH_HORIZON_DAYS)


# Independent random streams, one per component, spawned in this order from the seed:
# changing how one component draws never shifts another (e.g. PII never touches outcomes).
_STREAMS = ("arrivals", "attributes", "pii", "funnel", "latent", "purchases", "orders", "events")


def generate_profile(
    n_customers: int, seed: int, params: SyntheticParams | None = None
) -> SyntheticProfile:
    """Simulate ``n_customers`` profiles with their orders, events and ground truth.

    Deterministic for (n_customers, seed, params). Fully vectorised.
    """
    if n_customers < 1:
        raise ValueError("n_customers must be >= 1")
    params = params or SyntheticParams()
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    rngs = {name: np.random.Generator(np.random.PCG64(ss)) for name, ss in zip(_STREAMS, children)}
    n = n_customers

    created = _arrival_times(rngs["arrivals"], n, params)
    attrs, intent = _attributes(rngs["attributes"], n, params)
    funnel = _simulate_funnel(rngs["funnel"], created, intent, params)

    # Latent customer parameters, drawn for every profile and used after conversion.
    lat = rngs["latent"]
    lam = lat.gamma(params.bgnbd_r, 1.0 / params.bgnbd_alpha, n)
    p_drop = np.clip(lat.beta(params.bgnbd_a, params.bgnbd_b, n), 1e-12, 1.0)
    nu = lat.gamma(params.gg_q, 1.0 / params.gg_gamma, n)

    purchases = _simulate_purchases(rngs["purchases"], funnel.converted_at, lam, p_drop)
    orders = _build_orders(rngs["orders"], purchases, nu, params)
    events = _simulate_events(rngs["events"], created, intent, funnel, purchases, lam, p_drop, params)

    id_width = _id_width(n, 7)
    customer_ids = _format_ids("c-", np.arange(1, n + 1), id_width)
    created_ms = _to_ms(created)
    customers = pa.table(
        {
            "customer_id": customer_ids,
            "created_at": _ts(created_ms),
            **attrs,
            **_pii(rngs["pii"], n),
        }
    )
    truth = _truth_table(customer_ids, created_ms, intent, funnel, purchases, orders, lam, p_drop, nu, params)
    return SyntheticProfile(
        customers=customers,
        orders=_orders_table(orders, id_width, params),
        events=_events_table(events, id_width),
        truth=truth,
        params=params,
        seed=seed,
        n_customers=n,
    )


# --------------------------------------------------------------------------- arrivals


def _arrival_times(rng: np.random.Generator, n: int, params: SyntheticParams) -> np.ndarray:
    """Sorted creation times (days since DATA_START), so ids follow creation order."""
    day = np.arange(_SPAN_DAYS, dtype=np.float64)
    doy = np.array([(DATA_START + timedelta(days=int(d))).timetuple().tm_yday for d in range(_SPAN_DAYS)])
    weekday = (DATA_START.weekday() + np.arange(_SPAN_DAYS)) % 7
    w = np.exp(params.annual_growth * day / 365.25)
    w *= 1.0 + params.seasonality_amplitude * np.cos(2 * np.pi * (doy - params.seasonality_peak_day) / 365.25)
    w *= np.where(weekday >= 5, params.weekend_factor, 1.0)
    hours = np.asarray(params.arrival_hour_weights, dtype=np.float64)
    d = rng.choice(_SPAN_DAYS, size=n, p=w / w.sum())
    h = rng.choice(24, size=n, p=hours / hours.sum())
    t = d + (h + rng.random(n)) / 24.0
    return np.sort(t)


def _attributes(
    rng: np.random.Generator, n: int, params: SyntheticParams
) -> tuple[dict[str, pa.Array], np.ndarray]:
    columns: dict[str, pa.Array] = {}
    intent = np.full(n, params.intent_intercept)
    for column, levels in (
        ("industry", params.industries),
        ("company_size", params.company_sizes),
        ("region", params.regions),
        ("acquisition_channel", params.acquisition_channels),
        ("job_level", params.job_levels),
    ):
        shares = np.array([s for _, s, _ in levels], dtype=np.float64)
        codes = rng.choice(len(levels), size=n, p=shares / shares.sum()).astype(np.int8)
        intent += np.array([e for _, _, e in levels])[codes]
        columns[column] = _dict_array(codes, [v for v, _, _ in levels])
    intent += rng.normal(0.0, params.intent_noise_sd, n)
    return columns, intent


_FIRST_NAMES = (
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard "
    "Susan Joseph Jessica Thomas Sarah Carlos Karen Daniel Lisa Matthew Nancy Anthony Sandra Mark "
    "Ashley Wei Emily Ahmed Fatima Priya Raj Yuki Hiroshi Sofia Lucas Olga Ivan Aisha Kwame Elena "
    "Mateo Chloe Noah Amara Lars Ingrid Pierre Camille"
).split()
_LAST_NAMES = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Clark Lewis Walker Hall Young Nguyen Chen Kim Patel Singh Sato Tanaka Muller Schmidt Rossi "
    "Dubois Novak Silva Costa Okafor Mensah Larsen Jensen Kowalski Ivanova"
).split()
_EMAIL_DOMAINS = (
    "northwind.example acme-corp.example globex.example initech.example umbrella.example "
    "contoso.example fabrikam.example tailspin.example wingtip.example litware.example "
    "adventure-works.example proseware.example woodgrove.example lucerne.example "
    "mail.example inbox.example"
).split()
_AREA_CODES = tuple(str(a) for a in (202, 206, 212, 303, 305, 312, 404, 415, 503, 512, 617, 646, 702, 713))


def _pii(rng: np.random.Generator, n: int) -> dict[str, pa.Array]:
    """Fake email / name / phone, from their own random stream: no relation to anything."""
    first = pc.take(pa.array(_FIRST_NAMES), pa.array(rng.integers(0, len(_FIRST_NAMES), n)))
    last = pc.take(pa.array(_LAST_NAMES), pa.array(rng.integers(0, len(_LAST_NAMES), n)))
    domain = pc.take(pa.array(_EMAIL_DOMAINS), pa.array(rng.integers(0, len(_EMAIL_DOMAINS), n)))
    # A random permutation makes emails unique without encoding the (time-ordered) row number.
    suffix = pc.cast(pa.array(rng.permutation(n) + 1), pa.string())
    email = pc.binary_join_element_wise(pc.utf8_lower(first), ".", pc.utf8_lower(last), suffix, "@", domain, "")
    area = pc.take(pa.array(_AREA_CODES), pa.array(rng.integers(0, len(_AREA_CODES), n)))
    line = pc.utf8_lpad(pc.cast(pa.array(rng.integers(0, 10_000, n)), pa.string()), 4, "0")
    phone = pc.binary_join_element_wise("+1-", area, "-555-", line, "")
    return {"email": email, "name": pc.binary_join_element_wise(first, last, " "), "phone": phone}


# --------------------------------------------------------------------------- funnel


@dataclass(frozen=True)
class _Funnel:
    seg_cust: np.ndarray  # lead-stage segments [seg_start, seg_end), clipped at DATA_END
    seg_stage: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray
    entry_cust: np.ndarray  # entries into a stage (incl. aware at creation)
    entry_stage: np.ndarray
    entry_time: np.ndarray
    converted_at: np.ndarray  # inf when not converted before DATA_END
    first_lost_at: np.ndarray  # inf when never lost before DATA_END
    stage_at_truth: np.ndarray  # -1 when created at or after TRUTH_AS_OF
    stage_at_end: np.ndarray


def _funnel_rates(params: SyntheticParams) -> tuple[np.ndarray, np.ndarray]:
    s = len(FUNNEL_STAGES)
    base = np.zeros((s, s))
    elast = np.zeros((s, s))
    for src, dst, rate, el in params.funnel_transitions:
        i, j = FUNNEL_STAGES.index(src), FUNNEL_STAGES.index(dst)
        base[i, j] = rate
        elast[i, j] = el
    return base, elast


def _simulate_funnel(
    rng: np.random.Generator, created: np.ndarray, intent: np.ndarray, params: SyntheticParams
) -> _Funnel:
    """Jump-by-jump simulation of the CTMC, vectorised over the customers still moving."""
    n = created.size
    base, elast = _funnel_rates(params)
    end = float(_SPAN_DAYS)
    a = _TRUTH_AS_OF_DAYS
    stage = np.zeros(n, dtype=np.int8)
    t = created.copy()
    converted_at = np.full(n, np.inf)
    first_lost_at = np.full(n, np.inf)
    stage_at_truth = np.full(n, -1, dtype=np.int8)
    stage_at_end = np.zeros(n, dtype=np.int8)
    segs: list[tuple[np.ndarray, ...]] = []
    entries = [(np.arange(n), np.zeros(n, dtype=np.int8), created)]
    idx = np.arange(n)
    while idx.size:
        s = stage[idx]
        rates = base[s] * np.exp(elast[s] * intent[idx, None])
        q = rates.sum(axis=1)
        e = rng.standard_exponential(idx.size)
        u = rng.random(idx.size)
        with np.errstate(divide="ignore"):
            t_next = t[idx] + np.where(q > 0, e / np.where(q > 0, q, 1.0), np.inf)
        # First destination whose cumulative rate exceeds u * q (never a zero-rate one).
        nxt = (np.cumsum(rates, axis=1) <= (u * q)[:, None]).sum(axis=1).astype(np.int8)
        t0 = t[idx]
        segs.append((idx, s, t0, np.minimum(t_next, end)))
        covers = (t0 <= a) & (a < t_next)
        stage_at_truth[idx[covers]] = s[covers]
        stays = t_next >= end
        stage_at_end[idx[stays]] = s[stays]
        moving = ~stays
        mi, ms, mt = idx[moving], nxt[moving], t_next[moving]
        stage[mi] = ms
        t[mi] = mt
        entries.append((mi, ms, mt))
        conv = ms == _CONVERTED
        converted_at[mi[conv]] = mt[conv]
        stage_at_end[mi[conv]] = _CONVERTED
        lost = (ms == _LOST) & np.isinf(first_lost_at[mi])
        first_lost_at[mi[lost]] = mt[lost]
        idx = mi[~conv]
    conv_by_a = converted_at <= a
    stage_at_truth[conv_by_a] = _CONVERTED
    cat = lambda k: np.concatenate([x[k] for x in segs])  # noqa: E731
    ecat = lambda k: np.concatenate([x[k] for x in entries])  # noqa: E731
    return _Funnel(
        seg_cust=cat(0),
        seg_stage=cat(1),
        seg_start=cat(2),
        seg_end=cat(3),
        entry_cust=ecat(0),
        entry_stage=ecat(1),
        entry_time=ecat(2),
        converted_at=converted_at,
        first_lost_at=first_lost_at,
        stage_at_truth=stage_at_truth,
        stage_at_end=stage_at_end,
    )


def conversion_probability(
    stage: np.ndarray, intent: np.ndarray, horizon_days: float, params: SyntheticParams
) -> np.ndarray:
    """P(reaching "converted" within ``horizon_days`` | current stage, intent), exactly.

    ``stage`` holds indices into FUNNEL_STAGES; arrays are matched element-wise.

    Row ``stage`` of expm(horizon * Q(intent)) for the funnel generator Q, computed
    for every customer at once (Taylor series with scaling and squaring on the
    stages that can still reach "converted").
    """
    stage = np.asarray(stage, dtype=np.int64)
    intent = np.asarray(intent, dtype=np.float64)
    if stage.shape != intent.shape or ((stage < 0) | (stage >= len(FUNNEL_STAGES))).any():
        raise ValueError("stage must hold FUNNEL_STAGES indices, one per intent")
    base, elast = _funnel_rates(params)
    reach = _can_reach(base, _CONVERTED)
    out = np.zeros(stage.size)
    out[stage == _CONVERTED] = 1.0
    todo = np.flatnonzero(reach[stage] & (stage != _CONVERTED))
    if todo.size == 0:
        return out
    states = np.flatnonzero(reach)  # includes converted
    k = states.size
    z = intent[todo]
    # Generator restricted to states that can reach converted; leaks to others are lost mass.
    g = np.zeros((k, k, todo.size))
    for ii, i in enumerate(states):
        if i == _CONVERTED:
            continue
        total = np.zeros(todo.size)
        for j in range(len(FUNNEL_STAGES)):
            if base[i, j] > 0:
                r = base[i, j] * np.exp(elast[i, j] * z)
                total += r
                if reach[j]:
                    g[ii, int(np.searchsorted(states, j)), :] = r
        g[ii, ii, :] = -total
    rows = np.searchsorted(states, stage[todo])
    cols = np.full(todo.size, int(np.searchsorted(states, _CONVERTED)))
    out[todo] = _expm_entries(g * horizon_days, rows, cols)
    return np.clip(out, 0.0, 1.0)


def _can_reach(base: np.ndarray, target: int) -> np.ndarray:
    reach = np.zeros(base.shape[0], dtype=bool)
    reach[target] = True
    changed = True
    while changed:
        new = reach | (base[:, reach] > 0).any(axis=1)
        changed = bool((new != reach).any())
        reach = new
    return reach


def _matmul_stack(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(k, k, m) @ (k, k, m) over the last axis: k^2 vector operations, not m small products."""
    k = x.shape[0]
    out = np.empty_like(x)
    tmp = np.empty_like(x[0])
    for i in range(k):
        row = out[i]
        np.multiply(x[i, 0], y[0], out=row)
        for h in range(1, k):
            np.multiply(x[i, h], y[h], out=tmp)
            row += tmp
    return out


# Taylor coefficients 1/j! of exp, j = 0..15.
_TAYLOR = [1.0 / math.factorial(j) for j in range(16)]


def _expm_entries(g: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Entry (row[i], col[i]) of exp(g[:, :, i]) for each matrix of a (k, k, m) stack.

    Scaling and squaring: ||g / 2^s||_inf <= 1/2, then the degree-15 Taylor
    polynomial (truncation error < 0.5^16 / 16! ~ 7e-19), evaluated the
    Paterson-Stockmeyer way (6 matrix products). Matrices are processed in
    contiguous groups of equal s.
    """
    k, _, m = g.shape
    norm = np.abs(g).sum(axis=1).max(axis=0)
    steps = np.maximum(0, np.ceil(np.log2(np.maximum(norm, 1e-300) / 0.5))).astype(np.int64)
    order = np.argsort(steps, kind="stable")
    g = np.take(g, order, axis=2)  # C-contiguous, so each group below is a contiguous slice
    steps, row, col = steps[order], row[order], col[order]
    bounds = np.flatnonzero(np.diff(steps)) + 1
    result = np.empty(m)
    eye = np.eye(k)[:, :, None]
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, m]):
        s = int(steps[lo])
        a1 = g[:, :, lo:hi] * (0.5**s)
        a2 = _matmul_stack(a1, a1)
        a3 = _matmul_stack(a2, a1)
        a4 = _matmul_stack(a2, a2)
        # p(A) = B0 + A^4 (B1 + A^4 (B2 + A^4 B3)),  B_i = sum_j c_{4i+j} A^j.
        blocks = [
            _TAYLOR[4 * i] * eye + _TAYLOR[4 * i + 1] * a1 + _TAYLOR[4 * i + 2] * a2 + _TAYLOR[4 * i + 3] * a3
            for i in range(4)
        ]
        e = blocks[3]
        for b in reversed(blocks[:3]):
            e = b + _matmul_stack(a4, e)
        for _ in range(s):
            e = _matmul_stack(e, e)
        result[order[lo:hi]] = e[row[lo:hi], col[lo:hi], np.arange(hi - lo)]
    return result


# --------------------------------------------------------------------------- purchases


@dataclass(frozen=True)
class _Purchases:
    cust: np.ndarray  # completed purchases: conversion orders, then repeats
    time: np.ndarray
    died_at: np.ndarray  # per customer; inf when alive at DATA_END or never converted


def _simulate_purchases(
    rng: np.random.Generator, converted_at: np.ndarray, lam: np.ndarray, p_drop: np.ndarray
) -> _Purchases:
    """BG/NBD repeat purchases in [converted_at, DATA_END), exactly and without loops.

    N ~ Poisson(lambda W) arrivals fall in the window W; the customer dies at the
    K-th repeat purchase, K ~ Geometric(p); M = min(N, K) purchases are observed.
    The first M of N uniform order statistics are S_j / S_{N+1} with S the partial
    sums of N + 1 standard exponentials, and S_{N+1} = S_M + Gamma(N + 1 - M).
    """
    n = converted_at.size
    end = float(_SPAN_DAYS)
    conv = np.flatnonzero(converted_at < end)
    t0 = converted_at[conv]
    w = end - t0
    big_n = rng.poisson(lam[conv] * w)
    big_k = rng.geometric(p_drop[conv])
    m = np.minimum(big_n, big_k)
    rest = rng.standard_gamma((big_n - m + 1).astype(np.float64))
    e = rng.standard_exponential(int(m.sum()))
    owner = np.repeat(np.arange(conv.size), m)
    cs = np.cumsum(e)
    first = np.concatenate(([0], np.cumsum(m)[:-1]))
    has = m > 0
    offset = np.zeros(conv.size)
    offset[has] = cs[first[has]] - e[first[has]]
    partial = cs - offset[owner]
    s_m = np.zeros(conv.size)
    s_m[has] = partial[first[has] + m[has] - 1]
    total = s_m + rest
    rep_time = t0[owner] + w[owner] * partial / total[owner]
    died = np.full(n, np.inf)
    dead = big_k <= big_n
    died[conv[dead]] = t0[dead] + w[dead] * s_m[dead] / total[dead]
    # Conversion orders, then the repeats.
    return _Purchases(cust=np.concatenate((conv, conv[owner])), time=np.concatenate((t0, rep_time)), died_at=died)


@dataclass(frozen=True)
class _Orders:
    cust: np.ndarray  # sorted by time
    ms: np.ndarray
    amount: np.ndarray
    status: np.ndarray  # 0 completed, 1 refunded, 2 cancelled
    category: np.ndarray


_ORDER_STATUSES = ("completed", "refunded", "cancelled")


def _build_orders(
    rng: np.random.Generator, purchases: _Purchases, nu: np.ndarray, params: SyntheticParams
) -> _Orders:
    end = float(_SPAN_DAYS)
    cust, time = purchases.cust, purchases.time
    noise = []
    for status, prob in ((1, params.refunded_order_prob), (2, params.cancelled_order_prob)):
        pick = np.flatnonzero(rng.random(cust.size) < prob)
        nt = time[pick] + rng.exponential(max(params.noise_order_delay_days, 1e-9), pick.size)
        keep = nt < end
        noise.append((cust[pick[keep]], nt[keep], np.full(int(keep.sum()), status, dtype=np.int8)))
    all_cust = np.concatenate([cust] + [c for c, _, _ in noise])
    all_time = np.concatenate([time] + [t for _, t, _ in noise])
    status = np.concatenate([np.zeros(cust.size, dtype=np.int8)] + [s for _, _, s in noise])
    # Gamma-Gamma values: every order of a customer ~ Gamma(p, rate nu); rounded to cents.
    amount = np.round(rng.standard_gamma(params.gg_p, all_cust.size) / nu[all_cust], 2)
    shares = np.array([s for _, s in params.order_categories], dtype=np.float64)
    shares /= shares.sum()
    favourite = rng.choice(shares.size, size=nu.size, p=shares)
    loyal = rng.random(all_cust.size) < params.category_loyalty
    category = np.where(loyal, favourite[all_cust], rng.choice(shares.size, size=all_cust.size, p=shares))
    ms = _to_ms(all_time)
    order = _argsort_ms(ms)
    return _Orders(
        cust=all_cust[order],
        ms=ms[order],
        amount=amount[order],
        status=status[order],
        category=category[order].astype(np.int8),
    )


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class _Events:
    cust: np.ndarray  # int32, sorted by (time, customer, type)
    us: np.ndarray  # int64 epoch microseconds
    etype: np.ndarray  # int8 index into KNOWN_EVENT_TYPES


def _type_index(name: str) -> int:
    return KNOWN_EVENT_TYPES.index(name)


def _rate_vector(pairs: tuple[tuple[str, float], ...]) -> np.ndarray:
    v = np.zeros(len(KNOWN_EVENT_TYPES))
    for etype, rate in pairs:
        v[_type_index(etype)] += rate
    return v


def _poisson_events(
    rng: np.random.Generator,
    cust: np.ndarray,
    start: np.ndarray,
    dur: np.ndarray,
    rate: np.ndarray,
    type_rates: np.ndarray,
    fade_days: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson events on segments [start, start + dur).

    Per segment the intensity is ``rate * type_rates[type]`` (constant), or that
    times exp(-(t - start) / fade_days) when fading. The total count is Poisson and
    each event's type is drawn in proportion to ``type_rates`` (the same process).
    """
    total = float(type_rates.sum())
    if total <= 0 or cust.size == 0:
        return np.empty(0, np.int32), np.empty(0), np.empty(0, np.int8)
    mass = dur if fade_days is None else -fade_days * np.expm1(-dur / fade_days)
    counts = rng.poisson(np.maximum(rate * total * mass, 0.0))
    d = np.repeat(dur, counts)
    u = rng.random(d.size)
    if fade_days is None:
        offset = u * d
    else:
        # Inverse CDF of the exponential kernel truncated to [0, dur).
        offset = np.minimum(-fade_days * np.log1p(u * np.expm1(-d / fade_days)), d)
    cdf = np.cumsum(type_rates) / total
    etype = np.minimum(np.searchsorted(cdf, rng.random(d.size), side="right"), type_rates.size - 1)
    return np.repeat(cust, counts).astype(np.int32), np.repeat(start, counts) + offset, etype.astype(np.int8)


# Customers per chunk of event generation: keeps temporaries small (and reused) at any scale.
# Part of the random-draw order, so changing it changes the generated events.
_EVENT_CHUNK = 1 << 16


def _simulate_events(
    rng: np.random.Generator,
    created: np.ndarray,
    intent: np.ndarray,
    funnel: _Funnel,
    purchases: _Purchases,
    lam: np.ndarray,
    p_drop: np.ndarray,
    params: SyntheticParams,
) -> _Events:
    n = created.size
    end = float(_SPAN_DAYS)
    scale = params.activity_scale

    # Unsubscribe (per customer): a constant hazard while active, a likely one after loss or death.
    inactive_from = np.minimum(funnel.first_lost_at, purchases.died_at)
    with np.errstate(divide="ignore"):
        t_active = created + rng.standard_exponential(n) / params.unsubscribe_hazard_active
    t_active = np.where(t_active < inactive_from, t_active, np.inf)
    after = rng.random(n) < params.unsubscribe_prob_after_loss
    t_after = np.where(after, inactive_from + rng.exponential(params.unsubscribe_delay_days, n), np.inf)
    unsub = np.minimum(t_active, t_after)

    lead_mult = scale * np.exp(params.lead_event_intent_elasticity * intent)
    lead_rates = [
        _rate_vector(tuple((e, r) for st, e, r in params.lead_event_rates if st == stage)) for stage in FUNNEL_STAGES
    ]
    entry_rules = [(FUNNEL_STAGES.index(st), _type_index(e), pr, dl) for st, e, pr, dl in params.stage_entry_events]
    engagement = _rate_vector(params.customer_engagement_rates)
    service = _rate_vector(params.customer_service_rates)
    eng_mult = scale * (lam / params.mean_lambda) ** params.engagement_lambda_elasticity
    svc_mult = scale * (p_drop / params.mean_dropout) ** params.service_dropout_elasticity
    email_types = np.array([_type_index(t) for t in _EMAIL_TYPES], dtype=np.int8)
    unsub_type = _type_index("unsubscribe")

    # Funnel segments / entries grouped by customer (each jump appended an ascending run).
    seg_order = np.argsort(funnel.seg_cust, kind="stable")
    seg_cust = funnel.seg_cust[seg_order]
    ent_order = np.argsort(funnel.entry_cust, kind="stable")
    ent_cust = funnel.entry_cust[ent_order]

    packer = _EventPacker(n)
    chunks: list[np.ndarray] = []
    for c0 in range(0, n, _EVENT_CHUNK):
        c1 = min(c0 + _EVENT_CHUNK, n)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        # Lead stages: constant rates per stage, mildly increasing with intent.
        lo, hi = np.searchsorted(seg_cust, [c0, c1])
        sel = seg_order[lo:hi]
        stage = funnel.seg_stage[sel]
        for s in range(len(FUNNEL_STAGES)):
            ss = sel[stage == s]
            c = funnel.seg_cust[ss]
            st = funnel.seg_start[ss]
            parts.append(_poisson_events(rng, c, st, funnel.seg_end[ss] - st, lead_mult[c], lead_rates[s]))

        # Point events on entering a stage ("aware" is entered at created_at).
        lo, hi = np.searchsorted(ent_cust, [c0, c1])
        sel = ent_order[lo:hi]
        stage = funnel.entry_stage[sel]
        for s, etype, prob, delay in entry_rules:
            ss = sel[stage == s]
            ss = ss[rng.random(ss.size) < prob]
            t = funnel.entry_time[ss] + rng.exponential(max(delay, 1e-9), ss.size)
            keep = t < end
            kept = ss[keep]
            parts.append((funnel.entry_cust[kept].astype(np.int32), t[keep], np.full(kept.size, etype, np.int8)))

        # Customers: alive at constant rates, then fading towards a residual after death.
        conv = c0 + np.flatnonzero(funnel.converted_at[c0:c1] < end)
        t0 = funnel.converted_at[conv]
        death = np.minimum(purchases.died_at[conv], end)
        dead = death < end
        dc, ds = conv[dead], death[dead]
        for type_rates, mult in ((engagement, eng_mult), (service, svc_mult)):
            parts.append(_poisson_events(rng, conv, t0, death - t0, mult[conv], type_rates))
            dm = mult[dc]
            residual = params.dead_residual_share
            parts.append(_poisson_events(rng, dc, ds, end - ds, dm * residual, type_rates))
            parts.append(
                _poisson_events(rng, dc, ds, end - ds, dm * (1 - residual), type_rates, params.engagement_fade_days)
            )

        has = c0 + np.flatnonzero(unsub[c0:c1] < end)
        parts.append((has.astype(np.int32), unsub[has], np.full(has.size, unsub_type, np.int8)))

        cust = np.concatenate([p[0] for p in parts])
        time = np.concatenate([p[1] for p in parts])
        etype = np.concatenate([p[2] for p in parts])
        # No email engagement after unsubscribing.
        keep = ~(np.isin(etype, email_types) & (time > unsub[cust]))
        chunks.append(packer.pack(cust[keep], _to_ms(time[keep]), etype[keep]))

    return packer.sort_unpack(np.concatenate(chunks) if chunks else np.empty(0, np.uint64))


class _EventPacker:
    """Packs (time, customer, type) into one uint64 so that sorting values sorts events.

    Sorting plain values is much faster than an argsort plus gathers, and it is
    deterministic whatever the sort algorithm (equal keys are identical events).
    Falls back to an argsort when the three fields need more than 64 bits.
    """

    def __init__(self, n_customers: int) -> None:
        self.time_bits = int(_SPAN_DAYS * _MS_PER_DAY - 1).bit_length()
        self.cust_bits = max(1, int(n_customers - 1).bit_length())
        self.type_bits = max(1, int(len(KNOWN_EVENT_TYPES) - 1).bit_length())
        self.packed = self.time_bits + self.cust_bits + self.type_bits <= 64
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def pack(self, cust: np.ndarray, ms: np.ndarray, etype: np.ndarray) -> np.ndarray:
        if not self.packed:
            self._parts.append((cust, ms, etype))
            return np.empty(0, np.uint64)
        key = (ms - _DATA_START_MS).astype(np.uint64)
        key <<= np.uint64(self.cust_bits)
        key |= cust.astype(np.uint64)
        key <<= np.uint64(self.type_bits)
        key |= etype.astype(np.uint64)
        return key

    def sort_unpack(self, keys: np.ndarray) -> _Events:
        if not self.packed:
            cust = np.concatenate([p[0] for p in self._parts])
            ms = np.concatenate([p[1] for p in self._parts])
            etype = np.concatenate([p[2] for p in self._parts])
            order = np.lexsort((etype, cust, ms))
            return _Events(cust=cust[order], us=ms[order] * 1000, etype=etype[order])
        keys.sort()
        etype = (keys & np.uint64((1 << self.type_bits) - 1)).astype(np.int8)
        keys >>= np.uint64(self.type_bits)
        cust = (keys & np.uint64((1 << self.cust_bits) - 1)).astype(np.int32)
        keys >>= np.uint64(self.cust_bits)
        us = keys.view(np.int64)
        us += _DATA_START_MS
        us *= 1000
        return _Events(cust=cust, us=us, etype=etype)


# --------------------------------------------------------------------------- tables


def _orders_table(orders: _Orders, id_width: int, params: SyntheticParams) -> pa.Table:
    n = orders.cust.size
    return pa.table(
        {
            "order_id": _format_ids("o-", np.arange(1, n + 1), _id_width(n, 8)),
            "customer_id": _format_ids("c-", orders.cust + 1, id_width),
            "ordered_at": _ts(orders.ms),
            "amount": pa.array(orders.amount, pa.float64()),
            "status": _dict_array(orders.status, list(_ORDER_STATUSES)),
            "category": _dict_array(orders.category, [c for c, _ in params.order_categories]),
            "currency": _dict_array(np.zeros(n, dtype=np.int8), ["USD"]),
        }
    )


def _events_table(events: _Events, id_width: int) -> pa.Table:
    n = events.cust.size
    channels = sorted(set(EVENT_CHANNELS.values()))
    type_channel = np.array([channels.index(EVENT_CHANNELS[t]) for t in KNOWN_EVENT_TYPES], dtype=np.int8)
    return pa.table(
        {
            "customer_id": _format_ids("c-", events.cust + 1, id_width),
            "occurred_at": pa.array(events.us, pa.timestamp("us")),
            "event_type": _dict_array(events.etype, list(KNOWN_EVENT_TYPES)),
            "event_id": _format_ids("e-", np.arange(1, n + 1), _id_width(n, 9)),
            "channel": _dict_array(type_channel[events.etype], channels),
        }
    )


def _truth_table(
    customer_ids: pa.Array,
    created_ms: np.ndarray,
    intent: np.ndarray,
    funnel: _Funnel,
    purchases: _Purchases,
    orders: _Orders,
    lam: np.ndarray,
    p_drop: np.ndarray,
    nu: np.ndarray,
    params: SyntheticParams,
) -> pa.Table:
    n = created_ms.size
    a_ms = _DATA_START_MS + int(_TRUTH_AS_OF_DAYS) * _MS_PER_DAY
    end = float(_SPAN_DAYS)
    h = float(TRUTH_HORIZON_DAYS)
    exists = created_ms < a_ms
    conv_ms = np.where(np.isfinite(funnel.converted_at), _to_ms(np.minimum(funnel.converted_at, end)), -1)
    converted_end = np.isfinite(funnel.converted_at)
    converted_before = converted_end & (conv_ms < a_ms)
    lead_pop = exists & ~converted_before
    cust_pop = converted_before

    p_convert = np.full(n, np.nan)
    lead_idx = np.flatnonzero(lead_pop)
    p_convert[lead_idx] = conversion_probability(funnel.stage_at_truth[lead_idx], intent[lead_idx], h, params)
    converted_90d = converted_end & (conv_ms >= a_ms)

    died_ms = np.where(np.isfinite(purchases.died_at), _to_ms(np.minimum(purchases.died_at, end)), -1)
    dead_end = np.isfinite(purchases.died_at)
    alive_at_a = ~(dead_end & (died_ms < a_ms))
    p_purchase = np.where(alive_at_a, -np.expm1(-lam * h), 0.0)
    # E[X(t) | lambda, p, alive] = (1 - exp(-lambda p t)) / p (Fader, Hardie & Lee 2005, eq. 7).
    exp_purchases = np.where(alive_at_a, -np.expm1(-lam * p_drop * h) / p_drop, 0.0)
    completed_in_window = orders.cust[(orders.status == 0) & (orders.ms >= a_ms)]
    purchased_90d = np.zeros(n, dtype=bool)
    purchased_90d[completed_in_window] = True
    exp_value = params.gg_p / nu

    stages = list(FUNNEL_STAGES) + ["not_created"]
    stage_a = np.where(funnel.stage_at_truth < 0, len(FUNNEL_STAGES), funnel.stage_at_truth).astype(np.int8)

    def masked(values: np.ndarray, mask: np.ndarray, type_: pa.DataType) -> pa.Array:
        return pa.array(values, type_, mask=~mask)

    return pa.table(
        {
            "customer_id": customer_ids,
            "intent": pa.array(intent),
            "stage_at_truth_as_of": _dict_array(stage_a, stages),
            "stage_at_data_end": _dict_array(funnel.stage_at_end, list(FUNNEL_STAGES)),
            "converted_at": masked(conv_ms * 1000, converted_end, pa.timestamp("us")),
            "lambda_per_day": pa.array(lam),
            "dropout_p": pa.array(p_drop),
            "order_value_nu": pa.array(nu),
            "expected_order_value": pa.array(exp_value),
            "died_at": masked(died_ms * 1000, dead_end, pa.timestamp("us")),
            "alive_at_data_end": masked(~dead_end, converted_end, pa.bool_()),
            "alive_at_truth_as_of": masked(alive_at_a, cust_pop, pa.bool_()),
            "converted_before_truth_as_of": pa.array(converted_before),
            "p_convert_90d": masked(p_convert, lead_pop, pa.float64()),
            "converted_90d": masked(converted_90d, lead_pop, pa.bool_()),
            "p_purchase_90d": masked(p_purchase, cust_pop, pa.float64()),
            "expected_purchases_90d": masked(exp_purchases, cust_pop, pa.float64()),
            "expected_revenue_90d": masked(exp_purchases * exp_value, cust_pop, pa.float64()),
            "purchased_90d": masked(purchased_90d, cust_pop, pa.bool_()),
        }
    )


# --------------------------------------------------------------------------- helpers


def _to_ms(days: np.ndarray) -> np.ndarray:
    """Days since DATA_START -> epoch milliseconds (floor: monotone, never past DATA_END)."""
    ms = np.floor(days * _MS_PER_DAY).astype(np.int64)
    np.minimum(ms, _SPAN_DAYS * _MS_PER_DAY - 1, out=ms)
    return ms + _DATA_START_MS


def _ts(ms: np.ndarray) -> pa.Array:
    return pa.array(ms * 1000, pa.timestamp("us"))


def _argsort_ms(ms: np.ndarray) -> np.ndarray:
    """Stable argsort of millisecond times.

    Packs (time offset, position) into one uint64 and sorts values, which numpy
    does much faster than argsort; ties keep generation order, so the result
    does not depend on the sort algorithm or the CPU.
    """
    n = ms.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    rel = (ms - _DATA_START_MS).astype(np.uint64)
    pos_bits = max(1, int(n - 1).bit_length())
    time_bits = max(1, int(rel.max()).bit_length())
    if pos_bits + time_bits > 64:
        return np.argsort(ms, kind="stable")
    key = (rel << np.uint64(pos_bits)) | np.arange(n, dtype=np.uint64)
    key.sort()
    return (key & np.uint64((1 << pos_bits) - 1)).astype(np.int64)


def _dict_array(codes: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, dtype=np.int8)), pa.array(values, pa.string()))


def _id_width(count: int, min_width: int) -> int:
    return max(min_width, len(str(count)))


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.StringArray:
    """prefix + zero-padded numbers (0 <= number < 10^width) as a plain string array.

    Built digit column by digit column into one fixed-width buffer: much faster
    than formatting row by row or casting a dictionary array.
    """
    n = numbers.size
    p = prefix.encode()
    row = len(p) + width
    if n * row >= 2**31:
        raise ValueError("too many ids for a 32-bit string array")
    buf = np.empty((n, row), dtype=np.uint8)
    buf[:, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    v = np.asarray(numbers).astype(np.uint64 if width > 9 else np.uint32)
    digit = np.empty_like(v)
    for k in range(width):
        np.remainder(v, 10, out=digit)
        col = buf[:, row - 1 - k]
        col[:] = digit
        col += 48
        v //= 10
    offsets = np.arange(0, (n + 1) * row, row, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf))
