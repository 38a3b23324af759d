"""From a feature table to scores, percentiles, reasons, tags and the output contract.

Pure: no I/O. Batch scoring (`serving.batch`) and the API (`serving.service`) call the
same functions on the same models, so a customer scored either way gets the same
numbers (the parity test holds them to 1e-9).

Score table columns (also the snapshot's): `customer_id`, `rfm_segment`,
`lead_probability`, `churn_probability`, `ltv_p_alive`, `ltv_expected_purchases`,
`ltv_expected_order_value`, `ltv_clv`, the percentiles `lead_percentile`,
`churn_percentile`, `ltv_percentile` (share of the reference population scoring at or
below; the reference is the latest batch population), the reasons `lead_reasons` and
`churn_reasons` (JSON lists), then the tag rules' `tag_<name>` and `segment_<name>`.
A score that does not apply (a lead has no churn) is null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from serving.events import json_timestamp
from serving.models import PREDICTION_OF_MODEL, ModelSet, ServedModel
from serving.tags import PreviousTiers, TagColumns, TagRules, evaluate_tag_columns, evaluate_tags
from training.results import ModelOutputError

KEY = "customer_id"

#: Which population each model scores, by the rfm family's `orders_count` (completed orders before as_of).
LEADS_ONLY = {"lead_scoring"}
BUYERS_ONLY = {"churn_propensity", "customer_ltv"}

#: Scores closer than this (relative above 1) count as equal when ranking percentiles.
SCORE_TOLERANCE = 1e-10

#: Percentile column -> the score it ranks.
PERCENTILE_OF: dict[str, str] = {
    "lead_percentile": "lead_probability",
    "churn_percentile": "churn_probability",
    "ltv_percentile": "ltv_clv",
}

LTV_OUTPUTS = ("p_alive", "expected_purchases", "expected_order_value", "clv")
SCORE_COLUMNS: tuple[str, ...] = (
    "lead_probability",
    "churn_probability",
    *(f"ltv_{name}" for name in LTV_OUTPUTS),
)
REASON_COLUMNS: dict[str, str] = {"lead_scoring": "lead_reasons", "churn_propensity": "churn_reasons"}

#: The tag that holds each prediction's tier in the output contract (the default rules'
#: names; a rules file that names it otherwise: its first tier tag over the prediction's scores).
TIER_TAG: dict[str, str] = {"lead_conversion": "lead_tier", "churn": "churn_risk", "ltv": "value_tier"}
#: The rules' score prefix of each prediction (`churn.probability`, ...).
SCORE_PREFIX: dict[str, str] = {"lead_conversion": "lead", "churn": "churn", "ltv": "ltv"}

NOT_APPLICABLE_REASON: dict[str, str] = {
    "lead_scoring": "customer has a completed order before as_of: lead scoring applies to leads only",
    "churn_propensity": "no completed order before as_of: churn applies to customers who bought",
    "customer_ltv": "no completed order before as_of: lifetime value needs a first purchase",
}


@dataclass(frozen=True)
class PercentileReference:
    """Sorted scores of a reference population (the latest batch run), per ranked score."""

    sorted_scores: dict[str, np.ndarray]

    @classmethod
    def from_scores(cls, scores: pd.DataFrame) -> PercentileReference:
        return cls.from_arrays({score: scores[score].to_numpy(dtype="float64", na_value=np.nan) for score in PERCENTILE_OF.values() if score in scores.columns})

    @classmethod
    def from_arrays(cls, scores: Mapping[str, np.ndarray]) -> PercentileReference:
        """From score columns as float arrays (NaN: no score), by score column name."""
        return cls({score: np.sort(values[~np.isnan(values)]) for score, values in scores.items() if score in PERCENTILE_OF.values()})

    def percentile(self, score: str, values: np.ndarray) -> np.ndarray:
        """Share of the reference at or below each value; NaN where the value is NaN or no reference."""
        reference = self.sorted_scores.get(score)
        out = np.full(len(values), np.nan)
        if reference is None or len(reference) == 0:
            return out
        present = ~np.isnan(values)
        # Tied scores (many customers share one RFM pattern) must stay tied when the same
        # score is recomputed with float noise (~1e-13, summation order), so compare with slack.
        probe = values[present] + SCORE_TOLERANCE * np.maximum(1.0, np.abs(values[present]))
        out[present] = np.searchsorted(reference, probe, side="right") / len(reference)
        return out


@dataclass(frozen=True)
class ScoreColumns:
    """Score-table columns as arrays, one entry per feature row (same order).

    `score_features` makes the batch's frame of them; the API renders its few rows from
    them directly (`score_records`): for one request, frames cost more than the scoring.
    """

    #: customer_id as text (objects), as the frame's first column.
    keys: np.ndarray
    #: The rfm family's segment (objects); None when the features have no such column.
    rfm_segment: np.ndarray | None
    #: SCORE_COLUMNS, then the PERCENTILE_OF columns once ranked (`with_percentiles`).
    numbers: dict[str, np.ndarray]
    #: REASON_COLUMNS: each row's reasons (a list, JSON text in the frame) or None.
    reasons: dict[str, np.ndarray]

    def with_percentiles(self, reference: PercentileReference | None) -> ScoreColumns:
        """The `*_percentile` columns against `reference` (None: against these scores themselves)."""
        return replace(self, numbers={**self.numbers, **_percentiles(self.numbers, reference)})

    def by_name(self) -> dict[str, np.ndarray]:
        """The score columns the tag rules read, by column name."""
        return {"rfm_segment": self._rfm_segment(), **self.numbers}

    def frame(self) -> pd.DataFrame:
        """The score table: customer_id, rfm_segment, scores, reasons (JSON text), percentiles."""
        texts = {column: pd.Series(_json_texts(values), dtype="object") for column, values in self.reasons.items()}
        return pd.DataFrame(self._in_table_order(self.rfm_segment if self.rfm_segment is not None else pd.NA, texts))

    def records(self, tags: TagColumns) -> list[dict[str, Any]]:
        """Each row as a dict of Python values by column name, with its tags and segments:
        what `render_result` reads (reasons as lists, not JSON text)."""
        columns = {name: values.tolist() for name, values in self._in_table_order(self._rfm_segment(), self.reasons).items()}
        columns.update(tags.to_lists())
        names = list(columns)
        return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]

    def _rfm_segment(self) -> np.ndarray:
        return self.rfm_segment if self.rfm_segment is not None else np.full(len(self.keys), None, dtype=object)

    def _in_table_order(self, rfm_segment: Any, reasons: dict[str, Any]) -> dict[str, Any]:
        """The score table's columns in its order, given the rfm_segment and reason columns."""
        ranked = {column: self.numbers[column] for column in PERCENTILE_OF if column in self.numbers}
        scores = {column: values for column, values in self.numbers.items() if column not in ranked}
        return {KEY: self.keys, "rfm_segment": rfm_segment, **scores, **reasons, **ranked}


def _population(features: pd.DataFrame, model: ServedModel, orders: np.ndarray | None = None) -> np.ndarray:
    """Rows the model scores (`orders`: the `orders_count` column as floats, when already read)."""
    if orders is None:
        orders = features["orders_count"].to_numpy(dtype="float64", na_value=0.0)
    return orders == 0 if model.name in LEADS_ONLY else orders > 0


def _reason_texts(reasons: list[list[dict[str, Any]]]) -> list[str]:
    return [json.dumps(r, separators=(",", ":")) for r in reasons]


def _json_texts(reasons: np.ndarray) -> np.ndarray:
    """A reasons column (a list or None per row) as JSON text (None stays None)."""
    texts = np.full(len(reasons), None, dtype=object)
    rows = np.flatnonzero(pd.notna(reasons))
    texts[rows] = _reason_texts(reasons[rows].tolist())
    return texts


def predict_columns(features: pd.DataFrame, models: ModelSet, *, reasons_top_k: int = 3) -> ScoreColumns:
    """Scores and reasons per feature row (same order); NaN / None where a model does not apply."""
    n = len(features)
    scores = {column: np.full(n, np.nan) for column in SCORE_COLUMNS}
    reasons = {column: np.full(n, None, dtype=object) for column in REASON_COLUMNS.values()}
    orders = features["orders_count"].to_numpy(dtype="float64", na_value=0.0)
    subsets: dict[bool, pd.DataFrame] = {}  # leads or buyers: churn and LTV score the same rows
    for model in models.models.values():
        rows = np.flatnonzero(_population(features, model, orders))
        if len(rows) == 0:
            continue
        leads = model.name in LEADS_ONLY
        if leads not in subsets:
            subsets[leads] = features if len(rows) == n else features.iloc[rows]
        subset = subsets[leads]
        explained = model.explain is not None and reasons_top_k > 0
        why = None
        if explained and model.predict_with_reasons is not None:
            probability, why = model.predict_with_reasons(subset, reasons_top_k)
            outputs = {"probability": probability}
        else:
            outputs = model.predict_values(subset)
            if explained and model.explain is not None:
                why = model.explain(subset, reasons_top_k)
        for name, values in outputs.items():
            column = f"{model.prefix}_{name}"
            if column not in scores or len(values) != len(rows):
                raise ModelOutputError(f"{model.name}: output {name!r} with {len(values)} values for {len(rows)} rows")
            scores[column][rows] = values
        if why is not None:
            column = reasons[REASON_COLUMNS[model.name]]
            for row, items in zip(rows.tolist(), why, strict=True):  # one list per row (numpy would make a 2-D array)
                column[row] = items
    rfm = _texts(features["rfm_segment"]) if "rfm_segment" in features else None
    return ScoreColumns(_texts(features[KEY]), rfm, scores, reasons)


def _texts(column: pd.Series) -> np.ndarray:
    """The values of `column.astype("string")` as objects (str, pd.NA where missing); a text
    column is read as it is (the conversion costs more than the rest of a small column)."""
    if pd.api.types.is_string_dtype(column.dtype) and not pd.api.types.is_object_dtype(column.dtype):
        return column.to_numpy(dtype=object, na_value=pd.NA)
    return column.astype("string").to_numpy()


def add_reasons(scores: pd.DataFrame, features: pd.DataFrame, models: ModelSet, reasons_top_k: int = 3) -> pd.DataFrame:
    """Fill `lead_reasons` / `churn_reasons` for rows with a probability (features in the same row order).

    The batch does not explain a million rows (TreeSHAP costs ~0.2 ms per row and model);
    it keeps the features instead and reasons are computed when a row is asked for.
    """
    out = scores.copy()
    for model_name, column in REASON_COLUMNS.items():
        model = models.get(model_name)
        if model is None or model.explain is None:
            continue
        rows = np.flatnonzero(out[f"{model.prefix}_probability"].notna().to_numpy())
        if len(rows) == 0:
            continue
        values = out[column].astype("object").to_numpy(copy=True)
        values[rows] = _reason_texts(model.explain(features.iloc[rows], reasons_top_k))
        out[column] = values
    return out


def _percentiles(scores: Mapping[str, np.ndarray], reference: PercentileReference | None) -> dict[str, np.ndarray]:
    """Each PERCENTILE_OF column from the float scores it ranks, against `reference` (None: against `scores`)."""
    reference = reference if reference is not None else PercentileReference.from_arrays(scores)
    return {column: reference.percentile(score, scores[score]) for column, score in PERCENTILE_OF.items()}


def score_features(
    features: pd.DataFrame,
    models: ModelSet,
    rules: TagRules,
    *,
    reference: PercentileReference | None,
    previous_tags: pd.DataFrame | None,
    reasons_top_k: int = 3,
) -> pd.DataFrame:
    """The full score table: scores, percentiles, reasons, tags and segments."""
    scores = predict_columns(features, models, reasons_top_k=reasons_top_k).with_percentiles(reference).frame()
    tags = evaluate_tags(rules, scores, previous_tags)
    return pd.concat([scores, tags.iloc[:, 1:]], axis=1)  # tags without customer_id


def score_records(
    features: pd.DataFrame,
    models: ModelSet,
    rules: TagRules,
    *,
    reference: PercentileReference | None,
    previous_tags: PreviousTiers | None,
    reasons_top_k: int = 3,
) -> list[dict[str, Any]]:
    """`score_features`' rows as dicts of Python values (what `render_result` reads), built
    without frames: the API's path. Reasons are lists here (JSON text in the table);
    `previous_tags` are already matched to the feature rows.
    """
    scores = predict_columns(features, models, reasons_top_k=reasons_top_k).with_percentiles(reference)
    return scores.records(evaluate_tag_columns(rules, scores.by_name(), len(scores.keys), previous_tags))


# --------------------------------------------------------------------------------------
# Output contract
# --------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _reason_list(value: Any) -> list[dict[str, Any]]:
    """A row's reasons: a list as scoring made it, or the JSON text of a score table."""
    if isinstance(value, list):
        return value
    return json.loads(value) if isinstance(value, str) else []


def render_result(
    row: dict[str, Any], models: ModelSet, rules: TagRules, as_of: datetime, *, versions: dict[str, str] | None = None
) -> dict[str, Any]:
    """One customer's output-contract object from a score-table row (a dict of its columns).

    versions: the model versions that produced the row when they are not the loaded ones
    (a snapshot scored before a reload).
    """
    versions = versions or {}
    tags: dict[str, Any] = {}
    for name in rules.tag_names():
        value = _text(row.get(f"tag_{name}"))
        if value is not None:
            tags[name] = True if value == "true" else value
    segments = [name for name in rules.segment_names() if bool(row.get(f"segment_{name}"))]
    predictions: dict[str, Any] = {}
    not_applicable: dict[str, str] = {}
    for model_name, prediction in PREDICTION_OF_MODEL.items():
        model = models.get(model_name)
        if model is None:
            predictions[prediction] = None
            not_applicable[prediction] = f"no {model_name} champion model is deployed"
            continue
        tier_tag = rules.tier_tag_for(SCORE_PREFIX[prediction], TIER_TAG[prediction])
        tier = tags.get(tier_tag) if tier_tag is not None else None
        if model_name == "customer_ltv":
            clv = _number(row.get("ltv_clv"))
            if clv is None:
                predictions[prediction] = None
                not_applicable[prediction] = NOT_APPLICABLE_REASON[model_name]
                continue
            predictions[prediction] = {
                "p_alive": _number(row.get("ltv_p_alive")),
                "expected_purchases": _number(row.get("ltv_expected_purchases")),
                "expected_order_value": _number(row.get("ltv_expected_order_value")),
                "clv": clv,
                "horizon_days": model.clv_horizon_days,
                "percentile": _number(row.get("ltv_percentile")),
                "tier": tier,
                "model": model.name,
                "version": versions.get(model.name, model.version),
            }
            continue
        probability = _number(row.get(f"{model.prefix}_probability"))
        if probability is None:
            predictions[prediction] = None
            not_applicable[prediction] = NOT_APPLICABLE_REASON[model_name]
            continue
        predictions[prediction] = {
            "probability": probability,
            "percentile": _number(row.get(f"{model.prefix}_percentile")),
            "tier": tier,
            "model": model.name,
            "version": versions.get(model.name, model.version),
            "reasons": _reason_list(row.get(REASON_COLUMNS[model_name])),
        }
    result: dict[str, Any] = {
        "customer_id": str(row[KEY]),
        "as_of": json_timestamp(as_of),
        "predictions": predictions,
        "tags": tags,
        "segments": segments,
    }
    if not_applicable:
        result["not_applicable"] = not_applicable
    return result


def not_eligible_result(customer_id: str, models: ModelSet, as_of: datetime) -> dict[str, Any]:
    """The answer for a profile created at or after as_of: it does not exist yet at as_of."""
    reason = "profile created at or after as_of: nothing to score yet"
    return {
        "customer_id": customer_id,
        "as_of": json_timestamp(as_of),
        "predictions": {p: None for p in PREDICTION_OF_MODEL.values()},
        "tags": {},
        "segments": [],
        "not_applicable": {p: reason for p in PREDICTION_OF_MODEL.values()},
    }
