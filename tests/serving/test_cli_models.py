"""`crm-scoring train` and `crm-scoring models list|promote|rollback` on a temporary project.

The store is configured the way users configure it (CRMSCORE_PROJECT_DIR, MLFLOW_TRACKING_URI
in the environment); `training.train` is replaced by fakes so the CLI's plumbing (profile
loading, logging, the gate, the summary, exit codes) is tested without the models' cost.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.errors import CrmScoringError
from serving.cli import app
from tests.training.fake_results import classifier_result, ltv_result, temp_store
from training.config import TrainingSettings

pytestmark = [
    # MLflow 3.17 on pandas 3 / SQLAlchemy 2: harmless deprecations inside MLflow.
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

runner = CliRunner()
ENV = {"COLUMNS": "250"}  # wide enough that rich does not wrap the tables


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingSettings]:
    project_dir = tmp_path_factory.mktemp("cli-project")
    settings = temp_store(project_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRMSCORE_PROJECT_DIR", str(project_dir))
        mp.setenv("MLFLOW_TRACKING_URI", settings.resolved_tracking_uri())
        yield settings


@pytest.fixture(scope="module")
def churn_versions(project: TrainingSettings) -> dict[str, str]:
    from training.tracking import log_training_result

    return {
        "good": log_training_result(classifier_result(["x1", "x2"], seed=20), project)[1],
        "worse": log_training_result(classifier_result(["noise"], seed=21), project)[1],
    }


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=ENV)


def last_line(result) -> str:  # type: ignore[no-untyped-def]
    return result.stderr.strip().splitlines()[-1]


def test_models_list_without_a_store_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSCORE_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    assert "no registered models" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_promote_errors_are_one_line(project: TrainingSettings, churn_versions: dict[str, str]) -> None:
    missing = invoke("models", "promote", "churn_propensity", "99")
    assert missing.exit_code == 1
    assert last_line(missing) == (
        f"error: churn_propensity has no version 99 (versions: {', '.join(sorted(churn_versions.values(), key=int))})"
    )
    unknown = invoke("models", "promote", "churn", "1")
    assert unknown.exit_code == 1
    assert last_line(unknown).startswith("error: unknown model 'churn'; registered models are lead_scoring")
    no_model = invoke("models", "rollback", "lead_scoring")
    assert no_model.exit_code == 1 and last_line(no_model) == "error: lead_scoring is not registered yet: train it first"


def test_promote_gate_force_rollback(project: TrainingSettings, churn_versions: dict[str, str]) -> None:
    from training.tracking import client

    good, worse = churn_versions["good"], churn_versions["worse"]

    def aliases() -> dict[str, str]:
        return {k: str(v) for k, v in client(project).get_registered_model("churn_propensity").aliases.items()}

    first = invoke("models", "promote", "churn_propensity", good)
    assert first.exit_code == 0, first.output
    assert f"churn_propensity v{good} promoted: no champion yet" in first.stdout

    refused = invoke("models", "promote", "churn_propensity", worse)
    assert refused.exit_code == 1
    assert last_line(refused).startswith(f"error: churn_propensity v{worse} not promoted: gate failed: val_roc_auc ")
    assert aliases() == {"champion": good}

    forced = invoke("models", "promote", "churn_propensity", worse, "--force")
    assert forced.exit_code == 0 and "forced" in forced.stdout
    assert aliases() == {"champion": worse, "previous_champion": good}

    listed = invoke("models", "list", "--name", "churn_propensity")
    assert listed.exit_code == 0
    rows = [line for line in listed.stdout.splitlines() if "churn_propensity" in line]
    assert any(f" {worse} " in row and "champion" in row for row in rows)
    assert any(f" {good} " in row and "previous_champion" in row for row in rows)

    back = invoke("models", "rollback", "churn_propensity")
    assert back.exit_code == 0 and f"churn_propensity: champion v{worse} -> v{good}" in back.stdout
    assert aliases() == {"champion": good}
    again = invoke("models", "rollback", "churn_propensity")
    assert again.exit_code == 1
    assert last_line(again) == f"error: churn_propensity has no earlier champion to roll back to (v{good} is the first in its promotion history)"
    not_a_number = invoke("models", "promote", "churn_propensity", "abc")
    assert not_a_number.exit_code == 2 and "Usage: " in not_a_number.output  # typer: "Input should be a valid integer"


# ---- train ----------------------------------------------------------------------------


def write_profile(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"customer_id": ["c1", "c2", "c3"], "created_at": pd.to_datetime(["2024-01-01", "2024-02-01", "2025-01-01"])}
    ).to_parquet(folder / "customers.parquet")
    pd.DataFrame(
        {
            "order_id": ["o1", "o2", "o3"],
            "customer_id": ["c1", "c1", "c2"],
            "ordered_at": pd.to_datetime(["2024-03-01", "2024-06-01", "2024-04-01"]),
            "amount": [10.0, 20.0, 30.0],
        }
    ).to_parquet(folder / "orders.parquet")
    return folder


@dataclass
class FakeTrain:
    calls: list[tuple] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)  # tasks whose training raises


@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch) -> FakeTrain:
    """Replace training.train with fakes; records the arguments the CLI passes."""
    import training

    state = FakeTrain()
    calls = state.calls

    def train_classifier(profile, task, as_of, horizon_days, config=None, progress=None, cache=None):  # type: ignore[no-untyped-def]
        calls.append((type(profile).__name__, task, as_of, horizon_days, cache, config))
        progress(f"{task}: pretending to train")
        if task in state.fail:
            raise CrmScoringError("lead_scoring: only 3 positives in the training window")
        name = {"lead": "lead_scoring", "churn": "churn_propensity"}[task]
        return classifier_result(["x1", "x2"], model_name=name, seed=30)

    def train_ltv(profile, as_of, horizon_days, config=None, progress=None):  # type: ignore[no-untyped-def]
        calls.append((type(profile).__name__, "ltv", as_of, horizon_days, None, config))
        return ltv_result(1.0, seed=30)

    from training.train import ClassifierConfig, LtvConfig

    fake = types.ModuleType("training.train")
    fake.train_classifier = train_classifier  # type: ignore[attr-defined]
    fake.train_ltv = train_ltv  # type: ignore[attr-defined]
    fake.ClassifierConfig, fake.LtvConfig = ClassifierConfig, LtvConfig  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.train", fake)
    monkeypatch.setattr(training, "train", fake, raising=False)
    return state


def test_train_all_logs_gates_and_summarises(
    project: TrainingSettings, fake_train: FakeTrain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMSCORE_PII_COLUMNS", '["email", "secret_note"]')
    profile = write_profile(tmp_path / "profile")
    result = invoke("train", "all", "--profile", str(profile), "--as-of", "2025-07-01", "--horizon", "13w")
    assert result.exit_code == 0, result.output
    from training.datasets import FeatureCache

    assert [call[:4] for call in fake_train.calls] == [
        ("Profile", "lead", datetime(2025, 7, 1), 91),
        ("Profile", "churn", datetime(2025, 7, 1), 91),
        ("Profile", "ltv", datetime(2025, 7, 1), 91),
    ]
    lead_cache, churn_cache = fake_train.calls[0][4], fake_train.calls[1][4]
    assert isinstance(lead_cache, FeatureCache) and lead_cache is churn_cache  # features built once for both
    # The configured PII columns reach every model's feature parameters.
    assert all(call[5].features.attributes.pii_columns == ("email", "secret_note") for call in fake_train.calls)
    assert "churn: pretending to train" in result.stderr
    summary = result.stdout
    for name in ("lead_scoring", "churn_propensity", "customer_ltv"):
        assert name in summary
    assert "val_roc_auc" in summary and "holdout_mae_purchases" in summary
    assert "bgnbd 0.6500" in summary  # baselines shown next to the model
    assert "promoted" in result.stderr  # progress output
    from training.registry import champions

    assert {c.name for c in champions(project)} >= {"lead_scoring", "customer_ltv"}


def test_train_keeps_going_when_one_model_fails(
    project: TrainingSettings, fake_train: FakeTrain, tmp_path: Path
) -> None:
    fake_train.fail.add("lead")
    profile = write_profile(tmp_path / "profile")
    result = invoke("train", "all", "--profile", str(profile), "--as-of", "2025-07-01", "--no-promote")
    assert result.exit_code == 1
    assert [call[1] for call in fake_train.calls] == ["lead", "churn", "ltv"]  # the others still ran
    assert last_line(result) == "error: 1 of 3 model(s) failed: lead_scoring: lead_scoring: only 3 positives in the training window"
    assert "not run (--no-promote)" in result.stdout


def test_train_rejects_bad_arguments_in_one_line(project: TrainingSettings, fake_train: FakeTrain, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "profile")
    bad_horizon = invoke("train", "churn", "--profile", str(profile), "--as-of", "2025-07-01", "--horizon", "soon")
    assert bad_horizon.exit_code == 1
    assert last_line(bad_horizon) == "error: horizon 'soon' is not a duration like 90d, 13w or 3m"
    no_profile = invoke("train", "churn", "--profile", str(tmp_path / "nowhere"), "--as-of", "2025-07-01")
    assert no_profile.exit_code == 1 and "does not exist" in last_line(no_profile)
    assert fake_train.calls == []


def test_train_with_a_bad_profile_creates_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSCORE_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = invoke("train", "all", "--profile", str(tmp_path / "nowhere"), "--as-of", "2025-07-01")
    assert result.exit_code == 1 and last_line(result).startswith("error: profile store")
    assert not (tmp_path / "project").exists()
