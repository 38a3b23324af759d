"""PropensityModel: the scikit-learn contract, encoding, calibration, reasons, pickling, behaviour.

Behavioural tests train lead and churn models out of time on a small generated profile and
score perturbed copies of the profile at the validation cut-off (features rebuilt by the
pipeline, so every feature moves consistently):

* PII columns and customer ids carry no signal: changing them leaves every score unchanged;
* a more recent purchase (each buyer repeats their last order two days before the cut-off)
  lowers the churn probability on average;
* three pricing-page views and a demo request in the last week raise the lead score on average.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from features.backend import connect
from features.synthetic import DATA_END, TRUTH_AS_OF, generate_profile
from features.validation import profile_from_frames
from training import classifier
from training.classifier import ClassifierInputError, PlattScaling, PropensityModel
from training.datasets import FeatureCache, WindowConfig, build_datasets, examples_at, features_only
from training.metrics import roc_auc
from training.reasons import reason_text

V = TRUTH_AS_OF  # the validation cut-off of `train --as-of DATA_END --horizon 90d`
H = 90


# ---- small tabular data for the contract tests ------------------------------------------


def _table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    segment = rng.choice(np.array(["a", "b", "c"], dtype=object), size=n)
    lift = pd.Series(segment).map({"a": 1.0, "b": 0.0, "c": -1.0}).to_numpy()
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x1 + lift - 1)))).astype(int)
    segment[rng.random(n) < 0.05] = None
    frame = pd.DataFrame(
        {
            "customer_id": [f"c-{seed}-{i}" for i in range(n)],
            "x1": np.where(rng.random(n) < 0.05, np.nan, x1),
            "count": rng.poisson(2, n).astype("int64"),
            "flag": rng.random(n) < 0.5,
            "segment": pd.array(segment, dtype="str"),
        }
    )
    return frame, y


@pytest.fixture(scope="module")
def small_model() -> tuple[PropensityModel, pd.DataFrame, np.ndarray]:
    train, y = _table(3_000, 0)
    calibration, y_cal = _table(2_000, 1)
    model = PropensityModel(n_estimators=80).fit(train, y, calibration, y_cal)
    return model, *_table(1_000, 2)


def test_follows_the_scikit_learn_contract(small_model):
    model, X, y = small_model
    params = model.get_params()
    assert params["calibration"] == "platt" and params["n_jobs"] == 1
    assert not any(name.endswith("_") for name in vars(clone(model)))  # __init__ stores parameters only
    assert model.feature_columns_ == ["x1", "count", "flag", "segment"]  # customer_id is never a feature
    assert model.categorical_columns_ == ["segment"] and model.categories_ == {"segment": ["a", "b", "c"]}
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert set(np.unique(model.predict(X))) <= {0, 1}
    assert roc_auc(y, proba[:, 1]) > 0.75
    frame = model.predict_frame(X.set_index(X.index + 100))
    assert frame.columns.tolist() == ["customer_id", "probability"]
    assert (frame.index == X.index + 100).all()
    assert np.allclose(frame["probability"], proba[:, 1])
    with pytest.raises(NotFittedError):
        PropensityModel().predict_proba(X)


def test_fit_is_deterministic_and_refits_cleanly(small_model):
    model, X, _ = small_model
    train, y = _table(3_000, 0)
    calibration, y_cal = _table(2_000, 1)
    again = clone(model).fit(train, y, calibration, y_cal)
    assert np.array_equal(again.predict_proba(X), model.predict_proba(X))
    narrower = again.fit(train[["customer_id", "x1"]], y, calibration[["customer_id", "x1"]], y_cal)
    assert narrower is again and narrower.feature_columns_ == ["x1"] and narrower.categories_ == {}


def test_columns_are_selected_by_name_and_unseen_categories_are_missing(small_model):
    model, X, _ = small_model
    # Extra columns (a PII column here) are ignored and the column order does not matter.
    reordered = X.assign(email="a@b.example")[["email", "segment", "flag", "count", "x1", "customer_id"]]
    assert np.array_equal(model.predict_proba(reordered), model.predict_proba(X))
    unseen = X.assign(segment=pd.array(["zzz"] * len(X), dtype="str"))
    missing = X.assign(segment=pd.array([None] * len(X), dtype="str"))
    assert np.allclose(model.predict_proba(unseen), model.predict_proba(missing))
    with pytest.raises(ClassifierInputError, match="lacks feature column"):
        model.predict_proba(X.drop(columns=["x1"]))
    with pytest.raises(ClassifierInputError, match="non-numeric"):
        model.predict_proba(X.assign(count="many"))


def test_predictions_equal_lightgbm_on_the_pandas_encoding(small_model):
    """The fast numpy path feeds LightGBM exactly what its own pandas conversion would."""
    model, X, _ = small_model
    awkward = X.head(200).copy()
    awkward["segment"] = pd.array(["zzz", None, "b", "a", "c"] * 40, dtype="str")  # unseen and missing categories
    awkward["count"] = awkward["count"].astype("Int64").mask(awkward.index % 7 == 0)  # nullable integers with gaps
    awkward["flag"] = awkward["flag"].astype("boolean").mask(awkward.index % 5 == 0)  # nullable booleans
    as_text = awkward.assign(x1=awkward["x1"].map(lambda v: None if np.isnan(v) else repr(v)).astype("str"))  # numbers as text
    for frame in (X, awkward, as_text, awkward.iloc[::-1]):
        encoded = model._encode(frame)
        expected_margin = model.estimator_.predict(encoded, raw_score=True)
        assert np.array_equal(model._margin(frame), expected_margin)
        expected_contributions = model.estimator_.predict(encoded, pred_contrib=True)
        reasons = model.explain(frame, top_k=len(model.feature_columns_))
        for row, items in enumerate(reasons):
            for item in items:
                j = model.feature_columns_.index(item["feature"])
                assert item["contribution"] == expected_contributions[row, j]
                assert item["value"] == frame[item["feature"]].iloc[row] or item["value"] is None
        probability, together = model.predict_with_reasons(frame, top_k=3)
        assert np.array_equal(probability, model.predict_proba(frame)[:, 1])
        assert together == model.explain(frame, top_k=3)


def test_small_and_large_frames_are_encoded_and_explained_alike(small_model, monkeypatch):
    """A few rows are read as one object matrix, many column by column: same numbers, same reasons."""
    model, X, _ = small_model
    frame = X.head(60).copy()
    frame["count"] = frame["count"].astype("Int64").mask(frame.index % 7 == 0)  # nullable integers with gaps
    frame["flag"] = frame["flag"].astype("boolean").mask(frame.index % 5 == 0)  # nullable booleans
    variants = {
        "numpy and str": X.head(60),
        "nullable": frame,
        "numbers as text": frame.assign(x1=frame["x1"].map(lambda v: None if np.isnan(v) else repr(v)).astype("str")),
        "object categories": frame.assign(segment=pd.Series(["a", None, 3, "c", "zzz"] * 12, index=frame.index, dtype=object)),
        "pandas categorical": frame.assign(segment=frame["segment"].astype("category")),
        "reordered, extra columns": frame.assign(email="a@b.example")[["email", "segment", "flag", "count", "x1", "customer_id"]],
    }
    assert all(model._encoded(v).values is not None for v in variants.values())  # the object-matrix path runs
    small = {name: (model._matrix(v), *model.predict_with_reasons(v, top_k=4)) for name, v in variants.items()}
    monkeypatch.setattr(classifier, "_SMALL_ROWS", 0)
    for name, variant in variants.items():
        matrix, probability, reasons = small[name]
        assert model._encoded(variant).values is None  # the column-by-column path runs
        np.testing.assert_array_equal(model._matrix(variant), matrix, err_msg=name)
        large_probability, large_reasons = model.predict_with_reasons(variant, top_k=4)
        assert large_probability.tobytes() == probability.tobytes(), name
        assert large_reasons == reasons, name
        assert [[type(r["value"]) for r in row] for row in large_reasons] == [[type(r["value"]) for r in row] for row in reasons]


def test_category_cap_keeps_the_most_frequent_values():
    train, y = _table(2_000, 3)
    model = PropensityModel(n_estimators=20, max_categories=2, calibration="none").fit(train, y)
    counts = train["segment"].value_counts()
    assert model.categories_["segment"] == sorted(counts.index[:2])


def test_calibration_methods_and_input_errors():
    train, y = _table(2_000, 4)
    calibration, y_cal = _table(1_500, 5)
    X, _ = _table(500, 6)
    platt = PropensityModel(n_estimators=50).fit(train, y, calibration, y_cal)
    isotonic = PropensityModel(n_estimators=50, calibration="isotonic").fit(train, y, calibration, y_cal)
    raw = PropensityModel(n_estimators=50, calibration="none").fit(train, y)
    assert isinstance(platt.calibrator_, PlattScaling) and platt.calibrator_.slope > 0
    for model in (platt, isotonic, raw):
        p = model.predict_proba(X)[:, 1]
        assert ((p >= 0) & (p <= 1)).all()
    # Platt is increasing in the margin: the ranking (hence AUC) of the raw model is kept.
    assert np.array_equal(np.argsort(platt.predict_proba(X)[:, 1]), np.argsort(raw.predict_proba(X)[:, 1]))
    with pytest.raises(ClassifierInputError, match="needs calibration_X"):
        PropensityModel().fit(train, y)
    with pytest.raises(ClassifierInputError, match="both classes"):
        PropensityModel(calibration="none").fit(train, np.zeros(len(train)))
    with pytest.raises(ClassifierInputError, match="calibration must be one of"):
        PropensityModel(calibration="beta").fit(train, y, calibration, y_cal)  # type: ignore[arg-type]


def test_explain_gives_the_largest_contributions_with_texts(small_model):
    model, X, _ = small_model
    reasons = model.explain(X.head(20), top_k=2)
    assert len(reasons) == 20
    full = model.estimator_.predict(model._encode(X.head(20)), pred_contrib=True)
    margin = model.estimator_.predict(model._encode(X.head(20)), raw_score=True)
    assert np.allclose(full.sum(axis=1), margin)  # contributions + bias = the raw margin
    for row, items in enumerate(reasons):
        assert 1 <= len(items) <= 2
        assert set(items[0]) == {"feature", "value", "contribution", "text"}
        sizes = [abs(item["contribution"]) for item in items]
        assert sizes == sorted(sizes, reverse=True)
        biggest = np.abs(full[row, :-1]).max()
        assert sizes[0] == pytest.approx(biggest)
        for item in items:
            j = model.feature_columns_.index(item["feature"])
            assert item["contribution"] == pytest.approx(full[row, j])
            assert isinstance(item["text"], str) and item["text"]
            assert item["value"] is None or isinstance(item["value"], (int, float, str, bool))
    with pytest.raises(ClassifierInputError, match="top_k"):
        model.explain(X.head(1), top_k=0)


@pytest.mark.parametrize(
    ("feature", "value", "text"),
    [
        ("days_since_last_order", 142.3, "142 days since the last order"),
        ("days_since_last_order", None, "no order yet"),
        ("pricing_page_views_14d", 3, "3 pricing-page views in the last 14 days"),
        ("pricing_page_view_count_30d", 1, "1 pricing-page view in the last 30 days"),
        ("has_demo_request", 1, "requested a demo"),
        ("days_since_last_demo_request", None, "no demo request yet"),
        ("orders_trend_30d", -1.0, "orders stopped (last 30 days vs the 30 before)"),
        ("attr_industry", "software", "industry: software"),
        ("webinar_attended_count_30d", 2, "2 webinar attended events in the last 30 days"),
        ("something_new", 2.5, "something_new = 2.5"),
    ],
)
def test_reason_texts(feature, value, text):
    assert reason_text(feature, value) == text


def test_pickle_round_trip(small_model):
    model, X, _ = small_model
    restored = pickle.loads(pickle.dumps(model))
    assert np.array_equal(restored.predict_proba(X), model.predict_proba(X))
    assert restored.explain(X.head(5)) == model.explain(X.head(5))
    assert restored.get_params() == model.get_params()


# ---- behaviour on a generated profile and on CDNOW ------------------------------------------


@pytest.fixture(scope="module")
def generated():
    return generate_profile(3_000, seed=3)


def _load(tables: dict[str, pd.DataFrame]):
    return profile_from_frames(connect(), tables["customers"], tables["orders"], tables.get("events")).profile


@pytest.fixture(scope="module")
def frames(generated) -> dict[str, pd.DataFrame]:
    return {name: getattr(generated, name).to_pandas() for name in ("customers", "orders", "events")}


def _train(
    cache: FeatureCache, task: str, horizon: int, v, n_estimators: int = 200
) -> tuple[PropensityModel, pd.Series]:
    """A model trained out of time (one training cut-off, split by customer hash) and its scores at v."""
    data = build_datasets(cache, task, horizon, WindowConfig(n_training_cutoffs=1))  # type: ignore[arg-type]
    model = PropensityModel(n_estimators=n_estimators).fit(
        features_only(data.train), data.train["label"], features_only(data.calibration), data.calibration["label"]
    )
    return model, _score(model, cache, task, v, horizon)


def _score(model: PropensityModel, cache: FeatureCache, task: str, v, horizon: int) -> pd.Series:
    rows = examples_at(cache, task, v, horizon)  # type: ignore[arg-type]
    return pd.Series(model.predict_proba(features_only(rows))[:, 1], index=rows["customer_id"].to_numpy())


@pytest.fixture(scope="module")
def trained(frames):
    cache = FeatureCache(_load(frames), DATA_END)
    return {task: _train(cache, task, H, V) for task in ("lead", "churn")}


def test_pii_and_customer_ids_do_not_change_scores(trained, frames):
    n = len(frames["customers"])
    rng = np.random.default_rng(9)
    # New PII and new ids (a random permutation, so the id order no longer follows creation).
    new_id = dict(zip(frames["customers"]["customer_id"], [f"z-{k:06d}" for k in rng.permutation(n)], strict=True))
    customers = frames["customers"].assign(
        customer_id=lambda f: f["customer_id"].map(new_id),
        email=[f"someone{k}@else.example" for k in range(n)],
        name="Jane Doe",
        phone="+1-000-555-0000",
    )
    changed = {
        "customers": customers,
        "orders": frames["orders"].assign(customer_id=lambda f: f["customer_id"].map(new_id)),
        "events": frames["events"].assign(customer_id=lambda f: f["customer_id"].map(new_id)),
    }
    cache = FeatureCache(_load(changed), DATA_END)
    back = {v: k for k, v in new_id.items()}
    for task, (model, before) in trained.items():
        # New values the model never saw cannot move a tree split; the columns themselves must
        # not be inputs at all.
        assert not {"customer_id", "attr_email", "attr_name", "attr_phone"} & set(model.feature_columns_), task
        after = _score(model, cache, task, V, H).rename(index=back).reindex(before.index)
        assert after.notna().all()
        np.testing.assert_allclose(after.to_numpy(), before.to_numpy(), rtol=0, atol=1e-12, err_msg=task)


def test_pricing_page_views_and_a_demo_request_raise_the_lead_score(trained, frames):
    model, before = trained["lead"]
    cutoff = pd.Timestamp(V)
    stamps = np.array([cutoff - pd.Timedelta(days=d) for d in (6, 4, 3, 2)], dtype="datetime64[us]")
    leads = before.index.to_numpy()
    new_events = pd.DataFrame(
        {
            "customer_id": np.repeat(leads, 4),
            "occurred_at": np.tile(stamps, len(leads)),
            "event_type": np.tile(["pricing_page_view"] * 3 + ["demo_request"], len(leads)),
            "event_id": [f"e-new-{k}" for k in range(4 * len(leads))],
            "channel": "web",
        }
    )
    events = pd.concat([frames["events"], new_events], ignore_index=True)
    cache = FeatureCache(_load({**frames, "events": events}), DATA_END)
    after = _score(model, cache, "lead", V, H).reindex(before.index)
    print(f"lead mean {before.mean():.4f} -> {after.mean():.4f} (higher for {(after > before).mean():.0%})")
    assert after.mean() > before.mean() + 0.02
    assert (after > before).mean() > 0.8


def test_a_more_recent_purchase_lowers_churn_probability():
    # CDNOW (no behaviour besides purchases): churn at as_of 1998-07-01, 13 weeks, v = 1998-04-01.
    from features.cdnow import cdnow_to_profile
    from features.io import read_cdnow_transactions

    cdnow = cdnow_to_profile(read_cdnow_transactions(sample=True))
    tables = {"customers": cdnow.customers, "orders": cdnow.orders}
    as_of, horizon = pd.Timestamp("1998-07-01"), 91
    v = as_of - pd.Timedelta(days=horizon)
    families = ("rfm", "transactions")  # CDNOW has no events or attributes
    cache = FeatureCache(_load(tables), as_of.to_pydatetime(), families=families)
    model, before = _train(cache, "churn", horizon, v.to_pydatetime(), n_estimators=100)
    # Each buyer makes one more purchase (a copy of their last one) a week before the cut-off.
    orders = cdnow.orders
    last = orders[orders["ordered_at"] < v].sort_values("ordered_at").groupby("customer_id").tail(1)
    recent = last.assign(ordered_at=v - pd.Timedelta(days=7), order_id=lambda f: "o-new-" + f["order_id"])
    changed_profile = _load({**tables, "orders": pd.concat([orders, recent])})
    changed = FeatureCache(changed_profile, as_of.to_pydatetime(), families=families)
    after = _score(model, changed, "churn", v.to_pydatetime(), horizon).reindex(before.index)
    print(f"churn mean {before.mean():.3f} -> {after.mean():.3f} (lower for {(after < before).mean():.0%})")
    assert after.mean() < before.mean() - 0.1
    assert (after < before).mean() > 0.8
    # Recency itself, not just one purchase more: the same extra purchase made long ago (the
    # day after the customer's first purchase, so counts, amounts and frequency move alike)
    # must lower churn less.
    first = orders[orders["ordered_at"] < v].sort_values("ordered_at").groupby("customer_id").head(1)
    old = last.set_index("customer_id").assign(
        ordered_at=first.set_index("customer_id")["ordered_at"] + pd.Timedelta(days=1)
    ).reset_index().assign(order_id=lambda f: "o-old-" + f["order_id"])
    old = old[old["ordered_at"] < v - pd.Timedelta(days=7)]
    control_profile = _load({**tables, "orders": pd.concat([orders, old])})
    control = FeatureCache(control_profile, as_of.to_pydatetime(), families=families)
    with_old = _score(model, control, "churn", v.to_pydatetime(), horizon).reindex(before.index)
    both = old["customer_id"].unique()
    print(f"churn with an old extra purchase {with_old[both].mean():.3f}, a recent one {after[both].mean():.3f}")
    assert after[both].mean() < with_old[both].mean() - 0.1
    assert (after[both] < with_old[both]).mean() > 0.8
