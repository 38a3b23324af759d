"""Figures of a classifier run: ROC, reliability (calibration), cumulative gains, feature importance.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global state,
no backend selection, safe in servers and threads); matplotlib is imported only when a
figure is drawn. Scores are passed as {name: scores}: the model first, then the baselines,
so one figure compares them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from training.metrics import gains_curve, reliability_table, roc_auc, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float = 6.5, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure  # lazy: importing matplotlib reads/creates its cache dirs

    return Figure(figsize=(width, height), layout="constrained")


def _styles(index: int) -> dict[str, object]:
    # The model (first) solid and dark; baselines dashed in distinct colours.
    if index == 0:
        return {"color": "black", "linewidth": 2.0}
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    return {"color": colours[(index - 1) % len(colours)], "linestyle": "--", "linewidth": 1.3}


def roc_figure(y: ArrayLike, scores: Mapping[str, ArrayLike], title: str | None = None) -> Figure:
    """ROC curves (with AUC in the legend) of each scorer, and the chance diagonal."""
    fig = _figure()
    ax = fig.subplots()
    for i, (name, score) in enumerate(scores.items()):
        fpr, tpr = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, score):.3f})", **_styles(i))
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title or "ROC, validation window")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def calibration_figure(y: ArrayLike, p: ArrayLike, n_bins: int = 10, title: str | None = None) -> Figure:
    """Reliability curve on equal-frequency bins (the ECE's bins) above a histogram of the probabilities."""
    table = reliability_table(y, p, n_bins)
    fig = _figure(6.0, 6.0)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    upper = float(max(table["mean_predicted"].max(), table["actual_rate"].max()))
    upper = min(1.0, upper * 1.1) if upper > 0 else 1.0
    top.plot([0, upper], [0, upper], color="0.7", linewidth=0.8, label="perfect calibration")
    top.plot(table["mean_predicted"], table["actual_rate"], marker="o", color="black", label="model")
    top.set_ylabel("actual rate")
    top.set_xlim(0, upper)
    top.set_ylim(0, upper)
    top.set_title(title or f"Calibration ({len(table)} equal-frequency bins)")
    top.legend(loc="upper left", fontsize="small")
    bottom.hist(np.asarray(p, dtype="float64"), bins=40, range=(0, upper), color="0.5")
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("customers")
    return fig


def gains_figure(y: ArrayLike, scores: Mapping[str, ArrayLike], title: str | None = None) -> Figure:
    """Cumulative gains (share of positives captured vs share targeted) of each scorer."""
    fig = _figure()
    ax = fig.subplots()
    for i, (name, score) in enumerate(scores.items()):
        targeted, captured = gains_curve(y, score)
        ax.plot(targeted, captured, label=name, **_styles(i))
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, label="random")
    ax.axvline(0.1, color="0.85", linewidth=0.8)
    ax.set_xlabel("share of customers targeted (highest scores first)")
    ax.set_ylabel("share of positives captured")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title or "Cumulative gains, validation window")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def feature_importance_figure(importance: pd.Series, top_n: int = 20, title: str | None = None) -> Figure:
    """Horizontal bars of the `top_n` largest importances (largest on top)."""
    top = importance.sort_values(ascending=False, kind="stable").head(top_n)[::-1]
    fig = _figure(6.5, max(2.5, 0.28 * len(top) + 1.0))
    ax = fig.subplots()
    ax.barh(np.arange(len(top)), top.to_numpy(dtype="float64"), color="tab:blue")
    ax.set_yticks(np.arange(len(top)), [str(name) for name in top.index], fontsize="small")
    ax.set_xlabel(str(importance.name or "importance"))
    ax.set_title(title or f"Feature importance (top {len(top)})")
    return fig
