"""Baseline scorers reported beside every classifier, so its lift is visible.

Pure functions of a feature table (pandas, one row per customer, the feature families'
column names); a higher score means "more likely positive" (converts / churns).

Leads: `points_rule` - the points score of a CRM playbook. Fit points for a target
industry, a senior job level and a target company size (configurable value lists; the
defaults are the segments with the highest intent on the synthetic generator's data), plus
behaviour points for recent page views, pricing-page views, content downloads, email clicks
and a demo request or trial start, each capped, minus points after 30 days of silence. A
component whose column is absent from the table scores 0 (and is named in the notes), so
the rule still runs on a profile without, say, an `industry` attribute.

Churn:

* `recency`: days since the last purchase (the continuous score behind the "no purchase for
  90 days" rule; its AUC is the rule's at every threshold at once);
* `no_purchase_90d`: the rule itself as a 0/1 score (its AUC is the balanced accuracy of
  the rule; the threshold is configurable);
* `bgnbd`: BG/NBD's expected purchases in the horizon, negated. The BG/NBD model is fitted
  (`training.ltv.CustomerLtvModel`) on the rfm columns of the same table, i.e. on what is
  known at the same cut-off: unsupervised, no label is read.

Lift over a baseline (`lift_over_<name>_roc_auc`) is the model's ROC AUC minus the
baseline's, in AUC points (a difference, not a ratio: AUC is already a probability, and
0.86 - 0.83 reads as "3 points better" whatever the base rate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.errors import CrmScoringError
from training.ltv import FEATURE_COLUMNS as RFM_COLUMNS
from training.ltv import CustomerLtvModel
from training.metrics import roc_auc


class BaselineError(CrmScoringError, ValueError):
    """A baseline cannot be computed on this feature table."""


@dataclass(frozen=True)
class BaselineScore:
    """One baseline's scores (aligned with the input rows) and how they were made."""

    name: str
    scores: np.ndarray
    description: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PointsRuleConfig:
    """A playbook lead score: fit points + capped behaviour points - points for silence.

    Behaviour is counted per event (capped per component); columns are those of the
    engagement and funnel families. Defaults favour the synthetic generator's high-intent
    segments (software / financial services / healthcare; director, VP, C-level; 51-5000
    employees).
    """

    industry_column: str = "attr_industry"
    target_industries: tuple[str, ...] = ("software", "financial_services", "healthcare")
    industry_points: float = 10.0
    seniority_column: str = "attr_job_level"
    senior_levels: tuple[str, ...] = ("director", "vp", "c_level")
    seniority_points: float = 10.0
    company_size_column: str = "attr_company_size"
    target_company_sizes: tuple[str, ...] = ("51-200", "201-1000", "1001-5000")
    company_size_points: float = 5.0
    #: (column, points per event, cap) behaviour components.
    page_views: tuple[str, float, float] = ("page_view_count_30d", 1.0, 10.0)
    pricing_page_views: tuple[str, float, float] = ("pricing_page_view_count_30d", 5.0, 15.0)
    content_downloads: tuple[str, float, float] = ("content_download_count_30d", 5.0, 15.0)
    email_clicks: tuple[str, float, float] = ("email_click_count_30d", 2.0, 10.0)
    #: Any demo request or trial start (counts over 90 days; the funnel flags are used when present).
    demo_request_columns: tuple[str, ...] = ("has_demo_request", "demo_request_count_90d")
    trial_start_columns: tuple[str, ...] = ("has_trial_start", "trial_start_count_90d")
    demo_or_trial_points: float = 25.0
    #: Silence: days since the last event above `silence_days` (or no event ever) costs points.
    last_activity_column: str = "days_since_last_event"
    silence_days: float = 30.0
    silence_points: float = 20.0


def _category_points(
    table: pd.DataFrame, column: str, targets: tuple[str, ...], points: float, notes: list[str]
) -> np.ndarray:
    if column not in table.columns:
        notes.append(f"points_rule: no column {column!r}, its {points:g} points are never given")
        return np.zeros(len(table))
    values = table[column].astype("object").where(table[column].notna(), None)
    return np.where(values.isin(list(targets)), points, 0.0)


def _first_present(table: pd.DataFrame, columns: tuple[str, ...]) -> str | None:
    return next((c for c in columns if c in table.columns), None)


def points_rule(table: pd.DataFrame, config: PointsRuleConfig = PointsRuleConfig()) -> BaselineScore:
    """The playbook lead score (see `PointsRuleConfig`); higher = more likely to convert."""
    notes: list[str] = []
    score = np.zeros(len(table))
    score += _category_points(table, config.industry_column, config.target_industries, config.industry_points, notes)
    score += _category_points(table, config.seniority_column, config.senior_levels, config.seniority_points, notes)
    score += _category_points(
        table, config.company_size_column, config.target_company_sizes, config.company_size_points, notes
    )
    behaviour = (config.page_views, config.pricing_page_views, config.content_downloads, config.email_clicks)
    for column, per_event, cap in behaviour:
        if column not in table.columns:
            notes.append(f"points_rule: no column {column!r}, scored 0")
            continue
        count = pd.to_numeric(table[column]).fillna(0).to_numpy(dtype="float64")
        score += np.minimum(count * per_event, cap)
    demo = _first_present(table, config.demo_request_columns)
    trial = _first_present(table, config.trial_start_columns)
    if demo is None and trial is None:
        notes.append("points_rule: no demo request / trial start column, scored 0")
    else:
        sales_ready = np.zeros(len(table), dtype=bool)
        for column in (demo, trial):
            if column is not None:
                sales_ready |= pd.to_numeric(table[column]).fillna(0).to_numpy(dtype="float64") > 0
        score += np.where(sales_ready, config.demo_or_trial_points, 0.0)
    if config.last_activity_column in table.columns:
        days = pd.to_numeric(table[config.last_activity_column]).to_numpy(dtype="float64", na_value=np.nan)
        silent = np.isnan(days) | (days > config.silence_days)
        score -= np.where(silent, config.silence_points, 0.0)
    else:
        notes.append(f"points_rule: no column {config.last_activity_column!r}, no silence penalty")
    return BaselineScore(
        "points_rule",
        score,
        "CRM playbook points: fit (industry, seniority, company size) + capped behaviour "
        f"- {config.silence_points:g} after {config.silence_days:g} days of silence",
        tuple(notes),
    )


def _days_since_last_order(table: pd.DataFrame) -> np.ndarray:
    if "days_since_last_order" not in table.columns:
        raise BaselineError("the recency baselines need the column 'days_since_last_order' (rfm family)")
    days = pd.to_numeric(table["days_since_last_order"]).to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(days).any():
        raise BaselineError(
            f"{int(np.isnan(days).sum())} row(s) have no last order: the recency baselines score buyers only"
        )
    return days


def recency(table: pd.DataFrame) -> BaselineScore:
    """Days since the last purchase (higher = more likely to churn)."""
    return BaselineScore("recency", _days_since_last_order(table), "days since the last purchase (continuous)")


def no_purchase_rule(table: pd.DataFrame, days: int = 90) -> BaselineScore:
    """The playbook rule "no purchase for `days` days" as a 0/1 score."""
    score = (_days_since_last_order(table) >= days).astype("float64")
    return BaselineScore(no_purchase_rule_name(days), score, f"rule: no purchase for {days} days (0/1)")


def no_purchase_rule_name(days: int) -> str:
    """The name `no_purchase_rule(table, days)` logs its score under."""
    return f"no_purchase_{days}d"


def bgnbd_expected_purchases(
    table: pd.DataFrame, horizon_days: float, model: CustomerLtvModel | None = None
) -> BaselineScore:
    """Minus BG/NBD's expected purchases in the next `horizon_days` (higher = more likely to churn).

    Fits BG/NBD alone (`spend_model=False`: churn needs no order values, so Gamma-Gamma's
    failures on odd spend must not cost it) on the table's rfm columns, unless a fitted
    `model` is given.
    """
    missing = [c for c in RFM_COLUMNS if c not in table.columns]
    if missing:
        raise BaselineError(f"the BG/NBD baseline needs the rfm columns {missing}")
    rfm = table[list(RFM_COLUMNS)]
    if model is None:
        model = CustomerLtvModel(horizon_days=max(1, int(round(horizon_days))), spend_model=False).fit(rfm)
    expected = model.expected_purchases(rfm, t_days=horizon_days).to_numpy(dtype="float64")
    if np.isnan(expected).any():
        raise BaselineError(f"{int(np.isnan(expected).sum())} row(s) without a purchase: BG/NBD scores buyers only")
    r, alpha, a, b = model.bgnbd_params_
    return BaselineScore(
        "bgnbd",
        -expected,
        f"-E[purchases in {horizon_days:g} days] from BG/NBD fitted at the same cut-off "
        f"(r={r:.3g}, alpha={alpha:.3g}, a={a:.3g}, b={b:.3g})",
    )


@dataclass(frozen=True)
class BaselineReport:
    """Baselines' AUCs and the model's lift over each, under the logged metric names."""

    metrics: dict[str, float]
    table: pd.DataFrame
    notes: tuple[str, ...] = field(default_factory=tuple)


def compare_with_baselines(
    y: np.ndarray, model_scores: np.ndarray, baselines: Mapping[str, BaselineScore], prefix: str = "val_"
) -> BaselineReport:
    """`baseline_<name>_{prefix}roc_auc` and `lift_over_<name>_roc_auc` (model AUC - baseline AUC).

    The table has one row per scorer (the model first): name, roc_auc, lift_over (the model's
    AUC difference against that row), description.
    """
    from training.metrics import lift_at, pr_auc

    model_auc = roc_auc(y, model_scores)
    metrics: dict[str, float] = {}
    rows = [
        {
            "scorer": "model",
            "roc_auc": model_auc,
            "pr_auc": pr_auc(y, model_scores),
            "lift_at_10": lift_at(y, model_scores, 0.1),
            "model_auc_minus_this": 0.0,
            "description": "the trained model",
        }
    ]
    notes: list[str] = []
    for name, baseline in baselines.items():
        auc = roc_auc(y, baseline.scores)
        metrics[f"baseline_{name}_{prefix}roc_auc"] = auc
        metrics[f"lift_over_{name}_roc_auc"] = model_auc - auc
        rows.append(
            {
                "scorer": f"baseline_{name}",
                "roc_auc": auc,
                "pr_auc": pr_auc(y, baseline.scores),
                "lift_at_10": lift_at(y, baseline.scores, 0.1),
                "model_auc_minus_this": model_auc - auc,
                "description": baseline.description,
            }
        )
        notes.extend(baseline.notes)
    return BaselineReport(metrics, pd.DataFrame(rows), tuple(notes))
