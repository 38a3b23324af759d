"""The Markdown model card logged with every run (data, window, metrics, baselines, use, limits).

Pure text from a `TrainingResult`: no MLflow, no files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import pandas as pd

from training.results import TrainingResult

#: What each model is for, in the words a CRM team would use.
INTENDED_USE: dict[str, str] = {
    "lead_scoring": (
        "Rank profiles that have not bought yet by their probability of a first completed order "
        "within the horizon, to prioritise sales follow-up and nurture journeys. Use the "
        "probability for ordering and tiers (percentiles); it is calibrated on the validation window."
    ),
    "churn_propensity": (
        "Rank customers with at least one completed order by their probability of placing no "
        "order within the horizon, to target retention and win-back journeys before they lapse."
    ),
    "customer_ltv": (
        "Estimate, per customer with at least one completed order, P(alive), the expected number "
        "of purchase days and the expected order value over the horizon, and their discounted "
        "product (CLV), for value tiers, budget allocation and lookalike seeds."
    ),
}

#: Known limits, shared and per model.
LIMITS_COMMON: tuple[str, ...] = (
    "Trained out-of-time on the history before as_of; behaviour that changes after as_of "
    "(new products, prices, channels, a pandemic) is not in the data. Retrain regularly and "
    "watch the metrics of the next window.",
    "Scores are for ranking and tiering groups of customers, not for decisions about one "
    "person with legal or similarly significant effects.",
    "PII columns are never features; attributes that proxy protected characteristics can "
    "still carry bias: review the feature list before use.",
)
LIMITS: dict[str, tuple[str, ...]] = {
    "lead_scoring": (
        "Profiles created shortly before as_of have little behaviour; their scores lean on attributes.",
    ),
    "churn_propensity": (
        "Churn means no completed order within the horizon: in non-contractual businesses this is "
        "a proxy, and seasonal buyers can look churned in a short horizon.",
    ),
    "customer_ltv": (
        "BG/NBD + Gamma-Gamma assume stationary purchase rates, a constant drop-out probability "
        "after each purchase and order values independent of purchase frequency.",
        "Profiles without a purchase (leads) get no LTV.",
    ),
}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if not value.is_integer() else f"{value:.0f}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _cell(value: object) -> str:
    # A pipe would end the cell; newlines would end the row.
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, index: bool = False, max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table (no optional dependency such as tabulate)."""
    shown = frame if index is False else frame.reset_index()
    truncated = max_rows is not None and len(shown) > max_rows
    if truncated:
        shown = shown.head(max_rows)
    header = "| " + " | ".join(_cell(c) for c in shown.columns) + " |"
    rule = "|" + "|".join(" --- " for _ in shown.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown.itertuples(index=False, name=None)]
    lines = [header, rule, *rows]
    if truncated:
        lines.append(f"\n({len(frame) - max_rows} more rows in the CSV artifact)")
    return "\n".join(lines)


def _pairs_table(pairs: Sequence[tuple[str, object]], columns: tuple[str, str]) -> str:
    return markdown_table(pd.DataFrame(list(pairs), columns=list(columns)))


def baseline_metrics(metrics: Mapping[str, float], primary_metric: str) -> dict[str, float]:
    """Baselines' values of the primary metric, from the names `baseline_<name>_<primary>`."""
    prefix, suffix = "baseline_", "_" + primary_metric
    return {
        key[len(prefix) : -len(suffix)]: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and key.endswith(suffix) and len(key) > len(prefix) + len(suffix)
    }


def render_model_card(result: TrainingResult, run_id: str | None = None, version: str | None = None) -> str:
    """The model card of one training result, as Markdown."""
    name = result.model_name
    primary = result.primary_metric
    horizon = timedelta(days=result.horizon_days)
    v, t = result.validation_as_of, result.as_of
    title = f"# Model card: {name}" + (f" (version {version})" if version else "")
    lines: list[str] = [title, ""]
    if run_id:
        lines += [f"MLflow run `{run_id}`.", ""]
    lines += [
        "## Window",
        "",
        f"- as_of (scoring cut-off, nothing at or after it is read): {_fmt(t)}",
        f"- horizon: {result.horizon_days} days",
        f"- validation: population at {_fmt(v)}, outcomes in [{_fmt(v)}, {_fmt(v + horizon)})",
        (
            f"- training examples: cut-offs at or before {_fmt(v - horizon)}, so no training label "
            f"reaches past {_fmt(v)}; the served model is refit on the latest window"
        )
        if name != "customer_ltv"
        else (
            f"- the calibration fit at {_fmt(v)} is evaluated on the holdout above; the served model "
            f"is refit on everything before {_fmt(t)}"
        ),
        "",
        "## Data",
        "",
        f"- data fingerprint: `{result.data_fingerprint}`",
        f"- features: {len(result.feature_columns)} columns",
        "",
    ]
    if result.row_counts:
        lines += [_pairs_table(sorted(result.row_counts.items()), ("rows", "count")), ""]
    lines += ["## Metrics", "", f"Primary metric (promotion gate): `{primary.name}` "
              f"({'higher' if primary.greater_is_better else 'lower'} is better).", ""]
    model_metrics = sorted((k, v_) for k, v_ in result.metrics.items() if not k.startswith("baseline_"))
    if model_metrics:
        lines += [_pairs_table(model_metrics, ("metric", "value")), ""]
    baselines = baseline_metrics(result.metrics, primary.name)
    lines += ["## Baselines", ""]
    if baselines:
        model_value = result.metrics.get(primary.name, float("nan"))
        rows = [("this model", model_value, 0.0)] + [
            (b, value, model_value - value) for b, value in sorted(baselines.items())
        ]
        table = pd.DataFrame(rows, columns=["model", primary.name, "model minus baseline"])
        lines += [markdown_table(table), ""]
    else:
        lines += ["No baseline reported on the primary metric.", ""]
    other_baselines = sorted(
        (k, v_) for k, v_ in result.metrics.items() if k.startswith("baseline_") and not k.endswith("_" + primary.name)
    )
    if other_baselines:
        lines += [_pairs_table(other_baselines, ("baseline metric", "value")), ""]
    if result.params:
        lines += ["## Hyper-parameters", "", _pairs_table(sorted(result.params.items()), ("parameter", "value")), ""]
    lines += ["## Intended use", "", INTENDED_USE.get(name, "See the project README."), ""]
    lines += ["## Limits", ""] + [f"- {item}" for item in (*LIMITS.get(name, ()), *LIMITS_COMMON)] + [""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in result.notes] + [""]
    lines += ["## Features", "", ", ".join(f"`{c}`" for c in result.feature_columns) or "(none)", ""]
    return "\n".join(lines)
