"""notebooks/model_report.ipynb runs end to end on a small store and shows the champions' plots.

The store is made here (fake results logged and promoted through the training layer) and
handed to the notebook's kernel through MLFLOW_TRACKING_URI, as a user would.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.training.fake_results import classifier_result, ltv_result, temp_store

pytestmark = [
    # MLflow 3.17 on pandas 3 / SQLAlchemy 2: harmless deprecations inside MLflow.
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "model_report.ipynb"


def _outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """All text outputs joined, and the number of PNG images displayed."""
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            images += "image/png" in data
            texts.append(output.get("text", "") + data.get("text/plain", "") + data.get("text/markdown", "") + data.get("text/html", ""))
    return "\n".join(texts), images


def test_model_report_shows_champion_metrics_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.registry import promote
    from training.tracking import log_training_result

    settings = temp_store(tmp_path / "project")
    churn = classifier_result(["x1", "x2"], seed=40)
    ltv = ltv_result(1.0, seed=40)
    for result in (churn, ltv):
        _, version = log_training_result(result, settings)
        promote(result.model_name, version, settings=settings)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.resolved_tracking_uri())
    monkeypatch.setenv("CRMSCORE_PROJECT_DIR", str(settings.project_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell on any error

    text, images = _outputs(notebook)
    assert settings.resolved_tracking_uri() in text
    assert "churn_propensity" in text and "customer_ltv" in text
    assert "val_roc_auc" in text and "bgnbd_r" in text  # the metrics table
    assert "## Window" in text  # the model cards
    assert images == 3  # churn: roc + calibration; ltv: holdout tracking
    # The notebook only read (the lock file is the one every command opening the store takes).
    assert set(os.listdir(settings.mlruns_dir)) - {".store.lock"} == {"mlflow.db", "artifacts"}


def test_notebook_holds_no_outputs() -> None:
    # Narrative only, committed clean: outputs would go stale and bloat diffs.
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code")
