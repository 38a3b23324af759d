"""customer_ltv model: published CDNOW values, compression, the penalizer ladder, behaviour.

References for the numbers:
- BG/NBD: Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way: An Alternative
  to the Pareto/NBD Model", Marketing Science 24(2), 275-284: on the CDNOW sample r = 0.243,
  alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4; customer (x=2, t_x=30.43, T=38.86 weeks)
  expects 1.226 purchases in the next 39 weeks.
- Gamma-Gamma: Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value",
  http://brucehardie.com/notes/025/: on the 946 repeat buyers p = 6.25, q = 3.74, gamma = 15.44.
The calibration summary ships with lifetimes (`cdnow_customers_summary_with_transactions.csv`,
weeks); it is converted to days as the rfm feature layer provides it.
"""

from __future__ import annotations

import math
import pickle
import warnings
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from features.errors import CrmScoringError
from training.ltv import (
    FEATURE_COLUMNS,
    BgNbdParams,
    CustomerLtvModel,
    GammaGammaParams,
    LtvFitError,
    LtvInputError,
    _fit_problems,
    _FitterOutput,
    bgnbd_conditional_expected_purchases,
    bgnbd_expected_purchases,
    bgnbd_log_likelihood,
    bgnbd_p_alive,
    compress,
    gamma_gamma_conditional_mean,
    gamma_gamma_log_likelihood,
    simulate_bgnbd,
)

PAPER_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PAPER_GG = {"p": 6.25, "q": 3.74, "v": 15.44}


def cdnow_summary() -> pd.DataFrame:
    path = resources.files("lifetimes") / "datasets" / "cdnow_customers_summary_with_transactions.csv"
    with path.open() as handle:
        return pd.read_csv(handle)


def as_features(summary: pd.DataFrame) -> pd.DataFrame:
    """The rfm family's view of the weekly summary: days, lifetimes' names."""
    return pd.DataFrame(
        {
            "customer_id": summary["ID"].astype(str),
            "frequency": summary["x"].astype("int64"),
            "recency_days": summary["t_x"] * 7,
            "T_days": summary["T"] * 7,
            "monetary_value": summary["zbar"].astype(float),
        }
    )


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return cdnow_summary()


@pytest.fixture(scope="module")
def features(summary) -> pd.DataFrame:
    return as_features(summary)


@pytest.fixture(scope="module")
def model(features) -> CustomerLtvModel:
    return CustomerLtvModel().fit(features)


def lifetimes_bgnbd(params: BgNbdParams):
    """A lifetimes fitter carrying given parameters, to call its formulas."""
    from lifetimes import BetaGeoFitter

    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(params._asdict())
    return fitter


def one_customer(x: int, t_x_days: float, T_days: float, zbar: float = 30.0) -> pd.DataFrame:
    return pd.DataFrame({"frequency": [x], "recency_days": [t_x_days], "T_days": [T_days], "monetary_value": [zbar]})


# ---- published values ------------------------------------------------------------------


def test_cdnow_bgnbd_parameters_and_log_likelihood(model):
    fitted = model.bgnbd_params_._asdict()
    for name, published in PAPER_BGNBD.items():
        assert fitted[name] == pytest.approx(published, rel=0.005), name
    # Published to one decimal, in weeks (the model's default unit).
    assert model.log_likelihood_ == pytest.approx(-9582.4, abs=0.1)
    assert model.bgnbd_penalizer_ == 0.0
    assert model.n_customers_ == 2357
    assert model.n_excluded_ == 0


def test_cdnow_gamma_gamma_parameters(model):
    assert model.n_repeat_buyers_ == 946
    fitted = model.gg_params_._asdict()
    for name, published in PAPER_GG.items():
        assert fitted[name] == pytest.approx(published, rel=0.005), name
    p, q, v = model.gg_params_
    assert model.population_mean_order_value_ == pytest.approx(v * p / (q - 1))


def test_cdnow_expected_purchases_of_the_paper_customer(model):
    customer = one_customer(2, 30.43 * 7, 38.86 * 7)
    assert model.expected_purchases(customer, 39 * 7).iloc[0] == pytest.approx(1.226, abs=0.001)


def test_summary_metrics_use_the_mlflow_names(model):
    metrics = model.summary_metrics()
    for name in ("bgnbd_r", "bgnbd_alpha", "bgnbd_a", "bgnbd_b", "gg_p", "gg_q", "gg_v"):
        assert math.isfinite(metrics[name])
    assert metrics["bgnbd_r"] == model.bgnbd_params_.r


# ---- closed forms against lifetimes' own methods ---------------------------------------


def test_formulas_match_lifetimes(model, summary):
    from lifetimes import GammaGammaFitter

    params = model.bgnbd_params_
    fitter = lifetimes_bgnbd(params)
    x, t_x, T = summary["x"].to_numpy(), summary["t_x"].to_numpy(), summary["T"].to_numpy()
    for t in (0.5, 39.0, 520.0):
        ours = bgnbd_conditional_expected_purchases(params, t, x, t_x, T)
        theirs = fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
        np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    np.testing.assert_allclose(bgnbd_p_alive(params, x, t_x, T), fitter.conditional_probability_alive(x, t_x, T))
    times = np.array([1.0, 39.0, 78.0, 1000.0])
    np.testing.assert_allclose(
        bgnbd_expected_purchases(params, times), fitter.expected_number_of_purchases_up_to_time(times)
    )

    gg = GammaGammaFitter()
    gg.params_ = pd.Series(model.gg_params_._asdict())
    np.testing.assert_allclose(
        gamma_gamma_conditional_mean(model.gg_params_, x, summary["zbar"].to_numpy()),
        gg.conditional_expected_average_profit(x, summary["zbar"].to_numpy()),
    )


def test_log_likelihoods_match_lifetimes_objective(model, summary):
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    x, t_x, T = summary["x"].to_numpy(), summary["t_x"].to_numpy(), summary["T"].to_numpy()
    weights = np.ones(len(x))
    log_params = np.log(np.array(model.bgnbd_params_))
    theirs = -BetaGeoFitter._negative_log_likelihood(log_params, x, t_x, T, weights, 0.0) * len(x)
    assert bgnbd_log_likelihood(model.bgnbd_params_, x, t_x, T) == pytest.approx(theirs, rel=1e-10)

    repeat = x > 0
    zbar = summary["zbar"].to_numpy()[repeat]
    log_params = np.log(np.array(model.gg_params_))
    theirs = -GammaGammaFitter._negative_log_likelihood(log_params, x[repeat], zbar, weights[repeat], 0.0) * repeat.sum()
    assert gamma_gamma_log_likelihood(model.gg_params_, x[repeat], zbar) == pytest.approx(theirs, rel=1e-10)


def test_conditional_expectation_is_finite_for_heavy_buyers(model):
    # The plain 2F1 series overflows for large x; the Euler-transformed form must not.
    params = model.bgnbd_params_
    x = np.array([50.0, 200.0, 1000.0])
    ours = bgnbd_conditional_expected_purchases(params, 52.0, x, np.full(3, 104.0), np.full(3, 104.0))
    assert np.isfinite(ours).all() and (np.diff(ours) > 0).all()
    theirs = lifetimes_bgnbd(params).conditional_expected_number_of_purchases_up_to_time(52.0, x, 104.0, 104.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)


# ---- compression -----------------------------------------------------------------------


def test_compress_maps_rows_to_distinct_patterns():
    a = np.array([1, 2, 1, 1, 3, 2])
    b = np.array([0.5, 0.1, 0.5, 0.7, 0.5, 0.1])
    (ua, ub), counts, inverse = compress(a, b)
    assert len(ua) == 4 and counts.sum() == len(a)
    np.testing.assert_array_equal(ua[inverse], a)
    np.testing.assert_array_equal(ub[inverse], b)
    assert len(set(zip(ua, ub, strict=True))) == len(ua)


@pytest.mark.parametrize("n", [0, 1, 7, 64, 65, 500])
def test_compress_of_few_rows_equals_the_groupby_path(n, monkeypatch):
    """The dict path for a request's few rows groups exactly as pandas' groupby does."""
    import training.ltv as ltv

    rng = np.random.default_rng(n)
    columns = (rng.integers(0, 3, n).astype(float), rng.choice([0.0, -0.0, 2.5], n), rng.integers(0, 2, n).astype(float))
    small = compress(*columns)
    monkeypatch.setattr(ltv, "SMALL_COMPRESS_ROWS", -1)  # force the groupby path
    large = compress(*columns)
    for got, expected in zip(small[0], large[0], strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(small[1], large[1])
    np.testing.assert_array_equal(small[2], large[2])


def test_compressed_fit_equals_uncompressed_fit():
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    features = simulate_bgnbd(20_000, seed=3)
    model = CustomerLtvModel().fit(features)
    assert model.n_patterns_ < len(features) / 2  # the compression is real

    x = features["frequency"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = BetaGeoFitter().fit(x, features["recency_days"] / 7, features["T_days"] / 7)
        repeat = x > 0
        plain_gg = GammaGammaFitter().fit(x[repeat], features["monetary_value"].to_numpy()[repeat])
    np.testing.assert_allclose(np.array(model.bgnbd_params_), plain.params_.to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(np.array(model.gg_params_), plain_gg.params_.to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        [model.bgnbd_standard_errors_[k] for k in BgNbdParams._fields], plain.standard_errors_.to_numpy(), rtol=1e-3
    )


def test_simulated_parameters_are_recovered():
    truth = BgNbdParams(0.5, 8.0, 0.6, 3.0)
    gg_truth = GammaGammaParams(4.0, 5.0, 40.0)
    model = CustomerLtvModel().fit(simulate_bgnbd(60_000, truth, gg_truth, max_T_days=730, seed=7))
    np.testing.assert_allclose(np.array(model.bgnbd_params_), np.array(truth), rtol=0.15)
    np.testing.assert_allclose(np.array(model.gg_params_), np.array(gg_truth), rtol=0.15)


# ---- warm start ------------------------------------------------------------------------


def _count_likelihood_calls(monkeypatch, fitter_name: str) -> list[int]:
    """Rows seen by each call of a lifetimes fitter's objective (BFGS evaluations, then one for the Hessian)."""
    import lifetimes

    cls = getattr(lifetimes, fitter_name)
    original = cls._negative_log_likelihood
    calls: list[int] = []

    def counted(log_params, *args):
        calls.append(len(args[0]))
        return original(log_params, *args)

    monkeypatch.setattr(cls, "_negative_log_likelihood", staticmethod(counted))
    return calls


def test_warm_start_at_the_optimum_stops_at_once(monkeypatch, summary):
    """The start is converted to lifetimes' own coordinates exactly (log-parameters, time scaled by 1 / max T)."""
    from training import ltv

    x, t_x, T = summary["x"].to_numpy(), summary["t_x"].to_numpy() * 7, summary["T"].to_numpy() * 7  # days
    weights = np.ones(len(x), dtype=np.int64)
    cold = ltv._lifetimes_bgnbd(x, t_x, T, weights, 0.0)
    calls = _count_likelihood_calls(monkeypatch, "BetaGeoFitter")
    again = ltv._lifetimes_bgnbd(x, t_x, T, weights, 0.0, start=cold)
    assert len(calls) == 2  # one evaluation (the gradient is already below tolerance) + the Hessian
    for name, value in cold.params.items():
        assert again.params[name] == pytest.approx(value, rel=1e-12), name

    repeat = x > 0
    zbar = summary["zbar"].to_numpy()[repeat]
    gg_cold = ltv._lifetimes_gamma_gamma(x[repeat], zbar, weights[repeat], 0.0)
    gg_calls = _count_likelihood_calls(monkeypatch, "GammaGammaFitter")
    gg_again = ltv._lifetimes_gamma_gamma(x[repeat], zbar, weights[repeat], 0.0, start=gg_cold)
    assert len(gg_calls) == 2
    for name, value in gg_cold.params.items():
        assert gg_again.params[name] == pytest.approx(value, rel=1e-12), name


@pytest.fixture(scope="module")
def warm_features() -> pd.DataFrame:
    return simulate_bgnbd(40_000, seed=11)


def _small_warm_start(monkeypatch, min_rows: int = 2_000, sample: int = 4_000) -> None:
    from training import ltv

    monkeypatch.setattr(ltv, "WARM_START_MIN_ROWS", min_rows)
    monkeypatch.setattr(ltv, "WARM_START_SAMPLE", sample)


def _assert_same_fit(warm: CustomerLtvModel, cold: CustomerLtvModel) -> None:
    np.testing.assert_allclose(np.array(warm.bgnbd_params_), np.array(cold.bgnbd_params_), rtol=2e-5)
    np.testing.assert_allclose(np.array(warm.gg_params_), np.array(cold.gg_params_), rtol=2e-5)
    for name in BgNbdParams._fields:
        assert warm.bgnbd_standard_errors_[name] == pytest.approx(cold.bgnbd_standard_errors_[name], rel=1e-3)
    for name in GammaGammaParams._fields:
        assert warm.gg_standard_errors_[name] == pytest.approx(cold.gg_standard_errors_[name], rel=1e-3)
    assert warm.log_likelihood_ == pytest.approx(cold.log_likelihood_, abs=1e-6)
    assert warm.gg_log_likelihood_ == pytest.approx(cold.gg_log_likelihood_, abs=1e-6)


def test_warm_started_fit_equals_cold_fit(monkeypatch, warm_features):
    from training import ltv

    _small_warm_start(monkeypatch, min_rows=10**9)
    cold = CustomerLtvModel().fit(warm_features)
    assert not any(a.warm_start for a in cold.fit_attempts_)

    _small_warm_start(monkeypatch)
    assert cold.n_patterns_ >= ltv.WARM_START_MIN_ROWS and cold.n_gg_patterns_ >= ltv.WARM_START_MIN_ROWS
    bg_calls = _count_likelihood_calls(monkeypatch, "BetaGeoFitter")
    gg_calls = _count_likelihood_calls(monkeypatch, "GammaGammaFitter")
    warm = CustomerLtvModel().fit(warm_features)
    assert [(a.model, a.penalizer, a.converged, a.warm_start) for a in warm.fit_attempts_] == [
        ("bgnbd", 0.0, True, True),
        ("gamma_gamma", 0.0, True, True),
    ]
    _assert_same_fit(warm, cold)
    # The point of it: a handful of evaluations on all rows (+1 for the Hessian) instead of ~30.
    assert 2 <= bg_calls.count(cold.n_patterns_) <= 10
    assert 2 <= gg_calls.count(cold.n_gg_patterns_) <= 10
    # Reproducible: the sample is drawn with a fixed seed.
    assert CustomerLtvModel().fit(warm_features).bgnbd_params_ == warm.bgnbd_params_


def test_a_bad_warm_start_still_converges(monkeypatch, warm_features):
    from training import ltv

    _small_warm_start(monkeypatch, min_rows=10**9)
    cold = CustomerLtvModel().fit(warm_features)
    _small_warm_start(monkeypatch)
    far = {
        "bgnbd": {"r": 20.0, "alpha": 0.01, "a": 0.02, "b": 40.0},
        "gamma_gamma": {"p": 0.05, "q": 50.0, "v": 0.001},
    }

    def far_start(fit_sample, penalizer):
        out = fit_sample(penalizer)  # which sub-model: by its parameter names
        model = "bgnbd" if "r" in out.params else "gamma_gamma"
        # A singular "Hessian" too: BFGS then starts from the identity.
        return ltv._FitterOutput(far[model], {k: 1.0 for k in far[model]}, np.zeros((len(far[model]),) * 2))

    monkeypatch.setattr(ltv, "_sample_start", far_start)
    model = CustomerLtvModel().fit(warm_features)
    for name in ("bgnbd", "gamma_gamma"):
        tries = [a for a in model.fit_attempts_ if a.model == name]
        # Either the warm-started fit found the optimum anyway, or the rung was retried cold.
        assert tries[0].warm_start and tries[-1].converged
        if not tries[0].converged:
            assert not tries[1].warm_start and tries[1].penalizer == tries[0].penalizer
    _assert_same_fit(model, cold)


def test_a_failing_warm_start_falls_back_to_a_cold_fit(monkeypatch, warm_features):
    from lifetimes import BetaGeoFitter
    from lifetimes.utils import ConvergenceError

    _small_warm_start(monkeypatch, min_rows=10**9)
    cold = CustomerLtvModel().fit(warm_features)
    _small_warm_start(monkeypatch)
    original = BetaGeoFitter.fit

    def fit(self, *args, initial_params=None, **kwargs):
        if initial_params is not None:
            raise ConvergenceError("The model did not converge.")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BetaGeoFitter, "fit", fit)
    model = CustomerLtvModel().fit(warm_features)
    assert [(a.model, a.penalizer, a.converged, a.warm_start) for a in model.fit_attempts_] == [
        ("bgnbd", 0.0, False, True),
        ("bgnbd", 0.0, True, False),
        ("gamma_gamma", 0.0, True, True),
    ]
    assert "did not converge" in model.fit_attempts_[0].reason
    _assert_same_fit(model, cold)


def test_warm_start_sample_and_start_selection(monkeypatch):
    from training import ltv

    _small_warm_start(monkeypatch, min_rows=100, sample=1_000)
    assert ltv._warm_start_sample(np.ones(99, dtype=np.int64)) is None
    counts = np.arange(1, 2_001)  # 2,001,000 customers
    keep, thinned = ltv._warm_start_sample(counts)
    assert (thinned > 0).all() and (thinned <= counts[keep]).all()
    assert 800 < thinned.sum() < 1_200
    again_keep, again_thinned = ltv._warm_start_sample(counts)
    np.testing.assert_array_equal(keep, again_keep)
    np.testing.assert_array_equal(thinned, again_thinned)

    def failing(penalizer):
        raise ltv._FitterFailed("optimizer did not converge")

    assert ltv._sample_start(failing, 0.0) is None
    nan_start = ltv._FitterOutput({"p": math.nan, "q": 2.0, "v": 1.0}, {})
    assert ltv._sample_start(lambda penalizer: nan_start, 0.0) is None
    fine = ltv._FitterOutput({"p": 6.0, "q": 3.0, "v": 15.0}, {})
    assert ltv._sample_start(lambda penalizer: fine, 0.0) is fine


# ---- convergence handling --------------------------------------------------------------


def _failing_first_rung(monkeypatch, fitter_name: str, exception: Exception) -> None:
    import lifetimes

    cls = getattr(lifetimes, fitter_name)
    original = cls.fit

    def fit(self, *args, **kwargs):
        if self.penalizer_coef == 0.0:
            raise exception
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "fit", fit)


def test_ladder_moves_on_when_bgnbd_does_not_converge(monkeypatch, features):
    from lifetimes.utils import ConvergenceError

    _failing_first_rung(monkeypatch, "BetaGeoFitter", ConvergenceError("The model did not converge."))
    model = CustomerLtvModel().fit(features)
    first, second = model.fit_attempts_[:2]
    assert (first.model, first.penalizer, first.converged) == ("bgnbd", 0.0, False)
    assert "did not converge" in first.reason and first.params == {} and first.log_likelihood is None
    assert (second.model, second.penalizer, second.converged, second.reason) == ("bgnbd", 0.001, True, None)
    assert model.bgnbd_penalizer_ == 0.001
    assert model.bgnbd_params_.r == second.params["r"]
    assert [a.model for a in model.fit_attempts_] == ["bgnbd", "bgnbd", "gamma_gamma"]
    # Penalised, the estimate moves a little, but stays in the neighbourhood of the MLE.
    assert model.bgnbd_params_.r == pytest.approx(PAPER_BGNBD["r"], rel=0.2)


def test_ladder_moves_on_when_gamma_gamma_has_a_singular_hessian(monkeypatch, features):
    _failing_first_rung(monkeypatch, "GammaGammaFitter", np.linalg.LinAlgError("Singular matrix"))
    model = CustomerLtvModel().fit(features)
    gg = [a for a in model.fit_attempts_ if a.model == "gamma_gamma"]
    assert not gg[0].converged and "singular Hessian" in gg[0].reason
    assert gg[1].converged and model.gg_penalizer_ == 0.001


def test_every_rung_failing_raises_with_the_record(monkeypatch, features):
    from lifetimes import BetaGeoFitter
    from lifetimes.utils import ConvergenceError

    def never(self, *args, **kwargs):
        raise ConvergenceError("The model did not converge.")

    monkeypatch.setattr(BetaGeoFitter, "fit", never)
    model = CustomerLtvModel(penalizer_ladder=(0.0, 0.01))
    with pytest.raises(LtvFitError, match=r"bgnbd fit failed for every penalizer") as info:
        model.fit(features)
    assert isinstance(info.value, CrmScoringError)
    message = str(info.value)
    assert "penalizer 0: optimizer did not converge" in message and "penalizer 0.01" in message
    assert [(a.penalizer, a.converged) for a in info.value.attempts] == [(0.0, False), (0.01, False)]
    assert model.fit_attempts_ == list(info.value.attempts)
    assert not hasattr(model, "bgnbd_params_")
    with pytest.raises(NotFittedError):
        model.predict(features)


def test_no_repeat_purchases_fails_with_a_named_reason():
    features = pd.DataFrame(
        {
            "frequency": 0,
            "recency_days": 0.0,
            "T_days": np.arange(40, dtype=float) * 5 + 10,
            "monetary_value": 0.0,
        }
    )
    with pytest.raises(LtvFitError, match=r"BG/NBD needs at least 30 customers with a purchase and 10 repeat buyers .* found 40 and 0") as info:
        CustomerLtvModel().fit(features)
    assert not info.value.attempts  # refused before any fit


def test_a_handful_of_rows_fits_along_the_ladder_or_fails_clearly():
    features = pd.DataFrame(
        {
            "frequency": [0, 1, 2, 0, 3],
            "recency_days": [0.0, 20, 40, 0, 60],
            "T_days": [100.0, 100, 100, 50, 70],
            "monetary_value": [0.0, 10, 20, 0, 15],
        }
    )
    assert "found 5 and 3" in str(pytest.raises(LtvFitError, CustomerLtvModel().fit, features).value)  # too few by default
    model = CustomerLtvModel(min_customers=1, min_repeat_buyers=1)  # the ladder's mechanics on a handful of rows
    try:
        model.fit(features)
    except LtvFitError as error:
        assert "failed for every penalizer" in str(error) and error.attempts
    else:
        accepted = [a for a in model.fit_attempts_ if a.converged]
        assert [a.model for a in accepted] == ["bgnbd", "gamma_gamma"]
        assert all(a.reason for a in model.fit_attempts_ if not a.converged)
        assert np.isfinite(model.predict(features).to_numpy()).all()


def test_gamma_gamma_needs_spending_repeat_buyers():
    features = simulate_bgnbd(3_000, seed=2).assign(monetary_value=0.0)
    with pytest.raises(LtvFitError, match="Gamma-Gamma needs repeat buyers"):
        CustomerLtvModel().fit(features)


def test_purchases_without_the_spend_model():
    """BG/NBD alone (`spend_model=False`, the churn baseline): counts and p_alive without any
    order value, the same as the full model's; everything that needs spend says why it cannot."""
    features = simulate_bgnbd(3_000, seed=2)
    full = CustomerLtvModel().fit(features)
    counts_only = CustomerLtvModel(spend_model=False).fit(features.assign(monetary_value=0.0))

    assert counts_only.bgnbd_params_ == full.bgnbd_params_
    pd.testing.assert_series_equal(counts_only.expected_purchases(features), full.expected_purchases(features))
    pd.testing.assert_series_equal(counts_only.p_alive(features), full.p_alive(features))
    assert not hasattr(counts_only, "gg_params_")
    for needs_spend in (counts_only.predict, counts_only.clv, counts_only.expected_order_value):
        with pytest.raises(NotFittedError, match="spend_model=False"):
            needs_spend(features)


def test_too_few_customers_are_refused_rather_than_fitted_by_the_penalty():
    """With a handful of buyers a penalised fit "converges" on the penalty's parameters
    (standard errors larger than the estimates): `fit` says the population is too small."""
    features = simulate_bgnbd(3_000, seed=2)
    few = features[features["T_days"].notna()].head(8)
    with pytest.raises(LtvFitError, match=r"BG/NBD needs at least 30 customers with a purchase and 10 repeat buyers .* found 8"):
        CustomerLtvModel().fit(few)
    buyers = features[features["frequency"] > 0]
    spenders_few = pd.concat([buyers.head(200), buyers.iloc[200:].assign(monetary_value=0.0)])
    with pytest.raises(LtvFitError, match=r"Gamma-Gamma needs at least 10 repeat buyers .* found 5"):
        CustomerLtvModel(min_repeat_buyers=10).fit(pd.concat([buyers.head(5), buyers.iloc[5:].assign(monetary_value=0.0)]))
    assert CustomerLtvModel(min_customers=5, min_repeat_buyers=5).fit(spenders_few).n_repeat_buyers_ == 200
    with pytest.raises(LtvInputError, match="min_customers must be an integer >= 1"):
        CustomerLtvModel(min_customers=0).fit(features)


def test_convergence_checks():
    good = _FitterOutput({"r": 0.2, "alpha": 4.0}, {"r": 0.01, "alpha": 0.3})
    assert _fit_problems(good, -100.0, {"alpha": 40.0}) == []
    bad = _FitterOutput({"r": 1e-9, "alpha": 4e7, "a": float("nan")}, {"r": float("nan"), "alpha": 1.0, "a": 1.0})
    problems = " | ".join(_fit_problems(bad, float("-inf"), {"alpha": 40.0}))
    assert "log-likelihood is -inf" in problems
    assert "r=1e-09 at the lower bound" in problems
    assert "alpha=4e+07 at the upper bound (alpha / 40 > 100000)" in problems
    assert "a is nan" in problems
    assert "non-finite standard errors for r" in problems


def test_fit_keeps_warning_filters_and_stdout_clean(monkeypatch, features, capsys):
    from lifetimes.utils import ConvergenceError

    _failing_first_rung(monkeypatch, "BetaGeoFitter", ConvergenceError("x"))
    before = list(warnings.filters)
    CustomerLtvModel().fit(features)
    assert warnings.filters == before
    assert capsys.readouterr().out == ""


# ---- inputs ----------------------------------------------------------------------------


def test_invalid_rows_are_all_reported():
    features = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "frequency": [1.5, 0, 2, 1],
            "recency_days": [3.0, 4, 50, 5],
            "T_days": [10.0, 10, 40, 10],
            "monetary_value": [1.0, 0, 1, -2],
        }
    )
    with pytest.raises(LtvInputError) as info:
        CustomerLtvModel().fit(features)
    message = str(info.value)
    for expected in (
        "frequency not a non-negative integer (e.g. a)",
        "recency_days != 0 with frequency 0 (e.g. b)",
        "recency_days > T_days (e.g. c)",
        "negative monetary_value (e.g. d)",
    ):
        assert expected in message


def test_missing_columns_and_bad_hyperparameters():
    with pytest.raises(LtvInputError, match="lacks column"):
        CustomerLtvModel().fit(pd.DataFrame({"frequency": [1]}))
    with pytest.raises(LtvInputError, match="penalizer_ladder"):
        CustomerLtvModel(penalizer_ladder=()).fit(one_customer(1, 5, 10))
    with pytest.raises(LtvInputError, match="time_unit_days"):
        CustomerLtvModel(time_unit_days=0).fit(one_customer(1, 5, 10))


def test_customers_without_purchase_are_left_out(model, features):
    leads = pd.DataFrame(
        {"customer_id": ["lead-1", "lead-2"]} | {column: pd.NA for column in FEATURE_COLUMNS}
    )
    with_leads = pd.concat([features, leads], ignore_index=True)
    refit = CustomerLtvModel().fit(with_leads)
    assert refit.n_excluded_ == 2 and refit.n_customers_ == len(features)
    np.testing.assert_allclose(np.array(refit.bgnbd_params_), np.array(model.bgnbd_params_))
    predicted = refit.predict(with_leads)
    assert predicted.iloc[-2:][["p_alive", "expected_purchases", "expected_order_value", "clv"]].isna().all().all()
    assert predicted.iloc[:-2].notna().all().all()


def test_predict_is_keyed_like_the_input(model, features):
    frame = features.iloc[:5].set_index(pd.Index([10, 11, 12, 13, 14]))
    predicted = model.predict(frame)
    assert list(predicted.index) == [10, 11, 12, 13, 14]
    assert list(predicted.columns) == ["customer_id", "p_alive", "expected_purchases", "expected_order_value", "clv"]
    assert list(predicted["customer_id"]) == list(frame["customer_id"])
    by_index = model.predict(features.iloc[:5].drop(columns="customer_id"))
    assert list(by_index.columns) == ["p_alive", "expected_purchases", "expected_order_value", "clv"]
    np.testing.assert_allclose(by_index["clv"], predicted["clv"])


def test_predict_agrees_with_the_single_methods(model, features):
    predicted = model.predict(features)
    np.testing.assert_allclose(predicted["p_alive"], model.p_alive(features))
    np.testing.assert_allclose(predicted["expected_purchases"], model.expected_purchases(features, 365))
    np.testing.assert_allclose(predicted["expected_order_value"], model.expected_order_value(features))
    np.testing.assert_allclose(predicted["clv"], model.clv(features))


def test_predict_values_are_the_predicted_columns(model, features):
    """What serving reads (arrays, no frame) is exactly `predict`'s columns."""
    predicted = model.predict(features)
    values = model.predict_values(features)
    assert list(values) == [c for c in predicted.columns if c != "customer_id"]
    for name, column in values.items():
        np.testing.assert_array_equal(column, predicted[name].to_numpy())


def test_clv_blocks_of_customers_equal_one_block(model, features, monkeypatch):
    """The discounted purchases are computed a block of customers at a time: blocks change nothing."""
    import training.ltv as ltv

    whole = model.clv(features)
    monkeypatch.setattr(ltv, "STEP_BLOCK_ROWS", 7)
    assert whole.to_numpy().tobytes() == model.clv(features).to_numpy().tobytes()


# ---- behaviour -------------------------------------------------------------------------


def test_p_alive_decreases_as_T_grows(model):
    rows = pd.concat([one_customer(3, 60, T) for T in (60, 90, 150, 250, 400)], ignore_index=True)
    p_alive = model.p_alive(rows).to_numpy()
    assert (np.diff(p_alive) < 0).all() and p_alive[0] <= 1


def test_expected_purchases_increase_with_frequency_when_recent(model):
    rows = pd.concat([one_customer(x, 270, 273) for x in (1, 2, 4, 8, 16)], ignore_index=True)
    assert (np.diff(model.expected_purchases(rows).to_numpy()) > 0).all()


def test_expected_purchases_grow_with_the_horizon(model, features):
    sample = features.iloc[:50]
    assert (model.expected_purchases(sample, 0.0) == 0).all()
    short, long = model.expected_purchases(sample, 30), model.expected_purchases(sample, 365)
    assert (long.to_numpy() > short.to_numpy()).all()
    with pytest.raises(LtvInputError):
        model.expected_purchases(sample, -1)


def test_clv_increases_with_monetary_value(model):
    rows = pd.concat([one_customer(2, 100, 200, zbar) for zbar in (5.0, 20.0, 80.0)], ignore_index=True)
    assert (np.diff(model.clv(rows).to_numpy()) > 0).all()
    one_timer = pd.concat([one_customer(0, 0, 200, zbar) for zbar in (0.0, 80.0)], ignore_index=True)
    # x = 0 carries no spend information: the population mean applies.
    np.testing.assert_allclose(model.expected_order_value(one_timer), model.population_mean_order_value_)


def test_undiscounted_clv_is_expected_purchases_times_order_value(model, features):
    sample = features.iloc[:200]
    for horizon in (365, 360, 45):
        undiscounted = model.clv(sample, horizon_days=horizon, monthly_discount_rate=0.0)
        product = model.expected_purchases(sample, horizon) * model.expected_order_value(sample)
        np.testing.assert_allclose(undiscounted, product, rtol=1e-10)
    assert (model.clv(sample, monthly_discount_rate=0.05) < model.clv(sample, monthly_discount_rate=0.0)).all()


def test_clv_monthly_steps_match_lifetimes_definition(model, features):
    # lifetimes' _customer_lifetime_value(time=12): sum_i (E[N(30 i)] - E[N(30 (i-1))]) / (1 + d)^i * value.
    sample = features.iloc[:100]
    rate = 0.02
    expected = sum(
        (model.expected_purchases(sample, 30 * i) - model.expected_purchases(sample, 30 * (i - 1))) / (1 + rate) ** i
        for i in range(1, 13)
    ) * model.expected_order_value(sample)
    np.testing.assert_allclose(model.clv(sample, horizon_days=360, monthly_discount_rate=rate), expected, rtol=1e-10)


# ---- estimator contract ----------------------------------------------


def test_scikit_learn_contract(features):
    model = CustomerLtvModel(time_unit_days=1.0, horizon_days=90)
    assert model.get_params()["horizon_days"] == 90
    assert not [k for k in vars(model) if k.endswith("_")]
    with pytest.raises(NotFittedError):
        model.predict(features)
    assert model.fit(features) is model
    # The fitted state is plain floats: it pickles (MLflow) without lifetimes objects.
    restored = pickle.loads(pickle.dumps(model))
    assert b"lifetimes" not in pickle.dumps(model) and restored.bgnbd_params_ == model.bgnbd_params_
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "bgnbd_params_")
    # Daily unit: alpha is 7x the weekly one, r/a/b unchanged; predictions do not depend on the unit.
    weekly = CustomerLtvModel(horizon_days=90).fit(features)
    assert model.bgnbd_params_.alpha == pytest.approx(7 * weekly.bgnbd_params_.alpha, rel=1e-3)
    np.testing.assert_allclose(model.predict(features)["clv"], weekly.predict(features)["clv"], rtol=1e-3)



def test_a_model_pickled_before_the_newer_parameters_still_clones_and_refits():
    """Models logged before `spend_model` / `min_customers` / `min_repeat_buyers` existed are
    unpickled without them: the class defaults stand in."""
    import pickle

    from sklearn.base import clone

    features = simulate_bgnbd(3_000, seed=2)
    model = CustomerLtvModel().fit(features)
    for name in ("spend_model", "min_customers", "min_repeat_buyers"):
        del model.__dict__[name]  # what an older pickle holds
    old = pickle.loads(pickle.dumps(model))
    assert "CustomerLtvModel" in repr(old) and old.get_params()["min_customers"] == 30
    assert clone(old).fit(features).bgnbd_params_ == model.bgnbd_params_
