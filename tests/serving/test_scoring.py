"""The batch's score table (`score_features`) and the API's records (`score_records`) are one
computation read two ways: on the trained project's features they agree exactly."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.batch import features_path
from serving.engine import SnapshotView
from serving.models import ModelSet, load_model_set
from serving.scoring import (
    KEY,
    REASON_COLUMNS,
    PercentileReference,
    predict_columns,
    render_result,
    score_features,
    score_records,
)
from serving.store import ScoreStore
from serving.tags import AlignedPreviousTags, TagRules, evaluate_tags, load_tag_rules
from tests.serving.conftest import TrainedProject
from training.config import TrainingSettings
from training.results import ModelOutputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(trained_project: TrainedProject) -> ModelSet:
    settings = TrainingSettings(project_dir=trained_project.root, tracking_uri=trained_project.env["CRMSCORE_TRACKING_URI"])
    return load_model_set(settings)


@pytest.fixture(scope="module")
def features(trained_project: TrainedProject) -> pd.DataFrame:
    store = ScoreStore(trained_project.root / "scores")
    latest = store.latest_run()
    assert latest is not None
    return pd.read_parquet(features_path(store, latest.run_id))


@pytest.fixture(scope="module")
def reference(trained_project: TrainedProject) -> PercentileReference:
    store = ScoreStore(trained_project.root / "scores")
    latest = store.latest_run()
    assert latest is not None
    return PercentileReference.from_scores(store.read_snapshot(latest.run_id))


def _previous_tags(table: pd.DataFrame, rules: TagRules) -> pd.DataFrame:
    """A previous run whose scores were a little higher, without every fifth customer, in another order."""
    higher = table.assign(**{c: table[c] + 0.02 for c in ("lead_probability", "churn_probability", "ltv_percentile")})
    return evaluate_tags(rules, higher).iloc[[i for i in range(len(table)) if i % 5]][::-1]


def _aligned(previous: pd.DataFrame, ids: list[str]) -> AlignedPreviousTags:
    by_id = previous.set_index(KEY)
    return AlignedPreviousTags(
        {c: np.array([v if isinstance(v, str) else None for v in by_id[c].reindex(ids)], dtype=object) for c in by_id.columns if c.startswith("tag_")}
    )


def _same(record_value: Any, table_value: Any, column: str) -> bool:
    if column in REASON_COLUMNS.values():
        return record_value == (json.loads(table_value) if isinstance(table_value, str) else None)
    if column.startswith("tag_") and pd.isna(table_value):  # no tag: null text in the table
        return record_value is None
    if isinstance(table_value, float):
        return isinstance(record_value, float) and record_value.hex() == table_value.hex()  # NaN included
    return type(record_value) is type(table_value.item() if isinstance(table_value, np.generic) else table_value) and record_value == table_value


@pytest.mark.parametrize("rows", [40, None], ids=["an API batch", "every customer"])
@pytest.mark.parametrize("ranked_against", ["snapshot", "themselves"])
def test_api_records_equal_the_batch_score_table(models, features, reference, rows, ranked_against) -> None:
    rules = load_tag_rules()
    # Spread over the population, in another order than the snapshot's.
    sample = features.iloc[:: len(features) // rows][::-1].reset_index(drop=True) if rows else features
    orders = sample["orders_count"].to_numpy()
    assert (orders == 0).any() and (orders > 0).any()  # leads and buyers
    ref = reference if ranked_against == "snapshot" else None
    plain = score_features(sample, models, rules, reference=ref, previous_tags=None)
    previous = _previous_tags(plain, rules)
    table = score_features(sample, models, rules, reference=ref, previous_tags=previous)
    if rows is None:  # the previous tiers are kept within the margin
        assert (table.filter(like="tag_").fillna("-") != plain.filter(like="tag_").fillna("-")).any().any()

    records = score_records(sample, models, rules, reference=ref, previous_tags=_aligned(previous, sample[KEY].tolist()))
    assert len(records) == len(table)
    for record, row in zip(records, table.to_dict(orient="records"), strict=True):
        assert list(record) == list(row)
        for column, value in row.items():
            assert _same(record[column], value, column), (row[KEY], column, record[column], value)
        as_of = pd.Timestamp("2025-06-15").to_pydatetime()
        assert json.dumps(render_result(record, models, rules, as_of)) == json.dumps(render_result(row, models, rules, as_of))


def test_reasons_are_lists_in_records_and_json_in_the_table(models, features, reference) -> None:
    sample = features.iloc[:: len(features) // 12]
    rules = load_tag_rules()
    records = score_records(sample, models, rules, reference=reference, previous_tags=None)
    table = score_features(sample, models, rules, reference=reference, previous_tags=None)
    explained = 0
    for record, texts in zip(records, table[list(REASON_COLUMNS.values())].to_dict(orient="records"), strict=True):
        for column, text in texts.items():
            if isinstance(text, str):
                assert isinstance(record[column], list) and record[column] == json.loads(text)
                explained += 1
            else:
                assert record[column] is None
    assert explained == len(sample)  # every customer is a lead or a buyer
    assert not any(math.isnan(r["lead_percentile"]) and not math.isnan(r["lead_probability"]) for r in records)


@pytest.mark.parametrize("wrong", ["length", "name"])
def test_a_model_output_that_does_not_fit_is_named(models, features, wrong) -> None:
    ltv = models.get("customer_ltv")
    assert ltv is not None

    def broken(frame: pd.DataFrame) -> dict[str, np.ndarray]:
        if wrong == "length":
            return {"clv": np.zeros(len(frame) + 1)}
        return {"clv_next_year": np.zeros(len(frame))}

    models = ModelSet({**models.models, "customer_ltv": dataclasses.replace(ltv, predict_values=broken)})
    with pytest.raises(ModelOutputError, match="customer_ltv: output"):
        predict_columns(features.iloc[:: len(features) // 12], models)


def test_snapshot_tags_are_matched_to_the_rows_by_position() -> None:
    """What the API passes as `previous_tags`: one value per row, None for a customer the
    snapshot lacks; segments carry no hysteresis state and are left out."""
    view = SnapshotView(
        run=None,  # type: ignore[arg-type] - only the tag columns are read here
        path=Path("unused.parquet"),
        reference=PercentileReference.from_arrays({}),
        meta={},
        tag_columns=("tag_churn_risk", "segment_win_back"),
        tag_index=pd.Index(["a", "b"], dtype=object),
        tag_values={"tag_churn_risk": np.array(["high", None], dtype=object), "segment_win_back": np.array([True, False])},
    )
    aligned = view.previous_tags(["b", "new", "a"])
    assert aligned is not None
    assert {column: list(values) for column, values in aligned.values.items()} == {"tag_churn_risk": [None, None, "high"]}
    assert aligned.codes("tag_churn_risk", ("high", "medium", "low")).tolist() == [-1, -1, 0]


def test_predictions_and_reasons_do_not_depend_on_the_thread_count(trained_project: TrainedProject, features) -> None:
    # The API predicts with one thread per CPU (CRMSCORE_PREDICTION_THREADS), training with one.
    settings = TrainingSettings(project_dir=trained_project.root, tracking_uri=trained_project.env["CRMSCORE_TRACKING_URI"])
    one, several = load_model_set(settings, threads=1), load_model_set(settings, threads=3)
    rows = features.iloc[:200]
    compared = 0
    for name, model in one.models.items():
        if model.predict_with_reasons is None:
            continue
        probability, reasons = model.predict_with_reasons(rows, 3)
        other_probability, other_reasons = several.models[name].predict_with_reasons(rows, 3)
        np.testing.assert_array_equal(probability, other_probability)
        assert reasons == other_reasons
        compared += 1
    assert compared >= 2  # lead scoring and churn


def test_a_batch_runs_versions_load_by_number_and_a_missing_one_says_what_to_run(trained_project: TrainedProject, models: ModelSet) -> None:
    """The API loads the versions a batch run recorded, not the champion alias (`served_run`)."""
    from serving.models import ModelLoadError

    settings = TrainingSettings(project_dir=trained_project.root, tracking_uri=trained_project.env["CRMSCORE_TRACKING_URI"])
    by_number = load_model_set(settings, versions={"churn_propensity": models.versions["churn_propensity"]})
    assert by_number.versions == {"churn_propensity": models.versions["churn_propensity"]}

    with pytest.raises(ModelLoadError, match=r"churn_propensity has no version 99 any more: it scored the latest batch run; run `crm-scoring score`"):
        load_model_set(settings, versions={"churn_propensity": "99"})
