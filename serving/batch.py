"""Batch scoring: every profile, every champion model, tags, the diff and the outbox.

`score_profile_store` is what `crm-scoring score` runs:

1. load and validate the profile (rejects file as for `features build`);
2. build the features at as_of with the training code (`features.pipeline`);
3. score with the `champion` models, rank percentiles within this population, evaluate
   the tag rules with the previous run's tags (hysteresis);
4. diff the tags and segments with the previous run into outbox events, unless the run
   is a back-fill (a run with a later as_of exists): journeys react to the present, and
   a past day's changes, sent now, would contradict what the later run already said;
5. write the snapshot (Parquet, temp file then rename) and commit the run and its
   events in one SQLite transaction (`serving.store`).

The run id is deterministic (as_of, model versions, the fingerprint of the data before
as_of, the rules' digest), and so are event ids: re-running the same as_of with the same
models and data rewrites the same snapshot and adds no event. Going back to a state that
an earlier run scored, after other runs replaced it (a model rollback, a reverted data
correction), is a new run: its id also names the run it follows, and it diffs against
that run, so the CRM hears about the tags that change back. A crash before the commit
leaves the previous run and the outbox as they were.

Next to each snapshot, `<run_id>.meta.json` keeps what online scoring needs to agree with
the batch: the RFM score edges of this population (a single customer has no population
to be ranked in), its currency and the model versions; `<run_id>.features.parquet` keeps the feature
rows, from which `/v1/score/by-id` computes reasons for the few rows asked for (explaining
a million rows in the batch would cost minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.families.rfm import RfmParams, RfmScoreEdges, rfm_score_edges
from features.pipeline import FeatureParams, build_features
from features.population import restrict_to_before
from features.profile import Profile
from features.timeutil import to_utc_naive
from serving.events import diff_snapshots
from serving.models import ModelSet, check_attribute_inputs, check_currency, check_profile_attributes
from serving.scoring import KEY, score_features
from serving.store import RunRecord, ScoreStore, fsync_directory, temp_path
from serving.tags import TagRules
from training.train import data_fingerprint

RFM_EDGE_COLUMNS = ("frequency", "recency_days", "T_days", "revenue_total", "rfm_recency_score", "rfm_frequency_score", "rfm_monetary_score")


@dataclass(frozen=True)
class BatchResult:
    run_id: str
    as_of: datetime
    rows: int
    new_events: int
    rerun: bool
    snapshot_path: Path
    previous_run_id: str | None
    backfill_of: str | None  # the later run that makes this one a back-fill (no events)
    tag_counts: dict[str, dict[str, int]]
    segment_counts: dict[str, int]
    models: dict[str, str]
    timings: dict[str, float]


def batch_run_id(
    as_of: datetime, models: dict[str, str], fingerprint: str, rules_digest: str, *, follows: str | None = None
) -> str:
    """Deterministic: the same as_of, model versions, data and rules give the same id.

    `follows` names the run that a return to an earlier run's state comes after (see
    `choose_run_id`); without it the id is the state's own, its *content id*.
    """
    content: dict[str, object] = {"as_of": as_of.isoformat(), "models": models, "data": fingerprint, "rules": rules_digest}
    if follows is not None:
        content["follows"] = follows
    payload = json.dumps(content, sort_keys=True)
    return "run_" + as_of.strftime("%Y%m%d") + "_" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def content_id_of(store: ScoreStore, run: RunRecord) -> str:
    """The content id of a committed run (runs before `follows` existed: their own id)."""
    return str(read_meta(store, run.run_id).get("content_id") or run.run_id)


def choose_run_id(store: ScoreStore, as_of: datetime, models: dict[str, str], fingerprint: str, rules_digest: str) -> tuple[str, str]:
    """The id of the run that scores this state at as_of, and the state's content id.

    - The newest run at or before as_of has this content: a re-run, its id (no new event).
    - No run has it, or the run is a back-fill (a later as_of exists: no events either
      way): the content id.
    - An earlier run had it, then others replaced it (a model rollback, a reverted
      correction): a new run that follows the newest and diffs against it. Re-committing
      the earlier run would emit nothing, and the CRM, last told the newer run's tags, would
      never hear of the changes back.
    """
    content_id = batch_run_id(as_of, models, fingerprint, rules_digest)
    head = store.previous_run(as_of)
    if head is not None and content_id_of(store, head) == content_id:
        return head.run_id, content_id
    if head is None or store.get_run(content_id) is None:
        return content_id, content_id
    latest = store.latest_run()
    if latest is not None and latest.as_of > as_of:
        return content_id, content_id
    return batch_run_id(as_of, models, fingerprint, rules_digest, follows=head.run_id), content_id


def meta_path(store: ScoreStore, run_id: str) -> Path:
    return store.snapshot_path(run_id).with_suffix(".meta.json")


def write_meta(store: ScoreStore, run_id: str, meta: dict[str, Any]) -> Path:
    """The run's metadata file, written to a temp name and renamed (never half-written)."""
    target = meta_path(store, run_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        with open(tmp, "w") as handle:
            json.dump(meta, handle, sort_keys=True, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Durable before the run's commit: a follow-on run's content id lives only here.
    fsync_directory(target.parent)
    return target


def features_path(store: ScoreStore, run_id: str) -> Path:
    """The run's feature table (sorted by customer_id), kept for on-demand reasons."""
    return store.snapshot_path(run_id).with_suffix(".features.parquet")


def _write_table_atomically(table: pa.Table, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        pq.write_table(table, tmp, row_group_size=64 * 1024)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(store: ScoreStore, run_id: str) -> dict[str, Any]:
    path = meta_path(store, run_id)
    return json.loads(path.read_text()) if path.exists() else {}


def edges_from_meta(meta: dict[str, Any]) -> RfmScoreEdges | None:
    edges = meta.get("rfm_score_edges")
    if not edges:
        return None
    return RfmScoreEdges(**{k: tuple(float(v) for v in values) for k, values in edges.items()})


def _tag_columns(names: list[str]) -> list[str]:
    return [c for c in names if c.startswith(("tag_", "segment_"))]


def score_profile(
    profile: Profile,
    as_of: datetime,
    models: ModelSet,
    rules: TagRules,
    store: ScoreStore,
    *,
    feature_params: FeatureParams = FeatureParams(),
    emit_initial: bool = False,
    progress: Callable[[str], None] = lambda message: None,
    locked: bool = False,
) -> BatchResult:
    """Score a loaded profile at as_of and record the run in `store` (see the module docstring).

    Takes the store's `scoring_lock` (raises `StoreLockedError` at once while another `score`
    writes to the same store) unless `locked`: the caller holds it already."""
    as_of = to_utc_naive(as_of)
    check_attribute_inputs(models, feature_params.attributes)
    check_profile_attributes(models, profile, feature_params.attributes)
    check_currency(models, profile.currency)
    # From choosing the previous run to committing this one: one run at a time per store.
    with nullcontext() if locked else store.scoring_lock():
        return _score_profile(profile, as_of, models, rules, store, feature_params, emit_initial, progress)


def _score_profile(
    profile: Profile,
    as_of: datetime,
    models: ModelSet,
    rules: TagRules,
    store: ScoreStore,
    feature_params: FeatureParams,
    emit_initial: bool,
    progress: Callable[[str], None],
) -> BatchResult:
    import time

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    progress("fingerprint the data before as_of")
    fingerprint, _ = data_fingerprint(restrict_to_before(profile, as_of))
    run_id, content_id = choose_run_id(store, as_of, models.versions, fingerprint, rules.digest)
    existing = store.get_run(run_id)
    previous = (
        store.get_run(existing.parent_run_id) if existing and existing.parent_run_id else None
    ) if existing else store.previous_run(as_of, exclude_run_id=run_id)
    latest = store.latest_run()
    later = latest if latest is not None and latest.as_of > as_of else None
    lap("fingerprint")

    progress("build features")
    feature_table = build_features(profile, as_of, feature_params).to_pyarrow()
    features = feature_table.to_pandas()
    lap("features")

    progress("score with the champion models")
    previous_tags = None
    if previous is not None:
        # Only the tag state is needed: skip the score, reason and percentile columns.
        names = pq.read_schema(store.snapshot_path(previous.run_id)).names
        previous_tags = store.read_snapshot(previous.run_id, columns=[KEY, *_tag_columns(names)])
    # Reasons are computed on demand from the stored features (see serving.scoring.add_reasons).
    scores = score_features(features, models, rules, reference=None, previous_tags=previous_tags, reasons_top_k=0)
    lap("score")

    progress("diff with the previous run" if later is None else f"back-fill: a run as of {later.as_of:%Y-%m-%d %H:%M} exists, no events")
    created_at = existing.created_at if existing else datetime.now(UTC).replace(tzinfo=None)
    events = diff_snapshots(
        previous_tags, scores[[KEY, *_tag_columns(list(scores.columns))]], run_id=run_id, as_of=as_of, created_at=created_at, emit_initial=emit_initial
    )
    if later is not None:
        events = events.iloc[:0]
    lap("diff")

    progress("write the snapshot and commit the run")
    edges = rfm_score_edges(ibis.memtable(features[list(RFM_EDGE_COLUMNS)])) if len(features) else None
    snapshot = scores.copy()
    snapshot.insert(1, "as_of", pd.Timestamp(as_of))
    path = store.write_snapshot(run_id, snapshot)
    _write_table_atomically(feature_table, features_path(store, run_id))
    write_meta(
        store,
        run_id,
        {
            "run_id": run_id,
            "content_id": content_id,
            "as_of": as_of.isoformat(),
            "models": models.versions,
            "rfm_score_edges": asdict(edges) if edges else None,
            # The population's currency: /v1/score refuses orders in another one.
            "currency": profile.currency,
        },
    )
    record = RunRecord(
        run_id=run_id,
        as_of=as_of,
        created_at=created_at,
        parent_run_id=previous.run_id if previous else None,
        rows=len(snapshot),
        models=models.versions,
        rules_digest=rules.digest,
    )
    new_events = store.commit_run(record, events)
    lap("write")

    tag_counts = {
        column[len("tag_") :]: {str(k): int(v) for k, v in scores[column].value_counts(dropna=True).items()}
        for column in scores.columns
        if column.startswith("tag_")
    }
    segment_counts = {c[len("segment_") :]: int(scores[c].sum()) for c in scores.columns if c.startswith("segment_")}
    return BatchResult(
        run_id=run_id,
        as_of=as_of,
        rows=len(snapshot),
        new_events=new_events,
        rerun=existing is not None,
        snapshot_path=path,
        previous_run_id=previous.run_id if previous else None,
        backfill_of=later.run_id if later is not None else None,
        tag_counts=tag_counts,
        segment_counts=segment_counts,
        models=models.versions,
        timings=timings,
    )


def online_feature_params(meta: dict[str, Any], base: FeatureParams = FeatureParams()) -> FeatureParams:
    """The batch run's feature parameters with its RFM score edges frozen (online scoring)."""
    from dataclasses import replace

    edges = edges_from_meta(meta)
    return replace(base, rfm=RfmParams(score_edges=edges)) if edges is not None else base
