"""The models as the serving side uses them (loaded once, called many times).

Batch and online scoring call exactly the same objects: the model logged in MLflow
(`CrmScoringPyfunc`, unwrapped so MLflow's per-call schema enforcement does not cost
milliseconds per request) and, for the classifiers, `PropensityModel.explain` for reasons.
Loading goes through `training.registry.load_champion`: batch scoring loads the version
the `champion` alias points at when loading starts; the API loads, by number, the
versions that scored the batch run it serves (`load_model_set(versions=...)`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.errors import CrmScoringError
from features.families.attributes import AGE_SUFFIX, ATTRIBUTE_PREFIX, AttributeParams, attribute_plan, normalise_name
from features.pipeline import FEATURE_DEFINITIONS_VERSION
from features.profile import Profile
from serving.events import json_timestamp
from training.config import TrainingSettings
from training.results import MODEL_NAMES

#: Output-contract prediction name of each registered model.
PREDICTION_OF_MODEL: dict[str, str] = {
    "lead_scoring": "lead_conversion",
    "churn_propensity": "churn",
    "customer_ltv": "ltv",
}

#: Column prefix of each model's outputs in score tables and snapshots.
PREFIX_OF_MODEL: dict[str, str] = {"lead_scoring": "lead", "churn_propensity": "churn", "customer_ltv": "ltv"}


class ModelLoadError(CrmScoringError):
    """No model can be served (none promoted, or loading failed)."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded champion: how to predict, explain, and what to report about it."""

    name: str
    version: str
    run_id: str | None
    as_of: str | None
    horizon_days: int | None
    metrics: dict[str, float]
    feature_columns: tuple[str, ...]
    #: MLflow signature type per feature column ('double', 'long', 'integer', 'string', 'boolean').
    input_types: dict[str, str]
    predict_frame: Callable[[pd.DataFrame], pd.DataFrame]
    #: `predict_frame`'s output columns as float64 arrays without building frames (the
    #: model's own `predict_values`, what scoring calls); it selects its feature columns itself.
    predict_values: Callable[[pd.DataFrame], dict[str, np.ndarray]]
    explain: Callable[[pd.DataFrame, int], list[list[dict[str, Any]]]] | None = None
    #: Classifiers: (probability, reasons) from one encoding of the rows, what
    #: `predict_frame` + `explain` give separately (the model's `predict_with_reasons`).
    predict_with_reasons: Callable[[pd.DataFrame, int], tuple[np.ndarray, list[list[dict[str, Any]]]]] | None = None
    #: customer_ltv: the horizon of its CLV and expected purchases (days).
    clv_horizon_days: int | None = None
    #: The currency of the training profile's amounts (None: not recorded, or none named).
    currency: str | None = None
    #: The feature definitions version it was trained with (None: not recorded).
    feature_version: int | None = None

    @property
    def prefix(self) -> str:
        return PREFIX_OF_MODEL[self.name]

    def describe(self) -> dict[str, Any]:
        """The /v1/models entry: name, version, as_of, horizon and key metrics.

        customer_ltv has two horizons: `horizon_days`, the training run's (its holdout
        period), and `clv_horizon_days`, the one its answers forecast over.
        """
        entry = {
            "name": self.name,
            "version": self.version,
            "as_of": json_timestamp(self.as_of) if self.as_of else None,
            "horizon_days": self.horizon_days,
            "run_id": self.run_id,
            "metrics": {k: v for k, v in sorted(self.metrics.items()) if not k.startswith("baseline_")},
        }
        if self.clv_horizon_days is not None:
            entry["clv_horizon_days"] = self.clv_horizon_days
        if self.currency is not None:
            entry["currency"] = self.currency
        entry["feature_version"] = self.feature_version
        return entry


@dataclass(frozen=True)
class ModelSet:
    """The champions being served; a model without a champion is simply absent."""

    models: dict[str, ServedModel] = field(default_factory=dict)
    #: What the caller should tell the user about these models (see `check_feature_version`).
    warnings: tuple[str, ...] = ()

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    @property
    def versions(self) -> dict[str, str]:
        return {name: m.version for name, m in sorted(self.models.items())}

    def feature_columns(self) -> tuple[str, ...]:
        """Every feature column any served model reads (sorted, without duplicates)."""
        return tuple(sorted({c for m in self.models.values() for c in m.feature_columns}))

    def input_types(self) -> dict[str, str]:
        types: dict[str, str] = {}
        for model in self.models.values():
            types.update(model.input_types)
        return types


def _attribute_source(feature: str) -> str:
    """The (normalised) customers column an `attr_*` feature comes from: `attr_<x>` and,
    for a timestamp, `attr_<x>_age_days`."""
    name = feature[len(ATTRIBUTE_PREFIX) :]
    return name[: -len(AGE_SUFFIX)] if name.endswith(AGE_SUFFIX) else name


def check_attribute_inputs(models: ModelSet, params: AttributeParams) -> None:
    """Raise `ModelLoadError` when a model reads an attribute that `params` keep from features
    (declared PII, say, since the model was trained): every row would fail without it."""
    hidden = {normalise_name(name) for name in (*params.pii_columns, *params.exclude_columns)}
    found = []
    for model in models.models.values():
        for feature in model.feature_columns:
            if not feature.startswith(ATTRIBUTE_PREFIX):
                continue
            name = feature[len(ATTRIBUTE_PREFIX) :]
            if hidden & {name, _attribute_source(feature)}:
                found.append(f"{model.name} reads {feature}")
    if found:
        raise ModelLoadError(
            f"{'; '.join(found)}, from a customers column now declared PII or excluded (CRMSCORE_PII_COLUMNS): "
            "retrain the model without it or change the setting"
        )


class MissingAttributeError(CrmScoringError):
    """A model reads a customer attribute the profile does not hold."""


def check_profile_attributes(models: ModelSet, profile: Profile, params: AttributeParams) -> None:
    """Raise `MissingAttributeError` when a model reads an `attr_*` feature that the profile's
    customers table cannot produce (a column the training profile had): said before the
    features are built, naming the columns, instead of every row failing at prediction."""
    produced = {feature.column for feature in attribute_plan(profile, params)}
    readers: dict[str, list[str]] = {}
    for model in models.models.values():
        for feature in model.feature_columns:
            if feature.startswith(ATTRIBUTE_PREFIX) and feature not in produced:
                readers.setdefault(_attribute_source(feature), []).append(model.name)
    if readers:
        listed = "; ".join(f"{column} ({', '.join(sorted(set(names)))})" for column, names in sorted(readers.items()))
        raise MissingAttributeError(
            f"the profile's customers table lacks column(s) the models were trained with: {listed}; "
            "add them to the profile, or train models on this profile"
        )


class CurrencyMismatchError(CrmScoringError):
    """A profile's amounts are in another currency than a model learned from."""


def check_currency(models: ModelSet, currency: str | None) -> None:
    """Raise `CurrencyMismatchError` when a model learned from amounts in another currency
    than `currency` (the profile's): amounts are never converted, so its values and CLVs
    would be off by the exchange rate. Unknown on either side (a profile or a model from
    before the currency was recorded, orders without one): no check."""
    if currency is None:
        return
    others = [f"{m.name} v{m.version} in {m.currency}" for m in models.models.values() if m.currency not in (None, currency)]
    if others:
        raise CurrencyMismatchError(
            f"the profile's amounts are in {currency}, but the models learned from amounts in another currency "
            f"({', '.join(others)}); amounts are never converted: convert the profile, or train on it"
        )


def _input_types(pyfunc: Any) -> dict[str, str]:
    schema = pyfunc.metadata.get_input_schema()
    if schema is None:
        return {}
    return {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in schema.inputs}


def served_model(champion: Any, threads: int | None = None) -> ServedModel:
    """A `ServedModel` from `training.registry.ChampionModel` (a loaded pyfunc).

    threads: LightGBM prediction threads (training pins one for determinism; scoring a
    million rows wants every core). Predictions do not depend on the thread count.
    """
    wrapper = champion.model.unwrap_python_model()
    inner = wrapper.model
    estimator = getattr(inner, "estimator_", None)
    if threads is not None and estimator is not None and hasattr(estimator, "set_params"):
        estimator.set_params(n_jobs=threads)
    explain = getattr(inner, "explain", None)
    together = getattr(inner, "predict_with_reasons", None)
    ltv_model = getattr(inner, "model", None)  # LtvServingModel wraps CustomerLtvModel
    return ServedModel(
        name=champion.name,
        version=str(champion.version),
        run_id=champion.run_id,
        as_of=champion.as_of,
        horizon_days=champion.horizon_days,
        metrics=dict(champion.metrics),
        feature_columns=tuple(wrapper.feature_columns),
        input_types=_input_types(champion.model),
        predict_frame=wrapper.predict_frame,
        predict_values=_predict_values(wrapper, inner, ltv_model),
        # The classifier selects its feature columns by name itself: no column subset to copy.
        explain=explain if callable(explain) else None,
        predict_with_reasons=together if callable(together) else None,
        clv_horizon_days=getattr(ltv_model, "horizon_days", None),
        currency=champion.currency,
        feature_version=champion.feature_version,
    )


def _predict_values(wrapper: Any, inner: Any, ltv_model: Any) -> Callable[[pd.DataFrame], dict[str, np.ndarray]]:
    """The model's own `predict_values` (customer_ltv's is on the CustomerLtvModel its serving
    wrapper holds); for a model with only the pyfunc contract, its `predict_frame` columns."""
    for model in (inner, ltv_model):
        method = getattr(model, "predict_values", None)
        if callable(method):
            return method
    return functools.partial(_frame_values, wrapper.predict_frame)


def _frame_values(predict_frame: Callable[[pd.DataFrame], pd.DataFrame], features: pd.DataFrame) -> dict[str, np.ndarray]:
    return {str(name): column.to_numpy(dtype="float64") for name, column in predict_frame(features).items()}


def load_model_set(
    settings: TrainingSettings | None = None,
    names: tuple[str, ...] = MODEL_NAMES,
    *,
    threads: int | None = None,
    versions: dict[str, str] | None = None,
) -> ModelSet:
    """Load every model that has a champion. Raises `ModelLoadError` when none can be served.

    A champion that exists but fails to load is an error (serving silently without it
    would hide a broken deployment); a model that was never promoted is skipped.
    versions: load exactly these versions by name instead (a batch run's `models`); one
    that cannot be loaded any more is an error.
    """
    from training.registry import ModelNotFoundError, RegistryError, load_champion

    loaded: dict[str, ServedModel] = {}
    missing: dict[str, list[str]] = {}  # reason -> model names (one store problem is said once)
    for name in names if versions is None else tuple(versions):
        try:
            loaded[name] = served_model(load_champion(name, settings, None if versions is None else versions[name]), threads)
        except ModelNotFoundError as exc:
            if versions is not None:
                raise ModelLoadError(f"{exc}: it scored the latest batch run; run `crm-scoring score` with the current champions") from exc
            missing.setdefault(str(exc).replace(name, "<model>"), []).append(name)
        except RegistryError as exc:
            raise ModelLoadError(str(exc)) from exc
    if not loaded:
        reasons = "; ".join(f"{', '.join(models)}: {reason}" for reason, models in missing.items())
        raise ModelLoadError("no champion model to serve (" + reasons + ")")
    return ModelSet(loaded, check_feature_version(loaded.values()))


def check_feature_version(models: Iterable[ServedModel], current: int = FEATURE_DEFINITIONS_VERSION) -> tuple[str, ...]:
    """Raise `ModelLoadError` when a model was trained with other feature definitions than this
    code computes (a column that kept its name but changed meaning: the model would read
    inputs computed differently from what it learned). A model that did not record its
    version gets a warning line instead: it may predate the latest change."""
    other = [f"{m.name} v{m.version} ({m.feature_version})" for m in models if m.feature_version not in (None, current)]
    if other:
        raise ModelLoadError(
            f"trained with other feature definitions than this version of crm-scoring computes ({current}): "
            f"{', '.join(other)}; retrain them (crm-scoring train) or run the version they were trained with"
        )
    unknown = [f"{m.name} v{m.version}" for m in models if m.feature_version is None]
    if not unknown:
        return ()
    return (
        f"{', '.join(unknown)} did not record the feature definitions they were trained with (trained before "
        f"2026-12-07); the definitions are now version {current} (the changes are listed at features.pipeline."
        "FEATURE_DEFINITIONS_VERSION): retrain if a change applies to your data",
    )
