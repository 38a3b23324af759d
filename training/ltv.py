"""customer_ltv: BG/NBD (purchase counts, P(alive)) + Gamma-Gamma (order value) -> CLV.

Pure model code: no MLflow, no file I/O. Input is the rfm feature table (DESIGN.md, "Time
semantics"), one row per customer with lifetimes' names and explicit units:

* `frequency` (x): distinct purchase days - 1;
* `recency_days` (t_x): days from the first to the last purchase day;
* `T_days` (T): days from the first purchase day to the last observed day;
* `monetary_value` (zbar): mean revenue of the repeat purchase days (0 when x = 0).

Rows with a null `T_days` (no purchase before as_of: leads) are not part of the LTV population:
`fit` leaves them out (and counts them in `n_excluded_`), predictions for them are NaN.

Days are converted to `time_unit_days` (weeks by default) before fitting, so r and alpha are
comparable with the papers: Fader, Hardie & Lee (2005), "Counting Your Customers the Easy
Way: An Alternative to the Pareto/NBD Model", Marketing Science 24(2) (BG/NBD: r = 0.243,
alpha = 4.414 weeks, a = 0.793, b = 2.426 on the CDNOW sample), and Fader & Hardie (2013),
"The Gamma-Gamma Model of Monetary Value", http://brucehardie.com/notes/025/ (p = 6.25,
q = 3.74, gamma = 15.44; lifetimes calls gamma `v`).

lifetimes 0.11.3 is archived and most of its utilities break on pandas 3 / matplotlib 3.8+,
so only its two fitters are used, behind the small adapter below (`_lifetimes_*`). Everything
else (likelihoods, conditional expectations, P(alive), CLV) is implemented here from the
papers' closed forms: the fitted model holds plain floats (cheap to pickle for MLflow, no
lifetimes objects), and the tests check the formulas against lifetimes' own methods.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.linalg import cholesky
from scipy.special import expit, gammaln, hyp2f1
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from features.errors import CrmScoringError

FEATURE_COLUMNS: tuple[str, ...] = ("frequency", "recency_days", "T_days", "monetary_value")
OUTPUT_COLUMNS: tuple[str, ...] = ("p_alive", "expected_purchases", "expected_order_value", "clv")
KEY_COLUMN = "customer_id"

#: CLV is summed in 30-day steps ("months"), each discounted at its end.
DAYS_PER_MONTH = 30.0

#: A fitted parameter outside [PARAM_LOWER, PARAM_UPPER] (on a unit-free scale, see
#: `_fit_problems`) means the optimiser ran off to a boundary of the parameter space: the
#: likelihood is flat there and the estimate is not identified.
PARAM_LOWER = 1e-5
PARAM_UPPER = 1e5

DEFAULT_PENALIZER_LADDER: tuple[float, ...] = (0.0, 0.001, 0.01, 0.1)

#: `compress` groups at most this many rows with a dict (an API request's few customers).
SMALL_COMPRESS_ROWS = 64

#: CLV's discounted purchases are computed for this many customers (distinct patterns) at a time.
STEP_BLOCK_ROWS = 4096

#: Warm start: a sub-model with at least WARM_START_MIN_ROWS distinct rows to fit is first
#: fitted on a simple random sample of about WARM_START_SAMPLE of its customers (same
#: penalizer), and lifetimes' BFGS on all rows starts from that optimum and its inverse Hessian
#: (4-6 evaluations on the full data instead of ~30). The full fit still runs to lifetimes'
#: own tolerance and passes the same checks; if it fails, the rung is retried from lifetimes'
#: default start (see `_fit_along_ladder`). Below the threshold a cold fit is cheaper.
WARM_START_MIN_ROWS = 20_000
WARM_START_SAMPLE = 10_000
WARM_START_SEED = 0


# --------------------------------------------------------------------------------------
# Errors and the fit record
# --------------------------------------------------------------------------------------


class LtvError(CrmScoringError):
    """Base class of the customer_ltv model's errors."""


class LtvInputError(LtvError, ValueError):
    """The feature table or a hyper-parameter cannot be used (the message lists every problem)."""


class LtvFitError(LtvError):
    """Every rung of a penalizer ladder failed; `attempts` holds the record of each try."""

    def __init__(self, message: str, attempts: Sequence[FitAttempt] = ()) -> None:
        super().__init__(message)
        self.attempts: tuple[FitAttempt, ...] = tuple(attempts)


@dataclass(frozen=True)
class FitAttempt:
    """One fit of one sub-model with one penalizer, as a tracking layer would log it.

    model: "bgnbd" or "gamma_gamma". log_likelihood is unpenalised (None when the fitter
    raised; for BG/NBD in the model's time unit). params / standard_errors are empty when the
    fitter raised. reason is None when the attempt was accepted. warm_start: the optimiser
    started from a fit on a sample (see WARM_START_MIN_ROWS) rather than lifetimes' default.
    """

    model: str
    penalizer: float
    converged: bool
    log_likelihood: float | None
    params: dict[str, float]
    standard_errors: dict[str, float]
    reason: str | None
    warm_start: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BgNbdParams(NamedTuple):
    """BG/NBD parameters; alpha is in the model's time unit (weeks by default)."""

    r: float
    alpha: float
    a: float
    b: float


class GammaGammaParams(NamedTuple):
    """Gamma-Gamma parameters (v is Fader & Hardie's gamma, in currency units)."""

    p: float
    q: float
    v: float


# --------------------------------------------------------------------------------------
# Closed forms (pure numpy / scipy)
# --------------------------------------------------------------------------------------


def bgnbd_log_likelihood(
    params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Unpenalised BG/NBD log-likelihood, Fader, Hardie & Lee (2005) eq. (6).

    Depends on the time unit (a rescaling by c shifts it by sum(x) * ln c): the published
    -9582.4 for CDNOW is in weeks. lifetimes' own value is on its internally rescaled time and
    per customer, so it is not comparable; hence this function.
    """
    r, alpha, a, b = params
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
        a3 = -(r + x) * np.log(alpha + T)
        # The "dropped out after the last purchase" branch exists only for repeat buyers.
        a4 = np.where(x > 0, np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + t_x), -np.inf)
        ll = a1 + a2 + np.logaddexp(a3, a4)
    return float(np.sum(w * ll))


def bgnbd_p_alive(params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(alive | x, t_x, T), Fader, Hardie & Lee (2008), http://brucehardie.com/notes/021/ eq. (2).

    BG/NBD customers can only drop out right after a repeat purchase, so x = 0 gives 1.
    """
    r, alpha, a, b = params
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_odds_dead = (r + x) * np.log((alpha + np.asarray(T, float)) / (alpha + np.asarray(t_x, float))) + np.log(
            a / (b + np.maximum(x, 1) - 1)
        )
    return np.where(x == 0, 1.0, expit(-log_odds_dead))


def bgnbd_conditional_expected_purchases(
    params: BgNbdParams, t: float | np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T], Fader, Hardie & Lee (2005) eq. (10).

    The Gauss hypergeometric term is used after Euler's transformation
    2F1(A, B; C; z) = (1 - z)^(C-A-B) 2F1(C-A, C-B; C; z): with z = t / (alpha + T + t) the
    factor ((alpha + T) / (alpha + T + t))^(r + x) 2F1(r + x, b + x; a + b + x - 1; z) becomes
    (1 - z)^(a - 1) 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z), which stays finite for
    large x where the original series overflows (lifetimes falls back to the same identity
    when it sees inf). x = t_x = T = 0 gives the unconditional E[X(t)], eq. (9).
    """
    r, alpha, a, b = params
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    t = np.asarray(t, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        one_minus_z = (alpha + T) / (alpha + T + t)
        hyp = hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, 1 - one_minus_z)
        numerator = (a + b + x - 1) / (a - 1) * (1 - one_minus_z ** (a - 1) * hyp)
        denominator = 1 + np.where(
            x > 0, a / (b + np.maximum(x, 1) - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x), 0.0
        )
    return numerator / denominator


def bgnbd_expected_purchases(params: BgNbdParams, t: float | np.ndarray) -> np.ndarray:
    """E[X(t)]: expected repeat purchases of a new customer in t after the first purchase, FHL (2005) eq. (9)."""
    zero = np.zeros_like(np.asarray(t, dtype=float))
    return bgnbd_conditional_expected_purchases(params, t, zero, zero, zero)


def gamma_gamma_log_likelihood(
    params: GammaGammaParams, x: np.ndarray, zbar: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Unpenalised Gamma-Gamma log-likelihood of (x, zbar) for repeat buyers, note 025 eq. (1a) in logs."""
    p, q, v = params
    x = np.asarray(x, dtype=float)
    m = np.asarray(zbar, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = (
            gammaln(p * x + q)
            - gammaln(p * x)
            - gammaln(q)
            + q * np.log(v)
            + (p * x - 1) * np.log(m)
            + p * x * np.log(x)
            - (p * x + q) * np.log(x * m + v)
        )
    return float(np.sum(w * ll))


def gamma_gamma_conditional_mean(params: GammaGammaParams, x: np.ndarray, zbar: np.ndarray) -> np.ndarray:
    """E[order value | x, zbar], note 025 eq. (5): a credibility-weighted mix of zbar and the population mean.

    x = 0 gives the population mean v p / (q - 1).
    """
    p, q, v = params
    x = np.asarray(x, dtype=float)
    zbar = np.asarray(zbar, dtype=float)
    individual_weight = p * x / (p * x + q - 1)
    return (1 - individual_weight) * (v * p / (q - 1)) + individual_weight * zbar


def simulate_bgnbd(
    n_customers: int,
    params: BgNbdParams = BgNbdParams(0.243, 4.414, 0.793, 2.426),
    gg_params: GammaGammaParams = GammaGammaParams(6.25, 3.74, 15.44),
    *,
    min_T_days: int = 0,
    max_T_days: int = 365,
    time_unit_days: float = 7.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Feature rows (frequency, recency_days, T_days, monetary_value) drawn from BG/NBD + Gamma-Gamma.

    For tests and benchmarks (defaults: the CDNOW estimates, alpha in weeks). T_days is
    uniform on whole days min_T_days..max_T_days (the acquisition window: 0..365 is a year
    of steady acquisition, 189..273 a CDNOW-like 12-week cohort observed 27-39 weeks); per customer
    lambda ~ Gamma(r, alpha), p ~ Beta(a, b); the customer drops out right after repeat
    purchase J ~ Geometric(p); N(T) ~ Poisson(lambda T), x = min(N, J), and the x-th of N
    uniform purchase times is T * Beta(x, N - x + 1). t_x is rounded up to whole days (as the
    feature layer counts days). Spend: nu ~ Gamma(q, v), zbar ~ Gamma(p x, nu x).
    """
    rng = np.random.default_rng(seed)
    r, alpha, a, b = params
    if not 0 <= min_T_days <= max_T_days:
        raise LtvInputError(f"need 0 <= min_T_days <= max_T_days, got {min_T_days}, {max_T_days}")
    T = rng.integers(min_T_days, max_T_days + 1, n_customers).astype(float)
    rate = rng.gamma(r, 1.0 / (alpha * time_unit_days), n_customers)  # purchases per day
    dropout = rng.beta(a, b, n_customers)
    n_arrivals = rng.poisson(rate * T)
    x = np.minimum(n_arrivals, rng.geometric(dropout))
    t_x = np.zeros(n_customers)
    repeat = x > 0
    t_x[repeat] = T[repeat] * rng.beta(x[repeat], n_arrivals[repeat] - x[repeat] + 1)
    t_x = np.where(repeat, np.clip(np.ceil(t_x), 1, T), 0.0)
    gp, gq, gv = gg_params
    nu = rng.gamma(gq, 1.0 / gv, n_customers)
    zbar = np.zeros(n_customers)
    zbar[repeat] = rng.gamma(gp * x[repeat], 1.0 / (nu[repeat] * x[repeat]))
    return pd.DataFrame(
        {
            "customer_id": [f"c-{i}" for i in range(n_customers)],
            "frequency": x.astype(np.int64),
            "recency_days": t_x,
            "T_days": T,
            "monetary_value": zbar,
        }
    )


# --------------------------------------------------------------------------------------
# lifetimes adapter: the only code that touches lifetimes (replace these functions to drop
# the dependency). Each fit returns fitted parameters and standard errors or raises
# _FitterFailed with a readable reason; `start` (an earlier output of the same function, e.g.
# on a sample) only sets where the optimiser starts.
# --------------------------------------------------------------------------------------


class _FitterFailed(Exception):
    """The fitter raised; the message says why."""


@dataclass(frozen=True)
class _FitterOutput:
    params: dict[str, float]
    standard_errors: dict[str, float]
    # The fitter's Hessian of its own objective at the optimum, in its own coordinates (for
    # lifetimes: log-parameters, mean per customer). Only used to warm-start another fit.
    hessian: np.ndarray | None = field(default=None, compare=False, repr=False)


@contextlib.contextmanager
def _contained_lifetimes() -> Iterator[io.StringIO]:
    # lifetimes resets the global warning filters (at import and in every likelihood call)
    # and print()s the scipy result when it fails: keep both inside this block.
    printed = io.StringIO()
    with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore")
        yield printed


def _run_fitter(fit: Callable[[], Any]) -> _FitterOutput:
    with _contained_lifetimes() as printed:
        from lifetimes.utils import ConvergenceError

        try:
            fitter = fit()
        except ConvergenceError as exc:
            message = re.search(r"message:\s*(.+)", printed.getvalue())
            detail = message.group(1).strip() if message else str(exc).strip()
            raise _FitterFailed(f"optimizer did not converge ({detail})") from exc
        except np.linalg.LinAlgError as exc:  # inverting the Hessian for standard errors
            raise _FitterFailed(f"singular Hessian at the optimum ({exc})") from exc
        except (ValueError, ArithmeticError) as exc:
            raise _FitterFailed(f"{type(exc).__name__}: {exc}") from exc
        params = {str(k): float(v) for k, v in fitter.params_.items()}
        # Computed by fit() from the inverse Hessian; NaN (sqrt of a negative variance) or
        # missing means the optimum is not a proper maximum: the checks reject it.
        standard_errors = getattr(fitter, "standard_errors_", None)
        errors = {name: float(standard_errors[name]) if standard_errors is not None else math.nan for name in params}
        hessian = getattr(fitter, "_hessian_", None)
    return _FitterOutput(
        params=params, standard_errors=errors, hessian=None if hessian is None else np.array(hessian, dtype=float)
    )


def _lifetimes_start(log_params: Sequence[float], start: _FitterOutput) -> dict[str, Any]:
    """Keywords for a lifetimes fit() to start BFGS at `log_params` with the inverse of `start`'s Hessian.

    lifetimes passes extra keywords to scipy's BFGS as options (`hess_inv0`, scipy >= 1.10).
    The Hessian of lifetimes' objective in log-parameters does not depend on its time rescaling
    (that only shifts log alpha), so a sample's Hessian is a good first curvature estimate.
    It is left out (BFGS starts from the identity) unless its inverse is finite and positive definite.
    """
    kwargs: dict[str, Any] = {"initial_params": np.asarray(log_params, dtype=float)}
    if start.hessian is not None and np.isfinite(start.hessian).all():
        try:
            inverse = np.linalg.inv(start.hessian)
            inverse = (inverse + inverse.T) / 2  # exactly symmetric, as scipy checks
            cholesky(inverse)
        except (np.linalg.LinAlgError, ValueError):
            return kwargs
        if np.isfinite(inverse).all():
            kwargs["hess_inv0"] = inverse
    return kwargs


def _lifetimes_bgnbd(
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    weights: np.ndarray,
    penalizer: float,
    start: _FitterOutput | None = None,
) -> _FitterOutput:
    """Fit lifetimes' BetaGeoFitter on compressed rows; params r, alpha, a, b (alpha in the unit of t_x, T)."""

    def fit() -> Any:
        from lifetimes import BetaGeoFitter
        from lifetimes.utils import _scale_time

        kwargs: dict[str, Any] = {}
        if start is not None:
            # lifetimes optimises log(r, alpha * scale, a, b), time rescaled by scale = _scale_time(T).
            p = start.params
            scale = float(_scale_time(np.asarray(T)))
            kwargs = _lifetimes_start(np.log([p["r"], p["alpha"] * scale, p["a"], p["b"]]), start)
        return BetaGeoFitter(penalizer_coef=penalizer).fit(x, t_x, T, weights=weights, **kwargs)

    return _run_fitter(fit)


def _lifetimes_gamma_gamma(
    x: np.ndarray, zbar: np.ndarray, weights: np.ndarray, penalizer: float, start: _FitterOutput | None = None
) -> _FitterOutput:
    """Fit lifetimes' GammaGammaFitter on compressed repeat-buyer rows; params p, q, v."""

    def fit() -> Any:
        from lifetimes import GammaGammaFitter

        kwargs: dict[str, Any] = {}
        if start is not None:  # lifetimes optimises log(p, q, v)
            kwargs = _lifetimes_start(np.log([start.params[k] for k in ("p", "q", "v")]), start)
        return GammaGammaFitter(penalizer_coef=penalizer).fit(x, zbar, weights=weights, **kwargs)

    return _run_fitter(fit)


# --------------------------------------------------------------------------------------
# Input preparation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """The LTV population of a feature table: arrays for rows with a purchase, plus their positions."""

    n_rows: int
    positions: np.ndarray  # positions in the input of the rows with a purchase (T_days not null)
    x: np.ndarray
    t_x_days: np.ndarray
    T_days: np.ndarray
    zbar: np.ndarray


def _column(X: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The column as floats (NaN where null or unparsable) and, for a column that had to be
    parsed, where it held a value (None for numbers: every NaN there is a null)."""
    column = X[name]
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy(dtype="float64", na_value=np.nan), None
    parsed = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return parsed, column.notna().to_numpy()


def _prepare(X: pd.DataFrame) -> _Rows:
    """Validate the feature table; every problem is reported at once (count and example keys)."""
    if not isinstance(X, pd.DataFrame):
        raise LtvInputError(
            f"customer_ltv expects a pandas DataFrame with {list(FEATURE_COLUMNS)}, got {type(X).__name__}"
        )
    missing = [c for c in FEATURE_COLUMNS if c not in X.columns]
    if missing:
        raise LtvInputError(f"customer_ltv input lacks column(s) {missing} (needs {list(FEATURE_COLUMNS)})")
    parsed = [_column(X, c) for c in FEATURE_COLUMNS]
    x, t_x, T, zbar = (values for values, _ in parsed)
    # Only a genuinely null T_days means "no purchase"; text that fails to parse is an error.
    unparsable = np.zeros(len(X), dtype=bool)
    for values, present in parsed:
        if present is not None:
            unparsable |= np.isnan(values) & present
    buyer = ~np.isnan(T) | unparsable
    null = buyer & ~unparsable & (np.isnan(x) | np.isnan(t_x) | np.isnan(zbar))
    infinite = buyer & (np.isinf(x) | np.isinf(t_x) | np.isinf(T) | np.isinf(zbar))
    ok = buyer & ~unparsable & ~null & ~infinite  # the value checks below only make sense on numbers
    checks = {
        "non-numeric values": unparsable,
        "null frequency/recency_days/monetary_value but a T_days": null,
        "infinite values": infinite,
        "frequency not a non-negative integer": ok & ((x < 0) | (x != np.round(x))),
        "negative recency_days or T_days": ok & ((t_x < 0) | (T < 0)),
        "recency_days > T_days": ok & (t_x > T),
        "recency_days != 0 with frequency 0": ok & (x == 0) & (t_x != 0),
        "negative monetary_value": ok & (zbar < 0),
    }
    problems = []
    for label, mask in checks.items():
        if mask.any():
            examples = ", ".join(str(k) for k in _keys(X)[mask][:3])
            problems.append(f"{int(mask.sum())} row(s) with {label} (e.g. {examples})")
    if problems:
        raise LtvInputError("customer_ltv input: " + "; ".join(problems))
    positions = np.flatnonzero(buyer)
    return _Rows(
        n_rows=len(X),
        positions=positions,
        x=x[positions],
        t_x_days=t_x[positions],
        T_days=T[positions],
        zbar=zbar[positions],
    )


def _keys(X: pd.DataFrame) -> pd.Index:
    """Customer keys: the `customer_id` column when present, else the index."""
    return pd.Index(X[KEY_COLUMN]) if KEY_COLUMN in X.columns else X.index


def compress(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Distinct rows of `columns` with their counts and, per input row, the distinct row it maps to.

    Fader & Hardie fit on the distinct (x, t_x, T) patterns weighted by their counts: the
    likelihood is the same, and 1M customers shrink to the number of distinct patterns.
    Hash-based (pandas groupby; a dict for a few rows, where groupby's set-up would cost
    more than the work), first-appearance order; inputs must not contain NaN.
    """
    if len(columns[0]) <= SMALL_COMPRESS_ROWS:
        patterns: dict[tuple[float, ...], int] = {}
        inverse = np.array([patterns.setdefault(row, len(patterns)) for row in zip(*(np.asarray(c).tolist() for c in columns))], dtype=np.int64)
        first = np.unique(inverse, return_index=True)[1] if len(inverse) else np.zeros(0, dtype=np.int64)
        return [np.asarray(c)[first] for c in columns], np.bincount(inverse, minlength=len(patterns)), inverse
    frame = pd.DataFrame({str(i): np.asarray(c) for i, c in enumerate(columns)})
    grouped = frame.groupby(list(frame.columns), sort=False)
    inverse = grouped.ngroup().to_numpy()
    counts = np.bincount(inverse)
    first = np.full(len(counts), len(frame), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(frame)))
    return [np.asarray(c)[first] for c in columns], counts, inverse


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class CustomerLtvModel(BaseEstimator):
    """BG/NBD + Gamma-Gamma customer lifetime value, a scikit-learn style estimator.

    Parameters
    ----------
    time_unit_days: the unit the models are fitted in (7 = weeks, as the papers).
    penalizer_ladder: L2 penalizers tried in order for BG/NBD until a fit passes the
        convergence checks (lifetimes' `penalizer_coef`, applied to its rescaled parameters).
    gg_penalizer_ladder: the same for Gamma-Gamma (fitted on monetary values divided by their
        mean, so the penalty does not depend on the currency).
    horizon_days: horizon of `expected_purchases` and `clv` in `predict`.
    monthly_discount_rate: CLV discount per 30-day step.
    spend_model: fit Gamma-Gamma too (default). False: BG/NBD only, for purchase counts and
        p_alive (the churn baseline), which then cannot fail on order values; `predict`,
        `expected_order_value` and `clv` raise.
    min_customers, min_repeat_buyers: the smallest population fitted (customers with a
        purchase; repeat buyers, with a spend for Gamma-Gamma). Below them a penalised fit
        still "converges", but its parameters come from the penalty, not the data (standard
        errors larger than the estimates), so `fit` raises `LtvFitError` instead.

    Learned attributes: bgnbd_params_, gg_params_, bgnbd_standard_errors_,
    gg_standard_errors_, bgnbd_penalizer_, gg_penalizer_, log_likelihood_ (BG/NBD, in the time
    unit), gg_log_likelihood_, population_mean_order_value_, fit_attempts_, n_customers_,
    n_repeat_buyers_ (Gamma-Gamma population), n_excluded_ (rows without a purchase),
    n_patterns_ / n_gg_patterns_ (compressed rows actually fitted).
    """

    # Defaults of the parameters added after models were first logged: a model pickled before
    # them has no such attribute (repr, get_params and clone read them).
    spend_model = True
    min_customers = 30
    min_repeat_buyers = 10

    def __init__(
        self,
        time_unit_days: float = 7.0,
        penalizer_ladder: tuple[float, ...] = DEFAULT_PENALIZER_LADDER,
        gg_penalizer_ladder: tuple[float, ...] = DEFAULT_PENALIZER_LADDER,
        horizon_days: int = 365,
        monthly_discount_rate: float = 0.01,
        spend_model: bool = True,
        min_customers: int = 30,
        min_repeat_buyers: int = 10,
    ) -> None:
        self.time_unit_days = time_unit_days
        self.penalizer_ladder = penalizer_ladder
        self.gg_penalizer_ladder = gg_penalizer_ladder
        self.horizon_days = horizon_days
        self.monthly_discount_rate = monthly_discount_rate
        self.spend_model = spend_model
        self.min_customers = min_customers
        self.min_repeat_buyers = min_repeat_buyers

    # ---- fitting ---------------------------------------------------------------------

    def fit(self, X: pd.DataFrame, y: None = None) -> CustomerLtvModel:
        """Fit BG/NBD on every customer with a purchase and (with `spend_model`) Gamma-Gamma on
        the repeat buyers (x > 0, zbar > 0)."""
        self._check_hyperparameters()
        rows = _prepare(X)
        # A refit must not leave a previous fit's state behind if it fails.
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)
        attempts: list[FitAttempt] = []
        try:
            self._fit_rows(rows, attempts)
        finally:
            # Kept on failure too (the LtvFitError carries the same record), so it can be logged.
            self.fit_attempts_ = attempts
        return self

    def _fit_rows(self, rows: _Rows, attempts: list[FitAttempt]) -> None:
        bg_out, bg_pen, bg_ll, n_patterns = self._fit_bgnbd(rows, attempts)
        gamma_gamma = self._fit_gamma_gamma(rows, attempts) if self.spend_model else None
        # Set only once both sub-models are fitted, so a failed fit leaves no half-fitted model.
        self.bgnbd_params_ = BgNbdParams(*(bg_out.params[k] for k in BgNbdParams._fields))
        self.bgnbd_standard_errors_ = dict(bg_out.standard_errors)
        self.bgnbd_penalizer_ = bg_pen
        self.log_likelihood_ = bg_ll
        self.n_customers_ = len(rows.x)
        self.n_excluded_ = rows.n_rows - len(rows.x)
        self.n_patterns_ = n_patterns
        if gamma_gamma is None:
            return
        gg_out, gg_pen, gg_ll, n_gg_patterns, n_repeat_buyers = gamma_gamma
        self.gg_params_ = GammaGammaParams(*(gg_out.params[k] for k in GammaGammaParams._fields))
        self.gg_standard_errors_ = dict(gg_out.standard_errors)
        self.gg_penalizer_ = gg_pen
        self.gg_log_likelihood_ = gg_ll
        p, q, v = self.gg_params_
        self.population_mean_order_value_ = v * p / (q - 1)
        self.n_repeat_buyers_ = n_repeat_buyers
        self.n_gg_patterns_ = n_gg_patterns

    def _fit_bgnbd(self, rows: _Rows, attempts: list[FitAttempt]) -> tuple[_FitterOutput, float, float, int]:
        """BG/NBD along the ladder: (accepted output, its penalizer, log-likelihood, distinct patterns fitted)."""
        if len(rows.x) == 0:
            raise LtvFitError("customer_ltv: no customer with a purchase (every T_days is null) - nothing to fit")
        unit = float(self.time_unit_days)

        # BG/NBD on distinct (x, t_x, T) patterns; compress in days (exact values), then convert.
        (px, ptx, pT), counts, _ = compress(rows.x, rows.t_x_days, rows.T_days)
        px_int = px.astype(np.int64)
        ptx_u, pT_u = ptx / unit, pT / unit
        n_repeat = int((rows.x > 0).sum())
        if len(rows.x) < self.min_customers or n_repeat < self.min_repeat_buyers:
            raise LtvFitError(
                f"customer_ltv: BG/NBD needs at least {self.min_customers} customers with a purchase and "
                f"{self.min_repeat_buyers} repeat buyers (min_customers / min_repeat_buyers), found {len(rows.x)} "
                f"and {n_repeat}: too few to estimate purchase rates",
                attempts,
            )
        sample = _warm_start_sample(counts)

        def fit_bgnbd(penalizer: float, start: _FitterOutput | None) -> _FitterOutput:
            return _lifetimes_bgnbd(px_int, ptx_u, pT_u, counts, penalizer, start)

        def fit_sample(penalizer: float) -> _FitterOutput:
            assert sample is not None
            keep, weights = sample
            return _lifetimes_bgnbd(px_int[keep], ptx_u[keep], pT_u[keep], weights, penalizer)

        def bgnbd_problems(out: _FitterOutput) -> tuple[float, list[str]]:
            params = BgNbdParams(*(out.params[k] for k in BgNbdParams._fields))
            ll = bgnbd_log_likelihood(params, px, ptx_u, pT_u, counts)
            # alpha is a time scale: judge it relative to the longest observation, as lifetimes' rescaling does.
            scale = {"alpha": max(float(pT_u.max()), 1e-12)}
            return ll, _fit_problems(out, ll, scale)

        out, penalizer, ll = _fit_along_ladder(
            "bgnbd",
            self.penalizer_ladder,
            fit_bgnbd,
            bgnbd_problems,
            attempts,
            context=f"{len(rows.x)} customers, {n_repeat} with repeat purchases, {len(counts)} distinct (x, t_x, T)",
            fit_sample=None if sample is None else fit_sample,
        )
        return out, penalizer, ll, len(counts)

    def _fit_gamma_gamma(
        self, rows: _Rows, attempts: list[FitAttempt]
    ) -> tuple[_FitterOutput, float, float, int, int]:
        """Gamma-Gamma along the ladder: (output, penalizer, log-likelihood, distinct (x, zbar), repeat buyers)."""
        # Gamma-Gamma on repeat buyers with a positive spend (zbar = 0 has no likelihood).
        gg_mask = (rows.x > 0) & (rows.zbar > 0)
        if not gg_mask.any():
            n_repeat = int((rows.x > 0).sum())
            raise LtvFitError(
                "customer_ltv: Gamma-Gamma needs repeat buyers with monetary_value > 0, found none "
                f"({n_repeat} customers with x > 0 among {len(rows.x)})",
                attempts,
            )
        if int(gg_mask.sum()) < self.min_repeat_buyers:
            raise LtvFitError(
                f"customer_ltv: Gamma-Gamma needs at least {self.min_repeat_buyers} repeat buyers with "
                f"monetary_value > 0 (min_repeat_buyers), found {int(gg_mask.sum())}: too few to estimate order values",
                attempts,
            )
        (gx, gz), gcounts, _ = compress(rows.x[gg_mask], rows.zbar[gg_mask])
        # Fit on zbar / its mean so the optimiser starts near the answer and the penalty is unit-free;
        # Gamma-Gamma is scale-equivariant (p, q unchanged, v scales).
        money_scale = float(np.average(gz, weights=gcounts))
        gz_scaled = gz / money_scale
        sample = _warm_start_sample(gcounts)

        # Warm starts pass between fit_gg and fit_sample in the scaled currency (v / money_scale).
        def fit_gg(penalizer: float, start: _FitterOutput | None) -> _FitterOutput:
            out = _lifetimes_gamma_gamma(gx, gz_scaled, gcounts, penalizer, start)
            return _FitterOutput(
                params={**out.params, "v": out.params["v"] * money_scale},
                standard_errors={**out.standard_errors, "v": out.standard_errors["v"] * money_scale},
            )

        def fit_sample(penalizer: float) -> _FitterOutput:
            assert sample is not None
            keep, weights = sample
            return _lifetimes_gamma_gamma(gx[keep], gz_scaled[keep], weights, penalizer)

        def gg_problems(out: _FitterOutput) -> tuple[float, list[str]]:
            params = GammaGammaParams(*(out.params[k] for k in GammaGammaParams._fields))
            ll = gamma_gamma_log_likelihood(params, gx, gz, gcounts)
            problems = _fit_problems(out, ll, {"v": money_scale})
            if math.isfinite(params.q) and params.q <= 1:
                problems.append(f"q={params.q:.4g} <= 1: the population mean order value is undefined")
            return ll, problems

        out, penalizer, ll = _fit_along_ladder(
            "gamma_gamma",
            self.gg_penalizer_ladder,
            fit_gg,
            gg_problems,
            attempts,
            context=f"{int(gg_mask.sum())} repeat buyers, {len(gcounts)} distinct (x, zbar)",
            fit_sample=None if sample is None else fit_sample,
        )
        return out, penalizer, ll, len(gcounts), int(gg_mask.sum())

    def _check_hyperparameters(self) -> None:
        problems = []
        if not (isinstance(self.time_unit_days, numbers.Real) and self.time_unit_days > 0):
            problems.append(f"time_unit_days must be > 0, got {self.time_unit_days!r}")
        for name in ("penalizer_ladder", "gg_penalizer_ladder"):
            ladder = tuple(getattr(self, name))
            if not ladder or any(not (isinstance(c, numbers.Real) and math.isfinite(c) and c >= 0) for c in ladder):
                problems.append(f"{name} must be a non-empty sequence of finite penalizers >= 0, got {ladder!r}")
        if not (isinstance(self.horizon_days, numbers.Real) and self.horizon_days > 0):
            problems.append(f"horizon_days must be > 0, got {self.horizon_days!r}")
        if not (isinstance(self.monthly_discount_rate, numbers.Real) and self.monthly_discount_rate >= 0):
            problems.append(f"monthly_discount_rate must be >= 0, got {self.monthly_discount_rate!r}")
        for name in ("min_customers", "min_repeat_buyers"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and value >= 1):
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if problems:
            raise LtvInputError("CustomerLtvModel: " + "; ".join(problems))

    # ---- predictions -----------------------------------------------------------------

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """p_alive, expected_purchases (over horizon_days), expected_order_value and clv per row of X.

        Keyed like X: same index, and X's `customer_id` column first when it has one. Rows
        without a purchase (null T_days) get NaN.
        """
        return self._keyed(X, self.predict_values(X))

    def predict_values(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """`predict(X)`'s output columns as float64 arrays, without the frame (what serving reads)."""
        rows = self._rows(X, spend=True)
        x, t_x, T = rows.x, rows.t_x_days / self.time_unit_days, rows.T_days / self.time_unit_days
        (ux, utx, uT), _, inverse = compress(x, t_x, T)
        order_value = gamma_gamma_conditional_mean(self.gg_params_, x, rows.zbar)
        values = {
            "p_alive": bgnbd_p_alive(self.bgnbd_params_, ux, utx, uT)[inverse],
            "expected_purchases": self._expected_in(float(self.horizon_days), ux, utx, uT)[inverse],
            "expected_order_value": order_value,
            "clv": self._discounted_purchases(ux, utx, uT, float(self.horizon_days), float(self.monthly_discount_rate))[
                inverse
            ]
            * order_value,
        }
        return self._every_row(rows, values)

    def p_alive(self, X: pd.DataFrame) -> pd.Series:
        """P(customer still active at the end of the observation), per row of X."""
        rows = self._rows(X)
        unit = self.time_unit_days
        value = bgnbd_p_alive(self.bgnbd_params_, rows.x, rows.t_x_days / unit, rows.T_days / unit)
        return self._frame(X, rows, {"p_alive": value})["p_alive"]

    def expected_purchases(self, X: pd.DataFrame, t_days: float | None = None) -> pd.Series:
        """Expected purchase days in the next `t_days` (default horizon_days), per row of X."""
        t = float(self.horizon_days if t_days is None else t_days)
        if not (math.isfinite(t) and t >= 0):
            raise LtvInputError(f"t_days must be a finite number >= 0, got {t_days!r}")
        rows = self._rows(X)
        unit = self.time_unit_days
        (ux, utx, uT), _, inverse = compress(rows.x, rows.t_x_days / unit, rows.T_days / unit)
        value = self._expected_in(t, ux, utx, uT)[inverse]
        return self._frame(X, rows, {"expected_purchases": value})["expected_purchases"]

    def expected_order_value(self, X: pd.DataFrame) -> pd.Series:
        """Gamma-Gamma E[value of a purchase day | x, zbar]; the population mean for x = 0."""
        rows = self._rows(X, spend=True)
        value = gamma_gamma_conditional_mean(self.gg_params_, rows.x, rows.zbar)
        return self._frame(X, rows, {"expected_order_value": value})["expected_order_value"]

    def clv(
        self, X: pd.DataFrame, horizon_days: float | None = None, monthly_discount_rate: float | None = None
    ) -> pd.Series:
        """Discounted CLV over the horizon (defaults: the model's), per row of X. See `_discounted_purchases`."""
        horizon = float(self.horizon_days if horizon_days is None else horizon_days)
        rate = float(self.monthly_discount_rate if monthly_discount_rate is None else monthly_discount_rate)
        if not (math.isfinite(horizon) and horizon > 0 and math.isfinite(rate) and rate >= 0):
            raise LtvInputError(f"clv needs horizon_days > 0 and monthly_discount_rate >= 0, got {horizon}, {rate}")
        rows = self._rows(X, spend=True)
        unit = self.time_unit_days
        (ux, utx, uT), _, inverse = compress(rows.x, rows.t_x_days / unit, rows.T_days / unit)
        value = self._discounted_purchases(ux, utx, uT, horizon, rate)[inverse] * gamma_gamma_conditional_mean(
            self.gg_params_, rows.x, rows.zbar
        )
        return self._frame(X, rows, {"clv": value})["clv"]

    def unconditional_expected_purchases(self, t_days: float | np.ndarray) -> np.ndarray:
        """E[X(t)]: repeat purchases a new customer is expected to make in t_days after the first purchase."""
        self._check_fitted()
        return bgnbd_expected_purchases(self.bgnbd_params_, np.asarray(t_days, dtype=float) / self.time_unit_days)

    def summary_metrics(self) -> dict[str, float]:
        """Fitted values under the names the MLflow runs log (DESIGN.md, "Interfaces")."""
        self._check_fitted(spend=True)
        r, alpha, a, b = self.bgnbd_params_
        p, q, v = self.gg_params_
        return {
            "bgnbd_r": r,
            "bgnbd_alpha": alpha,
            "bgnbd_a": a,
            "bgnbd_b": b,
            "gg_p": p,
            "gg_q": q,
            "gg_v": v,
            "bgnbd_log_likelihood": self.log_likelihood_,
            "gg_log_likelihood": self.gg_log_likelihood_,
            "bgnbd_penalizer": self.bgnbd_penalizer_,
            "gg_penalizer": self.gg_penalizer_,
            "population_mean_order_value": self.population_mean_order_value_,
            "n_customers": float(self.n_customers_),
            "n_repeat_buyers": float(self.n_repeat_buyers_),
        }

    # ---- helpers ---------------------------------------------------------------------

    def _check_fitted(self, spend: bool = False) -> None:
        if not hasattr(self, "bgnbd_params_"):
            raise NotFittedError("This CustomerLtvModel is not fitted yet: call fit() first.")
        if spend and not hasattr(self, "gg_params_"):
            raise NotFittedError("This CustomerLtvModel was fitted with spend_model=False: it has no order values or CLV.")

    def _rows(self, X: pd.DataFrame, spend: bool = False) -> _Rows:
        self._check_fitted(spend)
        return _prepare(X)

    def _expected_in(self, t_days: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        return bgnbd_conditional_expected_purchases(self.bgnbd_params_, t_days / self.time_unit_days, x, t_x, T)

    def _discounted_purchases(
        self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon_days: float, rate: float
    ) -> np.ndarray:
        """Sum over 30-day steps of E[purchases in the step] / (1 + rate)^(step end in months).

        Steps end at 30, 60, ... days and at the horizon (a last partial step: 365 days = 12
        steps of 30 + 5 days, discounted at 365/30 months), so with rate 0 this is exactly
        E[purchases over the horizon]. For a 360-day horizon it equals lifetimes'
        `customer_lifetime_value(time=12)` (which this replaces: it breaks on pandas 3).
        """
        ends = np.append(np.arange(DAYS_PER_MONTH, horizon_days, DAYS_PER_MONTH), horizon_days)
        total = np.zeros(len(x))
        # Every step end at once (a row each), for a block of customers at a time: one pass of
        # the numpy operations instead of one per step (most of the time for the API's few
        # customers), while a batch's temporaries stay small.
        for start in range(0, len(x), STEP_BLOCK_ROWS):
            block = slice(start, start + STEP_BLOCK_ROWS)
            expected = bgnbd_conditional_expected_purchases(
                self.bgnbd_params_, ends[:, None] / self.time_unit_days, x[block], t_x[block], T[block]
            )
            previous = np.zeros(len(expected[0]))
            for end, cumulative in zip(ends, expected, strict=True):
                total[block] += (cumulative - previous) / (1.0 + rate) ** (end / DAYS_PER_MONTH)
                previous = cumulative
        return total

    @staticmethod
    def _frame(X: pd.DataFrame, rows: _Rows, values: dict[str, np.ndarray]) -> pd.DataFrame:
        return CustomerLtvModel._keyed(X, CustomerLtvModel._every_row(rows, values))

    @staticmethod
    def _every_row(rows: _Rows, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Values of the rows with a purchase spread over every input row (NaN for the others)."""
        columns: dict[str, np.ndarray] = {}
        for name, value in values.items():
            full = np.full(rows.n_rows, np.nan)
            full[rows.positions] = value
            columns[name] = full
        return columns

    @staticmethod
    def _keyed(X: pd.DataFrame, columns: dict[str, np.ndarray]) -> pd.DataFrame:
        """The columns keyed like X: same index, X's `customer_id` first when it has one."""
        key = {KEY_COLUMN: X[KEY_COLUMN].to_numpy()} if KEY_COLUMN in X.columns else {}
        return pd.DataFrame({**key, **columns}, index=X.index)


# --------------------------------------------------------------------------------------
# The ladder and the convergence checks
# --------------------------------------------------------------------------------------


def _fit_problems(out: _FitterOutput, log_likelihood: float, scale: dict[str, float]) -> list[str]:
    """Why a fit that returned is not usable (empty when it is)."""
    problems = []
    if not math.isfinite(log_likelihood):
        problems.append(f"log-likelihood is {log_likelihood}")
    for name, value in out.params.items():
        unit_free = value / scale.get(name, 1.0)
        measured = f"{name} / {scale[name]:.4g}" if name in scale else name
        if not math.isfinite(value):
            problems.append(f"{name} is {value}")
        elif unit_free < PARAM_LOWER:
            problems.append(f"{name}={value:.4g} at the lower bound ({measured} < {PARAM_LOWER:g})")
        elif unit_free > PARAM_UPPER:
            problems.append(f"{name}={value:.4g} at the upper bound ({measured} > {PARAM_UPPER:g})")
    bad_errors = [name for name, error in out.standard_errors.items() if not math.isfinite(error)]
    if bad_errors:
        problems.append(f"non-finite standard errors for {', '.join(bad_errors)} (Hessian not positive definite)")
    return problems


def _warm_start_sample(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A simple random sample of about WARM_START_SAMPLE of the customers behind `counts`, to warm-start a fit.

    Every customer is kept with the same probability (binomially thinned counts, fixed seed, so
    fits are reproducible): (rows with a kept customer, their thinned counts). None when there
    are fewer than WARM_START_MIN_ROWS rows: a cold fit is cheap enough then.
    """
    if len(counts) < WARM_START_MIN_ROWS:
        return None
    share = min(1.0, WARM_START_SAMPLE / float(counts.sum()))
    thinned = np.random.default_rng(WARM_START_SEED).binomial(counts, share)
    keep = np.flatnonzero(thinned)
    return keep, thinned[keep]


def _sample_start(fit_sample: Callable[[float], _FitterOutput], penalizer: float) -> _FitterOutput | None:
    """The sample's fit as a starting point, or None when it failed or is not a usable point."""
    try:
        out = fit_sample(penalizer)
    except _FitterFailed:
        return None
    values = np.array(list(out.params.values()), dtype=float)
    if not (np.isfinite(values).all() and (values > 0).all()):
        return None
    return out


def _fit_along_ladder(
    model: str,
    ladder: Sequence[float],
    fit: Callable[[float, _FitterOutput | None], _FitterOutput],
    check: Callable[[_FitterOutput], tuple[float, list[str]]],
    attempts: list[FitAttempt],
    context: str,
    fit_sample: Callable[[float], _FitterOutput] | None = None,
) -> tuple[_FitterOutput, float, float]:
    """Try each penalizer until a fit passes `check`; record every try in `attempts`.

    fit(penalizer, start) fits all rows from lifetimes' default start (start None) or from
    `start`. With `fit_sample`, each rung first fits the sample with the same penalizer and
    starts the full fit at its optimum; if that fit raises or fails `check`, the rung is retried
    from the default start (both tries are recorded), so a bad warm start costs time, not the fit.
    """
    for penalizer in ladder:
        penalizer = float(penalizer)
        warm = _sample_start(fit_sample, penalizer) if fit_sample is not None else None
        for start in (warm, None) if warm is not None else (None,):
            try:
                out = fit(penalizer, start)
            except _FitterFailed as exc:
                attempts.append(FitAttempt(model, penalizer, False, None, {}, {}, str(exc), start is not None))
                continue
            ll, problems = check(out)
            reason = "; ".join(problems) if problems else None
            attempts.append(
                FitAttempt(
                    model,
                    penalizer,
                    not problems,
                    ll,
                    dict(out.params),
                    dict(out.standard_errors),
                    reason,
                    start is not None,
                )
            )
            if not problems:
                return out, penalizer, ll
    tried = "; ".join(
        f"penalizer {a.penalizer:g}{' (warm start)' if a.warm_start else ''}: {a.reason}"
        for a in attempts
        if a.model == model
    )
    raise LtvFitError(f"customer_ltv: {model} fit failed for every penalizer ({context}) - {tried}", attempts)
