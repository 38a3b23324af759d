"""The score store: lazy opening, write-then-swap, run bookkeeping, idempotent commits, crashes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from serving.batch import features_path, meta_path
from serving.events import diff_snapshots
from serving.store import RunRecord, ScoreStore, SnapshotNotFoundError, StoreError, StoreLockedError, temp_path

DAY1, DAY2, DAY3 = datetime(2025, 7, 1), datetime(2025, 7, 2), datetime(2025, 7, 3)


def snapshot(tiers: dict[str, str | None]) -> pd.DataFrame:
    ids = list(tiers)
    return pd.DataFrame(
        {
            "customer_id": pd.Series(ids, dtype="str"),
            "churn_probability": [0.1 * i for i in range(len(ids))],
            "tag_churn_risk": pd.Series([tiers[c] for c in ids], dtype="str"),
            "segment_win_back": [tiers[c] == "high" for c in ids],
        }
    )


def record(run_id: str, as_of: datetime, parent: str | None, rows: int, created_at: datetime | None = None) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        as_of=as_of,
        created_at=created_at or as_of + timedelta(hours=2),
        parent_run_id=parent,
        rows=rows,
        models={"churn_propensity": "4", "customer_ltv": "2"},
        rules_digest="rules-abc",
    )


def run_batch(store: ScoreStore, run_id: str, as_of: datetime, current: pd.DataFrame, *, commit: bool = True) -> int:
    """What the batch does: diff with the previous run, write then swap."""
    existing = store.get_run(run_id)
    previous = store.get_run(existing.parent_run_id) if existing and existing.parent_run_id else (
        None if existing else store.previous_run(as_of, exclude_run_id=run_id)
    )
    previous_frame = store.read_snapshot(previous.run_id) if previous else None
    run = record(run_id, as_of, previous.run_id if previous else None, len(current))
    events = diff_snapshots(previous_frame, current, run_id=run_id, as_of=as_of, created_at=run.created_at)
    store.write_snapshot(run_id, current)
    if not commit:
        return 0  # "crash" after the swap of the snapshot, before the commit
    return store.commit_run(run, events)


def outbox(store: ScoreStore) -> list[tuple]:
    return [(e["id"], e["status"], e["attempts"]) for e in store.iter_events()]


def test_constructing_and_reading_an_empty_store_creates_nothing(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path / "scores")
    assert store.latest_run() is None and store.runs() == [] and store.get_run("x") is None
    assert store.previous_run(DAY1) is None and store.next_attempt_at() is None
    assert store.event_counts() == {"pending": 0, "delivered": 0, "dead": 0}
    assert list(store.iter_events()) == [] and store.requeue_dead(DAY1) == 0
    assert not (tmp_path / "scores").exists()
    with pytest.raises(SnapshotNotFoundError):
        store.read_snapshot("run_1")


def test_snapshots_round_trip_and_rewrite_identically(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    frame = snapshot({"a": "high", "b": None})
    path = store.write_snapshot("run_1", frame)
    assert path == store.snapshot_path("run_1") == tmp_path / "snapshots" / "run_1.parquet"
    first = path.read_bytes()
    pd.testing.assert_frame_equal(store.read_snapshot("run_1"), frame)
    assert list(store.read_snapshot("run_1", columns=["customer_id"]).columns) == ["customer_id"]
    store.write_snapshot("run_1", frame)
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["run_1.parquet"]  # no temp file left


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a b"])
def test_run_ids_must_be_file_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="not usable as a file name"):
        ScoreStore(tmp_path).snapshot_path(bad)


def test_runs_latest_previous_and_events(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    assert run_batch(store, "run_1", DAY1, snapshot({"a": "low", "b": "high"})) == 0  # baseline
    assert run_batch(store, "run_2", DAY2, snapshot({"a": "high", "b": "high", "c": "low"})) == 4
    latest = store.latest_run()
    assert latest is not None and latest.run_id == "run_2" and latest.parent_run_id == "run_1"
    assert latest == store.get_run("run_2")
    assert latest.models == {"churn_propensity": "4", "customer_ltv": "2"} and latest.rows == 3 and latest.events_created == 4
    assert latest.as_of == DAY2 and latest.created_at == DAY2 + timedelta(hours=2)
    assert [r.run_id for r in store.runs()] == ["run_1", "run_2"]
    assert store.previous_run(DAY3).run_id == "run_2"  # type: ignore[union-attr]
    assert store.previous_run(DAY2, exclude_run_id="run_2").run_id == "run_1"  # type: ignore[union-attr]
    assert store.previous_run(DAY1, exclude_run_id="run_1") is None
    # Outbox order: the run's diff order (customer, exits before entries).
    events = list(store.iter_events())
    assert [(e["type"], e["customer_id"], e["value"]) for e in events] == [
        ("tag.exited", "a", "low"),
        ("tag.entered", "a", "high"),
        ("segment.entered", "a", None),
        ("tag.entered", "c", "low"),
    ]
    assert {e["run_id"] for e in events} == {"run_2"} and {e["status"] for e in events} == {"pending"}
    assert store.event_counts() == {"pending": 4, "delivered": 0, "dead": 0}


def test_a_second_run_at_the_same_as_of_diffs_against_the_first(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    run_batch(store, "run_1", DAY1, snapshot({"a": "low"}))
    run_batch(store, "run_1b", DAY1, snapshot({"a": "high"}))  # new models, same day
    assert store.get_run("run_1b").parent_run_id == "run_1"  # type: ignore[union-attr]
    assert store.latest_run().run_id == "run_1b"  # type: ignore[union-attr]  # ties: latest created_at
    assert [(e["type"], e["value"]) for e in store.iter_events()] == [
        ("tag.exited", "low"), ("tag.entered", "high"), ("segment.entered", None)
    ]


def test_rerunning_a_run_adds_nothing_and_keeps_delivery_state(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    run_batch(store, "run_1", DAY1, snapshot({"a": "low"}))
    current = snapshot({"a": "high", "b": "low"})
    assert run_batch(store, "run_2", DAY2, current) == 4
    first = store.get_run("run_2")
    delivered = next(store.iter_events())["id"]
    store.mark_delivered(delivered, DAY3)
    before = outbox(store)
    snapshot_bytes = store.snapshot_path("run_2").read_bytes()

    # Same run again (same id): the batch diffs against the run's parent, not against itself.
    later = RunRecord(**{**first.__dict__, "created_at": DAY3, "events_created": 99})  # type: ignore[union-attr]
    events = diff_snapshots(store.read_snapshot("run_1"), current, run_id="run_2", as_of=DAY2, created_at=DAY3)
    store.write_snapshot("run_2", current)
    assert store.commit_run(later, events) == 0
    assert outbox(store) == before
    assert store.get_run("run_2") == first  # original created_at, counts, parent
    assert store.snapshot_path("run_2").read_bytes() == snapshot_bytes
    assert store.get_event(delivered)["status"] == "delivered"  # type: ignore[index]


def test_a_crash_between_snapshot_and_commit_changes_nothing_visible(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    run_batch(store, "run_1", DAY1, snapshot({"a": "low"}))
    run_batch(store, "run_2", DAY2, snapshot({"a": "high"}))
    before = (store.latest_run(), outbox(store), store.runs())

    run_batch(store, "run_3", DAY3, snapshot({"a": None, "b": "high"}), commit=False)
    assert store.snapshot_path("run_3").exists()  # the orphan snapshot is harmless
    assert (store.latest_run(), outbox(store), store.runs()) == before
    assert store.get_run("run_3") is None

    # The rerun (same run id) diffs against run_2 and commits once.
    assert run_batch(store, "run_3", DAY3, snapshot({"a": None, "b": "high"})) == 4
    assert run_batch(store, "run_3", DAY3, snapshot({"a": None, "b": "high"})) == 0
    assert store.latest_run().run_id == "run_3"  # type: ignore[union-attr]


def test_a_failure_inside_the_commit_rolls_everything_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ScoreStore(tmp_path)
    run_batch(store, "run_1", DAY1, snapshot({"a": "low", "b": "low"}))
    run_batch(store, "run_2", DAY2, snapshot({"a": "high", "b": "low"}))
    before = (store.latest_run(), outbox(store))
    current = snapshot({"a": "low", "b": "high"})
    events = diff_snapshots(store.read_snapshot("run_2"), current, run_id="run_3", as_of=DAY3, created_at=DAY3)
    store.write_snapshot("run_3", current)
    rows = ScoreStore._event_rows

    def failing_rows(frame: pd.DataFrame):  # type: ignore[no-untyped-def]
        for n, row in enumerate(rows(frame)):
            if n == 3:
                raise OSError("disk full")  # after 3 inserts, inside the transaction
            yield row

    monkeypatch.setattr(ScoreStore, "_event_rows", staticmethod(failing_rows))
    with pytest.raises(OSError, match="disk full"):
        store.commit_run(record("run_3", DAY3, "run_2", 2), events)
    assert (store.latest_run(), outbox(store)) == before
    monkeypatch.setattr(ScoreStore, "_event_rows", staticmethod(rows))
    assert store.commit_run(record("run_3", DAY3, "run_2", 2), events) == len(events) == 6


def test_events_with_missing_identity_fields_are_refused(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    store.write_snapshot("run_1", snapshot({"a": "low"}))
    events = diff_snapshots(None, snapshot({"a": "low"}), run_id="run_1", as_of=DAY1, created_at=DAY1, emit_initial=True)
    events.loc[0, "customer_id"] = None
    with pytest.raises(StoreError, match="missing values in customer_id"):
        store.commit_run(record("run_1", DAY1, None, 1), events)


def test_a_process_killed_in_the_middle_of_the_commit_leaves_the_previous_state(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    run_batch(store, "run_1", DAY1, snapshot({f"c{i}": "low" for i in range(50)}))
    before = (store.latest_run(), outbox(store))
    store.close()
    script = textwrap.dedent(
        f"""
        import os
        from datetime import datetime
        import pandas as pd
        from serving.events import diff_snapshots
        from serving.store import RunRecord, ScoreStore

        store = ScoreStore({str(tmp_path)!r})
        current = pd.DataFrame({{"customer_id": [f"c{{i}}" for i in range(50)], "tag_churn_risk": ["high"] * 50}})
        events = diff_snapshots(store.read_snapshot("run_1"), current, run_id="run_2",
                                as_of=datetime(2025, 7, 2), created_at=datetime(2025, 7, 2))
        store.write_snapshot("run_2", current)
        rows = ScoreStore._event_rows

        def dying_rows(frame):
            for n, row in enumerate(rows(frame)):
                if n == 60:
                    os._exit(9)  # killed after 60 of 100 inserts, inside the transaction
                yield row

        ScoreStore._event_rows = staticmethod(dying_rows)
        store.commit_run(RunRecord("run_2", datetime(2025, 7, 2), datetime(2025, 7, 2), "run_1", 50), events)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    reopened = ScoreStore(tmp_path)
    assert (reopened.latest_run(), outbox(reopened)) == before
    assert reopened.get_run("run_2") is None


def test_commit_needs_the_snapshot_and_events_of_the_same_run(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    events = diff_snapshots(None, snapshot({"a": "low"}), run_id="run_1", as_of=DAY1, created_at=DAY1, emit_initial=True)
    with pytest.raises(StoreError, match="write the snapshot"):
        store.commit_run(record("run_1", DAY1, None, 1), events)
    store.write_snapshot("run_1", snapshot({"a": "low"}))
    with pytest.raises(StoreError, match="another run"):
        store.commit_run(record("run_1", DAY1, None, 1), events.assign(run_id="run_0"))
    with pytest.raises(StoreError, match="lacks column"):
        store.commit_run(record("run_1", DAY1, None, 1), events.drop(columns=["next_value"]))
    two_days = pd.concat([events, events.assign(id="evt_other", created_at="2025-07-02T00:00:00.000000Z")])
    with pytest.raises(StoreError, match="share one created_at"):
        store.commit_run(record("run_1", DAY1, None, 1), two_days)
    # Timestamps given as datetimes are stored in the canonical text form.
    assert store.commit_run(record("run_1", DAY1, None, 1), events.assign(as_of=DAY1, created_at=DAY1)) == 1
    (stored,) = store.iter_events()
    assert (stored["as_of"], stored["created_at"], stored["next_attempt_at"]) == ("2025-07-01T00:00:00.000000Z",) * 3


def test_orphan_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    folder = tmp_path / "snapshots"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # A dead writer's snapshot, meta file and feature table (the names `temp_path` gives).
    orphans = [
        temp_path(store.snapshot_path("run_0")),
        temp_path(meta_path(store, "run_0")),
        temp_path(features_path(store, "run_0")),
    ]
    orphans = [p.with_name(re.sub(rf"\.{os.getpid()}\.", f".{dead.pid}.", p.name)) for p in orphans]
    alive = temp_path(store.snapshot_path("run_9"))
    alive = alive.with_name(alive.name.replace(f".{os.getpid()}.", f".{os.getppid()}."))  # a live process: maybe still writing
    for path in [*orphans, alive]:
        path.write_bytes(b"partial")
    store.write_snapshot("run_1", snapshot({"a": "low"}))
    assert not any(p.exists() for p in orphans) and alive.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted([alive.name, "run_1.parquet"])


def test_one_score_run_at_a_time_and_delivery_beside_it(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    with store.scoring_lock():
        with pytest.raises(StoreLockedError, match="another `crm-scoring score` is writing a run"):
            with ScoreStore(tmp_path).scoring_lock():
                pass
        with store.delivery_lock():  # independent locks
            pass
    with ScoreStore(tmp_path).scoring_lock():  # released
        pass


def test_outbox_state_changes(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    store.write_snapshot("run_1", snapshot({"a": "low"}))
    events = diff_snapshots(None, snapshot({"a": "high", "b": "low", "c": "low"}), run_id="run_1", as_of=DAY1, created_at=DAY1, emit_initial=True)
    store.commit_run(record("run_1", DAY1, None, 3), events)
    first, second, third, *_ = [e["id"] for e in store.iter_events()]
    assert len(store.due_events(DAY1 - timedelta(seconds=1))) == 0
    assert [e["id"] for e in store.due_events(DAY1, limit=2)] == [first, second]

    store.mark_delivered(first, DAY2)
    store.record_failure(second, "HTTP 500 Internal Server Error", DAY2)
    store.dead_letter(third, "HTTP 500 Internal Server Error")
    delivered, failed, dead = (store.get_event(i) for i in (first, second, third))
    assert delivered["status"] == "delivered" and delivered["attempts"] == 1 and delivered["delivered_at"]  # type: ignore[index]
    assert failed["status"] == "pending" and failed["attempts"] == 1 and failed["last_error"].startswith("HTTP 500")  # type: ignore[index]
    assert dead["status"] == "dead" and dead["attempts"] == 1  # type: ignore[index]
    assert second not in [e["id"] for e in store.due_events(DAY1 + timedelta(hours=1))]
    assert second in [e["id"] for e in store.due_events(DAY2)]
    assert store.next_attempt_at() == DAY1  # the untouched pending events are due since creation
    assert [e["id"] for e in store.iter_events("dead")] == [third]
    with pytest.raises(StoreError, match="unknown event status"):
        list(store.iter_events("sent"))
    # A late answer for an event that is no longer pending changes nothing.
    store.record_failure(first, "late", DAY3)
    assert store.get_event(first)["status"] == "delivered"  # type: ignore[index]
    assert store.requeue_dead(DAY3) == 1
    requeued = store.get_event(third)
    assert requeued["status"] == "pending" and requeued["attempts"] == 0  # type: ignore[index]


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    store.write_snapshot("run_1", snapshot({"a": "low"}))
    store.commit_run(record("run_1", DAY1, None, 1), diff_snapshots(None, snapshot({"a": "low"}), run_id="run_1", as_of=DAY1, created_at=DAY1))
    store.close()
    with sqlite3.connect(tmp_path / "scores.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer crm-scoring"):
        ScoreStore(tmp_path).latest_run()


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    store.write_snapshot("run_1", snapshot({"a": "low"}))
    store.commit_run(record("run_1", DAY1, None, 1), diff_snapshots(None, snapshot({"a": "low"}), run_id="run_1", as_of=DAY1, created_at=DAY1))
    with sqlite3.connect(tmp_path / "scores.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pruning_deletes_only_old_delivered_events_and_a_rerun_does_not_bring_them_back(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path)
    assert ScoreStore(tmp_path / "none").prune_delivered(DAY3) == 0
    run_batch(store, "run_1", DAY1, snapshot({"a": "low", "b": "low"}))
    current = snapshot({"a": "high", "b": "high", "c": "low"})
    assert run_batch(store, "run_2", DAY2, current) == 7
    old, young, failing, dead, *_ = [e["id"] for e in store.iter_events()]
    store.mark_delivered(old, DAY2)
    store.mark_delivered(young, DAY3)
    store.record_failure(failing, "HTTP 500", DAY2)
    store.dead_letter(dead, "HTTP 500")
    assert store.prune_delivered(DAY2) == 0  # strictly before
    assert store.prune_delivered(DAY2 + timedelta(hours=1)) == 1
    assert store.get_event(old) is None and store.get_event(young)["status"] == "delivered"  # type: ignore[index]
    assert store.event_counts() == {"pending": 4, "delivered": 1, "dead": 1}
    # The same run again: its events were committed with it; the pruned one stays gone.
    events = diff_snapshots(store.read_snapshot("run_1"), current, run_id="run_2", as_of=DAY2, created_at=DAY3)
    assert len(events) == 7 and old in set(events["id"])
    assert store.commit_run(record("run_2", DAY2, "run_1", 3), events) == 0
    assert store.get_event(old) is None and store.event_counts() == {"pending": 4, "delivered": 1, "dead": 1}


def test_a_return_to_an_earlier_state_is_a_new_run_that_follows_the_newest(tmp_path: Path) -> None:
    """`serving.batch.choose_run_id`: v1 scored, v2 scored, rolled back to v1 and scored. The
    third is a new run after the v2 run (its events tell the CRM what changes back), not the
    first run committed again; scoring it once more is a re-run; a back-fill keeps its state's id."""
    from serving.batch import batch_run_id, choose_run_id, write_meta

    store = ScoreStore(tmp_path / "scores")
    clock = iter(datetime(2025, 7, 5) + timedelta(minutes=k) for k in range(100))
    v1, v2 = {"churn_propensity": "1"}, {"churn_propensity": "2"}

    def score(as_of: datetime, models: dict[str, str]) -> str:
        run_id, content_id = choose_run_id(store, as_of, models, "data-fingerprint", "rules-abc")
        existing = store.get_run(run_id)
        previous = store.get_run(existing.parent_run_id) if existing and existing.parent_run_id else (
            None if existing else store.previous_run(as_of, exclude_run_id=run_id)
        )
        store.write_snapshot(run_id, snapshot({"c1": "low"}))
        write_meta(store, run_id, {"run_id": run_id, "content_id": content_id})
        created = existing.created_at if existing else next(clock)
        run = RunRecord(run_id, as_of, created, previous.run_id if previous else None, 1, models, "rules-abc")
        store.commit_run(run, diff_snapshots(None, snapshot({"c1": "low"}), run_id=run_id, as_of=as_of, created_at=created))
        return run_id

    first = score(DAY2, v1)
    assert first == batch_run_id(DAY2, v1, "data-fingerprint", "rules-abc")
    second = score(DAY2, v2)
    assert score(DAY2, v2) == second  # the newest state again: a re-run
    back = score(DAY2, v1)
    assert back not in (first, second) and store.get_run(back).parent_run_id == second  # type: ignore[union-attr]
    assert store.latest_run().run_id == back  # type: ignore[union-attr]
    assert score(DAY2, v1) == back and len(store.runs()) == 3

    # A back-fill (DAY1 < DAY2) emits nothing, so switching states there reuses each state's run.
    old_v1, old_v2 = score(DAY1, v1), score(DAY1, v2)
    assert score(DAY1, v1) == old_v1 and old_v2 != old_v1

    # A run written before content ids existed: its metadata has none, and its id is its content id.
    latest = score(DAY3, v1)
    store.snapshot_path(latest).with_suffix(".meta.json").write_text("{}")
    assert score(DAY3, v1) == latest  # still a re-run
