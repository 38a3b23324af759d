"""MLflow tracking: the store, what one run records, and the logged pyfunc model.

One temporary store per module (never the repository's mlruns/); fake results from
`tests.training.fake_results` stand in for the training code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.training.fake_results import FEATURES, classifier_result, ltv_result, temp_store
from training.config import TrainingSettings
from training.model_card import markdown_table, render_model_card

pytestmark = [
    # MLflow 3.17 on pandas 3 / SQLAlchemy 2: harmless deprecations inside MLflow.
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> TrainingSettings:
    return temp_store(tmp_path_factory.mktemp("tracking-project"))


@pytest.fixture(scope="module")
def logged(settings: TrainingSettings):  # type: ignore[no-untyped-def]
    from training.tracking import log_training_result

    result = classifier_result(["x1", "x2"], seed=3)
    run_id, version = log_training_result(result, settings)
    return result, run_id, version


# ---- settings and store ----------------------------------------------------------------


def test_tracking_uri_default_env_and_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CRMSCORE_TRACKING_URI", raising=False)
    monkeypatch.setenv("CRMSCORE_PROJECT_DIR", str(tmp_path))
    assert TrainingSettings().resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert TrainingSettings().resolved_tracking_uri() == "http://mlflow.internal:5000"
    assert TrainingSettings(tracking_uri="sqlite:////x/y.db").resolved_tracking_uri() == "sqlite:////x/y.db"
    monkeypatch.setenv("CRMSCORE_PROMOTION_TOLERANCE_AUC", "0.01")
    assert TrainingSettings().promotion_tolerance_auc == 0.01
    assert list(tmp_path.iterdir()) == []  # settings never touch the disk


def test_artifact_root_beside_sqlite_store_and_server_default(tmp_path: Path) -> None:
    from training.tracking import artifact_root

    local = TrainingSettings(project_dir=tmp_path, tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert artifact_root(local) == (tmp_path / "mlruns" / "artifacts").resolve().as_uri()
    assert artifact_root(TrainingSettings(tracking_uri="http://mlflow.internal:5000")) is None


def test_configure_creates_the_experiment_once(settings: TrainingSettings) -> None:
    from training.tracking import client, configure

    first, second = configure(settings), configure(settings)
    assert first == second
    experiment = client(settings).get_experiment(first)
    assert experiment.name == "crm-scoring"
    assert experiment.artifact_location == (Path(settings.project_dir) / "mlruns" / "artifacts").resolve().as_uri()


def test_imports_create_nothing_and_do_not_load_mlflow(tmp_path: Path) -> None:
    code = (
        "import sys, training.config, training.tracking, training.registry, training.model_card, serving.cli,"
        " serving.engine, serving.batch, serving.scoring;"
        "print('mlflow' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # MLflow (~2 s) is imported only when a command needs it
    assert list(tmp_path.iterdir()) == []


def test_commands_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """MLflow creates and migrates a sqlite store on first use without a lock: three at once
    failed (tables already there, alembic rows missing) and could leave it unusable."""
    code = textwrap.dedent(
        f"""
        import logging; logging.disable(logging.WARNING)
        from training.config import TrainingSettings
        from training.tracking import configure
        configure(TrainingSettings(project_dir={str(tmp_path)!r}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "CRMSCORE_TRACKING_URI")}
    runs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors


def test_a_file_that_is_not_a_store_is_one_line(tmp_path: Path) -> None:
    from training.tracking import TrackingError, configure

    garbage = tmp_path / "mlflow.db"
    garbage.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(TrackingError, match=r"^MLflow store sqlite:///.*mlflow.db cannot be used: .*file is not a database$"):
        configure(TrainingSettings(project_dir=tmp_path, tracking_uri=f"sqlite:///{garbage}"))


# ---- one run ---------------------------------------------------------------------------


def test_run_records_params_metrics_tags(settings: TrainingSettings, logged) -> None:  # type: ignore[no-untyped-def]
    from training.tracking import client

    result, run_id, _ = logged
    run = client(settings).get_run(run_id)
    params, tags = run.data.params, run.data.tags
    assert params["as_of"] == "2025-07-01 00:00:00"
    assert params["horizon_days"] == "90"
    assert params["validation_as_of"] == "2025-04-02 00:00:00"
    assert params["n_estimators"] == "25" and params["columns"] == "x1,x2"
    assert run.data.metrics == pytest.approx(result.metrics)  # every metric under its own name
    assert tags["crm.model_name"] == "churn_propensity"
    assert tags["crm.data_fingerprint"] == result.data_fingerprint
    assert tags["crm.rows.train"] == "800" and tags["crm.rows.validation"] == "600"
    assert tags["crm.primary_metric"] == "val_roc_auc" and tags["crm.greater_is_better"] == "true"
    assert tags["mlflow.note.content"].startswith("# Model card: churn_propensity")


def test_run_artifacts(settings: TrainingSettings, logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from training.tracking import download_plots, download_validation, read_text_artifact

    result, run_id, _ = logged
    files = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path), tracking_uri=settings.resolved_tracking_uri())
    names = {p.relative_to(files).as_posix() for p in Path(files).rglob("*") if p.is_file()}
    expected = {
        "model_card.md",
        "feature_columns.json",
        "row_counts.json",
        "notes.txt",
        "validation/validation.parquet",
        "tables/lift.csv",
        "tables/lift.md",
        "plots/roc.png",
        "plots/calibration.png",
    }  # (MLflow 3 keeps the model itself as a LoggedModel beside the run, read through models:/)
    assert expected <= names
    assert json.loads((Path(files) / "feature_columns.json").read_text()) == FEATURES
    assert (Path(files) / "plots" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (Path(files) / "tables" / "lift.md").read_text().startswith("| decile | lift |")
    pd.testing.assert_frame_equal(download_validation(run_id, settings), result.validation)
    assert set(download_plots(run_id, tmp_path / "plots", settings)) == {"roc", "calibration"}
    card = read_text_artifact(run_id, "model_card.md", settings)
    for section in ("## Window", "## Data", "## Metrics", "## Baselines", "## Intended use", "## Limits"):
        assert section in card


def test_model_version_registered_with_tags(settings: TrainingSettings, logged) -> None:  # type: ignore[no-untyped-def]
    from training.tracking import client

    result, run_id, version = logged
    mv = client(settings).get_model_version("churn_propensity", version)
    assert mv.run_id == run_id
    assert mv.tags["crm.primary_metric"] == "val_roc_auc"
    assert float(mv.tags["crm.primary_metric_value"]) == result.metrics["val_roc_auc"]
    assert mv.tags["crm.as_of"] == "2025-07-01 00:00:00"
    assert mv.tags["crm.currency"] == "USD"  # scoring refuses a profile in another currency
    assert mv.tags["crm.feature_version"] == "2"  # serving refuses a model of other feature definitions


def test_logged_model_signature_requirements_and_code(settings: TrainingSettings, logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import importlib.metadata

    import mlflow

    _, _, version = logged
    uri = f"models:/churn_propensity/{version}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == FEATURES
    # Types come from the feature table's dtypes, not from sampled values; every column is required.
    types = {spec.name: (spec.type.name, spec.required) for spec in info.signature.inputs.inputs}
    assert types == {
        "x1": ("double", True),
        "x2": ("double", True),
        "noise": ("double", True),
        "orders_count": ("long", True),
        "segment": ("string", True),
    }
    assert info.signature.outputs.input_names() == ["probability"]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    requirements = (local / "requirements.txt").read_text().split()
    for dist in ("mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "scipy", "cloudpickle"):
        assert f"{dist}=={importlib.metadata.version(dist)}" in requirements
    assert (local / "code" / "training" / "pyfunc_model.py").is_file()
    assert (local / "code" / "features" / "errors.py").is_file()
    assert not list(local.rglob("__pycache__"))
    assert not (local / "uv.lock").exists()  # the explicit requirements are the environment


def test_pyfunc_returns_probabilities(settings: TrainingSettings, logged) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    result, _, version = logged
    model = mlflow.pyfunc.load_model(f"models:/churn_propensity/{version}")
    features = result.validation[FEATURES]
    predicted = model.predict(features)
    assert list(predicted.columns) == ["probability"]
    expected = result.model.predict_proba(features)[:, 1]
    np.testing.assert_allclose(predicted["probability"].to_numpy(), expected, rtol=0, atol=1e-12)
    # Extra columns (ids, labels) are ignored; row order is kept.
    shuffled = result.validation.sample(frac=1.0, random_state=1)
    again = model.predict(shuffled[FEATURES])["probability"].to_numpy()
    np.testing.assert_allclose(again, result.model.predict_proba(shuffled[FEATURES])[:, 1], atol=1e-12)


def test_ltv_pyfunc_returns_the_ltv_outputs(settings: TrainingSettings) -> None:
    import mlflow

    from training.tracking import client, log_training_result

    result = ltv_result(1.0)
    run_id, version = log_training_result(result, settings)
    model = mlflow.pyfunc.load_model(f"models:/customer_ltv/{version}")
    features = result.validation[result.feature_columns]
    predicted = model.predict(features)
    expected = result.model.predict_frame(features)
    assert list(predicted.columns) == ["p_alive", "expected_purchases", "expected_order_value", "clv"]
    np.testing.assert_allclose(predicted.to_numpy(), expected.to_numpy(), atol=1e-12)
    run = client(settings).get_run(run_id)
    for name in ("bgnbd_r", "bgnbd_alpha", "bgnbd_a", "bgnbd_b", "gg_p", "gg_q", "gg_v"):
        assert run.data.metrics[name] == result.metrics[name]
    assert run.data.tags["crm.label_column"] == "holdout_purchases"


def test_model_loads_in_a_fresh_process_from_its_logged_code(settings: TrainingSettings, logged, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`models:/...` must load where only the model's own code is importable (not this checkout)."""
    result, _, version = logged
    # The fake estimator lives in tests/: give the child a copy of it, and nothing else of the repo.
    helpers = tmp_path / "helpers"
    (helpers / "tests" / "training").mkdir(parents=True)
    (helpers / "tests" / "__init__.py").write_text("")
    (helpers / "tests" / "training" / "__init__.py").write_text("")
    shutil.copy(REPO / "tests" / "training" / "fake_results.py", helpers / "tests" / "training")
    features = tmp_path / "features.parquet"
    result.validation[FEATURES].to_parquet(features)
    script = textwrap.dedent(
        f"""
        import sys
        repo = {str(REPO)!r}
        sys.path = [{str(helpers)!r}] + [p for p in sys.path if p not in (repo, '')]
        import mlflow, pandas as pd
        mlflow.set_registry_uri({settings.resolved_tracking_uri()!r})
        model = mlflow.pyfunc.load_model("models:/churn_propensity/{version}")
        import training
        assert not training.__file__.startswith(repo), training.__file__
        model.predict(pd.read_parquet({str(features)!r})).to_parquet({str(tmp_path / "out.parquet")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    out = pd.read_parquet(tmp_path / "out.parquet")
    np.testing.assert_allclose(out["probability"].to_numpy(), result.model.predict_proba(result.validation[FEATURES])[:, 1], atol=1e-12)


def test_result_without_label_is_refused_before_anything_is_logged(settings: TrainingSettings) -> None:
    from training.tracking import TrackingError, client, log_training_result

    result = classifier_result(["x1"], seed=5)
    result.validation = result.validation.drop(columns=["label"])
    runs_before = len(client(settings).search_runs([client(settings).get_experiment_by_name("crm-scoring").experiment_id]))
    with pytest.raises(TrackingError, match="validation has no 'label' column"):
        log_training_result(result, settings)
    runs_after = len(client(settings).search_runs([client(settings).get_experiment_by_name("crm-scoring").experiment_id]))
    assert runs_after == runs_before


# ---- the model card (pure) ---------------------------------------------------------------


def test_model_card_lists_window_metrics_baselines_use_and_limits() -> None:
    result = classifier_result(["x1"], seed=0)
    card = render_model_card(result, run_id="abc", version="4")
    assert card.startswith("# Model card: churn_propensity (version 4)")
    assert "validation: population at 2025-04-02 00:00:00, outcomes in [2025-04-02 00:00:00, 2025-07-01 00:00:00)" in card
    assert "| bgnbd |" in card and "| recency |" in card  # baselines on the primary metric
    assert "| val_roc_auc |" in card
    assert "no order within the horizon" in card  # churn's intended use
    assert "`sha256:fake-0`" in card


def test_markdown_table_escapes_pipes_and_formats_numbers() -> None:
    table = markdown_table(pd.DataFrame({"name": ["a|b"], "value": [0.123456], "n": [3]}))
    assert table.splitlines() == ["| name | value | n |", "| --- | --- | --- |", "| a\\|b | 0.1235 | 3 |"]
