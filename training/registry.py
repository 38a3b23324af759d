"""The model registry: champion aliases, the promotion gate, rollback, listing, loading.

Aliases only, never stages. Per registered model (lead_scoring, churn_propensity,
customer_ltv):

* `champion` is the version serving uses (`models:/<name>@champion`);
* `previous_champion` is the champion before it (for people looking at the MLflow UI);
* the registered-model tag `crm.champion_history` keeps every promotion in order
  (e.g. "1,3,4"), so `rollback` can go back more than one step: it drops the last entry and
  moves `champion` to the one before. A rolled-back version gets the tag `crm.rolled_back_at`;
  promoted versions get `crm.promoted_at` and `crm.promotion_reason`.

The gate (`promote`) compares the candidate with the champion on the candidate's primary
metric and moves the alias only when the candidate is not worse beyond the configured
tolerance (see `training.config`), or with `force`. When the gate fails, no alias or tag
changes, and the decision says why, with the numbers. What is compared must be out of time
for both:

* a champion trained on data before the candidate's validation cut-off is scored with the
  candidate on the candidate's validation rows (the parquet logged with the candidate's run,
  or the in-memory frame right after training). Ranking metrics (AUC) compare the two
  served classifiers' raw margins: each LightGBM learned from labels before those rows' cut-off
  (the candidate's calibration saw their labels; the margins are what it ranks by before
  calibration: Platt scaling keeps that order, isotonic calibration may tie a few scores).
  Other metrics use the candidate's out-of-time predictions (the model fitted before the
  window); customer_ltv's expected purchases are taken over the candidate's holdout horizon;
* a champion trained on data at or after that cut-off (the same as_of, say) has seen those
  labels: each run's logged out-of-time value is compared instead, each on its own window,
  and only over the same horizon.

Feature definitions (`crm.feature_version`): a candidate of other definitions than this code
computes (or none recorded) is refused, even as the first champion, since serving would not
use it; a champion of other or unrecorded definitions cannot be compared on the candidate's
rows, so a current candidate replaces it when it passes its baseline floor.

The gate also has a floor that applies to every candidate, the first champion included: the
run's primary metric must not be worse than the best baseline the same run logged on that
metric (`baseline_<name>_<primary>`: the points rule for leads; recency, the no-purchase rule
and BG/NBD for churn; the run-rate forecast for LTV) beyond the same tolerance. A model that
does not beat a rule of thumb is not worth serving, whether or not a champion exists. Runs
without a finite primary metric or baseline (older runs) have no floor. `force` skips it too.

Metrics the gate can compute (chosen by the primary metric's name): `roc_auc`, `pr_auc` /
`average_precision`, `brier`, `log_loss` on the positive-class probability against the
`label` column (classifiers); `mae`, `rmse` on `expected_purchases` against
`holdout_purchases` (customer_ltv).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.errors import CrmScoringError
from training import tracking
from training.results import MODEL_NAMES, OOT_PREDICTION

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from training.config import TrainingSettings

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
HISTORY_TAG = "crm.champion_history"
TAG_PROMOTED_AT = "crm.promoted_at"
TAG_PROMOTION_REASON = "crm.promotion_reason"
TAG_ROLLED_BACK_AT = "crm.rolled_back_at"


class RegistryError(CrmScoringError):
    """A registry operation cannot be done (the message says why)."""


class ModelNotFoundError(RegistryError):
    """No such registered model, version or champion."""


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and why. `promoted` is True when `version` is the champion afterwards."""

    name: str
    version: str
    promoted: bool
    reason: str
    forced: bool = False
    metric: str | None = None
    greater_is_better: bool | None = None
    candidate_value: float | None = None
    champion_version: str | None = None
    champion_value: float | None = None
    tolerance: float | None = None
    rows_scored: int = 0
    baseline_name: str | None = None
    baseline_value: float | None = None

    def summary(self) -> str:
        verdict = "promoted" if self.promoted else "not promoted"
        return f"{self.name} v{self.version} {verdict}: {self.reason}"


@dataclass(frozen=True)
class RollbackResult:
    name: str
    from_version: str
    to_version: str


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version, as `models list` shows it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    as_of: str | None
    horizon_days: int | None
    primary_metric: str | None
    primary_value: float | None
    greater_is_better: bool = True
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: datetime | None = None
    #: The currency of the training profile's amounts (None: not recorded, or no order named one).
    currency: str | None = None
    #: The feature definitions version it was trained with (None: trained before it was recorded).
    feature_version: int | None = None

    @property
    def is_champion(self) -> bool:
        return CHAMPION in self.aliases

    def baselines(self) -> dict[str, float]:
        """Baselines' values of the primary metric (`baseline_<name>_<primary>`)."""
        from training.model_card import baseline_metrics

        return baseline_metrics(self.metrics, self.primary_metric) if self.primary_metric else {}

    def best_baseline(self) -> tuple[str, float] | None:
        """The strongest baseline on the primary metric (the one the model must beat: the gate's floor)."""
        if not self.primary_metric:
            return None
        return best_baseline(self.metrics, self.primary_metric, self.greater_is_better)


@dataclass
class ChampionModel:
    """The serving model of one name: the loaded pyfunc and what it was trained on."""

    name: str
    version: str
    run_id: str | None
    as_of: str | None
    horizon_days: int | None
    metrics: dict[str, float]
    model: Any  # mlflow.pyfunc.PyFuncModel
    currency: str | None = None  # of the training profile's amounts
    feature_version: int | None = None  # see ModelVersionInfo

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        return self.model.predict(features)


# --------------------------------------------------------------------------------------
# Store access
# --------------------------------------------------------------------------------------


def _client(settings: TrainingSettings) -> MlflowClient:
    """A client on an existing store; a missing local store is an error, not a new empty one."""
    uri = tracking.tracking_uri(settings)
    db = tracking.local_store_path(uri)
    if db is not None and not db.exists():
        raise ModelNotFoundError(f"no MLflow store at {db}: train a model first (crm-scoring train ...)")
    import mlflow

    # pyfunc.load_model("models:/...") resolves through the global registry URI.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return tracking.client(settings)


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ModelNotFoundError(f"unknown model {name!r}; registered models are {', '.join(MODEL_NAMES)}")


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _registered_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted(versions, key=lambda v: int(v.version))


def _model_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _is_missing(exc):
            raise RegistryError(f"{name} v{version}: {tracking.first_line(exc)}") from exc
    known = [str(v.version) for v in _registered_versions(client, name)]
    if not known:
        raise ModelNotFoundError(f"{name} has no registered version yet")
    raise ModelNotFoundError(f"{name} has no version {version} (versions: {', '.join(known)})")


def _champion_version(client: MlflowClient, name: str) -> str | None:
    # Read from the registered model's alias map: a missing alias is not an error there.
    version = (client.get_registered_model(name).aliases or {}).get(CHAMPION)
    return None if version is None else str(version)


def _history(client: MlflowClient, name: str, champion: str | None) -> list[str]:
    """Promotion history, reconciled with the alias (someone may have moved it in the UI)."""
    model = client.get_registered_model(name)
    text = (model.tags or {}).get(HISTORY_TAG, "")
    history = [v for v in text.split(",") if v.strip()]
    if champion is not None and (not history or history[-1] != champion):
        history.append(champion)
    return history


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------


def _metric_function(metric: str, model_name: str) -> tuple[str, Callable[[np.ndarray, np.ndarray], float]]:
    """(prediction column, metric(y_true, y_pred)) for a primary-metric name."""
    from sklearn import metrics as skm

    lowered = metric.lower()
    if model_name == "customer_ltv":
        # Revenue errors would need the holdout revenue and an undiscounted CLV: not a gate metric (yet).
        if "revenue" not in lowered and "clv" not in lowered:
            if "rmse" in lowered:
                return "expected_purchases", lambda y, p: float(np.sqrt(np.mean((y - p) ** 2)))
            if "mae" in lowered:
                return "expected_purchases", lambda y, p: float(np.mean(np.abs(y - p)))
    else:
        if "roc_auc" in lowered:
            return "probability", lambda y, p: float(skm.roc_auc_score(y, p))
        if "pr_auc" in lowered or "average_precision" in lowered:
            return "probability", lambda y, p: float(skm.average_precision_score(y, p))
        if "brier" in lowered:
            return "probability", lambda y, p: float(skm.brier_score_loss(y, p))
        if "log_loss" in lowered:
            return "probability", lambda y, p: float(skm.log_loss(y, p, labels=[0, 1]))
    raise RegistryError(f"{model_name}: the promotion gate cannot compute the primary metric {metric!r}")


def _predict(
    model: Any, validation: pd.DataFrame, column: str, horizon_days: float | None = None, strict_horizon: bool = False
) -> np.ndarray:
    """The model's `column` for each validation row, computed as serving does: through the
    wrapped model's `predict_frame` (MLflow's schema enforcement would refuse, say, a null in
    an integer attribute that the model itself handles). customer_ltv's expected purchases
    are over `horizon_days` (the candidate's holdout window), not the served CLV horizon; with
    `strict_horizon`, a model that cannot forecast over another horizon is an error."""
    wrapper = model.unwrap_python_model()
    missing = [n for n in wrapper.feature_columns if n not in validation.columns]
    if missing:
        # Named here: a KeyError would dump the whole frame.
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise RegistryError(f"the model needs column(s) the validation rows lack: {shown}")
    ltv = getattr(getattr(wrapper, "model", None), "model", None)  # LtvServingModel -> CustomerLtvModel
    if column == "expected_purchases" and horizon_days is not None and callable(getattr(ltv, "expected_purchases", None)):
        values = ltv.expected_purchases(validation[wrapper.feature_columns], t_days=horizon_days)
    elif column == "expected_purchases" and strict_horizon:
        raise RegistryError(f"it cannot forecast purchases over the candidate's {horizon_days:g}-day holdout window")
    else:
        values = wrapper.predict_frame(validation)[column]
    array = np.asarray(values, dtype="float64").reshape(-1)
    if len(array) != len(validation):
        raise RegistryError(f"the model returned {len(array)} predictions for {len(validation)} rows")
    return array


def _rank_based(metric: str) -> bool:
    """Metrics that depend only on the order of the scores."""
    lowered = metric.lower()
    return any(name in lowered for name in ("roc_auc", "pr_auc", "average_precision"))


def _ranking(model: Any, validation: pd.DataFrame) -> np.ndarray | None:
    """The wrapped classifier's raw margin per row (`decision_function`), or None when it has none."""
    wrapper = model.unwrap_python_model()
    decision_function = getattr(getattr(wrapper, "model", None), "decision_function", None)
    if not callable(decision_function):
        return None
    return np.asarray(decision_function(validation[wrapper.feature_columns]), dtype="float64").reshape(-1)


def _load_pyfunc(uri: str) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def _passes(candidate: float, champion: float, greater_is_better: bool, settings: TrainingSettings) -> tuple[bool, float, str]:
    """(passes, tolerance, how the tolerance reads) for one comparison."""
    if greater_is_better:
        tol = settings.promotion_tolerance_auc
        return candidate >= champion - tol, tol, f"may be at most {tol:g} below"
    tol = settings.promotion_tolerance_mae_relative
    return candidate <= champion * (1.0 + tol), tol, f"may be at most {tol:.1%} above"


def _validation_frame(mv: ModelVersion, validation: pd.DataFrame | None, settings: TrainingSettings) -> pd.DataFrame:
    if validation is not None:
        return validation
    if not mv.run_id:
        raise RegistryError(f"{mv.name} v{mv.version} has no run, hence no validation rows to compare on")
    return tracking.download_validation(mv.run_id, settings)


def _gate_facts(client: MlflowClient, mv: ModelVersion) -> tuple[str, bool, str]:
    """(primary metric, greater is better, label column) from the version's run (or its tags)."""
    tags = dict(mv.tags or {})
    if mv.run_id:
        tags = {**client.get_run(mv.run_id).data.tags, **tags}
    metric = tags.get(tracking.TAG_PRIMARY_METRIC)
    if not metric:
        raise RegistryError(f"{mv.name} v{mv.version} records no primary metric ({tracking.TAG_PRIMARY_METRIC} tag)")
    greater = tags.get(tracking.TAG_GREATER_IS_BETTER, "true").lower() == "true"
    label = tags.get(tracking.TAG_LABEL_COLUMN) or tracking.LABEL_COLUMNS[mv.name]
    return metric, greater, label


@dataclass(frozen=True)
class BaselineFloor:
    """The candidate's run against its best baseline on the primary metric (run metrics, same rows)."""

    metric: str
    greater_is_better: bool
    candidate_value: float
    baseline_name: str
    baseline_value: float
    tolerance: float
    rule: str  # how the tolerance reads, e.g. "may be at most 0.005 below"
    passed: bool

    def numbers(self) -> str:
        return (
            f"{self.metric} {self.candidate_value:.4f} vs best baseline {self.baseline_name} {self.baseline_value:.4f} "
            f"(the candidate {self.rule} its best baseline)"
        )


def best_baseline(metrics: dict[str, float], metric: str, greater_is_better: bool) -> tuple[str, float] | None:
    """The strongest finite baseline on `metric` among a run's `baseline_<name>_<metric>` metrics."""
    from training.model_card import baseline_metrics

    finite = {k: v for k, v in baseline_metrics(metrics, metric).items() if math.isfinite(v)}
    if not finite:
        return None
    pick = max if greater_is_better else min
    return pick(sorted(finite.items()), key=lambda item: item[1])


def baseline_floor(
    metrics: dict[str, float], metric: str, greater_is_better: bool, settings: TrainingSettings
) -> BaselineFloor | None:
    """The floor check on a run's metrics; None when the run has no finite primary metric or baseline."""
    value = metrics.get(metric)
    best = best_baseline(metrics, metric, greater_is_better)
    if value is None or not math.isfinite(value) or best is None:
        return None
    passed, tol, rule = _passes(float(value), best[1], greater_is_better, settings)
    return BaselineFloor(metric, greater_is_better, float(value), best[0], best[1], tol, rule, passed)


def _floor_of(client: MlflowClient, mv: ModelVersion, metric: str, greater: bool, settings: TrainingSettings) -> BaselineFloor | None:
    if not mv.run_id:
        return None
    return baseline_floor(dict(client.get_run(mv.run_id).data.metrics), metric, greater, settings)


def _floor_refusal(
    name: str,
    version: str,
    floor: BaselineFloor,
    champion: str | None = None,
    gate_values: tuple[float, float, int] | None = None,
) -> PromotionDecision:
    """The decision when the candidate is below its best baseline: nothing changes; the reason says how to override.

    gate_values: (candidate, champion, rows) from the comparison with the champion, when one ran.
    """
    candidate_value, champion_value, rows_scored = floor.candidate_value, None, 0
    if gate_values is not None:
        candidate_value, champion_value, rows_scored = gate_values
    if champion is None:
        kept = "no champion yet, none is set"
    else:
        kept = f"champion v{champion} is kept"
        if champion_value is not None:
            kept += f" (itself at {champion_value:.4f} " + (
                "on the candidate's validation rows)" if rows_scored else "out of time on its own validation window)"
            )
    reason = (
        f"below the baseline floor: {name} v{version} {floor.numbers()}; {kept}. "
        f"To promote it anyway: crm-scoring models promote {name} {version} --force"
    )
    return PromotionDecision(
        name,
        version,
        False,
        reason,
        metric=floor.metric,
        greater_is_better=floor.greater_is_better,
        candidate_value=candidate_value,
        champion_version=champion,
        champion_value=champion_value,
        tolerance=floor.tolerance,
        rows_scored=rows_scored,
        baseline_name=floor.baseline_name,
        baseline_value=floor.baseline_value,
    )


def promote(
    name: str,
    version: str | int,
    force: bool = False,
    settings: TrainingSettings | None = None,
    validation: pd.DataFrame | None = None,
) -> PromotionDecision:
    """Make `version` the champion if it is not worse than the current one nor than its best
    baseline (or with `force`).

    validation: the candidate's validation rows when already in memory (right after training);
    otherwise they are read from the candidate's run.
    """
    settings = tracking.resolve_settings(settings)
    _check_name(name)
    version = str(version)
    client = _client(settings)
    mv = _model_version(client, name, version)
    champion = _champion_version(client, name)

    if champion == version:
        return PromotionDecision(name, version, True, f"v{version} is already the champion", champion_version=champion)
    if force:
        reason = f"forced over champion v{champion} (gate skipped)" if champion else "forced as the first champion (gate skipped)"
        decision = PromotionDecision(name, version, True, reason, forced=True, champion_version=champion)
        _set_champion(client, name, version, champion, decision.reason)
        return decision
    outdated = _outdated_features(mv, champion)
    if outdated is not None:
        return outdated

    if champion is None:
        try:
            metric, greater, _ = _gate_facts(client, mv)
        except RegistryError:  # no primary metric recorded: nothing to hold against a floor
            floor = None
        else:
            floor = _floor_of(client, mv, metric, greater, settings)
        first = PromotionDecision(name, version, True, "no champion yet: the first candidate becomes champion")
        return _promote_on_floor(client, first, floor)

    # Amounts are never converted: the gate would compare the champion's predictions on rows
    # in a currency it never saw, and `score` refuses a profile that does not match its models.
    champion_mv = client.get_model_version(name, champion)
    currencies = (mv.tags or {}).get(tracking.TAG_CURRENCY), (champion_mv.tags or {}).get(tracking.TAG_CURRENCY)
    if None not in currencies and currencies[0] != currencies[1]:
        return PromotionDecision(
            name,
            version,
            False,
            f"v{version} learned from amounts in {currencies[0]}, champion v{champion} in {currencies[1]}: the gate cannot "
            f"compare them; when the profile changed currency: crm-scoring models promote {name} {version} --force",
            champion_version=champion,
        )

    metric, greater, label = _gate_facts(client, mv)
    floor = _floor_of(client, mv, metric, greater, settings)
    other_features = _champion_of_other_features(mv, champion_mv)
    if other_features is not None:
        return _promote_on_floor(client, other_features, floor)
    seen = _window_seen_by(champion_mv, mv)
    if seen is not None:
        horizons = (mv.tags or {}).get(tracking.TAG_HORIZON_DAYS), (champion_mv.tags or {}).get(tracking.TAG_HORIZON_DAYS)
        if horizons[0] != horizons[1]:
            return PromotionDecision(
                name, version, False,
                f"v{version} ({horizons[0]} days) and champion v{champion} ({horizons[1]} days) were validated over "
                f"different horizons, and the champion saw the candidate's validation window: nothing comparable to "
                f"score; use --force to replace the champion",
                metric=metric, greater_is_better=greater, champion_version=champion,
            )
        # The champion was trained on data after the candidate's validation cut-off (the same
        # as_of, say): its predictions on those rows are not out of time, so each run's own
        # out-of-time value is compared instead (each on its own validation window).
        candidate_value = _logged_value(client, mv, metric)
        champion_value = _logged_value(client, champion_mv, metric)
        if candidate_value is None or champion_value is None:
            missing = f"v{version}" if candidate_value is None else f"champion v{champion}"
            return PromotionDecision(
                name, version, False, f"{missing} logged no finite {metric} to compare; use --force to replace the champion",
                metric=metric, greater_is_better=greater, champion_version=champion,
            )
        rows = 0
        where = f"(logged out-of-time values: {seen})"
    else:
        try:
            candidate_value, champion_value, rows = _scored_on_validation_rows(
                name, version, champion, mv, metric, label, validation, settings
            )
        except _ChampionUnscorable as exc:
            return PromotionDecision(
                name,
                version,
                False,
                f"champion v{champion} cannot be scored on the candidate's validation rows ({exc}); use --force to replace it",
                metric=metric,
                greater_is_better=greater,
                champion_version=champion,
            )
        where = f"on {rows:,} validation rows"
    ok, tol, rule = _passes(candidate_value, champion_value, greater, settings)
    numbers = (
        f"{metric} {candidate_value:.4f} vs champion v{champion} {champion_value:.4f} {where} "
        f"(the candidate {rule} the champion)"
    )
    if ok and floor is not None and not floor.passed:
        # Not worse than the champion, but the champion itself is below the floor (forced, or older).
        return _floor_refusal(name, version, floor, champion, (candidate_value, champion_value, rows))
    if ok and floor is not None:
        numbers += f"; {floor.numbers()}"
    decision = PromotionDecision(
        name,
        version,
        ok,
        ("gate passed: " if ok else "gate failed: ") + numbers,
        metric=metric,
        greater_is_better=greater,
        candidate_value=candidate_value,
        champion_version=champion,
        champion_value=champion_value,
        tolerance=tol,
        rows_scored=rows,
        baseline_name=None if floor is None else floor.baseline_name,
        baseline_value=None if floor is None else floor.baseline_value,
    )
    if ok:
        _set_champion(client, name, version, champion, decision.reason)
    return decision


def _outdated_features(mv: ModelVersion, champion: str | None) -> PromotionDecision | None:
    """A refusal when the candidate was trained with other feature definitions than this code
    computes (`crm.feature_version`; none recorded: trained before it was, with older ones):
    serving would refuse it. None when its definitions are current."""
    from features.pipeline import FEATURE_DEFINITIONS_VERSION

    ours = (mv.tags or {}).get(tracking.TAG_FEATURE_VERSION)
    if ours == str(FEATURE_DEFINITIONS_VERSION):
        return None
    which = f"feature definitions {ours}" if ours is not None else "feature definitions it did not record"
    return PromotionDecision(
        mv.name, str(mv.version), False,
        f"v{mv.version} was trained with {which}; this version of crm-scoring computes {FEATURE_DEFINITIONS_VERSION}, "
        f"so serving would refuse or question it: retrain, or use --force",
        champion_version=champion,
    )


def _champion_of_other_features(candidate: ModelVersion, champion: ModelVersion) -> PromotionDecision | None:
    """When the champion was trained with other feature definitions than the (current)
    candidate, or did not record them: it cannot be compared on the candidate's rows, nor
    served by this code, so the candidate replaces it (subject to its baseline floor). None
    when both record the same definitions."""
    ours = (candidate.tags or {}).get(tracking.TAG_FEATURE_VERSION)
    theirs = (champion.tags or {}).get(tracking.TAG_FEATURE_VERSION)
    if ours == theirs:
        return None
    which = f"feature definitions {theirs}" if theirs is not None else "feature definitions it did not record (older ones)"
    return PromotionDecision(
        candidate.name, str(candidate.version), True,
        f"champion v{champion.version} was trained with {which}, not those this version of crm-scoring computes "
        f"({ours}): not comparable on the candidate's rows; the candidate replaces it",
        champion_version=str(champion.version),
    )


def _promote_on_floor(client: MlflowClient, decision: PromotionDecision, floor: BaselineFloor | None) -> PromotionDecision:
    """Carry out a promotion that is not a comparison with a champion (none yet, or one of
    outdated feature definitions) when the baseline floor allows it, its numbers in the reason."""
    if floor is not None and not floor.passed:
        return _floor_refusal(decision.name, decision.version, floor, decision.champion_version)
    if floor is not None:
        decision = replace(
            decision,
            reason=f"{decision.reason}; {floor.numbers()}",
            metric=floor.metric,
            greater_is_better=floor.greater_is_better,
            candidate_value=floor.candidate_value,
            tolerance=floor.tolerance,
            baseline_name=floor.baseline_name,
            baseline_value=floor.baseline_value,
        )
    _set_champion(client, decision.name, decision.version, decision.champion_version, decision.reason)
    return decision


def _window_seen_by(champion: ModelVersion, candidate: ModelVersion) -> str | None:
    """Why the champion cannot be scored out of time on the candidate's validation rows (it was
    trained on data at or after their cut-off), or None when it can."""
    from features.timeutil import to_utc_naive

    champion_as_of = (champion.tags or {}).get(tracking.TAG_AS_OF)
    cut_off = (candidate.tags or {}).get(tracking.TAG_VALIDATION_AS_OF)
    if not champion_as_of or not cut_off:
        return None
    instants = []
    for mv, tag, text in ((champion, tracking.TAG_AS_OF, champion_as_of), (candidate, tracking.TAG_VALIDATION_AS_OF, cut_off)):
        try:
            instants.append(to_utc_naive(text))
        except (ValueError, TypeError) as exc:
            raise RegistryError(
                f"{mv.name} v{mv.version}'s {tag} tag {text!r} is not a timestamp: the gate cannot tell whether the "
                f"champion saw the candidate's validation window; use --force"
            ) from exc
    if instants[0] <= instants[1]:
        return None
    return (
        f"champion v{champion.version} was trained on data up to {champion_as_of}, after the candidate's validation "
        f"cut-off {cut_off}"
    )


def _logged_value(client: MlflowClient, mv: ModelVersion, metric: str) -> float | None:
    """The out-of-time value of `metric` the version's run logged (None when absent or not finite)."""
    if not mv.run_id:
        return None
    value = client.get_run(mv.run_id).data.metrics.get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


class _ChampionUnscorable(Exception):
    """The champion cannot be scored on the candidate's rows (the gate refuses, naming --force)."""


def _int_tag(tags: dict[str, str] | None, key: str) -> int | None:
    """A whole-number tag (None when absent or not a number)."""
    text = (tags or {}).get(key)
    return int(text) if text and text.isdigit() else None


def _scored_on_validation_rows(
    name: str,
    version: str,
    champion: str,
    mv: ModelVersion,
    metric: str,
    label: str,
    validation: pd.DataFrame | None,
    settings: TrainingSettings,
) -> tuple[float, float, int]:
    """(candidate value, champion value, rows scored) on the candidate's validation rows.
    Raises `_ChampionUnscorable` (with the reason) when the champion cannot be scored there."""
    frame = _validation_frame(mv, validation, settings)
    if label not in frame.columns:
        raise RegistryError(f"{name} v{version}: the validation rows have no {label!r} column")
    column, score = _metric_function(metric, name)
    outcome = pd.to_numeric(frame[label].astype("float64"), errors="coerce").to_numpy()
    horizon = _int_tag(mv.tags, tracking.TAG_HORIZON_DAYS)
    horizon_days = None if horizon is None else float(horizon)

    served_candidate = None
    if _rank_based(metric) and OOT_PREDICTION in frame.columns:
        # A ranking metric: the served candidate's LightGBM learned from labels before these
        # rows' cut-off and only its calibration saw their labels, so its raw ranking is out of
        # time too; served model against served model, as they would serve (its validation
        # model, trained a window earlier, would start the comparison behind).
        with contextlib.suppress(Exception):
            served_candidate = _ranking(_load_pyfunc(f"models:/{name}/{version}"), frame)
    if served_candidate is not None:
        candidate_pred = served_candidate
        frame = frame.drop(columns=[OOT_PREDICTION])
    elif OOT_PREDICTION in frame.columns:
        # The served candidate was refit on these very labels: use its out-of-time predictions.
        candidate_pred = pd.to_numeric(frame[OOT_PREDICTION], errors="coerce").to_numpy(dtype="float64")
        frame = frame.drop(columns=[OOT_PREDICTION])
    else:
        try:
            candidate_pred = _predict(_load_pyfunc(f"models:/{name}/{version}"), frame, column, horizon_days)
        except Exception as exc:  # noqa: BLE001 - MLflow / model errors of any kind: the candidate is unusable
            raise RegistryError(f"{name} v{version} cannot score its own validation rows: {tracking.first_line(exc)}") from exc
    try:
        champion_model = _load_pyfunc(f"models:/{name}/{champion}")
        champion_pred = _ranking(champion_model, frame) if served_candidate is not None else None
        if champion_pred is None:
            champion_pred = _predict(champion_model, frame, column, horizon_days, strict_horizon=horizon_days is not None)
    except Exception as exc:  # noqa: BLE001 - an unloadable champion must not block a decision silently
        raise _ChampionUnscorable(tracking.first_line(exc)) from exc

    mask = np.isfinite(outcome) & np.isfinite(candidate_pred) & np.isfinite(champion_pred)
    rows = int(mask.sum())
    if rows == 0:
        raise RegistryError(f"{name} v{version}: no validation row has an outcome and both predictions")
    try:
        return score(outcome[mask], candidate_pred[mask]), score(outcome[mask], champion_pred[mask]), rows
    except ValueError as exc:  # e.g. a single class in the labels: AUC undefined
        raise RegistryError(f"{name} v{version}: {metric} cannot be computed on the validation rows: {exc}") from exc


def _set_champion(client: MlflowClient, name: str, version: str, current: str | None, reason: str) -> None:
    history = _history(client, name, current)
    history.append(version)
    # previous_champion first: if the champion move fails, serving is unchanged.
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    client.set_model_version_tag(name, version, TAG_PROMOTED_AT, _now())
    client.set_model_version_tag(name, version, TAG_PROMOTION_REASON, reason[:4000])


def rollback(name: str, settings: TrainingSettings | None = None) -> RollbackResult:
    """Restore the champion before the current one (repeatable: walks back the promotion history)."""
    settings = tracking.resolve_settings(settings)
    _check_name(name)
    client = _client(settings)
    _ensure_registered(client, name)
    current = _champion_version(client, name)
    if current is None:
        raise ModelNotFoundError(f"{name} has no champion to roll back")
    history = _history(client, name, current)
    history.pop()
    existing = {str(v.version) for v in _registered_versions(client, name)}
    history = [v for v in history if v in existing]  # a deleted version cannot serve again
    if not history:
        raise RegistryError(f"{name} has no earlier champion to roll back to (v{current} is the first in its promotion history)")
    target = history[-1]
    # The champion alias moves last: if a step fails, serving is unchanged, and a retry (the
    # history reconciled with the alias) makes the same move.
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    if len(history) >= 2:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, history[-2])
    elif PREVIOUS_CHAMPION in (client.get_registered_model(name).aliases or {}):
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, current, TAG_ROLLED_BACK_AT, _now())
    return RollbackResult(name, current, target)


def _ensure_registered(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            raise ModelNotFoundError(f"{name} is not registered yet: train it first") from exc
        raise RegistryError(f"{name}: {tracking.first_line(exc)}") from exc


# --------------------------------------------------------------------------------------
# Listing and loading
# --------------------------------------------------------------------------------------


def _info(client: MlflowClient, mv: ModelVersion, aliases: dict[str, list[str]]) -> ModelVersionInfo:
    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    if mv.run_id:
        run = client.get_run(mv.run_id)
        metrics = dict(run.data.metrics)
        tags = {**run.data.tags, **tags}
    primary = tags.get(tracking.TAG_PRIMARY_METRIC)
    value = metrics.get(primary) if primary else None
    created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(sorted(aliases.get(str(mv.version), []))),
        run_id=mv.run_id,
        as_of=tags.get(tracking.TAG_AS_OF),
        horizon_days=_int_tag(tags, tracking.TAG_HORIZON_DAYS),
        primary_metric=primary,
        primary_value=None if value is None or not math.isfinite(value) else float(value),
        greater_is_better=tags.get(tracking.TAG_GREATER_IS_BETTER, "true").lower() == "true",
        metrics=metrics,
        created_at=created,
        currency=tags.get(tracking.TAG_CURRENCY),
        feature_version=_int_tag(tags, tracking.TAG_FEATURE_VERSION),
    )


def list_models(settings: TrainingSettings | None = None, names: tuple[str, ...] = MODEL_NAMES) -> list[ModelVersionInfo]:
    """Every registered version of the crm-scoring models, newest first within each name."""
    from mlflow.exceptions import MlflowException

    settings = tracking.resolve_settings(settings)
    db = tracking.local_store_path(tracking.tracking_uri(settings))
    if db is not None and not db.exists():
        return []  # no local store yet: nothing registered (and nothing created by looking)
    client = _client(settings)
    infos: list[ModelVersionInfo] = []
    for name in names:
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if _is_missing(exc):
                continue
            raise RegistryError(f"{name}: {tracking.first_line(exc)}") from exc
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        for mv in reversed(_registered_versions(client, name)):
            infos.append(_info(client, mv, by_version))
    return infos


def champions(settings: TrainingSettings | None = None) -> list[ModelVersionInfo]:
    """The champion version of each model that has one (without loading the models)."""
    return [info for info in list_models(settings) if info.is_champion]


def metrics_table(infos: list[ModelVersionInfo]) -> pd.DataFrame:
    """Metric name x model (rows: metrics; columns: '<name> v<version>'), for reports."""
    columns = {f"{i.name} v{i.version}": pd.Series(i.metrics, dtype="float64") for i in infos}
    return pd.DataFrame(columns).sort_index()


def load_champion(name: str, settings: TrainingSettings | None = None, version: str | None = None) -> ChampionModel:
    """Load `models:/<name>@champion` for serving, with what it was trained on.

    version: load this version instead (one that was champion when a batch run scored with
    it: the API serves the versions of the latest run); `ModelNotFoundError` if it is gone.
    """
    settings = tracking.resolve_settings(settings)
    _check_name(name)
    client = _client(settings)
    _ensure_registered(client, name)
    what = "champion" if version is None else "version"
    if version is None:
        version = _champion_version(client, name)
        if version is None:
            raise ModelNotFoundError(f"{name} has no champion: promote a version first (crm-scoring models promote)")
    else:
        version = str(version)
        if version not in {str(v.version) for v in _registered_versions(client, name)}:
            raise ModelNotFoundError(f"{name} has no version {version} any more")
    mv = client.get_model_version(name, version)
    info = _info(client, mv, {version: [CHAMPION]} if what == "champion" else {})
    try:
        model = _load_pyfunc(f"models:/{name}/{version}")  # the version read above, even if the alias moves
    except Exception as exc:  # noqa: BLE001 - report any load failure as one line
        raise RegistryError(f"{name} {what} v{version} cannot be loaded: {tracking.first_line(exc)}") from exc
    return ChampionModel(
        name, version, mv.run_id, info.as_of, info.horizon_days, info.metrics, model, info.currency, info.feature_version
    )
