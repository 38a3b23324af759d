"""`crm-scoring score` end to end on the shared trained project: back-filled runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.store import ScoreStore
from tests.serving.conftest import AS_OF, FIRST_AS_OF, TrainedProject

pytestmark = pytest.mark.slow


def test_a_back_filled_run_is_stored_but_makes_no_events(trained_project: TrainedProject, tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    shutil.copytree(trained_project.root / "scores", folder)
    store = ScoreStore(folder)
    first, latest = (r for r in store.runs())
    assert (first.as_of.date().isoformat(), latest.as_of.date().isoformat()) == (FIRST_AS_OF, AS_OF)
    outbox_before = store.event_counts()
    assert sum(outbox_before.values()) > 0  # the second run made events: the data changes between the dates

    def said(result) -> str:  # type: ignore[no-untyped-def]
        return " ".join(result.stdout.split())  # rich wraps long lines

    score = ("score", "--profile", str(trained_project.profile), "--out", str(folder))
    backfill = trained_project.run(*score, "--as-of", "2025-06-08")
    assert f"back-fill (run {latest.run_id} has a later as_of)" in said(backfill)
    assert "0 new event(s)" in said(backfill)
    run = next(r for r in store.runs() if r.as_of.date().isoformat() == "2025-06-08")
    assert run.parent_run_id == first.run_id  # hysteresis from the run before it
    assert store.latest_run() == latest  # what the API serves does not go back in time
    assert store.event_counts() == outbox_before
    again = trained_project.run(*score, "--as-of", "2025-06-08")
    assert "re-run of an existing run" in said(again) and "0 new event(s)" in said(again)

    # The next run diffs against the latest as_of before it, as before.
    after = trained_project.run(*score, "--as-of", "2025-06-22")
    assert "back-fill" not in said(after)
    newest = store.latest_run()
    assert newest is not None and newest.as_of.date().isoformat() == "2025-06-22" and newest.parent_run_id == latest.run_id
