"""`crm-scoring score` end to end on the shared trained project: back-filled runs, corrected data, PII settings, hysteresis."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.families.attributes import AttributeParams
from features.pipeline import FeatureParams
from features.settings import FeatureSettings
from serving.batch import read_meta
from serving.engine import build_engine
from serving.models import ModelLoadError, load_model_set
from serving.store import SCORE_LOCK_NAME, ScoreStore
from serving.tags import evaluate_tags, load_tag_rules
from tests.serving.conftest import AS_OF, CLI, FIRST_AS_OF, TrainedProject
from training.config import TrainingSettings

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


def test_corrected_data_and_its_revert_at_the_same_as_of_are_new_runs_with_their_events(trained_project: TrainedProject, tmp_path: Path) -> None:
    """A correction that keeps the row counts, time ranges and amount total (orders refunded)
    is new data: a new run whose tag changes become events, not a re-run that adds none.
    A rejected row goes to the store's rejects file (the profile folder may be read-only)."""
    folder = tmp_path / "scores"
    shutil.copytree(trained_project.root / "scores", folder)
    profile = tmp_path / "profile"
    shutil.copytree(trained_project.profile, profile)
    store = ScoreStore(folder)
    latest = store.latest_run()
    assert latest is not None
    before = store.read_snapshot(latest.run_id).set_index("customer_id")
    # First the same data again: a re-run of the latest run adds no event.
    events_before = store.event_counts()
    again = trained_project.run("score", "--profile", str(profile), "--as-of", AS_OF, "--out", str(folder))
    assert "re-run of an existing run" in " ".join(again.stdout.split()) and "0 new event(s)" in " ".join(again.stdout.split())
    assert store.event_counts() == events_before and store.latest_run() == latest
    # The top-value customers' completed orders before as_of become refunds.
    top = before.index[before["tag_value_tier"] == "top"][:30].tolist()
    orders = pq.read_table(profile / "orders.parquet").to_pandas()
    refunded = orders["customer_id"].isin(top) & (orders["ordered_at"] < pd.Timestamp(AS_OF)) & (orders["status"] == "completed")
    assert refunded.sum() > 0
    orders.loc[refunded, "status"] = "refunded"
    # One unusable row too: it goes to the rejects file beside the output, not into the profile.
    bad = orders.iloc[[0]].assign(order_id="bad-order", amount=-3.0)
    orders = pd.concat([orders, bad], ignore_index=True)
    pq.write_table(pa.Table.from_pandas(orders, preserve_index=False), profile / "orders.parquet")
    outbox_before = sum(store.event_counts().values())

    result = trained_project.run("score", "--profile", str(profile), "--as-of", AS_OF, "--out", str(folder))

    assert "re-run of an existing run" not in " ".join(result.stdout.split())
    assert "bad-order" in (folder / "rejects.csv").read_text() and not (profile / "rejects.csv").exists()
    corrected = store.latest_run()
    assert corrected is not None and corrected.run_id != latest.run_id and corrected.parent_run_id == latest.run_id
    after = store.read_snapshot(corrected.run_id).set_index("customer_id")
    changed = [c for c in top if after.loc[c, "tag_value_tier"] != "top"]
    assert changed  # without completed orders their predicted value falls
    events = [e for e in store.iter_events() if e["run_id"] == corrected.run_id]
    assert sum(store.event_counts().values()) == outbox_before + len(events)
    exits = {e["customer_id"] for e in events if e["type"] == "tag.exited" and e["name"] == "value_tier" and e["value"] == "top"}
    assert set(changed) <= exits

    # The correction reverted: the state of the first run again, but the CRM was last told the
    # corrected run's tags. A new run after the corrected one, whose events say what changes back.
    shutil.copy(trained_project.profile / "orders.parquet", profile / "orders.parquet")
    reverted = trained_project.run("score", "--profile", str(profile), "--as-of", AS_OF, "--out", str(folder))
    assert "re-run of an existing run" not in " ".join(reverted.stdout.split())
    back = store.latest_run()
    assert back is not None and back.run_id not in (latest.run_id, corrected.run_id) and back.parent_run_id == corrected.run_id
    assert read_meta(store, back.run_id)["content_id"] == read_meta(store, latest.run_id)["content_id"] == latest.run_id
    assert read_meta(store, back.run_id)["currency"] == "USD"  # /v1/score refuses orders in another one
    back_tags = store.read_snapshot(back.run_id).set_index("customer_id")["tag_value_tier"]
    entered = {e["customer_id"] for e in store.iter_events() if e["run_id"] == back.run_id and e["type"] == "tag.entered" and e["name"] == "value_tier" and e["value"] == "top"}
    assert entered and entered == {c for c in changed if back_tags[c] == "top"}
    # Scoring the same state again is a re-run of that new run: nothing more is sent.
    events_now = store.event_counts()
    again = trained_project.run("score", "--profile", str(profile), "--as-of", AS_OF, "--out", str(folder))
    assert "re-run of an existing run" in " ".join(again.stdout.split()) and "0 new event(s)" in " ".join(again.stdout.split())
    assert store.latest_run() == back and store.event_counts() == events_now


def test_a_second_score_run_on_the_same_store_is_refused_while_one_runs(trained_project: TrainedProject, tmp_path: Path) -> None:
    """Two runs at once would both diff against the same previous run (contradictory events)."""
    folder = tmp_path / "scores"
    shutil.copytree(trained_project.root / "scores", folder)
    store = ScoreStore(folder)
    runs_before, outbox_before = store.runs(), store.event_counts()
    score = ("score", "--profile", str(trained_project.profile), "--as-of", "2025-06-22", "--out", str(folder))
    rejects = folder / "rejects.csv"
    rejects.write_text("the running score's rejects\n")
    with store.scoring_lock():  # as a running `score` holds it
        refused = trained_project.run(*score, check=False)
        with store.delivery_lock():  # delivery is not blocked by scoring
            pass
    assert refused.returncode == 1
    assert "another `crm-scoring score` is writing a run to" in " ".join(refused.stderr.split()), refused.stderr
    # It stopped before loading anything: the running one's rejects file is untouched.
    assert "load champion models" not in refused.stdout + refused.stderr
    assert rejects.read_text() == "the running score's rejects\n"
    assert store.runs() == runs_before and store.event_counts() == outbox_before
    assert trained_project.run(*score).returncode == 0  # and once it is done


def test_a_profile_in_another_currency_than_the_models_is_refused(trained_project: TrainedProject, tmp_path: Path) -> None:
    """Amounts are never converted: EUR orders scored by models that learned from USD would
    be read as dollars. `score` stops with one line and writes nothing."""
    profile = tmp_path / "profile"
    shutil.copytree(trained_project.profile, profile)
    orders = pq.read_table(profile / "orders.parquet").to_pandas()
    orders.assign(currency="EUR").to_parquet(profile / "orders.parquet", index=False)
    folder = tmp_path / "scores"

    refused = trained_project.run("score", "--profile", str(profile), "--as-of", AS_OF, "--out", str(folder), check=False)

    assert refused.returncode != 0
    message = " ".join(refused.stderr.split())
    assert "the profile's amounts are in EUR, but the models learned from amounts in another currency" in message, message
    assert "churn_propensity v1 in USD" in message and "convert the profile, or train on it" in message
    assert not ScoreStore(folder).exists() or not ScoreStore(folder).runs()


def test_score_names_the_customer_columns_the_models_need_and_the_profile_lacks(trained_project: TrainedProject, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    shutil.copytree(trained_project.profile, profile)
    customers = pq.read_table(profile / "customers.parquet")
    attributes = [c for c in customers.column_names if c not in ("customer_id", "created_at", "email")]
    assert attributes, customers.column_names
    pq.write_table(customers.drop_columns(attributes[:1]), profile / "customers.parquet")
    folder = tmp_path / "scores"

    refused = trained_project.run("score", "--profile", str(profile), "--as-of", AS_OF, "--out", str(folder), check=False)

    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert f"the profile's customers table lacks column(s) the models were trained with: {attributes[0]} (" in message, message
    assert "build features" not in refused.stdout  # said before the features are built
    assert not ScoreStore(folder).exists() or not ScoreStore(folder).runs()


def test_score_with_a_bad_rules_file_creates_no_store(trained_project: TrainedProject, tmp_path: Path) -> None:
    bad = tmp_path / "my_tags.yaml"
    bad.write_text("version: 1\ntags:\n  churn_risk:\n    score: churn.probabilty\n    tiers: [{name: high, min: 0.5}]\n")
    folder = tmp_path / "scores"
    refused = trained_project.run(
        "score", "--profile", str(trained_project.profile), "--as-of", AS_OF, "--out", str(folder), "--tags", str(bad), check=False
    )
    assert refused.returncode == 1 and f"{bad}:4:" in refused.stderr
    assert not folder.exists()  # it used to be left with only an empty score.lock


def test_score_and_the_api_keep_the_configured_pii_columns_out_of_the_features(trained_project: TrainedProject, tmp_path: Path) -> None:
    """`CRMSCORE_PII_COLUMNS` applies to scoring as to training: a served model that reads a
    column declared PII since it was trained is refused by name, before anything is written."""
    settings = TrainingSettings(project_dir=trained_project.root, tracking_uri=trained_project.env["CRMSCORE_TRACKING_URI"])
    models = load_model_set(settings)
    feature = next(f for m in models.models.values() for f in m.feature_columns if f.startswith("attr_") and not f.endswith("_age_days"))
    column = feature.removeprefix("attr_")
    pii = [*FeatureSettings().pii_columns, column]
    folder = tmp_path / "scores"

    env = {**trained_project.env, "CRMSCORE_PII_COLUMNS": json.dumps(pii)}
    result = subprocess.run(
        [CLI, "score", "--profile", str(trained_project.profile), "--as-of", AS_OF, "--out", str(folder)],
        cwd=trained_project.root, env=env, capture_output=True, text=True, timeout=600,
    )

    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, said
    assert f"reads {feature}, from a customers column now declared PII" in said
    # Nothing stored (the only file is the lock `score` takes before it loads anything).
    assert not folder.exists() or {p.name for p in folder.iterdir()} <= {SCORE_LOCK_NAME}
    with pytest.raises(ModelLoadError, match=f"reads {feature}"):
        build_engine(
            trained_project.root / "scores", None, settings,
            feature_params=FeatureParams(attributes=AttributeParams(pii_columns=tuple(pii))),
        )


def test_the_batch_holds_tiers_by_hysteresis_from_the_previous_run(trained_project: TrainedProject) -> None:
    """The AS_OF run's tags are the rules applied to its scores with the FIRST_AS_OF run's tags
    as the previous state; some customers keep a tier their score alone would not give."""
    store = ScoreStore(trained_project.root / "scores")
    first, latest = store.runs()
    previous, current = store.read_snapshot(first.run_id), store.read_snapshot(latest.run_id)
    rules = load_tag_rules(None)
    columns = [c for c in current.columns if c.startswith(("tag_", "segment_"))]

    def values(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[columns].astype(object).where(frame[columns].notna(), None).reset_index(drop=True)

    held = evaluate_tags(rules, current, previous=previous)
    plain = evaluate_tags(rules, current)

    pd.testing.assert_frame_equal(values(held), values(current))
    differs = (values(plain) != values(current)).any(axis=1)
    assert differs.sum() > 0, "no customer held a tier: the test would not see hysteresis missing"
