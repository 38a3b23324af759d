"""`served_model` adapts any logged champion to what scoring calls, without a trained project."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.families.attributes import AttributeParams
from serving.models import (
    CurrencyMismatchError,
    ModelLoadError,
    ModelSet,
    ServedModel,
    check_attribute_inputs,
    check_currency,
    check_feature_version,
    served_model,
)


def _champion(wrapper: Any) -> SimpleNamespace:
    """A stand-in for `training.registry.ChampionModel` around a pyfunc wrapper."""
    pyfunc = SimpleNamespace(unwrap_python_model=lambda: wrapper, metadata=SimpleNamespace(get_input_schema=lambda: None))
    return SimpleNamespace(
        model=pyfunc, name="churn_propensity", version=7, run_id="run-1", as_of="2025-06-15", horizon_days=90, metrics={"roc_auc": 0.8},
        currency="USD", feature_version=2,
    )


def test_a_model_with_only_the_pyfunc_contract_is_scored_from_its_prediction_frame():
    """No `predict_values` of its own: scoring reads `predict_frame`'s columns as float64 arrays."""
    seen: list[pd.DataFrame] = []

    def predict_frame(features: pd.DataFrame) -> pd.DataFrame:
        seen.append(features)
        return pd.DataFrame({"churn_probability": [1, 0], "churn_score_band": [0.25, np.nan]})

    wrapper = SimpleNamespace(model=SimpleNamespace(), feature_columns=["days_since_last_order"], predict_frame=predict_frame)
    served = served_model(_champion(wrapper))
    features = pd.DataFrame({"customer_id": ["a", "b"], "days_since_last_order": [3.0, 40.0]})

    values = served.predict_values(features)

    assert seen and seen[0] is features
    assert list(values) == ["churn_probability", "churn_score_band"]
    assert all(array.dtype == np.float64 for array in values.values())
    np.testing.assert_array_equal(values["churn_probability"], [1.0, 0.0])
    np.testing.assert_array_equal(values["churn_score_band"], [0.25, np.nan])
    assert served.explain is None and served.predict_with_reasons is None
    assert (served.version, served.feature_columns, served.input_types) == ("7", ("days_since_last_order",), {})


def test_the_models_own_predict_values_is_preferred_to_the_frame():
    def own(features: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"churn_probability": np.full(len(features), 0.5)}

    def frame_not_expected(features: pd.DataFrame) -> pd.DataFrame:
        raise AssertionError("predict_frame called although the model has predict_values")

    wrapper = SimpleNamespace(model=SimpleNamespace(predict_values=own), feature_columns=[], predict_frame=frame_not_expected)

    values = served_model(_champion(wrapper)).predict_values(pd.DataFrame({"customer_id": ["a"]}))

    np.testing.assert_array_equal(values["churn_probability"], [0.5])


def _model(name: str, *features: str) -> ServedModel:
    def no_values(frame: pd.DataFrame) -> dict[str, np.ndarray]:
        raise AssertionError("not called")

    return ServedModel(name, "1", None, None, None, {}, features, {}, lambda frame: frame, no_values)


def test_a_model_reading_an_attribute_now_declared_pii_is_refused_by_name():
    models = ModelSet({
        "lead_scoring": _model("lead_scoring", "recency_days", "attr_region", "attr_signed_up_age_days"),
        "churn_propensity": _model("churn_propensity", "attr_industry"),
    })
    check_attribute_inputs(models, AttributeParams())  # the defaults hide none of these

    with pytest.raises(ModelLoadError, match=r"lead_scoring reads attr_region, from a customers column now declared PII") as caught:
        check_attribute_inputs(models, AttributeParams(pii_columns=("email", "Region")))
    assert "churn_propensity" not in str(caught.value)
    # A timestamp attribute's feature is its age; names are compared normalised.
    with pytest.raises(ModelLoadError, match=r"lead_scoring reads attr_signed_up_age_days"):
        check_attribute_inputs(models, AttributeParams(exclude_columns=("Signed Up",)))


def test_a_profile_in_another_currency_than_a_model_learned_from_is_refused() -> None:
    from dataclasses import replace

    churn, ltv, lead = _model("churn_propensity"), _model("customer_ltv"), _model("lead_scoring")
    models = ModelSet({"churn_propensity": replace(churn, currency="USD"), "customer_ltv": replace(ltv, currency="USD"), "lead_scoring": lead})

    check_currency(models, "USD")
    check_currency(models, None)  # orders without a currency: nothing to compare
    with pytest.raises(CurrencyMismatchError) as error:
        check_currency(models, "EUR")
    assert str(error.value) == (
        "the profile's amounts are in EUR, but the models learned from amounts in another currency "
        "(churn_propensity v1 in USD, customer_ltv v1 in USD); amounts are never converted: convert the profile, or train on it"
    )
    check_currency(ModelSet({"lead_scoring": lead}), "EUR")  # a model from before the currency was recorded


def test_a_model_of_other_feature_definitions_is_refused_and_an_unversioned_one_is_warned_about() -> None:
    """A column that keeps its name but changes meaning (FEATURE_DEFINITIONS_VERSION): a model
    trained on the old meaning would read inputs computed otherwise than what it learned."""
    from dataclasses import replace

    churn, ltv, lead = _model("churn_propensity"), _model("customer_ltv"), _model("lead_scoring")

    assert check_feature_version([replace(churn, feature_version=3), replace(ltv, feature_version=3)], current=3) == ()
    with pytest.raises(ModelLoadError) as error:
        check_feature_version([replace(churn, feature_version=2), replace(ltv, feature_version=3)], current=3)
    assert str(error.value) == (
        "trained with other feature definitions than this version of crm-scoring computes (3): churn_propensity v1 (2); "
        "retrain them (crm-scoring train) or run the version they were trained with"
    )
    (warning,) = check_feature_version([lead, replace(ltv, feature_version=3)], current=3)
    assert warning.startswith("lead_scoring v1 did not record the feature definitions they were trained with")
