"""Holdout evaluation on the CDNOW sample, against Fader, Hardie & Lee (2005).

"Counting Your Customers the Easy Way: An Alternative to the Pareto/NBD Model", Marketing
Science 24(2), Figure 3 (conditional expectations): mean holdout purchases of the 2,357
sample customers by calibration frequency x = 0..6, 7+ -
actual 0.2367, 0.6970, 1.3925, 1.5600, 2.5323, 2.9474, 3.8621, 6.3594;
BG/NBD expected 0.2251, 0.5231, 1.0441, 1.5203, 2.1638, 2.6538, 3.5040, 6.1570.

Data: `CDNOW_sample.txt` from the lifetimes package (master id, sample id = ID of the
calibration summary, date YYYYMMDD, number of CDs, dollar value). Calibration ends
1997-09-30 (as_of 1997-10-01), the holdout is the next 39 weeks. The published actual row is
reproduced by counting distinct purchase days (same-day orders are one transaction); counting
order rows gives 0.241, 0.7175, 1.4019, ... instead.
"""

from __future__ import annotations

import io
import subprocess
import sys
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from tests.training.test_ltv import as_features
from training.ltv import FEATURE_COLUMNS, CustomerLtvModel, LtvInputError
from training.ltv_evaluation import (
    cumulative_tracking,
    decile_table,
    frequency_table,
    holdout_comparison,
    holdout_metrics,
    run_rate_baseline,
    holdout_purchases,
    p_alive_matrix,
    plot_decile_calibration,
    plot_frequency_table,
    plot_p_alive_heatmap,
    plot_tracking,
)

AS_OF = pd.Timestamp("1997-10-01")
HOLDOUT_DAYS = 39 * 7
HOLDOUT_END = AS_OF + pd.Timedelta(days=HOLDOUT_DAYS)
PUBLISHED_ACTUAL = [0.2367, 0.6970, 1.3925, 1.5600, 2.5323, 2.9474, 3.8621, 6.3594]
PUBLISHED_EXPECTED = [0.2251, 0.5231, 1.0441, 1.5203, 2.1638, 2.6538, 3.5040, 6.1570]


def _dataset(name: str):
    return resources.files("lifetimes") / "datasets" / name


@pytest.fixture(scope="module")
def calibration() -> pd.DataFrame:
    with _dataset("cdnow_customers_summary_with_transactions.csv").open() as handle:
        return as_features(pd.read_csv(handle))


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    with _dataset("CDNOW_sample.txt").open() as handle:
        raw = pd.read_csv(
            handle, sep=r"\s+", header=None, names=["master_id", "sample_id", "date", "cds", "amount"], dtype={"date": str}
        )
    return pd.DataFrame(
        {
            "customer_id": raw["sample_id"].astype(str),
            "ordered_at": pd.to_datetime(raw["date"], format="%Y%m%d"),
            "amount": raw["amount"].astype(float),
        }
    )


@pytest.fixture(scope="module")
def model(calibration) -> CustomerLtvModel:
    return CustomerLtvModel().fit(calibration)


@pytest.fixture(scope="module")
def comparison(model, calibration, orders) -> pd.DataFrame:
    holdout = holdout_purchases(orders, AS_OF, HOLDOUT_END)
    return holdout_comparison(model, calibration, holdout, HOLDOUT_DAYS)


@pytest.fixture(scope="module")
def tracking(model, orders) -> pd.DataFrame:
    first = orders.groupby("customer_id")["ordered_at"].min()
    return cumulative_tracking(model, first, orders, start="1997-01-01", end=HOLDOUT_END, calibration_end=AS_OF)


def test_holdout_table_reproduces_the_paper(comparison):
    table = frequency_table(comparison)
    assert list(table["frequency"]) == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert table["n_customers"].sum() == 2357
    np.testing.assert_allclose(table["actual_mean"], PUBLISHED_ACTUAL, atol=0.01)
    np.testing.assert_allclose(table["expected_mean"], PUBLISHED_EXPECTED, atol=0.01)


def test_holdout_counts_purchase_days_not_order_rows():
    orders = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "b", "c"],
            "ordered_at": pd.to_datetime(
                [
                    "2024-01-01 09:00",
                    "2024-01-01 18:00",
                    "2024-01-03 00:00",
                    "2023-12-31 23:59",
                    "2024-01-02 12:00",
                    "2024-01-08 00:00",
                ]
            ),
            "amount": [10.0, 5.0, 1.0, 100.0, 2.0, 7.0],
        }
    )
    result = holdout_purchases(orders, "2024-01-01", "2024-01-08")
    assert result.loc["a"].tolist() == [2, 16.0]  # two days, all three orders' revenue
    assert result.loc["b"].tolist() == [1, 2.0]  # the order before start is out
    assert "c" not in result.index  # end is exclusive
    with pytest.raises(LtvInputError, match="amount"):
        holdout_purchases(orders.drop(columns="amount"), "2024-01-01", "2024-01-08")


def test_holdout_window_bounds_are_instants_not_days():
    """A window from 15:30 to 15:30: an order at 18:00 on the first day is in, one at 20:00 on
    the last day is after the end (no look-ahead past `end`)."""
    orders = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "ordered_at": pd.to_datetime(["2025-03-03 18:00", "2025-06-01 10:00", "2025-06-01 20:00", "2025-03-03 09:00"]),
            "amount": [10.0, 20.0, 30.0, 40.0],
        }
    )
    result = holdout_purchases(orders, "2025-03-03T15:30:00", "2025-06-01T15:30:00Z")
    assert sorted(result.index) == ["a", "b"]


def test_comparison_aligns_customers_and_fills_missing_with_zero(model, calibration, orders, comparison):
    assert len(comparison) == len(calibration)
    assert comparison["actual_purchases"].sum() == holdout_purchases(orders, AS_OF, HOLDOUT_END)["purchases"].sum()
    assert (comparison["actual_purchases"] >= 0).all()
    np.testing.assert_allclose(
        comparison["expected_revenue"], comparison["expected_purchases"] * comparison["expected_order_value"]
    )
    holdout = holdout_purchases(orders, AS_OF, HOLDOUT_END)
    with pytest.raises(LtvInputError, match="keys match"):
        holdout_comparison(model, calibration, holdout.set_axis(holdout.index.astype(int)), HOLDOUT_DAYS)
    # Customers without a purchase (leads) are not in the LTV population: dropped.
    lead = pd.DataFrame([{"customer_id": "lead"} | {column: None for column in FEATURE_COLUMNS}])
    with_lead = pd.concat([calibration, lead], ignore_index=True)
    assert len(holdout_comparison(model, with_lead, holdout_purchases(orders, AS_OF, HOLDOUT_END), HOLDOUT_DAYS)) == len(
        calibration
    )


def test_holdout_metrics(comparison):
    metrics = holdout_metrics(comparison)
    error = comparison["expected_purchases"] - comparison["actual_purchases"]
    assert metrics["holdout_mae_purchases"] == pytest.approx(error.abs().mean())
    revenue_error = comparison["expected_revenue"] - comparison["actual_revenue"]
    assert metrics["holdout_mae_revenue"] == pytest.approx(revenue_error.abs().mean())
    assert metrics["holdout_n_customers"] == 2357
    # The BG/NBD under-forecasts the CDNOW holdout a little (FHL 2005, Figure 2).
    ratio = metrics["holdout_expected_purchases_total"] / metrics["holdout_actual_purchases_total"]
    assert 0.8 < ratio < 1.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_decile_table(comparison):
    table = decile_table(comparison)
    assert list(table["decile"]) == list(range(1, 11))
    assert table["n_customers"].sum() == 2357 and table["n_customers"].max() - table["n_customers"].min() <= 1
    assert (np.diff(table["expected_mean"]) <= 1e-12).all()
    assert table["actual_share"].sum() == pytest.approx(1.0)
    top, bottom = table.iloc[0], table.iloc[-1]
    assert top["actual_mean"] > 5 * bottom["actual_mean"]
    assert top["actual_mean"] == pytest.approx(top["expected_mean"], rel=0.15)


def test_cumulative_tracking_counts_repeat_purchase_days(calibration, orders, tracking):
    assert len(tracking) == 78 and tracking["holdout"].sum() == 39
    assert tracking["period_end"].iloc[-1] == HOLDOUT_END
    at_calibration_end = tracking.loc[tracking["period_end"] == AS_OF].iloc[0]
    # Actual repeat purchase days in the calibration period are exactly sum(x) of the summary.
    assert at_calibration_end["actual_cumulative"] == calibration["frequency"].sum() == 2457
    holdout_total = holdout_purchases(orders, AS_OF, HOLDOUT_END)["purchases"].sum()
    assert tracking["actual_cumulative"].iloc[-1] == 2457 + holdout_total
    # The fitted model tracks the calibration period closely (FHL 2005, Figure 2).
    assert at_calibration_end["expected_cumulative"] == pytest.approx(2457, rel=0.03)
    assert (np.diff(tracking["expected_cumulative"]) > 0).all()
    np.testing.assert_allclose(tracking["expected"].cumsum(), tracking["expected_cumulative"])


def test_holdout_only_tracking_matches_the_full_one(model, orders, tracking):
    first = orders.groupby("customer_id")["ordered_at"].min()
    holdout_orders = orders[orders["ordered_at"] >= AS_OF]
    holdout = cumulative_tracking(model, first, holdout_orders, start=AS_OF, end=HOLDOUT_END, calibration_end=AS_OF)
    full_holdout = tracking[tracking["holdout"]].reset_index(drop=True)
    np.testing.assert_allclose(holdout["expected"], full_holdout["expected"])
    np.testing.assert_allclose(holdout["actual"], full_holdout["actual"])
    assert holdout["holdout"].all()


def test_p_alive_matrix(model):
    matrix = p_alive_matrix(model, T_days=273, max_frequency=10)
    assert matrix.shape[0] == 11 and matrix.columns[0] == 0 and matrix.columns[-1] == 273
    assert matrix.loc[0, 0] == 1.0 and matrix.loc[0].iloc[1:].isna().all()
    assert np.isnan(matrix.loc[3, 0])
    # More recent last purchase -> more likely alive; at t_x = T, more purchases -> more likely alive.
    assert (np.diff(matrix.loc[5].iloc[1:].to_numpy()) > 0).all()
    assert (np.diff(matrix[273.0].iloc[1:].to_numpy()) > 0).all()


def test_figures_render_without_pyplot(model, comparison, tracking):
    from matplotlib.figure import Figure

    pyplot_loaded_before = "matplotlib.pyplot" in sys.modules
    figures = [
        plot_tracking(tracking),
        plot_tracking(tracking, cumulative=False),
        plot_frequency_table(frequency_table(comparison)),
        plot_decile_calibration(decile_table(comparison)),
        plot_p_alive_heatmap(model, T_days=273, max_frequency=15),
    ]
    for figure in figures:
        assert isinstance(figure, Figure) and figure.axes
    assert len(figures[0].axes[0].lines) == 3  # actual, expected, calibration end
    assert len(figures[2].axes[0].patches) == 16  # 8 frequency groups x (actual, expected)
    buffer = io.BytesIO()
    figures[-1].savefig(buffer, format="png", dpi=40)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    if not pyplot_loaded_before:  # (another test may have loaded it; then there is nothing to observe)
        assert "matplotlib.pyplot" not in sys.modules


def test_import_has_no_side_effects():
    # A fresh interpreter: importing the modules loads neither lifetimes nor matplotlib (both
    # are imported where they are used) nor the tracking layer.
    code = (
        "import sys, training.ltv, training.ltv_evaluation;"
        "print(sorted(m for m in ('lifetimes', 'matplotlib', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_run_rate_baseline_by_hand():
    """x / T x holdout days purchases, at the mean repeat order value; nothing to extrapolate
    from a customer without repeat purchases or observed for no time."""
    calibration = pd.DataFrame(
        {"frequency": [2, 0, 3, None], "T_days": [100.0, 50.0, 0.0, None], "monetary_value": [30.0, 0.0, 10.0, None]}
    )
    purchases, revenue = run_rate_baseline(calibration, 50.0)
    np.testing.assert_allclose(purchases, [1.0, 0.0, 0.0, np.nan])
    np.testing.assert_allclose(revenue, [30.0, 0.0, 0.0, np.nan])


def test_the_model_beats_the_run_rate_baseline_on_cdnow(comparison):
    """The lift is logged like the classifiers' (baseline error minus model error). On the
    CDNOW sample the naive run rate, which ignores drop-outs, over-forecasts the holdout."""
    metrics = holdout_metrics(comparison)
    run_rate_error = (comparison["run_rate_purchases"] - comparison["actual_purchases"]).abs().mean()
    assert metrics["baseline_run_rate_holdout_mae_purchases"] == pytest.approx(run_rate_error)
    assert metrics["lift_over_run_rate_mae_purchases"] == pytest.approx(run_rate_error - metrics["holdout_mae_purchases"])
    assert metrics["lift_over_run_rate_mae_purchases"] > 0
    assert metrics["lift_over_run_rate_mae_revenue"] > 0
    assert comparison["run_rate_purchases"].sum() > comparison["actual_purchases"].sum()
