"""The MLflow pyfunc wrapper every crm-scoring model is logged as.

Kept apart from `training.tracking` on purpose: the logged model is pickled with a
reference to this class, so loading `models:/<name>@champion` in a fresh process imports
this module (from the code logged with the model) and nothing heavier than mlflow, numpy
and pandas plus the model's own modules.

The wrapped model only needs `predict_frame(features: DataFrame) -> DataFrame`; the
wrapper selects the feature columns the model was trained on (ignoring anything else the
caller passes, e.g. labels or customer_id) and returns exactly the output columns:
`probability` (the positive-class probability) for the classifiers, the LTV outputs
(p_alive, expected_purchases, expected_order_value, clv) for customer_ltv. Rows keep the
caller's order and index.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from training.results import ModelOutputError

#: Output columns of each registered model's pyfunc.
OUTPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "lead_scoring": ("probability",),
    "churn_propensity": ("probability",),
    "customer_ltv": ("p_alive", "expected_purchases", "expected_order_value", "clv"),
}


class CrmScoringPyfunc(mlflow.pyfunc.PythonModel):
    """Serve a trained crm-scoring model through mlflow.pyfunc (probabilities / LTV outputs)."""

    def __init__(
        self, model: Any, model_name: str, feature_columns: list[str], output_columns: tuple[str, ...]
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.feature_columns = list(feature_columns)
        self.output_columns = tuple(output_columns)

    @classmethod
    def for_model(cls, model: Any, model_name: str, feature_columns: list[str]) -> CrmScoringPyfunc:
        if model_name not in OUTPUT_COLUMNS:
            raise ValueError(f"unknown model name {model_name!r}; expected one of {', '.join(OUTPUT_COLUMNS)}")
        if not callable(getattr(model, "predict_frame", None)):
            raise TypeError(f"{model_name}: the model ({type(model).__name__}) has no predict_frame(features) method")
        return cls(model, model_name, feature_columns, OUTPUT_COLUMNS[model_name])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predict_frame(model_input)

    def predict_frame(self, features: Any) -> pd.DataFrame:
        """The output columns for each row of `features` (same index, same order)."""
        frame = features if isinstance(features, pd.DataFrame) else pd.DataFrame(features)
        missing = [c for c in self.feature_columns if c not in frame.columns]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ModelOutputError(f"{self.model_name}: input lacks feature column(s) {shown}")
        out = self.model.predict_frame(frame[self.feature_columns])
        if not isinstance(out, pd.DataFrame):
            out = pd.DataFrame(out, columns=list(self.output_columns))
        absent = [c for c in self.output_columns if c not in out.columns]
        if absent:
            raise ModelOutputError(
                f"{self.model_name}: predict_frame returned columns {list(out.columns)}, missing {absent}"
            )
        if len(out) != len(frame):
            raise ModelOutputError(f"{self.model_name}: predict_frame returned {len(out)} rows for {len(frame)} inputs")
        result = out[list(self.output_columns)].astype("float64")
        result.index = frame.index
        return result
