"""The registry: the promotion gate, force, rollback, listing and loading the champion.

Three churn_propensity candidates are logged once per module: `mid` (a LightGBM on x1),
`worse` (on pure noise) and `better` (on x1 and x2), all above their logged baselines (0.65),
all as of AS_OF; `old_mid` is `mid` trained one horizon earlier, a champion that can be
scored out of time on the others' validation rows (the others, as of the same date as the
candidate, are compared by their logged out-of-time values);
for the baseline floor, `better` is logged again with stronger baselines (`floor_cases`).
Each test starts from "no champion" (`reset`) so the tests do not depend on their order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from tests.training.fake_results import FEATURES, VALIDATION_AS_OF, classifier_result, ltv_result, temp_store
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
    old = classifier_result(["x1"], seed=10, as_of=VALIDATION_AS_OF)
    logged["old_mid"] = Logged(old, log_training_result(old, settings)[1])
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
    # The champion was trained as of the same date, on the labels of the candidate's validation
    # window: each run's logged out-of-time value is compared, not predictions on those rows.
    assert decision.rows_scored == 0 and "logged out-of-time values" in decision.reason
    assert (decision.candidate_value, decision.champion_value) == (
        worse.result.metrics["val_roc_auc"], churn["mid"].result.metrics["val_roc_auc"],
    )


def test_a_retrained_identical_model_passes_the_gate(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    """The same data and as_of give the same model: it must not be refused against itself
    (the champion's served model, refit later, would score higher on the candidate's rows)."""
    from training.registry import promote
    from training.tracking import log_training_result

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    again = classifier_result(["x1"], seed=10)
    decision = promote(NAME, log_training_result(again, settings)[1], settings=settings, validation=again.validation)
    assert decision.promoted and decision.candidate_value == decision.champion_value


def test_an_older_champion_is_scored_on_the_candidates_validation_rows(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    promote(NAME, churn["old_mid"].version, settings=settings)
    worse = churn["worse"]
    refused = promote(NAME, worse.version, settings=settings, validation=worse.result.validation)
    assert not refused.promoted and refused.rows_scored == len(worse.result.validation)
    assert refused.candidate_value < refused.champion_value and "on 600 validation rows" in refused.reason
    # A null in an integer feature (declared `long` in the logged signature): the champion is
    # scored as serving scores it, not refused by MLflow's schema enforcement.
    with_null = worse.result.validation.astype({"orders_count": "Int64"})
    with_null.loc[::50, "orders_count"] = None
    assert promote(NAME, worse.version, settings=settings, validation=with_null).rows_scored == len(with_null)


def test_better_candidate_moves_champion_on_its_stored_validation_rows(
    settings: TrainingSettings, churn: dict[str, Logged]
) -> None:
    from training.registry import HISTORY_TAG, promote

    reset(settings)
    promote(NAME, churn["old_mid"].version, settings=settings)
    # No in-memory frame: the gate reads the candidate's validation parquet from its run (as the CLI does).
    decision = promote(NAME, churn["better"].version, settings=settings)
    assert decision.promoted and decision.reason.startswith("gate passed")
    assert decision.rows_scored == len(churn["better"].result.validation)
    assert decision.candidate_value > decision.champion_value
    aliases, tags, versions = state(settings)
    assert aliases == {"champion": churn["better"].version, "previous_champion": churn["old_mid"].version}
    assert tags[HISTORY_TAG] == f"{churn['old_mid'].version},{churn['better'].version}"
    assert "crm.promoted_at" in versions[churn["better"].version]


def test_force_moves_champion_past_the_gate(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    promote(NAME, churn["better"].version, settings=settings)
    decision = promote(NAME, churn["worse"].version, force=True, settings=settings)
    assert decision.promoted and decision.forced
    assert champion(settings) == churn["worse"].version


def test_a_candidate_in_another_currency_needs_force(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from dataclasses import replace

    from training.registry import promote
    from training.tracking import log_training_result

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    in_euros = replace(churn["better"].result, currency="EUR")
    version = log_training_result(in_euros, settings)[1]
    before = state(settings)

    refused = promote(NAME, version, settings=settings)

    assert not refused.promoted and state(settings) == before
    assert refused.reason == (
        f"v{version} learned from amounts in EUR, champion v{churn['mid'].version} in USD: the gate cannot compare them; "
        f"when the profile changed currency: crm-scoring models promote {NAME} {version} --force"
    )
    assert promote(NAME, version, force=True, settings=settings).promoted


def test_tolerance_lets_a_slightly_worse_candidate_through(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote

    reset(settings)
    promote(NAME, churn["better"].version, settings=settings)
    lenient = settings.model_copy(update={"promotion_tolerance_auc": 0.2})
    decision = promote(NAME, churn["mid"].version, settings=lenient)
    assert decision.promoted and decision.candidate_value < decision.champion_value
    assert champion(settings) == churn["mid"].version


def test_rollback_past_a_deleted_version_moves_only_when_it_can(tmp_path: Path) -> None:
    """A version deleted in the UI is skipped wherever it is in the history: the rollback
    neither fails half-way (champion moved, error reported) nor lets a retry re-promote the
    version being rolled back."""
    from training.registry import RegistryError, promote, rollback
    from training.tracking import client, log_training_result

    settings = temp_store(tmp_path)
    v1, v2, v3 = (log_training_result(classifier_result(["x1"], seed=s), settings)[1] for s in (20, 21, 22))
    for version in (v1, v2, v3):
        promote(NAME, version, force=True, settings=settings)
    client(settings).delete_model_version(NAME, v1)

    result = rollback(NAME, settings)

    assert (result.from_version, result.to_version) == (v3, v2)
    aliases, tags, _ = state(settings)
    assert aliases == {"champion": v2} and tags["crm.champion_history"] == v2
    with pytest.raises(RegistryError, match="no earlier champion to roll back to"):
        rollback(NAME, settings)
    assert state(settings)[0] == {"champion": v2}


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
    with pytest.raises(RegistryError, match=f"no earlier champion to roll back to \\(v{mid} is the first in its promotion history\\)"):
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
    assert loaded.currency == "USD"  # what `score` compares with the profile's
    assert loaded.feature_version == 2  # what serving compares with the code's feature definitions
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


def test_ltv_champion_is_judged_over_the_candidates_holdout_horizon(settings: TrainingSettings) -> None:
    """The served customer_ltv forecasts a year; the holdout is the run's horizon (90 days):
    judged over a year, any champion would look far worse than it is."""
    from training.ltv import CustomerLtvModel, simulate_bgnbd
    from training.registry import promote
    from training.tracking import log_training_result
    from training.train import LtvServingModel

    rows = simulate_bgnbd(500, seed=5)
    rows["holdout_purchases"] = np.random.default_rng(5).poisson(rows["frequency"].to_numpy() * 0.3)
    candidate = replace(ltv_result(1.0, seed=3), validation=rows)
    fitted = CustomerLtvModel(horizon_days=365).fit(simulate_bgnbd(2_000, seed=4))
    champion_result = replace(
        ltv_result(1.0, seed=4), model=LtvServingModel(fitted), validation=rows, as_of=VALIDATION_AS_OF, data_fingerprint="sha256:fake-ltv-old"
    )
    promote("customer_ltv", log_training_result(champion_result, settings)[1], settings=settings, force=True)
    decision = promote("customer_ltv", log_training_result(candidate, settings)[1], settings=settings, validation=candidate.validation)

    over_90_days = fitted.expected_purchases(rows, t_days=90).to_numpy()
    expected = float(np.mean(np.abs(over_90_days - rows["holdout_purchases"].to_numpy())))
    assert decision.champion_value == pytest.approx(expected, rel=1e-9)
    assert decision.rows_scored == len(rows)


def test_unscorable_champion_fails_the_gate_and_names_force(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import promote
    from training.tracking import log_training_result

    reset(settings)
    # A champion that needs a feature the candidate's validation rows do not have (a changed feature set).
    wide = classifier_result(["x1"], seed=13, as_of=VALIDATION_AS_OF)
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
    promote(NAME, churn["old_mid"].version, settings=settings)
    better = churn["better"]
    rows = better.result.validation.copy()
    rng = np.random.default_rng(0)
    rows[OOT_PREDICTION] = rng.random(len(rows))  # what the model knew before the window: nothing
    decision = promote(NAME, better.version, settings=settings, validation=rows)
    assert not decision.promoted
    assert decision.candidate_value == pytest.approx(0.5, abs=0.1)
    rows[OOT_PREDICTION] = rows["label"].astype(float)  # a perfect out-of-time ranking
    assert promote(NAME, better.version, settings=settings, validation=rows).promoted


def test_ranking_metrics_compare_the_served_classifiers(settings: TrainingSettings) -> None:
    """AUC depends on the ranking only, which the served candidate's calibration on the
    validation labels does not change: served margins against served margins. Its validation
    model (the out-of-time predictions), trained a window earlier, would start behind."""
    from sklearn.metrics import roc_auc_score

    from tests.training.fake_results import RankingTinyClassifier
    from training.registry import promote
    from training.results import OOT_PREDICTION
    from training.tracking import log_training_result

    def ranking(result: TrainingResult) -> TrainingResult:
        model = RankingTinyClassifier(result.model.columns, result.model.booster)
        return replace(result, model=model)

    reset(settings)
    old = ranking(classifier_result(["x1"], seed=30, as_of=VALIDATION_AS_OF))
    promote(NAME, log_training_result(old, settings)[1], settings=settings)
    candidate = ranking(classifier_result(["x1", "x2"], seed=31))
    version = log_training_result(candidate, settings)[1]
    rows = candidate.validation.copy()
    rows[OOT_PREDICTION] = np.random.default_rng(0).random(len(rows))  # a validation model that knew nothing

    decision = promote(NAME, version, settings=settings, validation=rows)

    served = candidate.model.decision_function(rows)
    assert decision.candidate_value == pytest.approx(roc_auc_score(rows["label"], served), abs=1e-12)
    assert decision.champion_value == pytest.approx(roc_auc_score(rows["label"], old.model.decision_function(rows)), abs=1e-12)
    assert decision.promoted and decision.rows_scored == len(rows)


def test_logged_values_over_different_horizons_are_not_compared(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    """A holdout MAE grows with the window and an AUC changes meaning with the horizon: a
    champion that saw the candidate's window and was validated over another horizon cannot
    be compared with it."""
    from training.registry import promote
    from training.tracking import log_training_result

    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    longer = replace(classifier_result(["x1", "x2"], seed=40), horizon_days=180)
    version = log_training_result(longer, settings)[1]
    before = state(settings)

    decision = promote(NAME, version, settings=settings)

    assert not decision.promoted and state(settings) == before
    assert "(180 days) and champion" in decision.reason and "(90 days) were validated over different horizons" in decision.reason
    assert "--force" in decision.reason


def test_other_feature_definitions_are_not_compared(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    """A champion of feature definitions this code no longer computes cannot be compared on the
    candidate's rows nor served: a current candidate replaces it (above its baseline floor);
    a candidate of outdated definitions is refused."""
    from features.pipeline import FEATURE_DEFINITIONS_VERSION
    from training.registry import promote
    from training.tracking import log_training_result

    current = FEATURE_DEFINITIONS_VERSION
    reset(settings)
    outdated = log_training_result(replace(classifier_result(["x1", "x2"], seed=41), feature_version=current - 1), settings)[1]
    first = promote(NAME, outdated, settings=settings)
    assert not first.promoted and champion(settings) is None  # not even as the first champion
    promote(NAME, outdated, settings=settings, force=True)  # say, the champion before an upgrade
    weaker = log_training_result(replace(classifier_result(["x1"], seed=42), feature_version=current), settings)[1]

    replaced = promote(NAME, weaker, settings=settings)

    assert replaced.promoted and champion(settings) == weaker
    assert f"trained with feature definitions {current - 1}, not those this version of crm-scoring computes ({current})" in replaced.reason
    assert "best baseline" in replaced.reason  # the floor still applies
    refused = promote(NAME, outdated, settings=settings)
    assert not refused.promoted and champion(settings) == weaker
    assert refused.reason.startswith(f"v{outdated} was trained with feature definitions {current - 1}; this version")

    # Models logged before the version was recorded were trained with older definitions.
    untagged = log_training_result(replace(classifier_result(["x1", "x2"], seed=44), feature_version=None), settings)[1]
    refused = promote(NAME, untagged, settings=settings)
    assert not refused.promoted and "feature definitions it did not record" in refused.reason
    reset(settings)
    promote(NAME, untagged, settings=settings, force=True)
    replaced = promote(NAME, weaker, settings=settings)
    assert replaced.promoted and "feature definitions it did not record (older ones)" in replaced.reason


def test_a_malformed_as_of_tag_is_named(settings: TrainingSettings, churn: dict[str, Logged]) -> None:
    from training.registry import RegistryError, promote
    from training.tracking import TAG_AS_OF, client, log_training_result

    reset(settings)
    odd = log_training_result(classifier_result(["x1"], seed=43), settings)[1]
    promote(NAME, odd, settings=settings)
    client(settings).set_model_version_tag(NAME, odd, TAG_AS_OF, "unknown")
    with pytest.raises(RegistryError, match=rf"churn_propensity v{odd}'s crm.as_of tag 'unknown' is not a timestamp.*--force"):
        promote(NAME, churn["better"].version, settings=settings)


# ---- the baseline floor ----------------------------------------------------------------


def with_baselines(result: TrainingResult, metric: str = "val_roc_auc", **baselines: float) -> TrainingResult:
    """The same result with other logged baselines (`baseline_<name>_<metric>`) on its primary metric."""
    metrics = {k: v for k, v in result.metrics.items() if not k.startswith("baseline_")}
    metrics.update({f"baseline_{name}_{metric}": value for name, value in baselines.items()})
    return replace(result, metrics=metrics)


@pytest.fixture(scope="module")
def floor_cases(settings: TrainingSettings, churn: dict[str, Logged]) -> dict[str, Logged]:
    """The strong `better` model logged again with stronger baselines: `below` its best baseline
    beyond the tolerance (0.05 AUC), `within` it (half the tolerance)."""
    from training.tracking import log_training_result

    strong = churn["better"].result
    auc = strong.metrics["val_roc_auc"]
    half = settings.promotion_tolerance_auc / 2
    logged = {}
    for key, best in (("below", auc + 0.05), ("within", auc + half)):
        result = with_baselines(strong, recency=auc - 0.1, bgnbd=best)
        logged[key] = Logged(result, log_training_result(result, settings)[1])
    return logged


def test_first_candidate_below_its_best_baseline_is_refused(
    settings: TrainingSettings, floor_cases: dict[str, Logged]
) -> None:
    from training.registry import promote

    reset(settings)
    before = state(settings)
    below = floor_cases["below"]
    auc, best = below.result.metrics["val_roc_auc"], below.result.metrics["baseline_bgnbd_val_roc_auc"]
    decision = promote(NAME, below.version, settings=settings, validation=below.result.validation)
    assert not decision.promoted and not decision.forced
    assert champion(settings) is None and state(settings) == before  # no alias, history or tag written
    assert (decision.metric, decision.baseline_name) == ("val_roc_auc", "bgnbd")
    assert decision.candidate_value == pytest.approx(auc) and decision.baseline_value == pytest.approx(best)
    assert decision.champion_version is None and decision.tolerance == settings.promotion_tolerance_auc
    # The message names the model, the metric, both numbers, the baseline, and the override.
    reason = decision.reason
    assert reason.startswith(f"below the baseline floor: {NAME} v{below.version} val_roc_auc {auc:.4f} ")
    assert f"best baseline bgnbd {best:.4f}" in reason and "may be at most 0.005 below" in reason
    assert "no champion yet" in reason and f"crm-scoring models promote {NAME} {below.version} --force" in reason
    assert "\n" not in reason
    assert decision.summary().startswith(f"{NAME} v{below.version} not promoted: below the baseline floor")


def test_challenger_below_its_best_baseline_is_refused_even_when_it_beats_the_champion(
    settings: TrainingSettings, churn: dict[str, Logged], floor_cases: dict[str, Logged]
) -> None:
    from training.registry import promote

    reset(settings)
    mid = churn["old_mid"].version
    assert promote(NAME, mid, settings=settings).promoted  # above its own baselines (0.65)
    before = state(settings)
    below = floor_cases["below"]
    # No in-memory frame: the stored validation rows and the run's logged metrics, as `models promote` does.
    decision = promote(NAME, below.version, settings=settings)
    assert not decision.promoted and state(settings) == before
    assert decision.champion_version == mid and decision.candidate_value > decision.champion_value  # beats the champion
    assert decision.rows_scored == len(below.result.validation)
    assert decision.reason.startswith("below the baseline floor:")
    assert f"champion v{mid} is kept" in decision.reason and "--force" in decision.reason
    assert f"{below.result.metrics['baseline_bgnbd_val_roc_auc']:.4f}" in decision.reason


def test_candidate_within_tolerance_of_its_best_baseline_is_promoted(
    settings: TrainingSettings, churn: dict[str, Logged], floor_cases: dict[str, Logged]
) -> None:
    from training.registry import promote

    within = floor_cases["within"]
    auc, best = within.result.metrics["val_roc_auc"], within.result.metrics["baseline_bgnbd_val_roc_auc"]
    assert auc < best < auc + settings.promotion_tolerance_auc
    reset(settings)
    first = promote(NAME, within.version, settings=settings, validation=within.result.validation)
    assert first.promoted and first.reason.startswith("no champion yet: the first candidate becomes champion; val_roc_auc")
    assert f"val_roc_auc {auc:.4f} vs best baseline bgnbd {best:.4f}" in first.reason
    assert (first.baseline_name, first.baseline_value) == ("bgnbd", pytest.approx(best))
    assert champion(settings) == within.version
    # As a challenger too: not worse than the champion, within tolerance of its baseline.
    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    challenger = promote(NAME, within.version, settings=settings)
    assert challenger.promoted and challenger.reason.startswith("gate passed")
    assert f"best baseline bgnbd {best:.4f}" in challenger.reason
    assert champion(settings) == within.version


def test_force_promotes_a_candidate_below_its_best_baseline(
    settings: TrainingSettings, churn: dict[str, Logged], floor_cases: dict[str, Logged]
) -> None:
    from training.registry import HISTORY_TAG, promote

    below = floor_cases["below"].version
    reset(settings)
    first = promote(NAME, below, force=True, settings=settings)
    assert first.promoted and first.forced and first.reason == "forced as the first champion (gate skipped)"
    assert champion(settings) == below
    reset(settings)
    promote(NAME, churn["mid"].version, settings=settings)
    over = promote(NAME, below, force=True, settings=settings)
    assert over.promoted and over.forced and over.reason.startswith(f"forced over champion v{churn['mid'].version}")
    aliases, tags, _ = state(settings)
    assert aliases == {"champion": below, "previous_champion": churn["mid"].version}
    assert tags[HISTORY_TAG] == f"{churn['mid'].version},{below}"


def test_ltv_floor_uses_the_run_rate_baseline_and_the_relative_tolerance(settings: TrainingSettings) -> None:
    from training.registry import promote
    from training.tracking import log_training_result

    result = ltv_result(1.0, seed=2)
    mae = result.metrics["holdout_mae_purchases"]
    # The model's MAE is 5 % above the run-rate forecast's: beyond the default 2 %.
    worse = with_baselines(result, "holdout_mae_purchases", run_rate=mae / 1.05)
    version = log_training_result(worse, settings)[1]
    reset(settings, "customer_ltv")
    refused = promote("customer_ltv", version, settings=settings, validation=worse.validation)
    assert not refused.promoted and champion(settings, "customer_ltv") is None
    assert (refused.metric, refused.greater_is_better, refused.baseline_name) == ("holdout_mae_purchases", False, "run_rate")
    assert f"holdout_mae_purchases {mae:.4f} vs best baseline run_rate {mae / 1.05:.4f}" in refused.reason
    assert "may be at most 2.0% above" in refused.reason and "--force" in refused.reason
    lenient = settings.model_copy(update={"promotion_tolerance_mae_relative": 0.1})
    assert promote("customer_ltv", version, settings=lenient).promoted


def test_baseline_floor_picks_the_best_finite_baseline() -> None:
    from training.registry import baseline_floor

    settings = TrainingSettings(promotion_tolerance_auc=0.005, promotion_tolerance_mae_relative=0.02)
    metrics = {
        "val_roc_auc": 0.70,
        "baseline_recency_val_roc_auc": 0.72,
        "baseline_bgnbd_val_roc_auc": 0.74,
        "baseline_broken_val_roc_auc": float("nan"),  # e.g. a baseline that could not be computed
        "baseline_bgnbd_val_pr_auc": 0.99,  # another metric: not compared
    }
    floor = baseline_floor(metrics, "val_roc_auc", True, settings)
    assert floor is not None and not floor.passed
    assert (floor.baseline_name, floor.baseline_value, floor.candidate_value) == ("bgnbd", 0.74, 0.70)
    assert baseline_floor({**metrics, "val_roc_auc": 0.7351}, "val_roc_auc", True, settings).passed
    # Lower is better: the smallest error is the best baseline; the tolerance is relative.
    ltv = {"holdout_mae_purchases": 1.01, "baseline_run_rate_holdout_mae_purchases": 1.0, "baseline_zero_holdout_mae_purchases": 2.0}
    ltv_floor = baseline_floor(ltv, "holdout_mae_purchases", False, settings)
    assert ltv_floor is not None and ltv_floor.passed and ltv_floor.baseline_name == "run_rate"
    assert not baseline_floor({**ltv, "holdout_mae_purchases": 1.03}, "holdout_mae_purchases", False, settings).passed
    # No floor without a finite primary metric or baseline (runs logged before baselines existed).
    assert baseline_floor({"val_roc_auc": 0.5}, "val_roc_auc", True, settings) is None
    assert baseline_floor({"baseline_bgnbd_val_roc_auc": 0.7, "val_roc_auc": float("nan")}, "val_roc_auc", True, settings) is None
