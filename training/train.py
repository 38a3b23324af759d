"""Training orchestration: profile in, `TrainingResult` out (no MLflow, no file writes).

`train_classifier` (lead_scoring, churn_propensity) and `train_ltv` (customer_ltv) follow
DESIGN.md, "Time semantics": nothing at or after as_of T is read, the models are evaluated
out of time at v = T - H, and the served model is refit on the latest window (see
`training.datasets` for the classifier cut-offs).

Classifier runs report `val_roc_auc`, `val_pr_auc`, `val_brier`, `val_log_loss`, `val_ece`,
`val_lift_at_10` (training.metrics), `val_positive_rate`, every baseline as
`baseline_<name>_val_roc_auc` and the model's lift over it as `lift_over_<name>_roc_auc`
(AUC difference; training.baselines), with a decile table, a baseline comparison, and ROC,
calibration, gains and feature-importance figures.

LTV runs fit BG/NBD + Gamma-Gamma at v, evaluate on the holdout [v, T) (training.ltv_evaluation)
and log that fit's parameters (bgnbd_r, bgnbd_alpha, bgnbd_a, bgnbd_b, gg_p, gg_q, gg_v); the
primary metric is the holdout purchase MAE (lower is better). The served model is refit on
everything before T.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import ibis
import pandas as pd

from features.errors import CrmScoringError
from features.labels import holdout_purchases as holdout_purchases_expr
from features.pipeline import FEATURE_DEFINITIONS_VERSION, KEY, FeatureParams, build_features
from features.population import completed_orders, restrict_to_before
from features.profile import Profile
from features.timeutil import parse_horizon, to_utc_naive
from training import baselines as bl
from training.classifier import CalibrationMethod, PropensityModel
from training.datasets import (
    CUTOFF_COLUMN,
    LABEL_COLUMN,
    FeatureCache,
    OutOfTimeDatasets,
    Task,
    WindowConfig,
    build_datasets,
    features_only,
)
from training.ltv import DEFAULT_PENALIZER_LADDER, CustomerLtvModel, LtvFitError
from training.ltv import FEATURE_COLUMNS as LTV_FEATURE_COLUMNS
from training.metrics import classification_metrics, decile_table
from training.results import OOT_PREDICTION, TASK_TO_MODEL, ParamValue, PrimaryMetric, TrainingResult

Progress = Callable[[str], None]


class TrainingError(CrmScoringError):
    """A training run cannot proceed (bad configuration or unusable data)."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LightGbmParams:
    """LightGBM hyper-parameters (scikit-learn API names). Deterministic: fixed seed, few threads."""

    n_estimators: int = 400
    learning_rate: float = 0.03
    num_leaves: int = 7
    min_child_samples: int = 50
    subsample: float = 0.8
    subsample_freq: int = 1
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    random_state: int = 0
    n_jobs: int = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything a lead / churn training run can be told."""

    windows: WindowConfig = field(default_factory=WindowConfig)
    lightgbm: LightGbmParams = field(default_factory=LightGbmParams)
    calibration: CalibrationMethod = "platt"
    max_categories: int = 50
    features: FeatureParams = field(default_factory=FeatureParams)
    families: tuple[str, ...] | None = None  # None: every family
    points_rule: bl.PointsRuleConfig = field(default_factory=bl.PointsRuleConfig)
    recency_rule_days: int = 90
    ece_bins: int = 10
    importance_top_n: int = 20


@dataclass(frozen=True)
class LtvConfig:
    """Everything an LTV training run can be told."""

    time_unit_days: float = 7.0
    penalizer_ladder: tuple[float, ...] = DEFAULT_PENALIZER_LADDER
    gg_penalizer_ladder: tuple[float, ...] = DEFAULT_PENALIZER_LADDER
    monthly_discount_rate: float = 0.01
    # The smallest population fitted (see CustomerLtvModel): below, the fit would be the penalty's.
    min_customers: int = 30
    min_repeat_buyers: int = 10
    # Horizon of the served CLV and expected purchases (the issue default: a year); None: the training horizon.
    prediction_horizon_days: int | None = 365
    tracking_figure: bool = True  # needs the cohort's orders in memory
    tracking_period_days: int = 7
    features: FeatureParams = field(default_factory=FeatureParams)


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


# --------------------------------------------------------------------------------------
# Data fingerprint
# --------------------------------------------------------------------------------------


def data_fingerprint(profile: Profile) -> tuple[str, dict[str, int]]:
    """("sha256:<hex>", row counts) of a profile: its row counts and a hash of every row's content.

    A batch run's id is built from it, and a rerun of the same id adds no events; so a
    correction to any value (an order's status, an event's type, a customer's attribute)
    must change it. Each row is hashed in the backend over all its columns, and the row
    hashes are combined without regard to order (their XOR and their sum modulo a prime:
    XOR alone cancels pairs of identical rows). The backend's hash function is stable for a
    backend version; a new version may change the fingerprint, which starts a new run id
    whose diff against the same data is empty. One query per table: a scan, not a
    download. Pass the truncated profile a run actually reads.
    """
    summary: dict[str, Any] = {"attribute_columns": list(profile.attribute_columns)}
    counts: dict[str, int] = {}
    for name in ("customers", "orders", "events"):
        table: ibis.Table = getattr(profile, name)
        hashed = table.select(_row_hash=ibis.struct({column: table[column] for column in table.columns}).hash())
        row = hashed.aggregate(
            rows=hashed.count(),
            content_xor=hashed._row_hash.bit_xor(),
            content_sum=(hashed._row_hash % _FINGERPRINT_MODULUS).sum(),
        ).to_pyarrow().to_pylist()[0]
        counts[name] = int(row["rows"])
        summary[name] = {
            "columns": list(table.columns),
            "rows": counts[name],
            "content_xor": int(row["content_xor"] or 0),
            "content_sum": int(row["content_sum"] or 0),
        }
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True).encode("utf-8")).hexdigest()
    return f"sha256:{digest}", counts


#: A prime below 2**31, so that summing the reduced row hashes cannot overflow 64 bits.
_FINGERPRINT_MODULUS = 2_147_483_647


# --------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------


def _new_model(config: ClassifierConfig) -> PropensityModel:
    return PropensityModel(
        **asdict(config.lightgbm), calibration=config.calibration, max_categories=config.max_categories
    )


def _fit(model: PropensityModel, train: pd.DataFrame, calibration: pd.DataFrame) -> PropensityModel:
    return model.fit(
        features_only(train),
        train[LABEL_COLUMN].to_numpy(),
        features_only(calibration),
        calibration[LABEL_COLUMN].to_numpy(),
    )


def _baselines(
    task: Task, validation: pd.DataFrame, horizon_days: int, config: ClassifierConfig
) -> tuple[dict[str, bl.BaselineScore], list[str]]:
    """The task's baselines on the validation rows, and a note for each one that could not be
    computed (a BG/NBD fit that does not converge, say): a baseline is a yardstick, so its
    failure must not cost the model; the gate compares with the ones there are."""
    if task == "lead":
        builders: dict[str, Callable[[], bl.BaselineScore]] = {"points_rule": lambda: bl.points_rule(validation, config.points_rule)}
    else:
        builders = {
            "recency": lambda: bl.recency(validation),
            bl.no_purchase_rule_name(config.recency_rule_days): lambda: bl.no_purchase_rule(validation, config.recency_rule_days),
            "bgnbd": lambda: bl.bgnbd_expected_purchases(validation, horizon_days),
        }
    baselines: dict[str, bl.BaselineScore] = {}
    notes: list[str] = []
    for name, build in builders.items():
        try:
            baselines[name] = build()
        except (bl.BaselineError, LtvFitError) as exc:
            notes.append(f"baseline {name} skipped: {' '.join(str(exc).split())}")
    return baselines, notes


def _classifier_params(task: Task, data: OutOfTimeDatasets, config: ClassifierConfig) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {
        "task": task,
        "calibration": config.calibration,
        "max_categories": config.max_categories,
        "n_training_cutoffs_requested": config.windows.n_training_cutoffs,
        "n_training_cutoffs": len(data.plan.training),
        "stride_days": config.windows.stride_days or data.plan.horizon_days,
        "training_cutoffs": ",".join(f"{c:%Y-%m-%d}" for c in data.plan.training),
        "calibration_cutoff": f"{data.plan.calibration:%Y-%m-%d}",
        "feature_families": ",".join(config.families) if config.families else "all",
        "n_features": len(data.feature_columns),
        "recency_rule_days": config.recency_rule_days,
        "ece_bins": config.ece_bins,
    }
    params.update({f"lgbm_{k}": v for k, v in asdict(config.lightgbm).items()})
    return params


def train_classifier(
    profile: Profile,
    task: Literal["lead", "churn"],
    as_of: datetime | str,
    horizon_days: int | str,
    config: ClassifierConfig = ClassifierConfig(),
    progress: Progress | None = None,
    cache: FeatureCache | None = None,
) -> TrainingResult:
    """Train, evaluate out of time and refit the lead or churn propensity model.

    `cache` lets several runs at the same as_of share feature tables (e.g. `train all`); it
    must have been made for this profile, as_of and feature configuration.
    """
    if task not in ("lead", "churn"):
        raise TrainingError(f"unknown classifier task {task!r}; expected 'lead' or 'churn'")
    as_of = to_utc_naive(as_of)
    horizon = parse_horizon(horizon_days)
    if cache is None:
        cache = FeatureCache(profile, as_of, config.features, config.families, progress)
    elif not cache.matches(profile, as_of, config.features, config.families):
        raise TrainingError("the feature cache was built for another profile, as_of or feature configuration")

    _report(progress, f"{task}: fingerprinting the profile before {as_of:%Y-%m-%d}")
    fingerprint, table_counts = data_fingerprint(cache.profile)
    _report(progress, f"{task}: building out-of-time examples")
    data = build_datasets(cache, task, horizon, config.windows)

    _report(progress, f"{task}: training LightGBM on {len(data.train):,} rows ({len(data.plan.lightgbm)} cut-off(s))")
    model = _fit(_new_model(config), data.train, data.calibration)
    validation = data.validation
    y = validation[LABEL_COLUMN].to_numpy()
    p = model.predict_proba(features_only(validation))[:, 1]

    _report(progress, f"{task}: evaluating on {len(validation):,} validation rows at {data.plan.validation:%Y-%m-%d}")
    metrics = classification_metrics(y, p, "val_", config.ece_bins)
    metrics["val_positive_rate"] = float(y.mean())
    baselines, skipped_baselines = _baselines(task, validation, horizon, config)
    for note in skipped_baselines:
        _report(progress, f"{task}: {note}")
    comparison = bl.compare_with_baselines(y, p, baselines)
    metrics.update(comparison.metrics)

    from training.plots import calibration_figure, feature_importance_figure, gains_figure, roc_figure

    scores = {"model": p, **{f"baseline {name}": b.scores for name, b in baselines.items()}}
    importance = model.feature_importance("gain")
    figures = {
        "roc": roc_figure(y, scores),
        "calibration": calibration_figure(y, p, config.ece_bins),
        "gains": gains_figure(y, scores),
        "feature_importance": feature_importance_figure(importance, config.importance_top_n),
    }
    tables = {
        "decile_table": decile_table(y, p),
        "baseline_comparison": comparison.table,
        "feature_importance": importance.rename_axis("feature").reset_index(),
    }

    _report(
        progress,
        f"{task}: refitting on {len(data.refit_train):,} rows, calibrating at {data.plan.validation:%Y-%m-%d}",
    )
    served = _fit(_new_model(config), data.refit_train, data.refit_calibration)

    model_name = TASK_TO_MODEL[task]
    row_counts = {
        **table_counts,
        "train": len(data.train),
        "calibration": len(data.calibration),
        "validation": len(validation),
        "refit_train": len(data.refit_train),
        "refit_calibration": len(data.refit_calibration),
        "training_cutoffs": len(data.plan.training),
    }
    notes = list(data.notes) + skipped_baselines + list(comparison.notes)
    notes.append(
        f"validation: LightGBM on cut-offs {', '.join(f'{c:%Y-%m-%d}' for c in data.plan.lightgbm)}, "
        f"calibrated at {data.plan.calibration:%Y-%m-%d}; served: LightGBM on "
        f"{', '.join(f'{c:%Y-%m-%d}' for c in data.plan.training)}, calibrated at {data.plan.validation:%Y-%m-%d}"
    )
    return TrainingResult(
        model_name=model_name,
        model=served,
        as_of=as_of,
        horizon_days=horizon,
        validation_as_of=data.plan.validation,
        params=_classifier_params(task, data, config),
        metrics=metrics,
        primary_metric=PrimaryMetric("val_roc_auc", greater_is_better=True),
        row_counts=row_counts,
        data_fingerprint=fingerprint,
        currency=profile.currency,
        feature_version=FEATURE_DEFINITIONS_VERSION,
        feature_columns=list(served.feature_columns_),
        validation=validation.drop(columns=[CUTOFF_COLUMN]).assign(**{OOT_PREDICTION: p}).reset_index(drop=True),
        tables=tables,
        figures=figures,
        notes=notes,
    )


# --------------------------------------------------------------------------------------
# LTV
# --------------------------------------------------------------------------------------


class LtvServingModel:
    """The served customer_ltv model behind the `predict_frame` contract of `training.results`.

    A thin, picklable wrapper: `predict_frame(features)` is `CustomerLtvModel.predict`
    (p_alive, expected_purchases, expected_order_value, clv).
    """

    def __init__(self, model: CustomerLtvModel) -> None:
        self.model = model

    def predict_frame(self, features: pd.DataFrame) -> pd.DataFrame:
        return self.model.predict(features)

    def summary_metrics(self) -> dict[str, float]:
        return self.model.summary_metrics()


def _rfm_table(profile: Profile, as_of: datetime, params: FeatureParams) -> pd.DataFrame:
    table = build_features(profile, as_of, params, families=["rfm"]).to_pyarrow().to_pandas()
    # The LTV population: customers with a purchase before as_of (x is a count once leads are gone).
    buyers = table[table["T_days"].notna()].reset_index(drop=True)
    return buyers.assign(frequency=buyers["frequency"].astype("int64"))


def _ltv_model(config: LtvConfig, horizon_days: int) -> CustomerLtvModel:
    return CustomerLtvModel(
        time_unit_days=config.time_unit_days,
        penalizer_ladder=config.penalizer_ladder,
        gg_penalizer_ladder=config.gg_penalizer_ladder,
        horizon_days=horizon_days,
        monthly_discount_rate=config.monthly_discount_rate,
        min_customers=config.min_customers,
        min_repeat_buyers=config.min_repeat_buyers,
    )


def _tracking_figure(
    model: CustomerLtvModel, profile: Profile, calibration: pd.DataFrame, v: datetime, as_of: datetime, period_days: int
) -> Any:
    from training.ltv_evaluation import cumulative_tracking, plot_tracking

    last_day = pd.Timestamp(v - timedelta(microseconds=1)).floor("D")
    first_day = pd.Series(
        last_day - pd.to_timedelta(calibration["T_days"].to_numpy(dtype="float64"), unit="D"),
        index=calibration[KEY].to_numpy(),
    )
    orders = completed_orders(profile)
    orders = orders.select(KEY, "ordered_at").to_pyarrow().to_pandas()
    table = cumulative_tracking(
        model, first_day, orders, start=first_day.min(), end=as_of, calibration_end=v, period_days=period_days
    )
    return plot_tracking(table)


def train_ltv(
    profile: Profile,
    as_of: datetime | str,
    horizon_days: int | str,
    config: LtvConfig = LtvConfig(),
    progress: Progress | None = None,
) -> TrainingResult:
    """Fit BG/NBD + Gamma-Gamma at v = T - H, evaluate on [v, T), refit on everything before T."""
    from training.ltv_evaluation import (
        decile_table as ltv_decile_table,
        frequency_table,
        holdout_comparison,
        holdout_metrics,
        plot_decile_calibration,
        plot_frequency_table,
        plot_p_alive_heatmap,
    )

    as_of = to_utc_naive(as_of)
    horizon = parse_horizon(horizon_days)
    v = as_of - timedelta(days=horizon)
    truncated = restrict_to_before(profile, as_of)
    _report(progress, f"ltv: fingerprinting the profile before {as_of:%Y-%m-%d}")
    fingerprint, table_counts = data_fingerprint(truncated)

    _report(progress, f"ltv: rfm features at the calibration cut-off {v:%Y-%m-%d}")
    calibration = _rfm_table(truncated, v, config.features)
    if calibration.empty:
        raise TrainingError(f"ltv: no customer has a purchase before the calibration cut-off {v:%Y-%m-%d}")
    _report(progress, f"ltv: fitting BG/NBD + Gamma-Gamma on {len(calibration):,} customers")
    model_v = _ltv_model(config, horizon).fit(calibration)

    _report(progress, f"ltv: holdout [{v:%Y-%m-%d}, {as_of:%Y-%m-%d})")
    holdout = holdout_purchases_expr(truncated, v, horizon).to_pyarrow().to_pandas()
    holdout_by_customer = holdout.set_index(KEY).rename(
        columns={"holdout_purchases": "purchases", "holdout_revenue": "revenue"}
    )
    comparison = holdout_comparison(model_v, calibration, holdout_by_customer, float(horizon))
    metrics = {**model_v.summary_metrics(), **holdout_metrics(comparison)}

    frequencies = frequency_table(comparison)
    deciles = ltv_decile_table(comparison)
    figures: dict[str, object] = {
        "holdout_by_frequency": plot_frequency_table(frequencies),
        "holdout_deciles": plot_decile_calibration(deciles),
        "p_alive": plot_p_alive_heatmap(model_v, float(calibration["T_days"].max())),
    }
    if config.tracking_figure:
        _report(progress, "ltv: tracking plot")
        figures["tracking"] = _tracking_figure(model_v, truncated, calibration, v, as_of, config.tracking_period_days)
    # Flat columns (parameters as JSON text) so the table can be written as CSV / Parquet.
    attempts = pd.DataFrame(
        [
            {**a.to_dict(), "params": json.dumps(a.params), "standard_errors": json.dumps(a.standard_errors)}
            for a in model_v.fit_attempts_
        ]
    )

    _report(progress, f"ltv: refitting on everything before {as_of:%Y-%m-%d}")
    latest = _rfm_table(truncated, as_of, config.features)
    served = _ltv_model(config, config.prediction_horizon_days or horizon).fit(latest)

    validation = calibration[[KEY, *LTV_FEATURE_COLUMNS]].merge(
        holdout[[KEY, "holdout_purchases", "holdout_revenue"]], on=KEY, how="left"
    )
    validation["holdout_purchases"] = validation["holdout_purchases"].fillna(0).astype("int64")
    validation["holdout_revenue"] = validation["holdout_revenue"].fillna(0.0).astype("float64")
    # The calibration fit's expectation for the holdout window: the gate's honest candidate score.
    validation[OOT_PREDICTION] = model_v.expected_purchases(validation, t_days=float(horizon)).to_numpy()

    params: dict[str, ParamValue] = {
        "time_unit_days": config.time_unit_days,
        "penalizer_ladder": ",".join(f"{c:g}" for c in config.penalizer_ladder),
        "gg_penalizer_ladder": ",".join(f"{c:g}" for c in config.gg_penalizer_ladder),
        "monthly_discount_rate": config.monthly_discount_rate,
        "prediction_horizon_days": config.prediction_horizon_days or horizon,
        "calibration_cutoff": f"{v:%Y-%m-%d}",
        "bgnbd_penalizer": model_v.bgnbd_penalizer_,
        "gg_penalizer": model_v.gg_penalizer_,
    }
    return TrainingResult(
        model_name="customer_ltv",
        model=LtvServingModel(served),
        as_of=as_of,
        horizon_days=horizon,
        validation_as_of=v,
        params=params,
        metrics=metrics,
        primary_metric=PrimaryMetric("holdout_mae_purchases", greater_is_better=False),
        row_counts={
            **table_counts,
            "calibration_customers": len(calibration),
            "repeat_buyers": int(model_v.n_repeat_buyers_),
            "served_customers": len(latest),
        },
        data_fingerprint=fingerprint,
        currency=profile.currency,
        feature_version=FEATURE_DEFINITIONS_VERSION,
        feature_columns=list(LTV_FEATURE_COLUMNS),
        validation=validation,
        tables={"holdout_by_frequency": frequencies, "holdout_deciles": deciles, "fit_attempts": attempts},
        figures=figures,
        notes=[
            f"parameters logged are those of the calibration fit at {v:%Y-%m-%d}; "
            f"the served model is refit on {len(latest):,} customers before {as_of:%Y-%m-%d}",
        ],
    )
