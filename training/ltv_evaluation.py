"""Holdout evaluation of a fitted customer_ltv model: tables, metrics and figures (pure).

The protocol is Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way", Marketing
Science 24(2), section 5: fit on a calibration period ending at v, then compare with what the
customers did in the holdout [v, v + H).

Inputs, with the names the rest of the project uses:

* `calibration`: the rfm feature table at v (`frequency`, `recency_days`, `T_days`,
  `monetary_value`), keyed by its `customer_id` column or, without one, by its index. Rows
  with a null `T_days` (no purchase before v) are not in the LTV population and are dropped.
* `orders`: purchases with columns `customer_id`, `ordered_at` (timestamps; tz-aware ones are
  converted to UTC) and, for revenue, `amount`. As in the BG/NBD statistics, purchases on the
  same calendar day are one transaction (DESIGN.md, "Time semantics"): counting days, not
  order rows, is also what reproduces the published CDNOW holdout numbers.

Typical use::

    holdout = holdout_purchases(orders, start=v, end=v + H)
    comparison = holdout_comparison(model, calibration, holdout, holdout_days=H_days)
    frequency_table(comparison); holdout_metrics(comparison); decile_table(comparison)

Figures are `matplotlib.figure.Figure` objects built without pyplot (no global state, no
backend selection); matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.timeutil import to_utc_naive
from training.ltv import KEY_COLUMN, CustomerLtvModel, LtvInputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DAY = np.timedelta64(1, "D")


# --------------------------------------------------------------------------------------
# Holdout actuals and the per-customer comparison
# --------------------------------------------------------------------------------------


def _utc_naive(values: pd.Series) -> pd.Series:
    """Timestamps as naive UTC; tz-aware ones are converted to UTC first."""
    at = pd.to_datetime(values)
    if at.dt.tz is not None:
        at = at.dt.tz_convert("UTC").dt.tz_localize(None)
    return at


def _utc_days(values: pd.Series) -> pd.Series:
    """Calendar days (naive UTC midnight) of timestamps."""
    return _utc_naive(values).dt.floor("D")


def _require(orders: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in orders.columns]
    if missing:
        raise LtvInputError(f"orders lack column(s) {missing} (needs {list(columns)})")


def _purchase_days(orders: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """orders -> one row per (customer_id, day) with the day's revenue (when `amount` is asked for)."""
    _require(orders, columns)
    frame = pd.DataFrame(
        {"customer_id": orders["customer_id"].to_numpy(), "day": _utc_days(orders["ordered_at"]).to_numpy()}
    )
    if "amount" in columns:
        frame["amount"] = pd.to_numeric(orders["amount"]).to_numpy(dtype=float)
        return frame.groupby(["customer_id", "day"], sort=False, as_index=False)["amount"].sum()
    return frame.drop_duplicates()


def holdout_purchases(
    orders: pd.DataFrame, start: datetime | pd.Timestamp | str, end: datetime | pd.Timestamp | str
) -> pd.DataFrame:
    """Per customer with an order in [start, end): `purchases` (distinct purchase days) and `revenue`.

    Indexed by customer_id; customers without a holdout order are absent (count them as 0).
    The window is on the orders' instants (bounds need not be midnights), then orders are
    reduced to purchase days.
    """
    start, end = to_utc_naive(start), to_utc_naive(end)
    columns = ("customer_id", "ordered_at", "amount")
    _require(orders, columns)
    at = _utc_naive(orders["ordered_at"])
    days = _purchase_days(orders[((at >= start) & (at < end)).to_numpy()], columns)
    result = days.groupby("customer_id").agg(purchases=("day", "size"), revenue=("amount", "sum"))
    result["purchases"] = result["purchases"].astype("int64")
    return result


def holdout_comparison(
    model: CustomerLtvModel, calibration: pd.DataFrame, holdout: pd.DataFrame, holdout_days: float
) -> pd.DataFrame:
    """One row per calibration customer with a purchase: model expectations over the holdout vs actuals.

    `holdout` is `holdout_purchases`' output (index customer_id; `purchases`, optional
    `revenue`); missing customers made no holdout purchase, and holdout customers absent from
    the calibration table (acquired later) are not compared. Columns: customer_id, frequency,
    expected_purchases, actual_purchases, expected_order_value, expected_revenue
    (= expected purchases x expected order value), actual_revenue, and the run-rate
    baseline's run_rate_purchases and run_rate_revenue (`run_rate_baseline`).
    """
    keys = pd.Index(calibration[KEY_COLUMN]) if KEY_COLUMN in calibration.columns else calibration.index
    expected = model.expected_purchases(calibration, holdout_days).to_numpy()
    order_value = model.expected_order_value(calibration).to_numpy()
    in_population = ~np.isnan(expected)
    if len(holdout) and not holdout.index.isin(keys).any():
        # Almost always a key type mismatch (e.g. int ids vs str ids): fail instead of reporting zeros.
        raise LtvInputError(
            "no holdout customer is in the calibration table: check that the keys match "
            f"(holdout index {holdout.index.dtype}, calibration keys {keys.dtype})"
        )
    aligned = holdout.reindex(keys)
    actual_purchases = aligned["purchases"].fillna(0).to_numpy(dtype=float)
    actual_revenue = (
        aligned["revenue"].fillna(0.0).to_numpy(dtype=float) if "revenue" in aligned else np.full(len(keys), np.nan)
    )
    frequency = pd.to_numeric(calibration["frequency"]).to_numpy(dtype=float, na_value=np.nan)
    run_rate_purchases, run_rate_revenue = run_rate_baseline(calibration, holdout_days)
    out = pd.DataFrame(
        {
            "customer_id": keys.to_numpy(),
            "frequency": frequency,
            "expected_purchases": expected,
            "actual_purchases": actual_purchases,
            "expected_order_value": order_value,
            "expected_revenue": expected * order_value,
            "actual_revenue": actual_revenue,
            "run_rate_purchases": run_rate_purchases,
            "run_rate_revenue": run_rate_revenue,
        }
    )
    out = out[in_population].reset_index(drop=True)
    out["frequency"] = out["frequency"].astype("int64")
    return out


def run_rate_baseline(calibration: pd.DataFrame, holdout_days: float) -> tuple[np.ndarray, np.ndarray]:
    """The playbook's naive forecast: each customer keeps buying at their past repeat rate.

    Purchases over the holdout = x / T x holdout days (repeat purchase days per day since
    the first purchase; 0 when T is 0 or the customer has no repeat purchase), revenue =
    those purchases x the customer's mean repeat order value. It ignores that customers
    drop out, which is what BG/NBD adds; the model's lift over it is logged.
    """
    x = pd.to_numeric(calibration["frequency"]).to_numpy(dtype=float, na_value=np.nan)
    t = pd.to_numeric(calibration["T_days"]).to_numpy(dtype=float, na_value=np.nan)
    value = pd.to_numeric(calibration["monetary_value"]).to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        purchases = np.where(t > 0, x / t, 0.0) * holdout_days
    purchases = np.where(np.isnan(x) | np.isnan(t), np.nan, purchases)
    revenue = purchases * np.where(x > 0, value, 0.0)
    return purchases, revenue


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def frequency_table(comparison: pd.DataFrame, max_frequency: int = 7) -> pd.DataFrame:
    """Mean holdout purchases by calibration frequency x = 0 .. max_frequency-1 and `max_frequency+`.

    FHL (2005) Figure 3 / Table: columns frequency (label), n_customers, actual_mean,
    expected_mean. Every group appears, with NaN means when it is empty.
    """
    group = np.minimum(comparison["frequency"].to_numpy(), max_frequency)
    labels = [str(k) for k in range(max_frequency)] + [f"{max_frequency}+"]
    grouped = comparison.groupby(group)
    table = pd.DataFrame(
        {
            "n_customers": grouped.size(),
            "actual_mean": grouped["actual_purchases"].mean(),
            "expected_mean": grouped["expected_purchases"].mean(),
        }
    ).reindex(range(max_frequency + 1))
    table["n_customers"] = table["n_customers"].fillna(0).astype("int64")
    table.insert(0, "frequency", labels)
    return table.reset_index(drop=True)


def holdout_metrics(comparison: pd.DataFrame) -> dict[str, float]:
    """Per-customer errors and totals over the holdout (flat floats, ready for MLflow), and the
    run-rate baseline's errors with the model's lift over them (`baseline_run_rate_holdout_mae_*`,
    `lift_over_run_rate_mae_*` = the baseline's error minus the model's: positive when the
    model is better), as the classifiers report theirs."""
    purchase_error = comparison["expected_purchases"] - comparison["actual_purchases"]
    revenue_error = comparison["expected_revenue"] - comparison["actual_revenue"]
    mae = {"purchases": float(purchase_error.abs().mean()), "revenue": float(revenue_error.abs().mean())}
    metrics = {
        "holdout_n_customers": float(len(comparison)),
        "holdout_mae_purchases": mae["purchases"],
        "holdout_rmse_purchases": float(np.sqrt((purchase_error**2).mean())),
        "holdout_mae_revenue": mae["revenue"],
        "holdout_expected_purchases_total": float(comparison["expected_purchases"].sum()),
        "holdout_actual_purchases_total": float(comparison["actual_purchases"].sum()),
        "holdout_expected_revenue_total": float(comparison["expected_revenue"].sum()),
        "holdout_actual_revenue_total": float(comparison["actual_revenue"].sum()),
    }
    if "run_rate_purchases" in comparison:  # a comparison from `holdout_comparison` has it
        for what in ("purchases", "revenue"):
            baseline = float((comparison[f"run_rate_{what}"] - comparison[f"actual_{what}"]).abs().mean())
            metrics[f"baseline_run_rate_holdout_mae_{what}"] = baseline
            metrics[f"lift_over_run_rate_mae_{what}"] = baseline - mae[what]
    return metrics


def decile_table(comparison: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Customers ranked by expected purchases (decile 1 = highest), mean expected vs actual per bin.

    Bins have equal sizes (+-1); tied expectations are split in input order, which moves
    customers with identical predictions between neighbouring bins but not the bins' expected
    means. Columns: decile, n_customers, expected_mean, actual_mean, actual_share (the bin's
    share of all holdout purchases).
    """
    if n_bins < 1:
        raise LtvInputError(f"n_bins must be >= 1, got {n_bins}")
    order = np.argsort(-comparison["expected_purchases"].to_numpy(), kind="stable")
    bins = np.empty(len(order), dtype=np.int64)
    for k, members in enumerate(np.array_split(order, n_bins)):
        bins[members] = k + 1
    grouped = comparison.groupby(bins)
    total = comparison["actual_purchases"].sum()
    table = pd.DataFrame(
        {
            "n_customers": grouped.size(),
            "expected_mean": grouped["expected_purchases"].mean(),
            "actual_mean": grouped["actual_purchases"].mean(),
            "actual_share": grouped["actual_purchases"].sum() / total if total > 0 else np.nan,
        }
    )
    table.insert(0, "decile", table.index.astype("int64"))
    return table.reset_index(drop=True)


def cumulative_tracking(
    model: CustomerLtvModel,
    first_purchase_day: pd.Series,
    orders: pd.DataFrame,
    *,
    start: datetime | pd.Timestamp | str,
    end: datetime | pd.Timestamp | str,
    calibration_end: datetime | pd.Timestamp | str | None = None,
    period_days: int = 7,
) -> pd.DataFrame:
    """Expected vs actual repeat purchases of a cohort per period of [start, end) (FHL 2005, Figures 1-2).

    first_purchase_day: customer_id -> calendar day of the first purchase (the cohort; e.g.
    as_of - 1 day - T_days from the feature table). orders: `customer_id`, `ordered_at`; only
    the cohort's orders on days after its first purchase day count (repeat purchases, one per
    day), and only those in [start, end): pass calibration and holdout orders for the papers'
    figure, or start = calibration_end with the holdout orders alone.

    Expected: a customer acquired on day f is, at a period end e (exclusive), observed for
    T = e - 1 - f days (the feature layer's T_days), so the cohort's expected repeat purchases
    in [start, e) are sum_i E[X(T_i(e))] - E[X(T_i(start))], E[X(t)] the unconditional BG/NBD
    expectation (eq. 9), 0 before acquisition.

    Columns: period (1..), period_start, period_end, expected, actual, expected_cumulative,
    actual_cumulative, holdout (period starts at or after calibration_end).
    """
    if period_days < 1:
        raise LtvInputError(f"period_days must be >= 1, got {period_days}")
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if end <= start:
        raise LtvInputError(f"end ({end}) must be after start ({start})")
    first = _utc_days(first_purchase_day)
    if first.isna().any():
        raise LtvInputError(f"first_purchase_day has {int(first.isna().sum())} null value(s)")

    boundaries = pd.date_range(start, end, freq=f"{period_days}D")
    if boundaries[-1] < end:
        boundaries = boundaries.append(pd.DatetimeIndex([end]))

    # Expected: customers acquired on the same day share E[X(t)], so evaluate once per first day.
    first_days, counts = np.unique(first.to_numpy(), return_counts=True)
    observed = (boundaries.to_numpy()[:, None] - first_days[None, :]) / DAY - 1  # T at each boundary
    expected_by_day = np.where(observed >= 0, model.unconditional_expected_purchases(np.maximum(observed, 0)), 0.0)
    expected_at = expected_by_day @ counts
    expected_cumulative = expected_at[1:] - expected_at[0]

    # Actual: the cohort's repeat purchase days within [start, end).
    days = _purchase_days(orders, ("customer_id", "ordered_at"))
    days = days[days["customer_id"].isin(first.index)]
    after_first = days["day"].to_numpy() > first.reindex(days["customer_id"]).to_numpy()
    days = days[after_first & (days["day"] >= start) & (days["day"] < end)]
    period = np.searchsorted(boundaries.to_numpy(), days["day"].to_numpy(), side="right")
    actual = np.bincount(period, minlength=len(boundaries))[1 : len(boundaries)].astype(float)

    calibration = pd.Timestamp(calibration_end) if calibration_end is not None else None
    table = pd.DataFrame(
        {
            "period": np.arange(1, len(boundaries)),
            "period_start": boundaries[:-1],
            "period_end": boundaries[1:],
            "expected": np.diff(expected_at),
            "actual": actual,
            "expected_cumulative": expected_cumulative,
            "actual_cumulative": np.cumsum(actual),
        }
    )
    table["holdout"] = table["period_start"] >= calibration if calibration is not None else False
    return table


def p_alive_matrix(
    model: CustomerLtvModel, T_days: float, max_frequency: int = 20, recency_step_days: float | None = None
) -> pd.DataFrame:
    """P(alive) for customers observed T_days, by frequency (rows 0..max_frequency) and recency_days (columns).

    Impossible histories are NaN: x = 0 with t_x > 0, and x > 0 with t_x = 0 (repeat purchases
    fall on later days). The recency grid has about 40 steps unless recency_step_days is given.
    """
    if not (T_days > 0 and max_frequency >= 0):
        raise LtvInputError(f"p_alive_matrix needs T_days > 0 and max_frequency >= 0, got {T_days}, {max_frequency}")
    step = recency_step_days or max(1.0, float(np.ceil(T_days / 40)))
    recency = np.append(np.arange(0.0, T_days, step), float(T_days))
    x, t_x = np.meshgrid(np.arange(max_frequency + 1, dtype=float), recency, indexing="ij")
    grid = pd.DataFrame(
        {"frequency": x.ravel(), "recency_days": t_x.ravel(), "T_days": float(T_days), "monetary_value": 0.0}
    )
    valid = (grid["frequency"] == 0) == (grid["recency_days"] == 0)
    values = np.full(len(grid), np.nan)
    values[valid.to_numpy()] = model.p_alive(grid[valid]).to_numpy()
    matrix = pd.DataFrame(values.reshape(x.shape), index=np.arange(max_frequency + 1), columns=recency)
    matrix.index.name = "frequency"
    matrix.columns.name = "recency_days"
    return matrix


# --------------------------------------------------------------------------------------
# Figures (matplotlib.figure.Figure, no pyplot)
# --------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure  # lazy: importing matplotlib reads/creates its cache dirs

    return Figure(figsize=(width, height), layout="constrained")


def plot_tracking(tracking: pd.DataFrame, cumulative: bool = True, title: str | None = None) -> Figure:
    """Expected vs actual repeat purchases per period (`cumulative_tracking`), calibration end marked."""
    fig = _figure()
    ax = fig.subplots()
    suffix = "_cumulative" if cumulative else ""
    ax.plot(tracking["period"], tracking[f"actual{suffix}"], color="black", label="actual")
    ax.plot(tracking["period"], tracking[f"expected{suffix}"], color="tab:blue", linestyle="--", label="BG/NBD expected")
    holdout = tracking["period"][tracking["holdout"].astype(bool)]
    if len(holdout) and len(holdout) < len(tracking):
        ax.axvline(holdout.iloc[0] - 0.5, color="grey", linestyle=":", label="calibration end")
    days = (tracking["period_end"] - tracking["period_start"]).dt.days
    ax.set_xlabel(f"period ({int(days.iloc[0])} days)" if len(days) else "period")
    ax.set_ylabel(("cumulative " if cumulative else "") + "repeat purchases")
    ax.set_title(title or ("Tracking cumulative repeat purchases" if cumulative else "Repeat purchases per period"))
    ax.legend()
    return fig


def _actual_vs_expected_bars(table: pd.DataFrame, group: str, xlabel: str, expected_label: str, title: str) -> Figure:
    """Grouped bars of `actual_mean` and `expected_mean` per value of `group`."""
    fig = _figure()
    ax = fig.subplots()
    positions = np.arange(len(table))
    width = 0.4
    ax.bar(positions - width / 2, table["actual_mean"], width, color="0.3", label="actual")
    ax.bar(positions + width / 2, table["expected_mean"], width, color="tab:blue", label=expected_label)
    ax.set_xticks(positions, table[group].astype(str))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean purchases in holdout")
    ax.set_title(title)
    ax.legend()
    return fig


def plot_frequency_table(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Grouped bars: actual vs expected mean holdout purchases by calibration frequency (`frequency_table`)."""
    return _actual_vs_expected_bars(
        table, "frequency", "purchases in calibration (x)", "BG/NBD expected", title or "Conditional expectations in the holdout"
    )


def plot_decile_calibration(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Mean expected vs actual holdout purchases per decile of expected purchases (`decile_table`)."""
    return _actual_vs_expected_bars(
        table, "decile", "decile of expected purchases (1 = highest)", "expected", title or "Calibration by decile"
    )


def plot_p_alive_heatmap(
    model: CustomerLtvModel, T_days: float, max_frequency: int = 20, title: str | None = None
) -> Figure:
    """Heatmap of P(alive) by frequency and recency for customers observed T_days (`p_alive_matrix`)."""
    matrix = p_alive_matrix(model, T_days, max_frequency)
    fig = _figure(7.0, 5.0)
    ax = fig.subplots()
    recency = matrix.columns.to_numpy(dtype=float)
    image = ax.imshow(
        np.ma.masked_invalid(matrix.to_numpy()),
        origin="lower",
        aspect="auto",
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        extent=(recency[0], recency[-1], -0.5, max_frequency + 0.5),
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label="P(alive)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("recency_days (first to last purchase day)")
    ax.set_ylabel("frequency (repeat purchase days)")
    ax.set_title(title or f"P(alive) for customers observed {T_days:g} days")
    return fig
