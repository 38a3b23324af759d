"""MLflow tracking: the store, the experiment, and one run (plus one model version) per result.

The only module (with `training.registry`) that talks to MLflow. Nothing happens at import:
`configure(settings)` points MLflow at the store and creates what is missing; commands call
it explicitly.

Store: `sqlite:///<project>/mlruns/mlflow.db` with artifacts under `<project>/mlruns/artifacts`
unless `settings.tracking_uri` or `$MLFLOW_TRACKING_URI` says otherwise (a shared server keeps
its own artifact root).

A run records (DESIGN.md, "MLflow"):
- params: as_of, horizon_days, validation_as_of and the hyper-parameters;
- metrics: `result.metrics` under their own names (val_roc_auc, baseline_<name>_val_roc_auc,
  bgnbd_r, ..., gg_v);
- tags: `crm.model_name`, `crm.data_fingerprint`, `crm.rows.<name>` (row counts), the window
  and the primary metric (`crm.primary_metric`, `crm.greater_is_better`, `crm.label_column`);
- artifacts: `model_card.md` (also the run's description), `tables/<name>.csv|.md`,
  `plots/<name>.png`, `validation/validation.parquet` (the rows the promotion gate scores),
  `feature_columns.json`, `row_counts.json`, `notes.txt`;
- the model (MLflow 3 stores it as a LoggedModel named `model`, linked to the run): a
  `training.pyfunc_model.CrmScoringPyfunc` with a signature (from the feature table's dtypes),
  a 5-row input example, pinned pip requirements and the project's `training` and `features`
  packages as code, registered as a new version of the registered model of the same name
  (tags: window, fingerprint, primary metric and its value).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import math
import os
import pickletools
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pandas as pd

from features.errors import CrmScoringError
from training.results import MODEL_NAMES, TrainingResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from training.config import TrainingSettings

MODEL_ARTIFACT = "model"
MODEL_CARD_ARTIFACT = "model_card.md"
VALIDATION_ARTIFACT = "validation/validation.parquet"
FEATURE_COLUMNS_ARTIFACT = "feature_columns.json"
PLOTS_DIR = "plots"
TABLES_DIR = "tables"

TAG_MODEL_NAME = "crm.model_name"
TAG_FINGERPRINT = "crm.data_fingerprint"
TAG_AS_OF = "crm.as_of"
TAG_HORIZON_DAYS = "crm.horizon_days"
TAG_VALIDATION_AS_OF = "crm.validation_as_of"
TAG_PRIMARY_METRIC = "crm.primary_metric"
TAG_GREATER_IS_BETTER = "crm.greater_is_better"
TAG_LABEL_COLUMN = "crm.label_column"
TAG_ROWS_PREFIX = "crm.rows."
TAG_PRIMARY_VALUE = "crm.primary_metric_value"  # model-version tag
TAG_CURRENCY = "crm.currency"  # the training profile's currency, when its orders name one
TAG_FEATURE_VERSION = "crm.feature_version"  # features.pipeline.FEATURE_DEFINITIONS_VERSION at training
#: MLflow shows this run tag as the run's description.
TAG_RUN_NOTE = "mlflow.note.content"

#: The outcome column of `TrainingResult.validation`: what the gate scores predictions against.
LABEL_COLUMNS: dict[str, str] = {
    "lead_scoring": "label",
    "churn_propensity": "label",
    "customer_ltv": "holdout_purchases",
}

#: Packages the logged model needs at load time whatever else its code imports.
BASE_REQUIREMENTS: tuple[str, ...] = (
    "mlflow",
    "cloudpickle",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "lightgbm",
)
#: The project's own packages, logged as code with the model (so `models:/...` loads anywhere).
CODE_PACKAGES: tuple[str, ...] = ("training", "features")
#: Rows of the validation sample saved as the model's input example.
INPUT_EXAMPLE_ROWS = 5
_UV_AUTODETECT_ENV = "MLFLOW_UV_AUTO_DETECT"
#: Top-level module -> distribution when a module is shipped by several (mlflow-skinny, ...).
_PREFERRED_DISTRIBUTION = {"mlflow": "mlflow", "sklearn": "scikit-learn", "yaml": "PyYAML"}


class TrackingError(CrmScoringError):
    """A result cannot be logged or a run's artifacts cannot be read."""


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


def resolve_settings(settings: TrainingSettings | None) -> TrainingSettings:
    """The given settings, or the defaults read from the environment."""
    if settings is not None:
        return settings
    from training.config import TrainingSettings

    return TrainingSettings()


def tracking_uri(settings: TrainingSettings | None = None) -> str:
    """The tracking URI: the setting, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    return resolve_settings(settings).resolved_tracking_uri()


def local_store_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for other stores or in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    # sqlite:///rel/x.db is relative to the working directory, sqlite:////abs/x.db absolute.
    raw = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    if not raw or raw == ":memory:":
        return None
    return Path(raw)


def artifact_root(settings: TrainingSettings | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: beside a local sqlite store, else the server's choice."""
    db = local_store_path(tracking_uri(settings))
    if db is None:
        return None
    return (db.resolve().parent / "artifacts").as_uri()


def configure(settings: TrainingSettings | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id.

    Creates the local store folder and the experiment (with its artifact location) when
    missing, restores it if it was deleted. Called explicitly by commands and tests.
    """
    import mlflow
    from mlflow import MlflowClient

    settings = resolve_settings(settings)
    uri = tracking_uri(settings)
    db = local_store_path(uri)
    if db is not None:
        db.resolve().parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _store_errors(uri), _store_lock(uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        _open(client)
        _OPENED.add(uri)
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is None:
            return client.create_experiment(settings.experiment_name, artifact_location=artifact_root(settings))
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id


#: Local stores this process has opened (created or migrated) already: later clients skip the lock.
_OPENED: set[str] = set()


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """One process at a time creates or migrates a local sqlite store: MLflow's migrations run
    on first use without a lock, and two at once can leave a store no command can open."""
    db = local_store_path(uri)
    if db is None or sys.platform == "win32":
        yield
        return
    import fcntl

    try:
        # Read-only is enough for flock, so a store shared with other users (whose lock file
        # this user cannot write) can still be read.
        fd = os.open(db.resolve().parent / ".store.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:  # a read-only folder: nothing can create or migrate the store there anyway
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """MLflow's, SQLAlchemy's and alembic's errors on opening a store as one `TrackingError` line."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "alembic"):
            raise TrackingError(f"MLflow store {uri} cannot be used: {first_line(exc)}") from exc
        raise


def _open(client: MlflowClient) -> None:
    """Create (or migrate) the store now, under the caller's lock: both stores behind the
    client open their database lazily, on their first call."""
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)


def client(settings: TrainingSettings | None = None) -> MlflowClient:
    """An MlflowClient on the configured store, opened (a local store's folder is not created)."""
    from mlflow import MlflowClient

    uri = tracking_uri(settings)
    db = local_store_path(uri)
    if uri in _OPENED or db is None or not db.resolve().parent.is_dir():
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    with _store_errors(uri), _store_lock(uri):
        opened = MlflowClient(tracking_uri=uri, registry_uri=uri)
        _open(opened)
    _OPENED.add(uri)
    return opened


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (MLflow messages can span pages)."""
    text = str(getattr(exc, "message", None) or exc)
    return " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(exc).__name__


# --------------------------------------------------------------------------------------
# What a run logs
# --------------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat(sep=" ") if isinstance(value, datetime) else str(value)


def run_params(result: TrainingResult) -> dict[str, str]:
    """The window first, then the hyper-parameters (a clash with different values is an error)."""
    window = {
        "as_of": _iso(result.as_of),
        "horizon_days": str(int(result.horizon_days)),
        "validation_as_of": _iso(result.validation_as_of),
    }
    params = dict(window)
    for key, value in result.params.items():
        text = str(value)
        if key in window and window[key] != text:
            raise TrackingError(f"{result.model_name}: hyper-parameter {key}={text!r} contradicts the window ({window[key]})")
        params[key] = text
    return params


def run_tags(result: TrainingResult) -> dict[str, str]:
    tags = {
        TAG_MODEL_NAME: result.model_name,
        TAG_FINGERPRINT: result.data_fingerprint,
        TAG_AS_OF: _iso(result.as_of),
        TAG_HORIZON_DAYS: str(int(result.horizon_days)),
        TAG_VALIDATION_AS_OF: _iso(result.validation_as_of),
        TAG_PRIMARY_METRIC: result.primary_metric.name,
        TAG_GREATER_IS_BETTER: str(bool(result.primary_metric.greater_is_better)).lower(),
        TAG_LABEL_COLUMN: LABEL_COLUMNS[result.model_name],
    }
    tags.update({f"{TAG_ROWS_PREFIX}{name}": str(int(count)) for name, count in result.row_counts.items()})
    if result.currency is not None:
        tags[TAG_CURRENCY] = result.currency
    if result.feature_version is not None:
        tags[TAG_FEATURE_VERSION] = str(int(result.feature_version))
    return tags


def run_metrics(result: TrainingResult) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in result.metrics.items():
        try:
            metrics[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise TrackingError(f"{result.model_name}: metric {key}={value!r} is not a number") from exc
    return metrics


def _check_result(result: TrainingResult) -> None:
    problems = []
    if result.model_name not in MODEL_NAMES:
        problems.append(f"model_name {result.model_name!r} is not one of {', '.join(MODEL_NAMES)}")
    else:
        label = LABEL_COLUMNS[result.model_name]
        if label not in result.validation.columns:
            problems.append(f"validation has no {label!r} column")
    missing = [c for c in result.feature_columns if c not in result.validation.columns]
    if missing:
        problems.append(f"validation lacks feature column(s) {', '.join(missing[:10])}")
    if not result.feature_columns:
        problems.append("no feature columns")
    if len(result.validation) == 0:
        problems.append("validation has no rows")
    if result.primary_metric.name not in result.metrics:
        problems.append(f"primary metric {result.primary_metric.name!r} is not among the metrics")
    if problems:
        raise TrackingError(f"cannot log {result.model_name}: " + "; ".join(problems))


def _write_artifacts(result: TrainingResult, folder: Path, card: str) -> None:
    """Everything but the model, written into `folder` and logged in one call."""
    (folder / MODEL_CARD_ARTIFACT).write_text(card, encoding="utf-8")
    (folder / FEATURE_COLUMNS_ARTIFACT).write_text(json.dumps(list(result.feature_columns), indent=1), encoding="utf-8")
    (folder / "row_counts.json").write_text(json.dumps(dict(result.row_counts), indent=1), encoding="utf-8")
    if result.notes:
        (folder / "notes.txt").write_text("\n".join(result.notes) + "\n", encoding="utf-8")
    validation = folder / VALIDATION_ARTIFACT
    validation.parent.mkdir(parents=True, exist_ok=True)
    result.validation.to_parquet(validation)
    if result.tables:
        from training.model_card import markdown_table

        tables = folder / TABLES_DIR
        tables.mkdir()
        for name, table in result.tables.items():
            frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
            if not isinstance(frame.index, pd.RangeIndex):
                frame = frame.reset_index()  # a meaningful index (decile, frequency) becomes a column
            frame.to_csv(tables / f"{_safe_name(name)}.csv", index=False)
            (tables / f"{_safe_name(name)}.md").write_text(markdown_table(frame) + "\n", encoding="utf-8")
    if result.figures:
        plots = folder / PLOTS_DIR
        plots.mkdir()
        for name, figure in result.figures.items():
            savefig = getattr(figure, "savefig", None)
            if savefig is None:
                raise TrackingError(f"{result.model_name}: figure {name!r} is not a matplotlib Figure")
            # Figure.savefig renders with Agg for png; pyplot (and its global state) is never involved.
            savefig(plots / f"{_safe_name(name)}.png", format="png", dpi=110, bbox_inches="tight")


def _safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).strip("._")
    if not cleaned:
        raise TrackingError(f"artifact name {name!r} has no usable characters")
    return cleaned


# --------------------------------------------------------------------------------------
# The logged model: wrapper, signature, requirements, code
# --------------------------------------------------------------------------------------


def _signature_sample(result: TrainingResult, rows: int) -> pd.DataFrame:
    frame = result.validation[list(result.feature_columns)]
    if len(frame) > rows:
        # A spread sample, not the head: the head can miss categories and nulls.
        frame = frame.sample(rows, random_state=0).sort_index()
    return frame


def _input_schema(frame: pd.DataFrame) -> Any:
    """The input schema from the feature table's dtypes (not from the values of a sample).

    Inferring from values turns a string column that happens to be all null in the sample
    (e.g. `top_category` among leads) into `Any`, which MLflow then feeds to the model as
    float NaN. Every feature column is required (present); its values may be null.
    """
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, DataType, Schema

    specs = []
    for name in frame.columns:
        dtype = frame[name].dtype
        if pd.api.types.is_bool_dtype(dtype):
            kind = DataType.boolean
        elif pd.api.types.is_integer_dtype(dtype):
            kind = DataType.long if dtype.itemsize > 4 else DataType.integer
        elif pd.api.types.is_float_dtype(dtype):
            kind = DataType.double if dtype.itemsize > 4 else DataType.float
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            kind = DataType.datetime
        elif pd.api.types.is_string_dtype(dtype):
            kind = DataType.string
        else:  # anything unusual: let MLflow infer it from the values
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                specs.extend(infer_signature(frame[[name]]).inputs.inputs)
            continue
        specs.append(ColSpec(kind, name, required=True))
    return Schema(specs)


def _model_signature(wrapper: Any, sample: pd.DataFrame) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    output = wrapper.predict_frame(sample)
    if output.isna().all(axis=None):
        raise TrackingError(f"{wrapper.model_name}: the model predicts only NaN on the validation sample")
    outputs = Schema([ColSpec(DataType.double, name) for name in output.columns])
    return ModelSignature(inputs=_input_schema(sample), outputs=outputs)


def _project_module_files(module_name: str) -> Path | None:
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    return Path(path) if path else None


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported at module level (what loading the module needs), skipping TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()

    def visit(nodes: Iterable[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return names


def _modules_in_pickle(payload: bytes) -> set[str]:
    """Module names the pickle refers to (the classes it needs), read from its opcodes."""
    strings: list[str] = []
    modules: set[str] = set()
    for opcode, arg, _ in pickletools.genops(payload):
        if opcode.name == "GLOBAL" and isinstance(arg, str):
            modules.add(arg.split(" ", 1)[0])
        elif isinstance(arg, str):
            strings.append(arg)
        if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            modules.add(strings[-2])
    return {m for m in modules if m in sys.modules}


def _needed_top_level_modules(wrapper: Any) -> set[str]:
    """Third-party top-level modules the pickled model imports when loaded (directly or via project code)."""
    import cloudpickle

    referenced = _modules_in_pickle(cloudpickle.dumps(wrapper))
    project_root = Path(sys.modules[CODE_PACKAGES[0]].__file__).resolve().parents[1]
    third_party: set[str] = set()
    seen: set[str] = set()
    queue = list(referenced)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        top = name.split(".", 1)[0]
        if top in CODE_PACKAGES:
            # Importing a.b.c imports a and a.b first: scan the packages' __init__ too.
            parts = name.split(".")
            queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))
            path = _project_module_files(name)
            if path is not None and path.suffix == ".py":
                queue.extend(_module_level_imports(path))
        elif top not in sys.stdlib_module_names and top != "__main__" and not _is_under(top, project_root):
            third_party.add(top)
    return third_party


def _is_under(module_name: str, root: Path) -> bool:
    """True for modules of this checkout that are not shipped as code (e.g. tests' helpers)."""
    path = _project_module_files(module_name)
    if path is None:
        return False
    resolved = path.resolve()
    return resolved.is_relative_to(root) and "site-packages" not in resolved.parts


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    # Scans every installed distribution (~0.5 s): once per process is enough.
    return importlib.metadata.packages_distributions()


def _distribution_for(top_level: str, mapping: dict[str, list[str]]) -> str | None:
    if top_level in _PREFERRED_DISTRIBUTION:
        return _PREFERRED_DISTRIBUTION[top_level]
    candidates = mapping.get(top_level) or []
    return candidates[0] if candidates else None


def pip_requirements(wrapper: Any | None = None) -> list[str]:
    """Pinned requirements: the base set plus every distribution the model's code imports at load."""
    names = list(BASE_REQUIREMENTS)
    if wrapper is not None:
        mapping = _packages_distributions()
        for top in sorted(_needed_top_level_modules(wrapper)):
            dist = _distribution_for(top, mapping)
            if dist and dist.lower() not in {n.lower() for n in names}:
                names.append(dist)
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(name)  # not installed here (cannot happen for the base set): leave unpinned
    return pinned


@contextmanager
def _no_uv_autodetect() -> Iterator[None]:
    """Keep MLflow from copying the uv.lock of the *working directory* into the model.

    MLflow 3 does that by default, which makes the artifacts depend on where the command
    runs; the explicit pinned requirements are the model's environment.
    """
    previous = os.environ.get(_UV_AUTODETECT_ENV)
    os.environ[_UV_AUTODETECT_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_UV_AUTODETECT_ENV, None)
        else:
            os.environ[_UV_AUTODETECT_ENV] = previous


def _copy_code(target: Path) -> list[str]:
    """The project packages as plain source (no caches) for `code_paths`."""
    import importlib

    paths = []
    for package in CODE_PACKAGES:
        source = Path(importlib.import_module(package).__file__).parent
        destination = target / package
        shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        paths.append(str(destination))
    return paths


# --------------------------------------------------------------------------------------
# Logging one result
# --------------------------------------------------------------------------------------


def log_training_result(result: TrainingResult, settings: TrainingSettings | None = None) -> tuple[str, str]:
    """Log one result as a run and register its model; returns (run_id, model version)."""
    import mlflow

    from training.model_card import render_model_card
    from training.pyfunc_model import CrmScoringPyfunc

    settings = resolve_settings(settings)
    _check_result(result)
    experiment_id = configure(settings)
    wrapper = CrmScoringPyfunc.for_model(result.model, result.model_name, list(result.feature_columns))
    sample = _signature_sample(result, settings.signature_sample_rows)
    signature = _model_signature(wrapper, sample)
    example = sample.head(INPUT_EXAMPLE_ROWS)
    requirements = pip_requirements(wrapper)
    params, metrics, tags = run_params(result), run_metrics(result), run_tags(result)
    run_name = f"{result.model_name} {result.as_of:%Y-%m-%d} h{int(result.horizon_days)}d"

    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            run_id = run.info.run_id
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            card = render_model_card(result, run_id=run_id)
            with tempfile.TemporaryDirectory(prefix="crm-scoring-run-") as tmp:
                folder = Path(tmp) / "artifacts"
                folder.mkdir()
                _write_artifacts(result, folder, card)
                mlflow.log_artifacts(str(folder))
                code_paths = _copy_code(Path(tmp) / "code")
                with _no_uv_autodetect(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*input example.*")
                    info = mlflow.pyfunc.log_model(
                        name=MODEL_ARTIFACT,
                        python_model=wrapper,
                        signature=signature,
                        input_example=example,
                        pip_requirements=requirements,
                        code_paths=code_paths,
                    )
            mlflow.set_tag(TAG_RUN_NOTE, card)
            # Registered with its tags in one call: the facts `models list` and the gate read.
            registered = mlflow.register_model(info.model_uri, result.model_name, tags=_version_tags(result))
        version = str(registered.version)
        client(settings).update_model_version(result.model_name, version, description=_version_description(result, run_id))
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"logging {result.model_name} to {tracking_uri(settings)} failed: {first_line(exc)}") from exc
    return run_id, version


def _version_tags(result: TrainingResult) -> dict[str, str]:
    primary = result.primary_metric
    return {
        TAG_AS_OF: _iso(result.as_of),
        TAG_HORIZON_DAYS: str(int(result.horizon_days)),
        TAG_VALIDATION_AS_OF: _iso(result.validation_as_of),
        TAG_FINGERPRINT: result.data_fingerprint,
        TAG_PRIMARY_METRIC: primary.name,
        TAG_GREATER_IS_BETTER: str(bool(primary.greater_is_better)).lower(),
        TAG_PRIMARY_VALUE: repr(float(result.metrics[primary.name])),
    } | ({TAG_CURRENCY: result.currency} if result.currency is not None else {}) | (
        {TAG_FEATURE_VERSION: str(int(result.feature_version))} if result.feature_version is not None else {}
    )


def _version_description(result: TrainingResult, run_id: str) -> str:
    primary = result.primary_metric
    value = float(result.metrics[primary.name])
    return (
        f"{result.model_name} as of {result.as_of:%Y-%m-%d}, horizon {int(result.horizon_days)} d: "
        f"{primary.name} = {value:.4f}" + ("" if math.isfinite(value) else " (not finite)") + f" (run {run_id})"
    )


# --------------------------------------------------------------------------------------
# Reading runs back
# --------------------------------------------------------------------------------------


def download_validation(run_id: str, settings: TrainingSettings | None = None) -> pd.DataFrame:
    """The validation rows a run logged (what the promotion gate scores)."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=VALIDATION_ARTIFACT, tracking_uri=tracking_uri(settings)
        )
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise TrackingError(f"run {run_id} has no readable {VALIDATION_ARTIFACT}: {first_line(exc)}") from exc
    return pd.read_parquet(local)


def download_plots(run_id: str, destination: Path, settings: TrainingSettings | None = None) -> dict[str, Path]:
    """The run's PNG plots, downloaded into `destination`: name -> local file (empty when none)."""
    import mlflow

    uri = tracking_uri(settings)
    names = [a.path for a in client(settings).list_artifacts(run_id, PLOTS_DIR) if a.path.endswith(".png")]
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    plots = {}
    for artifact in sorted(names):
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(destination), tracking_uri=uri
        )
        plots[Path(artifact).stem] = Path(local)
    return plots


def read_text_artifact(run_id: str, artifact_path: str, settings: TrainingSettings | None = None) -> str:
    """A small text artifact of a run (e.g. the model card)."""
    import mlflow

    try:
        return mlflow.artifacts.load_text(_artifact_uri(run_id, artifact_path, settings))
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise TrackingError(f"run {run_id} has no readable {artifact_path}: {first_line(exc)}") from exc


def _artifact_uri(run_id: str, artifact_path: str, settings: TrainingSettings | None) -> str:
    run = client(settings).get_run(run_id)
    return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
