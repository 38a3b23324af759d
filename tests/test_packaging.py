"""The packages import from this repository, without side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["features", "training", "serving"])
def test_package_resolves_to_this_repository(package: str) -> None:
    # A PyPI distribution named `features` exists; make sure ours is the one imported.
    module = __import__(package)
    assert Path(module.__file__).resolve().parent == REPO / package


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    code = (
        "import logging, features, features.io, features.validation, features.pipeline, serving.cli, serving.service;"
        " print(logging.getLogger().handlers)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"  # no logging configured (BentoML's import of circus adds a root handler)
    assert list(tmp_path.iterdir()) == []  # no folders or files created


def test_cli_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for command in ("data", "features", "demo"):
        assert command in result.stdout
