"""`build_engine` without a trained project: what it refuses before loading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.engine import NoSnapshotError, build_engine


def test_an_engine_needs_a_batch_snapshot(tmp_path: Path) -> None:
    """Before the first batch run an inline score would be ranked among the other customers
    of its micro-batch (RFM quintiles, percentiles): the engine is refused, saying what to run."""
    store = tmp_path / "scores"

    with pytest.raises(NoSnapshotError, match=r"no batch snapshot in .*scores: run `crm-scoring score --profile DIR --as-of DATE`"):
        build_engine(store, None)

    assert not store.exists()  # looking created nothing
