"""PropensityModel: LightGBM with native categoricals, calibrated on a later window, with reasons.

Used by lead_scoring and churn_propensity. A scikit-learn style estimator (`__init__` stores
hyper-parameters only, `fit` returns self, learned state ends in `_`), a plain picklable
Python object (no lambdas, no open handles) so MLflow can pickle it inside a pyfunc.

Inputs are feature tables as built by `features.pipeline` (pandas): every column except
`key_column` (customer_id) is a feature. The feature columns are fixed at `fit`; `predict_*`
select them by name, so extra columns (ids, labels, PII) are ignored and a missing one is an
error.

Encoding:

* string / object / category columns are categorical, handled natively by LightGBM: the
  categories are learned at fit (the `max_categories` most frequent values, ties by name,
  stored sorted) and stored, so the integer codes are the same at predict. A value not
  among them (unseen, or beyond the cap) becomes NaN, which LightGBM treats as missing;
* booleans become 0/1, every other column float64 (nulls stay NaN: "never happened" is
  information LightGBM uses directly).

Calibration (why a later window): LightGBM is trained on older cut-offs and its scores drift
with the base rate (6-11 % of leads converted, depending on the quarter, on the synthetic
data). A one-dimensional map fitted on the *calibration* rows (the cut-off just before the
validation one) re-anchors the probabilities to the most recent behaviour. Methods:

* `"platt"` (default): logistic regression of the label on LightGBM's raw margin (two
  parameters). It is strictly increasing, so ranks, AUC and reason signs are unchanged, it
  does not tie distinct scores (percentile tiers stay fine-grained), and two parameters are
  stable on small calibration windows (~1,000 converting leads). Measured on the synthetic
  profile (30k customers) it keeps ECE around 0.01 (churn) and 0.005 (leads) out of time;
* `"isotonic"`: monotone step function (scikit-learn's IsotonicRegression) on the margin.
  More flexible but ties scores within steps (coarser percentiles, AUC can drop slightly):
  use it when the margin is clearly not logistic-shaped and the window is large;
* `"none"`: LightGBM's own probabilities.

Reasons (`explain`): LightGBM's `pred_contrib=True` (TreeSHAP) contributions on the raw
margin (log-odds of the *uncalibrated* model; the calibration map is increasing, so a
positive contribution raises the served probability too). The top `top_k` by absolute
size, each with the input value and a short text from `training.reasons`.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression

from features.errors import CrmScoringError
from training.reasons import reason_text

CalibrationMethod = Literal["platt", "isotonic", "none"]
CALIBRATION_METHODS: tuple[str, ...] = ("platt", "isotonic", "none")
OUTPUT_COLUMN = "probability"


class ClassifierError(CrmScoringError):
    """Base class of the propensity model's errors."""


class ClassifierInputError(ClassifierError, ValueError):
    """Training or scoring data the model cannot use (missing columns, one class, wrong types)."""


@dataclass(frozen=True)
class PlattScaling:
    """p = sigmoid(slope * margin + intercept), fitted by maximum likelihood."""

    slope: float
    intercept: float

    @classmethod
    def fit(cls, margin: np.ndarray, y: np.ndarray) -> PlattScaling:
        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = theta[0] * margin + theta[1]
            # -log-likelihood and its gradient; log_expit is stable for large |z|.
            value = -np.sum(y * log_expit(z) + (1 - y) * log_expit(-z))
            residual = expit(z) - y
            return float(value), np.array([np.sum(residual * margin), np.sum(residual)])

        start = np.array([1.0, 0.0])
        result = minimize(loss, start, jac=True, method="BFGS")
        if not np.all(np.isfinite(result.x)):
            raise ClassifierError(f"Platt scaling did not converge ({result.message})")
        return cls(float(result.x[0]), float(result.x[1]))

    def predict(self, margin: np.ndarray) -> np.ndarray:
        return expit(self.slope * margin + self.intercept)


@dataclass(frozen=True)
class IsotonicCalibration:
    """Monotone map from the margin to a probability (scikit-learn's IsotonicRegression)."""

    regression: IsotonicRegression

    @classmethod
    def fit(cls, margin: np.ndarray, y: np.ndarray) -> IsotonicCalibration:
        regression = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        return cls(regression.fit(margin, y))

    def predict(self, margin: np.ndarray) -> np.ndarray:
        return np.asarray(self.regression.predict(margin), dtype="float64")


@dataclass(frozen=True)
class NoCalibration:
    """LightGBM's own probability, sigmoid(margin)."""

    def predict(self, margin: np.ndarray) -> np.ndarray:
        return expit(margin)


Calibrator = PlattScaling | IsotonicCalibration | NoCalibration


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    return bool(
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
    )


@functools.lru_cache(maxsize=256)
def _is_numeric_dtype(dtype: Any) -> bool:
    """pandas' is_numeric_dtype, cached per dtype (it runs for every feature column of every call)."""
    return bool(pd.api.types.is_numeric_dtype(dtype))


@functools.lru_cache(maxsize=256)
def _category_lookup(categories: tuple[str, ...]) -> dict[str, int]:
    """The fitted categories' codes by value (built once per column)."""
    return {value: code for code, value in enumerate(categories)}


#: Up to this many rows (an API request's customers), `_matrix` reads the frame once as
#: Python objects (every numeric column in one conversion, categories looked up in a dict);
#: above it (batch scoring), column by column with pandas' vectorised conversions. Both give
#: the same matrix and reasons (tested).
_SMALL_ROWS = 256


def _category_codes(column: pd.Series, categories: tuple[str, ...], small: bool) -> np.ndarray:
    """Code of each value among the categories as floats; NaN when missing, unseen or beyond the cap."""
    values = _as_strings(column)
    if small:
        return _text_codes(values.to_numpy(dtype=object), categories)
    codes = pd.Categorical(values.where(values.isin(categories)), categories=list(categories)).codes
    return np.where(codes < 0, np.nan, codes)


def _text_codes(values: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
    """`_category_codes` of a few values that are strings or missing (a Python loop: no pandas set-up)."""
    lookup = _category_lookup(categories)
    codes = np.array([lookup.get(v, -1) if isinstance(v, str) else -1 for v in values], dtype=np.int64)
    return np.where(codes < 0, np.nan, codes)


@functools.lru_cache(maxsize=256)
def _holds_text(dtype: Any) -> bool:
    """Whether a column of this dtype holds str values (or missing ones) as they are: `_as_strings` keeps it."""
    return bool(pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype))


def _parsed_numbers(column: pd.Series) -> tuple[np.ndarray, bool]:
    """A non-numeric column parsed as float64 (NaN where null or unparsable), and whether every value parsed."""
    parsed = pd.to_numeric(column, errors="coerce")
    return parsed.to_numpy(dtype="float64", na_value=np.nan), not (parsed.isna() & column.notna()).any()


@dataclass(frozen=True)
class _Encoded:
    """A frame as LightGBM reads it (`PropensityModel._matrix`), its columns' positions by name
    and, when the frame was small, its values as Python objects (reasons show them)."""

    matrix: np.ndarray
    positions: dict[str, int]
    values: np.ndarray | None


def _is_boolean(series: pd.Series) -> bool:
    return bool(pd.api.types.is_bool_dtype(series.dtype))


def _labels(y: ArrayLike, what: str) -> np.ndarray:
    values = pd.Series(np.asarray(y)).astype("float64").to_numpy()
    if np.isnan(values).any() or not np.isin(values, (0.0, 1.0)).all():
        raise ClassifierInputError(f"{what} labels must be 0/1 without nulls")
    if values.min() == values.max():
        raise ClassifierInputError(f"every {what} label is {int(values[0])}: a propensity model needs both classes")
    return values.astype("int64")


class PropensityModel(ClassifierMixin, BaseEstimator):
    """Calibrated LightGBM propensity (probability of the positive class) with per-record reasons.

    Parameters mirror LightGBM's scikit-learn API (`n_estimators`, `learning_rate`,
    `num_leaves`, `min_child_samples`, `subsample`, `subsample_freq`, `colsample_bytree`,
    `reg_lambda`, `random_state`, `n_jobs`), plus `calibration` (see the module doc),
    `max_categories` (per categorical column) and `key_column` (never a feature).

    Learned attributes: feature_columns_, categorical_columns_, categories_ (column -> the
    categories, in code order), estimator_ (the fitted LGBMClassifier), calibrator_,
    classes_, n_features_in_, feature_names_in_, n_train_, n_calibration_,
    train_positive_rate_, calibration_positive_rate_.
    """

    def __init__(
        self,
        n_estimators: int = 400,
        learning_rate: float = 0.03,
        num_leaves: int = 7,
        min_child_samples: int = 50,
        subsample: float = 0.8,
        subsample_freq: int = 1,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        random_state: int = 0,
        n_jobs: int = 1,
        calibration: CalibrationMethod = "platt",
        max_categories: int = 50,
        key_column: str = "customer_id",
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.calibration = calibration
        self.max_categories = max_categories
        self.key_column = key_column

    # ---- fitting -------------------------------------------------------------------------

    def fit(
        self,
        X: pd.DataFrame,
        y: ArrayLike,
        calibration_X: pd.DataFrame | None = None,
        calibration_y: ArrayLike | None = None,
    ) -> PropensityModel:
        """Train LightGBM on (X, y), then fit the calibration map on (calibration_X, calibration_y).

        The calibration rows should come from a later window than the training rows (see
        `training.datasets`). They are required unless `calibration="none"`.
        """
        import lightgbm as lgb  # heavy import kept out of module import

        self._check_hyperparameters()
        if not isinstance(X, pd.DataFrame):
            raise ClassifierInputError(f"X must be a pandas DataFrame, got {type(X).__name__}")
        train_y = _labels(y, "training")
        if len(train_y) != len(X):
            raise ClassifierInputError(f"{len(X)} training rows but {len(train_y)} labels")
        columns = [c for c in X.columns if c != self.key_column]
        if not columns:
            raise ClassifierInputError("X has no feature column")
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)  # a refit must not keep a previous fit's state

        categorical = [c for c in columns if _is_categorical(X[c])]
        self.feature_columns_ = list(columns)
        self.categorical_columns_ = categorical
        self.categories_ = {c: self._learn_categories(X[c]) for c in categorical}
        self.feature_names_in_ = np.array(columns, dtype=object)
        self.n_features_in_ = len(columns)
        self.classes_ = np.array([0, 1])

        estimator = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=self.subsample_freq,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            deterministic=True,  # same data + params + threads -> the same trees
            force_col_wise=True,
            verbose=-1,
        )
        estimator.fit(self._encode(X), train_y, categorical_feature=categorical or "auto")
        self.estimator_ = estimator
        self.n_train_ = len(train_y)
        self.train_positive_rate_ = float(train_y.mean())

        if self.calibration == "none":
            self.calibrator_: Calibrator = NoCalibration()
            self.n_calibration_ = 0
            self.calibration_positive_rate_ = math.nan
            return self
        if calibration_X is None or calibration_y is None:
            raise ClassifierInputError(
                f"calibration={self.calibration!r} needs calibration_X and calibration_y (rows of a later window)"
            )
        cal_y = _labels(calibration_y, "calibration")
        if len(cal_y) != len(calibration_X):
            raise ClassifierInputError(f"{len(calibration_X)} calibration rows but {len(cal_y)} labels")
        margin = self._margin(calibration_X)
        self.calibrator_ = (PlattScaling if self.calibration == "platt" else IsotonicCalibration).fit(margin, cal_y)
        self.n_calibration_ = len(cal_y)
        self.calibration_positive_rate_ = float(cal_y.mean())
        return self

    def _check_hyperparameters(self) -> None:
        problems = []
        if self.calibration not in CALIBRATION_METHODS:
            problems.append(f"calibration must be one of {CALIBRATION_METHODS}, got {self.calibration!r}")
        if not (isinstance(self.max_categories, int) and self.max_categories >= 1):
            problems.append(f"max_categories must be a positive integer, got {self.max_categories!r}")
        if not (isinstance(self.n_estimators, int) and self.n_estimators >= 1):
            problems.append(f"n_estimators must be a positive integer, got {self.n_estimators!r}")
        if problems:
            raise ClassifierInputError("PropensityModel: " + "; ".join(problems))

    def _learn_categories(self, column: pd.Series) -> list[str]:
        counts = _as_strings(column).dropna().value_counts()
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: self.max_categories]
        return sorted(value for value, _ in ranked)

    # ---- encoding ------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise NotFittedError("This PropensityModel is not fitted yet: call fit() first.")

    def _check_calibrated(self) -> None:
        if not hasattr(self, "calibrator_"):
            raise NotFittedError("This PropensityModel is not fitted yet: call fit() first.")

    def _check_input(self, X: pd.DataFrame) -> dict[str, int]:
        """X is a frame with every feature column; returns each column's position by name."""
        if not isinstance(X, pd.DataFrame):
            raise ClassifierInputError(f"X must be a pandas DataFrame, got {type(X).__name__}")
        # A list first: iterating a pandas Index of strings costs ~1 us a name.
        positions = {name: p for p, name in enumerate(X.columns.tolist())}
        missing = [c for c in self.feature_columns_ if c not in positions]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ClassifierInputError(f"input lacks feature column(s) {shown}")
        return positions

    def _encode(self, X: pd.DataFrame) -> pd.DataFrame:
        """The model's input frame (fit): its feature columns in fit order, typed as at fit."""
        self._check_input(X)
        columns: dict[str, Any] = {}
        bad: list[str] = []
        for name in self.feature_columns_:
            column = X[name]
            if name in self.categories_:
                known = self.categories_[name]
                values = _as_strings(column)
                # Unseen values (and values beyond the category cap) become missing.
                columns[name] = pd.Categorical(values.where(values.isin(known)), categories=known)
            elif _is_boolean(column):
                columns[name] = column.astype("float64").to_numpy()
            elif pd.api.types.is_numeric_dtype(column.dtype):
                columns[name] = column.to_numpy(dtype="float64", na_value=np.nan)
            else:
                numeric = pd.to_numeric(column, errors="coerce")
                if (numeric.isna() & column.notna()).any():
                    bad.append(name)
                columns[name] = numeric.to_numpy(dtype="float64", na_value=np.nan)
        if bad:
            raise ClassifierInputError(f"non-numeric values in numeric feature column(s) {', '.join(bad)}")
        return pd.DataFrame(columns, index=X.index)

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """What LightGBM predicts on: a float64 matrix, the feature columns in fit order.

        The numbers LightGBM itself makes of `_encode(X)` (a categorical becomes its code
        among the fitted categories, NaN when missing or unseen), built with a few numpy
        operations: one-row scoring spent most of its time building `_encode`'s frame and in
        LightGBM's own pandas conversion (~10 ms a call). Equality is tested.
        """
        return self._encoded(X).matrix

    def _encoded(self, X: pd.DataFrame) -> _Encoded:
        """`_matrix(X)`, and X's values as Python objects when X is small."""
        positions = self._check_input(X)
        dtypes = X.dtypes.tolist()
        # A few rows (an API request's customers) are read once as a matrix of Python objects:
        # a column then costs numpy indexing instead of a pandas selection.
        values = X.to_numpy(dtype=object) if len(X) <= _SMALL_ROWS else None
        matrix = np.empty((len(X), len(self.feature_columns_)), dtype="float64")
        from_values: list[int] = []  # numeric features read from `values` in one conversion
        bad: list[str] = []
        for j, name in enumerate(self.feature_columns_):
            dtype = dtypes[positions[name]]
            if name in self.categories_:
                categories = tuple(self.categories_[name])
                if values is not None and _holds_text(dtype):  # str or missing, as `_as_strings` leaves them
                    matrix[:, j] = _text_codes(values[:, positions[name]], categories)
                else:
                    matrix[:, j] = _category_codes(X[name], categories, small=values is not None)
            elif values is not None and isinstance(dtype, np.dtype) and dtype.kind in "biuf":  # missing can only be NaN
                from_values.append(j)
            elif _is_numeric_dtype(dtype):  # booleans included: 0/1; nullable types' NA becomes NaN
                matrix[:, j] = X[name].to_numpy(dtype="float64", na_value=np.nan)
            else:
                matrix[:, j], parsed = _parsed_numbers(X[name])
                if not parsed:
                    bad.append(name)
        if bad:
            raise ClassifierInputError(f"non-numeric values in numeric feature column(s) {', '.join(bad)}")
        if values is not None and from_values:
            sources = [positions[self.feature_columns_[j]] for j in from_values]
            matrix[:, from_values] = values[:, sources].astype("float64")
        return _Encoded(matrix, positions, values)

    def _booster_predict(self, matrix: np.ndarray, **kind: bool) -> np.ndarray:
        """LightGBM's booster on the matrix, with the estimator's thread count (`n_jobs`)."""
        self._check_fitted()
        n_jobs = self.estimator_.n_jobs  # the attribute: get_params() introspects signatures on every call
        if n_jobs is None or n_jobs == 0:
            threads = 0  # LightGBM's default (OpenMP's)
        else:
            threads = n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)  # scikit-learn's meaning of -1, -2, ...
        return np.asarray(self.estimator_.booster_.predict(matrix, num_threads=threads, **kind), dtype="float64")

    def _margin(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self._booster_predict(self._matrix(X), raw_score=True)

    # ---- predictions ---------------------------------------------------------------------

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """LightGBM's raw margin (log-odds before calibration) per row: the model's ranking
        (Platt scaling keeps it; isotonic calibration may tie some scores). scikit-learn's name."""
        return self._margin(X)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """n x 2 array: P(negative), P(positive) (calibrated)."""
        p = self.predict_values(X)[OUTPUT_COLUMN]
        return np.column_stack([1.0 - p, p])

    def predict_values(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """`predict_frame(X)`'s output column as an array, without the frame (what serving reads)."""
        self._check_calibrated()
        return {OUTPUT_COLUMN: self._probability(self._matrix(X))}

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """0/1 at probability 0.5 (scikit-learn's contract; campaigns rank by probability instead)."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype("int64")

    def predict_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """Column `probability` per row of X (same index; X's customer_id first when it has one)."""
        out = pd.DataFrame(index=X.index)
        if self.key_column in X.columns:
            out[self.key_column] = X[self.key_column].to_numpy()
        out[OUTPUT_COLUMN] = self.predict_values(X)[OUTPUT_COLUMN]
        return out

    def explain(self, X: pd.DataFrame, top_k: int = 3) -> list[list[dict[str, Any]]]:
        """Per row, the `top_k` largest contributions (by absolute size) to the raw margin.

        Each is {feature, value, contribution, text}: the input value (None when missing),
        the TreeSHAP contribution in log-odds (positive raises the probability) and a short
        readable text. Features contributing exactly 0 are left out.
        """
        self._check_top_k(top_k)
        self._check_fitted()
        return self._reasons(X, self._encoded(X), top_k)

    def predict_with_reasons(self, X: pd.DataFrame, top_k: int = 3) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        """`predict_proba(X)[:, 1]` and `explain(X, top_k)` from one encoding of X (what scoring calls)."""
        self._check_top_k(top_k)
        self._check_calibrated()
        encoded = self._encoded(X)
        return self._probability(encoded.matrix), self._reasons(X, encoded, top_k)

    def _probability(self, matrix: np.ndarray) -> np.ndarray:
        """The calibrated positive-class probability of each row of the matrix."""
        return np.clip(self.calibrator_.predict(self._booster_predict(matrix, raw_score=True)), 0.0, 1.0)

    @staticmethod
    def _check_top_k(top_k: int) -> None:
        if top_k < 1:
            raise ClassifierInputError(f"top_k must be >= 1, got {top_k}")

    def _reasons(self, X: pd.DataFrame, encoded: _Encoded, top_k: int) -> list[list[dict[str, Any]]]:
        contributions = self._booster_predict(encoded.matrix, pred_contrib=True)
        contributions = contributions[:, : len(self.feature_columns_)]  # the last column is the bias
        k = min(top_k, len(self.feature_columns_))
        # Largest |contribution| first; ties keep the feature order (stable sort).
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(contributions, order, axis=1)
        # The input values of the features that are reasons, read in one take of those columns.
        shown = [self.feature_columns_[j] for j in np.unique(order[top != 0.0])]
        columns = [encoded.positions[name] for name in shown]
        values = encoded.values[:, columns] if encoded.values is not None else X.iloc[:, columns].to_numpy(dtype=object)
        column_of = {name: i for i, name in enumerate(shown)}
        result: list[list[dict[str, Any]]] = []
        # Python lists: indexing numpy arrays element by element costs more than the rest.
        for features, sizes, row_values in zip(order.tolist(), top.tolist(), values.tolist(), strict=True):
            reasons = []
            for j, contribution in zip(features, sizes, strict=True):
                if contribution == 0.0:
                    continue
                feature = self.feature_columns_[j]
                value = _plain_value(row_values[column_of[feature]])
                reasons.append({"feature": feature, "value": value, "contribution": contribution, "text": reason_text(feature, value)})
            result.append(reasons)
        return result

    def feature_importance(self, kind: Literal["gain", "split"] = "gain") -> pd.Series:
        """LightGBM's feature importance per feature column, largest first."""
        self._check_fitted()
        values = self.estimator_.booster_.feature_importance(importance_type=kind)
        return pd.Series(values, index=self.feature_columns_, name=f"importance_{kind}").sort_values(
            ascending=False, kind="stable"
        )

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        return tags


def _as_strings(column: pd.Series) -> pd.Series:
    """Category values as strings (as learned at fit), nulls kept as nulls."""
    if _holds_text(column.dtype):
        return column
    text = column.astype("object")
    return text.where(column.isna(), text.astype(str)).where(column.notna(), None)


def _plain_value(value: Any) -> Any:
    """A JSON-friendly Python scalar: None for missing, int for whole numbers, float, bool or str."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return float(value)
    return str(value)
