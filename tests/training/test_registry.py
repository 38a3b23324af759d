"""The registry: the promotion gate, force, rollback, listing and loading the champion.

Three churn_propensity candidates are logged once per module: `mid` (a LightGBM on x1),
`worse` (on pure noise) and `better` (on x1 and x2). Each test starts from "no champion"
(`reset`) so the tests do not depend on their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.training.fake_results import FEATURES, classifier_result, ltv_result, temp_store
from training.config import TrainingSettings
from training.results import TrainingResult

pytestmark = [
    # MLflow 3.17 on pandas 3 / SQLAlchemy 2: harmless deprecations inside MLflow.
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

NAME = "churn_propensity"


@dataclass(frozen=True)
class Logged:
    result: TrainingResult
    version: str


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> TrainingSettings:
    return temp_store(tmp_path_factory.mktemp("registry-project"))


@pytest.fixture(scope="module")
def churn(settings: TrainingSettings) -> dict[str, Logged]:
    from training.tracking import log_training_result

    logged = {}
    for key, columns, seed in (("mid", ["x1"], 10), ("worse", ["noise"], 11), ("better", ["x1", "x2"], 12)):
        result = classifier_result(columns, seed=seed)
        logged[key] = Logged(result, log_training_result(result, settings)[1])
    return logged


def reset(settings: TrainingSettings, name: str = NAME) -> None:
    """No champion, no history: the state right after the first registrations."""
    from training.registry import CHAMPION, HISTORY_TAG, PREVIOUS_CHAMPION
    from training.tracking import client

    c = client(settings)
    for alias in (CHAMPION, PREVIOUS_CHAMPION):
        if alias in (c.get_registered_model(name).aliases or {}):
            c.delete_registered_model_alias(name, alias)
    if HISTORY_TAG in (c.get_registered_model(name).tags or {}):
        c.delete_registered_model_tag(name, HISTORY_TAG)


def state(settings: TrainingSettings, name: str = NAME) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, str]]]:
    """Aliases, registered-model tags and every version's tags: what a failed gate must leave alone."""
    from training.tracking import client

    c = client(settings)
    model = c.get_registered_model(name)
    versions = {str(mv.version): dict(mv.tags) for mv in c.search_model_versions(f"name = '{name}'")}
    return {k: str(v) for k, v in model.aliases.items()}, dict(model.tags), versions


def champion(settings: TrainingSettings, name: str = NAME) -> str | None:
    from training.tracking import client

    version = client(settings).get_registered_model(name).aliases.get("champion")
    return None if version is None else str(version)


def test_first_candidate_becomes_champion(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    decision = promote(NAME, churn["mid"].version, settings=settings)
    assert decision.promoted and "no champion yet" in decision.reason
    assert champion(settings) == churn["mid"].version


def test_worse_candidate_leaves_every_alias_unchanged(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    promote(NAME, churn["better"].version, settings=settings)
    promote(NAME, churn["mid"].version, force=True, settings=settings)  # champion mid, previous better
    before = state(settings)
    worse = churn["worse"]
    decision = promote(NAME, worse.version, settings=settings, validation=worse.result.validation)
    assert not decision.promoted
    assert state(settings) == before  # aliases, history and version tags untouched
    assert decision.champion_version == churn["mid"].version
    assert decision.candidate_value < decision.champion_value - settings.promotion_tolerance_auc
    # The reason carries the numbers, in one line.
    assert f"{decision.candidate_value:.4f}" in decision.reason and f"{decision.champion_value:.4f}" in decision.reason
    assert decision.reason.startswith("gate failed: val_roc_auc") and "\n" not in decision.reason
    assert decision.rows_scored == len(worse.result.validation)


def test_better_candidate_moves_champion_on_its_stored_validation_rows(
    settings: TrainingSettings, churn: dict[str, Logged]
) -> None:
    from training.registry import HISTORY_TAG, promote

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    # No in-memory frame: the gate reads the candidate's validation parquet from its run (as the CLI does).
    decision = promote(NAME, churn["better"].version, settings=settings)
    assert decision.promoted and decision.reason.startswith("gate passed")
    assert decision.candidate_value > decision.champion_value
    aliases, tags, versions = state(settings)
    assert aliases == {"champion": churn["better"].version, "previous_champion": churn["mid"].version}
    assert tags[HISTORY_TAG] == f"{churn['mid'].version},{churn['better'].version}"
    assert "crm.promoted_at" in versions[churn["better"].version]


def test_force_moves_champion_past_the_gate(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    promote(NAME, churn["better"].version, settings=settings)
    decision = promote(NAME, churn["worse"].version, force=True, settings=settings)
    assert decision.promoted and decision.forced
    assert champion(settings) == churn["worse"].version


def test_tolerance_lets_a_slightly_worse_candidate_through(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    promote(NAME, churn["better"].version, settings=settings)
    lenient = settings.model_copy(update={"promotion_tolerance_auc": 0.2})
    decision = promote(NAME, churn["mid"].version, settings=lenient)
    assert decision.promoted and decision.candidate_value < decision.champion_value
    assert champion(settings) == churn["mid"].version


def test_rollback_restores_the_previous_champion_step_by_step(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import RegistryError, promote, rollback

    mid, better, worse = (churn[k].version for k in ("mid", "better", "worse"))
    reset(settings)
    promote(NAME, mid, settings=settings)
    promote(NAME, better, settings=settings)
    promote(NAME, worse, force=True, settings=settings)
    first = rollback(NAME, settings)
    assert (first.from_version, first.to_version) == (worse, better)
    assert state(settings)[0] == {"champion": better, "previous_champion": mid}
    second = rollback(NAME, settings)
    assert (second.from_version, second.to_version) == (better, mid)
    aliases, tags, versions = state(settings)
    assert aliases == {"champion": mid}
    assert tags["crm.champion_history"] == mid
    assert "crm.rolled_back_at" in versions[worse] and "crm.rolled_back_at" in versions[better]
    with pytest.raises(RegistryError, match=f"no previous champion to roll back to \\(v{mid} is the only one promoted\\)"):
        rollback(NAME, settings)
    assert champion(settings) == mid


def test_rollback_after_one_promotion(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote, rollback

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    promote(NAME, churn["better"].version, settings=settings)
    result = rollback(NAME, settings)
    assert (result.from_version, result.to_version) == (churn["better"].version, churn["mid"].version)
    assert champion(settings) == churn["mid"].version


def test_champion_pyfunc_returns_the_in_process_probabilities(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    import mlflow

    from training.registry import load_champion, promote

    reset(settings)
    better = churn["better"]
    promote(NAME, better.version, settings=settings)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    features = better.result.validation[FEATURES]
    in_process = better.result.model.predict_frame(features)["probability"].to_numpy()
    np.testing.assert_allclose(served.predict(features)["probability"].to_numpy(), in_process, rtol=0, atol=1e-9)
    loaded = load_champion(NAME, settings)
    assert loaded.version == better.version and loaded.as_of == "2025-07-01 00:00:00"
    assert loaded.metrics["val_roc_auc"] == pytest.approx(better.result.metrics["val_roc_auc"])
    np.testing.assert_allclose(loaded.predict(features)["probability"].to_numpy(), in_process, rtol=0, atol=1e-9)


def test_ltv_gate_uses_relative_mae_tolerance(settings: TrainingSettings) -> None:
    from training.registry import promote
    from training.tracking import log_training_result

    exact, off = ltv_result(1.0, seed=1), ltv_result(1.03, seed=1)
    v_exact = log_training_result(exact, settings)[1]
    v_off = log_training_result(off, settings)[1]
    promote("customer_ltv", v_exact, settings=settings)
    strict = settings.model_copy(update={"promotion_tolerance_mae_relative": 0.0})
    refused = promote("customer_ltv", v_off, settings=strict)
    assert not refused.promoted and refused.metric == "holdout_mae_purchases" and refused.greater_is_better is False
    assert refused.candidate_value > refused.champion_value
    assert "may be at most 0.0% above" in refused.reason
    lenient = settings.model_copy(update={"promotion_tolerance_mae_relative": 0.5})
    assert promote("customer_ltv", v_off, settings=lenient).promoted


def test_unscorable_champion_fails_the_gate_and_names_force(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote
    from training.tracking import log_training_result

    reset(settings)
    # A champion that needs a feature the candidate's validation rows do not have (a changed feature set).
    wide = classifier_result(["x1"], seed=13)
    wide.validation["x3"] = wide.validation["x2"]
    wide.feature_columns = [*FEATURES, "x3"]
    promote(NAME, log_training_result(wide, settings)[1], settings=settings)
    before = state(settings)
    decision = promote(NAME, churn["mid"].version, settings=settings)
    assert not decision.promoted and "cannot be scored" in decision.reason and "--force" in decision.reason
    assert "x3" in decision.reason
    assert state(settings) == before


def test_unknown_model_version_and_missing_champion(settings: TrainingSettings, churn: dict[str, Logged], tmp_path: Path) -> None:
    from training.registry import ModelNotFoundError, load_champion, promote, rollback

    with pytest.raises(ModelNotFoundError, match=r"churn_propensity has no version 999 \(versions: 1, 2, 3"):
        promote(NAME, "999", settings=settings)
    with pytest.raises(ModelNotFoundError, match="unknown model 'churn'"):
        promote("churn", "1", settings=settings)
    reset(settings)
    with pytest.raises(ModelNotFoundError, match="has no champion"):
        load_champion(NAME, settings)
    with pytest.raises(ModelNotFoundError, match="has no champion to roll back"):
        rollback(NAME, settings)
    with pytest.raises(ModelNotFoundError, match="lead_scoring is not registered yet"):
        rollback("lead_scoring", settings)
    empty = temp_store(tmp_path, create=False)
    with pytest.raises(ModelNotFoundError, match="no MLflow store at"):
        promote(NAME, "1", settings=empty)
    assert not (tmp_path / "mlruns").exists()  # looking did not create a store


def test_list_models(settings: TrainingSettings, churn: dict[str, Logged], tmp_path: Path) -> None:
    from training.registry import champions, list_models, metrics_table, promote

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    infos = [i for i in list_models(settings) if i.name == NAME]
    listed = [i.version for i in infos]
    assert listed == sorted(listed, key=int, reverse=True)  # newest first
    assert {logged.version for logged in churn.values()} <= set(listed)
    mid = next(i for i in infos if i.version == churn["mid"].version)
    assert mid.aliases == ("champion",) and mid.is_champion
    assert mid.as_of == "2025-07-01 00:00:00" and mid.horizon_days == 90
    assert mid.primary_metric == "val_roc_auc"
    assert mid.primary_value == pytest.approx(churn["mid"].result.metrics["val_roc_auc"])
    assert mid.baselines() == {"recency": 0.6, "bgnbd": 0.65}
    assert mid.best_baseline() == ("bgnbd", 0.65)
    table = metrics_table([c for c in champions(settings) if c.name == NAME])
    assert table.loc["val_roc_auc", f"{NAME} v{mid.version}"] == pytest.approx(mid.primary_value)
    assert list_models(temp_store(tmp_path, create=False)) == []


def test_promoting_the_champion_again_changes_nothing(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    before = state(settings)
    again = promote(NAME, churn["mid"].version, settings=settings)
    assert again.promoted and "already the champion" in again.reason
    assert state(settings) == before


def test_gate_metric_follows_the_primary_metric_name() -> None:
    from training.registry import RegistryError, _metric_function

    column, mae = _metric_function("holdout_mae_purchases", "customer_ltv")
    assert column == "expected_purchases" and mae(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 1.0
    column, auc = _metric_function("val_roc_auc", "churn_propensity")
    assert column == "probability" and auc(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0
    assert _metric_function("val_brier", "lead_scoring")[0] == "probability"
    with pytest.raises(RegistryError, match="cannot compute the primary metric 'holdout_mae_revenue'"):
        _metric_function("holdout_mae_revenue", "customer_ltv")
    with pytest.raises(RegistryError, match="cannot compute"):
        _metric_function("val_f1", "churn_propensity")


def test_gate_scores_the_candidate_on_its_out_of_time_predictions(
    settings: TrainingSettings, churn: dict[str, Logged]
) -> None:
    """The served candidate is refit on the validation labels; the gate must use the
    out-of-time predictions stored with the validation rows, not rescore the refit model."""
    from training.registry import promote
    from training.results import OOT_PREDICTION

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    better = churn["better"]
    rows = better.result.validation.copy()
    rng = np.random.default_rng(0)
    rows[OOT_PREDICTION] = rng.random(len(rows))  # what the model knew before the window: nothing
    decision = promote(NAME, better.version, settings=settings, validation=rows)
    assert not decision.promoted
    assert decision.candidate_value == pytest.approx(0.5, abs=0.1)
    rows[OOT_PREDICTION] = rows["label"].astype(float)  # a perfect out-of-time ranking
    assert promote(NAME, better.version, settings=settings, validation=rows).promoted
