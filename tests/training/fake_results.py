"""Small TrainingResults for the MLflow layer's tests (tracking, registry, CLI, notebook).

Real estimators (a tiny LightGBM, a fixed linear LTV) behind the `predict_frame` contract of
`training.results`, on data made here, so the tests do not depend on the training code and
run in milliseconds. Defined in an importable module (not a conftest) because the logged
models pickle their classes by reference.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.pipeline import FEATURE_DEFINITIONS_VERSION
from training.results import PrimaryMetric, TrainingResult

if TYPE_CHECKING:
    from training.config import TrainingSettings

AS_OF = datetime(2025, 7, 1)
HORIZON_DAYS = 90
VALIDATION_AS_OF = datetime(2025, 4, 2)
FEATURES = ["x1", "x2", "noise", "orders_count", "segment"]


def classifier_data(n: int, seed: int) -> pd.DataFrame:
    """Features of every kind the real table has (float, int, string with nulls) and a 0/1 label."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    label = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x1 + 1.5 * x2)))).astype("int64")
    segment = rng.choice(np.array(["loyal", "at_risk", "new"], dtype=object), size=n)
    segment[rng.random(n) < 0.1] = None
    return pd.DataFrame(
        {
            "customer_id": [f"c-{seed}-{i:05d}" for i in range(n)],
            "x1": x1,
            "x2": np.where(rng.random(n) < 0.05, np.nan, x2),
            "noise": rng.normal(size=n),
            "orders_count": rng.poisson(2.0, size=n).astype("int64"),
            "segment": pd.array(segment, dtype="str"),
            "label": label,
        }
    )


@dataclass
class TinyClassifier:
    """A LightGBM on a chosen subset of the features; `predict_frame` -> column `probability`."""

    columns: list[str]
    booster: lgb.LGBMClassifier

    @classmethod
    def fit(cls, train: pd.DataFrame, columns: list[str], seed: int = 0) -> TinyClassifier:
        # One thread: OpenMP start-up and spinning cost more than 25 tiny trees on a busy machine.
        model = lgb.LGBMClassifier(
            n_estimators=25, num_leaves=7, learning_rate=0.2, random_state=seed, n_jobs=1, verbose=-1
        )
        model.fit(train[columns], train["label"])
        return cls(columns, model)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.booster.predict_proba(X[self.columns])

    def predict_frame(self, features: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"probability": self.predict_proba(features)[:, 1]}, index=features.index)

    def explain(self, X: pd.DataFrame, top_k: int = 3) -> list[list[dict[str, object]]]:
        return [[] for _ in range(len(X))]


class RankingTinyClassifier(TinyClassifier):
    """A TinyClassifier with a raw margin (`decision_function`), as PropensityModel has."""

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(X[self.columns], raw_score=True)


def _figure(title: str) -> Figure:
    figure = Figure(figsize=(3, 2))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.set_title(title)
    return figure


def classifier_result(
    columns: list[str],
    model_name: str = "churn_propensity",
    seed: int = 0,
    n_train: int = 800,
    n_validation: int = 600,
    as_of: datetime = AS_OF,
) -> TrainingResult:
    """A classifier result whose strength is set by `columns`: ["x1", "x2"] strong, ["x1"] weaker, ["noise"] useless."""
    from sklearn.metrics import roc_auc_score

    train, validation = classifier_data(n_train, seed), classifier_data(n_validation, seed + 1000)
    model = TinyClassifier.fit(train, columns, seed)
    auc = float(roc_auc_score(validation["label"], model.predict_frame(validation)["probability"]))
    return TrainingResult(
        model_name=model_name,  # type: ignore[arg-type]
        model=model,
        as_of=as_of,
        horizon_days=HORIZON_DAYS,
        validation_as_of=VALIDATION_AS_OF,
        params={"n_estimators": 25, "num_leaves": 7, "columns": ",".join(columns)},
        metrics={
            "val_roc_auc": auc,
            "val_pr_auc": 0.5,
            "val_brier": 0.2,
            "val_ece": 0.01,
            "val_lift_at_10": 1.8,
            "baseline_recency_val_roc_auc": 0.6,
            "baseline_bgnbd_val_roc_auc": 0.65,
        },
        primary_metric=PrimaryMetric("val_roc_auc", greater_is_better=True),
        row_counts={"train": n_train, "validation": n_validation},
        data_fingerprint=f"sha256:fake-{seed}",
        feature_columns=list(FEATURES),
        validation=validation,
        tables={"lift": pd.DataFrame({"decile": [1, 2], "lift": [2.0, 1.5]})},
        figures={"roc": _figure("ROC"), "calibration": _figure("calibration")},
        notes=["fake result for tests"],
        currency="USD",
        feature_version=FEATURE_DEFINITIONS_VERSION,
    )


@dataclass
class LinearLtv:
    """A fixed LTV model: expected purchases = scale * (frequency + 1); `predict_frame` -> the LTV outputs."""

    scale: float

    def predict_frame(self, features: pd.DataFrame) -> pd.DataFrame:
        expected = self.scale * (features["frequency"].to_numpy(dtype="float64") + 1.0)
        order_value = features["monetary_value"].to_numpy(dtype="float64") + 10.0
        return pd.DataFrame(
            {
                "p_alive": 1.0 / (1.0 + features["recency_days"].to_numpy(dtype="float64") / 100.0),
                "expected_purchases": expected,
                "expected_order_value": order_value,
                "clv": expected * order_value,
            },
            index=features.index,
        )


def ltv_result(scale: float, seed: int = 0, n: int = 500) -> TrainingResult:
    """An LTV result; holdout purchases are frequency + 1 on average, so scale 1.0 is best."""
    rng = np.random.default_rng(seed)
    frequency = rng.poisson(1.5, size=n).astype("float64")
    validation = pd.DataFrame(
        {
            "customer_id": [f"b-{i:05d}" for i in range(n)],
            "frequency": frequency,
            "recency_days": rng.uniform(0, 300, size=n),
            "T_days": rng.uniform(300, 400, size=n),
            "monetary_value": rng.gamma(2.0, 20.0, size=n),
            "holdout_purchases": rng.poisson(frequency + 1.0).astype("int64"),
        }
    )
    model = LinearLtv(scale)
    predicted = model.predict_frame(validation)["expected_purchases"]
    mae = float(np.mean(np.abs(predicted - validation["holdout_purchases"])))
    return TrainingResult(
        model_name="customer_ltv",
        model=model,
        as_of=AS_OF,
        horizon_days=HORIZON_DAYS,
        validation_as_of=VALIDATION_AS_OF,
        params={"scale": scale},
        metrics={
            "holdout_mae_purchases": mae,
            "bgnbd_r": 0.24,
            "bgnbd_alpha": 4.4,
            "bgnbd_a": 0.79,
            "bgnbd_b": 2.4,
            "gg_p": 6.25,
            "gg_q": 3.74,
            "gg_v": 15.44,
        },
        primary_metric=PrimaryMetric("holdout_mae_purchases", greater_is_better=False),
        row_counts={"calibration": n, "holdout": n},
        data_fingerprint="sha256:fake-ltv",
        feature_columns=["frequency", "recency_days", "T_days", "monetary_value"],
        validation=validation,
        figures={"holdout_tracking": _figure("tracking")},
        feature_version=FEATURE_DEFINITIONS_VERSION,
    )


# --------------------------------------------------------------------------------------
# Temporary MLflow stores
# --------------------------------------------------------------------------------------

_EMPTY_STORE: Path | None = None


def _empty_store_template() -> Path:
    """A migrated, empty sqlite store, made once per test process (migrations cost seconds)."""
    global _EMPTY_STORE
    if _EMPTY_STORE is None or not _EMPTY_STORE.exists():
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="crm-scoring-store-template-"))
        db = folder / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the tables
        _EMPTY_STORE = db
    return _EMPTY_STORE


def temp_store(project_dir: Path, create: bool = True) -> TrainingSettings:
    """Settings for a store under `project_dir/mlruns` (a copy of the migrated template when `create`)."""
    from training.config import TrainingSettings

    db = project_dir / "mlruns" / "mlflow.db"
    if create:
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store_template(), db)
    return TrainingSettings(project_dir=project_dir, tracking_uri=f"sqlite:///{db}")
