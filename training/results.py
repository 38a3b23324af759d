"""What a training run produces, independent of where it is tracked.

`training.train` fills these; `training.tracking` logs them to MLflow and the
registry compares candidates with the champion on `validation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import pandas as pd

ModelName = Literal["lead_scoring", "churn_propensity", "customer_ltv"]
MODEL_NAMES: tuple[ModelName, ...] = ("lead_scoring", "churn_propensity", "customer_ltv")
TASK_TO_MODEL: dict[str, ModelName] = {"lead": "lead_scoring", "churn": "churn_propensity", "ltv": "customer_ltv"}

ParamValue = str | int | float | bool

#: Column of `TrainingResult.validation` with the candidate's out-of-time predictions (the
#: model fitted before the validation window). The served model is refit on the validation
#: labels, so scoring it there would be in-sample and bias the promotion gate.
OOT_PREDICTION = "oot_prediction"


class ModelOutputError(ValueError):
    """A model's predict_frame did not return the promised columns or rows (defined here, not
    beside the MLflow wrapper, so that serving can name it without importing MLflow)."""


@dataclass(frozen=True)
class PrimaryMetric:
    """The metric the promotion gate compares (e.g. val_roc_auc, higher is better)."""

    name: str
    greater_is_better: bool


@dataclass
class TrainingResult:
    """One trained model with everything a run records.

    model: the estimator to serve (refit on the latest window), with `predict_frame(features)
      -> DataFrame` returning the served outputs (probability, or the LTV outputs).
    validation: the out-of-time validation rows (features + label/holdout columns); the
      promotion gate scores the champion on exactly these rows.
    """

    model_name: ModelName
    model: object
    as_of: datetime
    horizon_days: int
    validation_as_of: datetime
    params: dict[str, ParamValue]
    metrics: dict[str, float]
    primary_metric: PrimaryMetric
    row_counts: dict[str, int]
    data_fingerprint: str
    feature_columns: list[str]
    validation: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)  # name -> matplotlib Figure
    notes: list[str] = field(default_factory=list)
    #: The currency of the training profile's amounts (None when no order names one); scoring
    #: refuses a profile in another currency, since amounts are never converted.
    currency: str | None = None
    #: The `features.pipeline.FEATURE_DEFINITIONS_VERSION` the model's features were built with.
    feature_version: int | None = None
