"""Settings of the training side (MLflow store, experiment, promotion gate).

Read from the environment (prefix `CRMSCORE_`) only when constructed. Commands and the
service construct the one object of every setting, `serving.settings.CrmScoringSettings`,
which is a `TrainingSettings` too, and pass it in. Nothing here touches MLflow or the file
system.

The promotion gate compares the candidate with the champion on the primary metric of the
model (`TrainingResult.primary_metric`) and tolerates a small loss, because two models
trained on neighbouring windows differ by noise:

* metrics where greater is better (AUC, the classifiers' `val_roc_auc`): the candidate
  passes when `candidate >= champion - promotion_tolerance_auc` (absolute, default 0.005);
* metrics where lower is better (the LTV holdout purchase MAE): the candidate passes when
  `candidate <= champion * (1 + promotion_tolerance_mae_relative)` (relative, default 2 %:
  an MAE has the units of the data, so an absolute tolerance would not carry across data sets).

The same tolerances apply to the gate's baseline floor (every candidate, the first champion
included): the run's primary metric against the best baseline the run logged on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: MLflow's own variable: when set, runs and models go to that server / store instead.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


class TrainingSettings(BaseSettings):
    """Configuration of training, tracking and promotion. Construct once and pass it in."""

    model_config = SettingsConfigDict(env_prefix="CRMSCORE_", extra="ignore")

    project_dir: Path = Field(default_factory=Path.cwd, description="Root of the local MLflow store (mlruns/).")
    tracking_uri: str | None = Field(
        default=None,
        description=(
            "MLflow tracking URI. None: $MLFLOW_TRACKING_URI when set, "
            "else sqlite:///<project_dir>/mlruns/mlflow.db."
        ),
    )
    experiment_name: str = Field(default="crm-scoring", min_length=1, description="MLflow experiment of the runs.")
    promotion_tolerance_auc: float = Field(
        default=0.005,
        ge=0.0,
        le=1.0,
        description="Absolute loss tolerated on a greater-is-better primary metric (AUC).",
    )
    promotion_tolerance_mae_relative: float = Field(
        default=0.02,
        ge=0.0,
        description="Relative increase tolerated on a lower-is-better primary metric (holdout purchase MAE).",
    )
    signature_sample_rows: int = Field(
        default=500, ge=1, description="Validation rows used to infer the logged model's signature."
    )

    @property
    def mlruns_dir(self) -> Path:
        """The local store folder (used only with the default sqlite store)."""
        return Path(self.project_dir).resolve() / "mlruns"

    def resolved_tracking_uri(self) -> str:
        """The explicit setting, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
        if self.tracking_uri:
            return self.tracking_uri
        from_env = os.environ.get(TRACKING_URI_ENV, "").strip()
        if from_env:
            return from_env
        return f"sqlite:///{(self.mlruns_dir / 'mlflow.db').as_posix()}"
