"""A small trained project shared by the serving tests (built once per test session).

Synthetic profile of 3,000 customers -> `crm-scoring demo` (train all three models and
promote them) -> `crm-scoring score` at two dates, so a previous run, events and a latest
snapshot exist. About a minute; every serving test that needs champions reuses it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("crm-scoring"))
FIRST_AS_OF = "2025-06-01"
AS_OF = "2025-06-15"
API_KEY = "test-api-key-0123456789"
ADMIN_KEY = "test-admin-key-0123456789"


@dataclass(frozen=True)
class TrainedProject:
    root: Path
    profile: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([CLI, *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"crm-scoring {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


def project_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSCORE_") and k != "MLFLOW_TRACKING_URI"}
    env.update(
        CRMSCORE_PROJECT_DIR=str(root),
        # Explicit: another test's MLFLOW_TRACKING_URI or mlflow's process-global URI must not leak in.
        CRMSCORE_TRACKING_URI=f"sqlite:///{root.as_posix()}/mlruns/mlflow.db",
        CRMSCORE_API_KEYS=API_KEY,
        CRMSCORE_ADMIN_KEYS=ADMIN_KEY,
        CRMSCORE_WEBHOOK_SECRET="whsec_dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz",
    )
    return env


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedProject]:
    root = tmp_path_factory.mktemp("serving-project")
    project = TrainedProject(root, root / "demo" / "profile", project_env(root))
    project.run("demo", "--customers", "3000", "--out", str(root / "demo"))
    project.run("score", "--profile", str(project.profile), "--as-of", FIRST_AS_OF)
    project.run("score", "--profile", str(project.profile), "--as-of", AS_OF)
    yield project


@pytest.fixture
def project_environment(trained_project: TrainedProject, monkeypatch: pytest.MonkeyPatch) -> TrainedProject:
    """The trained project's settings in this process's environment (for in-process services)."""
    for key in [k for k in os.environ if k.startswith("CRMSCORE_") or k == "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(key)
    for key, value in trained_project.env.items():
        if key.startswith("CRMSCORE_"):
            monkeypatch.setenv(key, value)
    return trained_project
