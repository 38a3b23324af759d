"""Out-of-time examples for the classifiers (DESIGN.md, "Time semantics").

`train --as-of T --horizon H` reads nothing at or after T: every table goes through
`restrict_to_before(profile, T)` first (inside `FeatureCache`), so no code path below can see
a later row. Cut-offs, newest first:

    validation   v  = T - H          features < v, labels in [v, T)        -> metrics
    calibration  c0 = v - H          features < c0, labels in [c0, v)
    LightGBM     c1 = c0 - stride, c2 = c1 - stride, ...  (labels end by c_k + H <= v)

so no training or calibration label reaches past v. With the default stride (= H) the label
windows tile the time line without overlap. `n_training_cutoffs` counts c0, c1, ... (default
4); the sequence stops early when a cut-off is not after the first profile's creation (no
population yet). Phases:

* validation phase: LightGBM on c1..c_{n-1}, calibration on c0, metrics at v;
* served model: shifted one window later - LightGBM on c0..c_{n-1} (all cut-offs <= v - H),
  calibration on v (labels [v, T)); it scores at T.

With a single training cut-off (short histories) the calibration window cannot be a later
one: c0's customers are split by a hash of customer_id (blake2b, so the split is stable
across runs and machines), `single_cutoff_calibration_share` of them calibrate and the rest
train LightGBM. The served model then trains on all of c0 and calibrates on v as above.

Each example row: customer_id, `cutoff`, every feature column (`build_features`), `label`
(0/1: converted for leads, churned for churn; features.labels).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import ibis
import numpy as np
import pandas as pd

from features.errors import CrmScoringError
from features.labels import churn_labels, lead_conversion_labels
from features.pipeline import KEY, FeatureParams, build_features
from features.population import restrict_to_before
from features.profile import Profile
from features.timeutil import parse_horizon, to_utc_naive

Task = Literal["lead", "churn"]
TASKS: tuple[Task, ...] = ("lead", "churn")
LABEL_COLUMN = "label"
CUTOFF_COLUMN = "cutoff"
#: The label column of each task in features.labels.
SOURCE_LABELS: dict[str, str] = {"lead": "converted", "churn": "churned"}

Progress = Callable[[str], None]


class DatasetError(CrmScoringError, ValueError):
    """The profile cannot give out-of-time examples (too short a history, no labels, ...)."""


@dataclass(frozen=True)
class WindowConfig:
    """How many training cut-offs, how far apart, and the single-cut-off calibration split."""

    n_training_cutoffs: int = 4
    stride_days: int | None = None  # None: the horizon (non-overlapping label windows)
    single_cutoff_calibration_share: float = 0.25

    def __post_init__(self) -> None:
        if not (isinstance(self.n_training_cutoffs, int) and self.n_training_cutoffs >= 1):
            raise ValueError(f"WindowConfig.n_training_cutoffs must be >= 1, got {self.n_training_cutoffs!r}")
        if self.stride_days is not None and not (isinstance(self.stride_days, int) and self.stride_days >= 1):
            raise ValueError(f"WindowConfig.stride_days must be a positive integer or None, got {self.stride_days!r}")
        if not 0 < self.single_cutoff_calibration_share < 1:
            share = self.single_cutoff_calibration_share
            raise ValueError(f"WindowConfig.single_cutoff_calibration_share must be in (0, 1), got {share}")


@dataclass(frozen=True)
class CutoffPlan:
    """The cut-offs of one training run (see the module doc)."""

    as_of: datetime
    horizon_days: int
    validation: datetime
    training: tuple[datetime, ...]  # newest first: c0 = v - H, c1, ...

    @property
    def calibration(self) -> datetime:
        return self.training[0]

    @property
    def lightgbm(self) -> tuple[datetime, ...]:
        """Cut-offs LightGBM trains on in the validation phase (c0 itself when it is the only one)."""
        return self.training[1:] or self.training[:1]

    @property
    def single_cutoff(self) -> bool:
        return len(self.training) == 1


def plan_cutoffs(
    as_of: datetime | str, horizon_days: int | str, windows: WindowConfig, data_start: datetime
) -> CutoffPlan:
    """v = T - H; c0 = v - H; c_k = c0 - k * stride while c_k > data_start (at most n cut-offs)."""
    as_of = to_utc_naive(as_of)
    horizon = parse_horizon(horizon_days)
    stride = timedelta(days=windows.stride_days or horizon)
    validation = as_of - timedelta(days=horizon)
    first = validation - timedelta(days=horizon)
    if first <= data_start:
        raise DatasetError(
            f"out-of-time training needs two horizons of history before as_of: the first training "
            f"cut-off {first:%Y-%m-%d} (as_of {as_of:%Y-%m-%d} - 2 x {horizon} days) is not after the "
            f"first profile ({data_start:%Y-%m-%d %H:%M})"
        )
    training = [first]
    while len(training) < windows.n_training_cutoffs and training[-1] - stride > data_start:
        training.append(training[-1] - stride)
    return CutoffPlan(as_of, horizon, validation, tuple(training))


class FeatureCache:
    """Feature tables of one profile truncated before `as_of`, built once per cut-off.

    The lead and churn models of one `train all` share the cut-offs, so they share this
    cache. `profile` is the truncated profile: the only one the training code reads.
    """

    def __init__(
        self,
        profile: Profile,
        as_of: datetime | str,
        params: FeatureParams = FeatureParams(),
        families: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.source = profile
        self.as_of = to_utc_naive(as_of)
        self.profile = restrict_to_before(profile, self.as_of)
        self.params = params
        self.families = tuple(families) if families is not None else None
        self.progress = progress
        self._tables: dict[datetime, pd.DataFrame] = {}
        self._data_start: datetime | None = None

    def matches(self, profile: Profile, as_of: datetime, params: FeatureParams, families: Sequence[str] | None) -> bool:
        return (
            self.source is profile
            and self.as_of == to_utc_naive(as_of)
            and self.params == params
            and self.families == (tuple(families) if families is not None else None)
        )

    @property
    def data_start(self) -> datetime:
        """The first profile's creation instant (cut-offs must be after it)."""
        if self._data_start is None:
            value = self.profile.customers.created_at.min().to_pyarrow().as_py()
            if value is None:
                raise DatasetError(f"the profile has no customer created before {self.as_of:%Y-%m-%d}")
            self._data_start = pd.Timestamp(value).to_pydatetime()
        return self._data_start

    def features(self, cutoff: datetime) -> pd.DataFrame:
        cutoff = to_utc_naive(cutoff)
        if cutoff > self.as_of:
            raise DatasetError(f"cut-off {cutoff} is after the training as_of {self.as_of}")
        if cutoff not in self._tables:
            if self.progress:
                self.progress(f"building features at {cutoff:%Y-%m-%d}")
            expr = self._feature_expression(cutoff)
            self._tables[cutoff] = expr.to_pyarrow().to_pandas()
        return self._tables[cutoff]

    def _feature_expression(self, cutoff: datetime) -> ibis.Table:
        return build_features(self.profile, cutoff, self.params, self.families)


def labels_at(profile: Profile, task: Task, cutoff: datetime, horizon_days: int) -> pd.DataFrame:
    """customer_id, label (0/1) for the task's population at `cutoff`."""
    if task == "lead":
        expr = lead_conversion_labels(profile, cutoff, horizon_days)
    elif task == "churn":
        expr = churn_labels(profile, cutoff, horizon_days)
    else:
        raise DatasetError(f"unknown task {task!r}; expected one of {TASKS}")
    frame = expr.to_pyarrow().to_pandas()
    return pd.DataFrame(
        {KEY: frame[KEY].to_numpy(), LABEL_COLUMN: frame[SOURCE_LABELS[task]].astype("int64").to_numpy()}
    )


def examples_at(cache: FeatureCache, task: Task, cutoff: datetime, horizon_days: int) -> pd.DataFrame:
    """The task's examples at one cut-off: customer_id, cutoff, features..., label."""
    labels = labels_at(cache.profile, task, cutoff, horizon_days)
    features = cache.features(cutoff)
    rows = features.merge(labels, on=KEY, how="inner", validate="one_to_one")
    rows.insert(1, CUTOFF_COLUMN, pd.Timestamp(cutoff))
    return rows.reset_index(drop=True)


def calibration_split(customer_ids: pd.Series, share: float) -> np.ndarray:
    """True for the customers in the calibration part: a stable hash of the id below `share`."""
    def unit(value: str) -> float:
        digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    return np.fromiter((unit(v) < share for v in customer_ids), dtype=bool, count=len(customer_ids))


@dataclass
class OutOfTimeDatasets:
    """Examples of every phase of one run (each with customer_id, cutoff, features, label)."""

    task: Task
    plan: CutoffPlan
    train: pd.DataFrame  # LightGBM, validation phase
    calibration: pd.DataFrame  # calibration, validation phase
    validation: pd.DataFrame  # metrics (cut-off v)
    refit_train: pd.DataFrame  # LightGBM of the served model (every training cut-off)
    refit_calibration: pd.DataFrame  # calibration of the served model (= validation rows)
    notes: list[str] = field(default_factory=list)

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.validation.columns if c not in (KEY, CUTOFF_COLUMN, LABEL_COLUMN)]


def _check_both_classes(frame: pd.DataFrame, what: str) -> None:
    if frame.empty:
        raise DatasetError(f"no {what} examples")
    positives = int(frame[LABEL_COLUMN].sum())
    if positives in (0, len(frame)):
        raise DatasetError(f"every one of the {len(frame)} {what} examples has label {int(positives > 0)}")


def build_datasets(
    cache: FeatureCache, task: Task, horizon_days: int | str, windows: WindowConfig = WindowConfig()
) -> OutOfTimeDatasets:
    """The out-of-time examples of one run at `cache.as_of` (see the module doc)."""
    if task not in TASKS:
        raise DatasetError(f"unknown task {task!r}; expected one of {TASKS}")
    horizon = parse_horizon(horizon_days)
    plan = plan_cutoffs(cache.as_of, horizon, windows, cache.data_start)
    per_cutoff = {c: examples_at(cache, task, c, horizon) for c in (plan.validation, *plan.training)}
    notes: list[str] = []
    if len(plan.training) < windows.n_training_cutoffs:
        notes.append(
            f"{len(plan.training)} training cut-off(s) instead of {windows.n_training_cutoffs}: "
            f"the history starts {cache.data_start:%Y-%m-%d}"
        )
    c0 = per_cutoff[plan.calibration]
    if plan.single_cutoff:
        in_calibration = calibration_split(c0[KEY], windows.single_cutoff_calibration_share)
        train = c0[~in_calibration].reset_index(drop=True)
        calibration = c0[in_calibration].reset_index(drop=True)
        notes.append(
            "one training cut-off: its customers are split by a hash of customer_id "
            f"({windows.single_cutoff_calibration_share:.0%} calibrate, the rest train LightGBM)"
        )
    else:
        train = pd.concat([per_cutoff[c] for c in plan.lightgbm], ignore_index=True)
        calibration = c0
    validation = per_cutoff[plan.validation]
    refit_train = pd.concat([per_cutoff[c] for c in plan.training], ignore_index=True)
    for frame, what in (
        (train, "training"),
        (calibration, "calibration"),
        (validation, "validation"),
    ):
        _check_both_classes(frame, f"{task} {what}")
    return OutOfTimeDatasets(
        task=task,
        plan=plan,
        train=train,
        calibration=calibration,
        validation=validation,
        refit_train=refit_train,
        refit_calibration=validation,
        notes=notes,
    )


def features_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The model input of an example frame: customer_id and the features (no cutoff, no label)."""
    return frame.drop(columns=[c for c in (CUTOFF_COLUMN, LABEL_COLUMN) if c in frame.columns])
