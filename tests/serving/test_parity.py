"""Online (`/v1/score` engine) and batch scoring agree for the same customer and as_of."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pytest

from serving.engine import ScoringEngine, build_engine
from serving.schemas import ScoreRequest
from serving.store import ScoreStore
from serving.tags import evaluate_tags, load_tag_rules
from tests.serving.conftest import AS_OF, TrainedProject
from serving.inline import inline_customers
from training.config import TrainingSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(trained_project: TrainedProject) -> ScoringEngine:
    return build_engine(trained_project.root / "scores", None, TrainingSettings(project_dir=trained_project.root, tracking_uri=trained_project.env["CRMSCORE_TRACKING_URI"]), workers=2)


@pytest.fixture(scope="module")
def snapshot(trained_project: TrainedProject) -> pd.DataFrame:
    store = ScoreStore(trained_project.root / "scores")
    latest = store.latest_run()
    assert latest is not None and latest.as_of.date().isoformat() == AS_OF
    return store.read_snapshot(latest.run_id).set_index("customer_id")


def _sample_ids(snapshot: pd.DataFrame, n: int) -> list[str]:
    leads = snapshot[snapshot.lead_probability.notna()].index[:n]
    buyers = snapshot[snapshot.churn_probability.notna()].index[:n]
    flagged = snapshot[snapshot.filter(like="segment_").any(axis=1)].index[:n]
    # Customers who keep a tier by hysteresis (their scores alone would give another): online
    # must read the snapshot's tiers as the previous state to agree on them.
    plain = evaluate_tags(load_tag_rules(None), snapshot.reset_index()).set_index("customer_id")
    tags = [c for c in snapshot.columns if c.startswith("tag_")]
    held = snapshot.index[(plain[tags].fillna("") != snapshot[tags].fillna("")).any(axis=1)][:n]
    assert len(held) > 0
    return sorted({*leads, *buyers, *flagged, *held})


def test_online_scores_equal_the_batch_snapshot(engine: ScoringEngine, snapshot: pd.DataFrame, trained_project: TrainedProject) -> None:
    ids = _sample_ids(snapshot, 25)
    request = ScoreRequest.model_validate({"as_of": f"{AS_OF}T00:00:00Z", "customers": inline_customers(trained_project.profile, ids)})
    results = engine.score_inline(request)
    assert [r["customer_id"] for r in results] == [c.customer_id for c in request.customers]
    compared = 0
    for result in results:
        batch = snapshot.loc[result["customer_id"]]
        preds = result["predictions"]
        for prediction, column in (("lead_conversion", "lead"), ("churn", "churn")):
            if pd.isna(batch[f"{column}_probability"]):
                assert preds[prediction] is None
                continue
            assert preds[prediction]["probability"] == pytest.approx(batch[f"{column}_probability"], abs=1e-9)
            assert preds[prediction]["percentile"] == pytest.approx(batch[f"{column}_percentile"], abs=1e-9)
            compared += 1
        if pd.isna(batch["ltv_clv"]):
            assert preds["ltv"] is None
        else:
            for name in ("p_alive", "expected_purchases", "expected_order_value", "clv"):
                assert preds["ltv"][name] == pytest.approx(batch[f"ltv_{name}"], abs=1e-9, rel=1e-9)
            assert preds["ltv"]["percentile"] == pytest.approx(batch["ltv_percentile"], abs=1e-9)
        batch_tags = {c[4:]: (True if v == "true" else v) for c, v in batch.filter(like="tag_").items() if isinstance(v, str)}
        assert result["tags"] == batch_tags
        assert result["segments"] == [c[8:] for c, v in batch.filter(like="segment_").items() if bool(v)]
    assert compared >= 40
    # Reasons from the batch's stored features (by-id) name the same features as inline ones.
    by_id, _ = engine.score_by_ids(ids)
    for online, stored in zip(results, by_id, strict=True):
        for prediction in ("churn", "lead_conversion"):
            if online["predictions"][prediction] is not None:
                assert [r["feature"] for r in online["predictions"][prediction]["reasons"]] == [
                    r["feature"] for r in stored["predictions"][prediction]["reasons"]
                ]


def test_by_id_answers_from_the_snapshot(engine: ScoringEngine, snapshot: pd.DataFrame) -> None:
    ids = list(snapshot.index[:5])
    results, missing = engine.score_by_ids([*ids, "no-such-customer", ids[0]])
    assert missing == ["no-such-customer"]
    assert [r["customer_id"] for r in results] == ids
    for result in results:
        churn = result["predictions"]["churn"]
        expected = snapshot.loc[result["customer_id"], "churn_probability"]
        assert (churn is None) == bool(np.isnan(expected))
        if churn is not None:
            assert churn["probability"] == pytest.approx(expected, abs=1e-12)
            assert churn["reasons"] and all(r["text"] for r in churn["reasons"])


def test_irrelevant_changes_keep_the_online_score(engine: ScoringEngine, snapshot: pd.DataFrame, trained_project: TrainedProject) -> None:
    cid = snapshot[snapshot.churn_probability.notna()].index[0]
    base = inline_customers(trained_project.profile, [cid])[0]
    changed = {**base, "customer_id": "renamed-customer", "attributes": {**base["attributes"], "email": "someone@else.example", "unused_attribute": 3}}
    requests = [ScoreRequest.model_validate({"as_of": f"{AS_OF}T00:00:00Z", "customers": [c]}) for c in (base, changed)]
    first, second = (engine.score_inline(r)[0] for r in requests)
    assert first["predictions"]["churn"]["probability"] == pytest.approx(second["predictions"]["churn"]["probability"], abs=1e-12)


def test_a_repeated_event_counts_once_as_in_batch(engine: ScoringEngine, snapshot: pd.DataFrame, trained_project: TrainedProject) -> None:
    # At-least-once pipelines deliver an event twice; batch validation keeps the earliest
    # copy of each event_id, so must /v1/score.
    cid = next(c for c in snapshot[snapshot.churn_probability.notna()].index if len(inline_customers(trained_project.profile, [c])[0]["events"]) >= 3)
    base = inline_customers(trained_project.profile, [cid])[0]
    events = base["events"]
    assert all("event_id" in e for e in events)
    latest = max(e["occurred_at"] for e in events)
    assert latest > events[0]["occurred_at"]
    later_copy = {**events[0], "occurred_at": latest, "event_type": "complaint"}
    repeated = {**base, "events": [later_copy, *events, events[1], events[1]]}
    request = lambda customer: ScoreRequest.model_validate({"as_of": f"{AS_OF}T00:00:00Z", "customers": [customer]})  # noqa: E731
    expected = engine.score_inline(request(base))
    assert engine.score_inline(request(repeated)) == expected
    _, _, kept = engine._tables(request(repeated).customers)
    assert kept.num_rows == len(events) and kept.column("event_id").to_pylist().count(events[0]["event_id"]) == 1
    first = kept.filter(pa.compute.equal(kept.column("event_id"), events[0]["event_id"])).to_pylist()[0]
    assert first["event_type"] == events[0]["event_type"]  # the earlier copy is kept, wherever it came in the list
    without_ids = {**base, "events": [{k: v for k, v in e.items() if k != "event_id"} for e in [*events, events[1]]]}
    assert engine._tables(request(without_ids).customers)[2].num_rows == len(events) + 1  # no id: another event
    assert expected[0]["predictions"]["churn"]["probability"] == pytest.approx(snapshot.loc[cid, "churn_probability"], abs=1e-9)


def test_repeated_events_keep_the_earliest_copy_at_the_first_copys_row() -> None:
    from datetime import datetime, timedelta, timezone

    from serving.engine import _drop_repeated_events

    day = {d: datetime(2025, 1, d) for d in (1, 2, 3, 5)}
    # The same instant as day[2], written in another zone (requests may mix zoned and UTC values).
    day_2_in_paris = datetime(2025, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    columns = {
        "customer_id": ["a", "a", "b", "b", "b"],
        "occurred_at": [day[3], day[1], day[2], day[5], day_2_in_paris],
        "event_type": ["x", "y", "z", "w", "a"],
        "event_id": ["e1", None, "e1", None, "e1"],
        "channel": ["web", None, "app", None, "email"],
    }
    _drop_repeated_events(columns)
    # e1 came three times (the third ties the second on time and wins on type), across customers.
    assert columns == {
        "customer_id": ["b", "a", "b"],
        "occurred_at": [day_2_in_paris, day[1], day[5]],
        "event_type": ["a", "y", "w"],
        "event_id": ["e1", None, None],
        "channel": ["email", None, None],
    }


def test_timestamps_are_utc_instants_when_checked_against_the_clock(engine: ScoringEngine) -> None:
    """Zoned timestamps count as the instants they name: one written in a zone ahead of UTC
    may show a wall time past the clock, one in a zone behind may show an earlier one."""
    from datetime import UTC, datetime, timedelta, timezone

    from serving.engine import InputError

    now = datetime.now(UTC)

    def written_in(offset_hours: int, instant: datetime) -> str:
        return instant.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()

    customer = {
        "customer_id": "c-zones",
        "created_at": "2024-01-01T00:00:00",
        "orders": [
            {"order_id": "o-1", "ordered_at": written_in(+9, now - timedelta(hours=1)), "amount": 5.0},
            {"order_id": "o-2", "ordered_at": written_in(-5, now + timedelta(minutes=30)), "amount": 5.0},
        ],
        "events": [{"occurred_at": written_in(+2, now + timedelta(minutes=2)), "event_type": "page_view"}],
    }
    request = ScoreRequest.model_validate({"customers": [customer]})
    with pytest.raises(InputError) as raised:
        engine._tables(request.customers)
    assert raised.value.problems == [(("body", "customers", 0, "orders", 1, "ordered_at"), "timestamp is in the future")]

    del customer["orders"][1]
    _, orders, events = engine._tables(ScoreRequest.model_validate({"customers": [customer]}).customers)
    expected = (now - timedelta(hours=1)).replace(tzinfo=None)
    assert orders.column("ordered_at").to_pylist() == [expected]  # stored as UTC wall time
    assert events.num_rows == 1


def test_micro_batched_requests_equal_separate_ones(engine: ScoringEngine, snapshot: pd.DataFrame, trained_project: TrainedProject) -> None:
    from serving.engine import InputError

    ids = _sample_ids(snapshot, 3)
    customers = inline_customers(trained_project.profile, ids)
    first = {"as_of": f"{AS_OF}T00:00:00Z", "customers": customers[:4]}
    second = {"as_of": f"{AS_OF}T00:00:00Z", "customers": customers[2:]}  # shares customers with the first
    other_day = {"as_of": "2025-05-01T00:00:00Z", "customers": customers[:2]}
    broken = {"as_of": f"{AS_OF}T00:00:00Z", "customers": [customers[0], customers[0]]}  # duplicate id
    # A timestamp past year 9999 in UTC is found on the batch's Arrow tables; the request
    # that holds it fails alone, with its other problems.
    late = {**customers[1], "created_at": "9999-12-31T23:59:59-05:00"}
    out_of_range = {"as_of": f"{AS_OF}T00:00:00Z", "customers": [late]}
    both = {"as_of": f"{AS_OF}T00:00:00Z", "customers": [late, late]}
    requests = [ScoreRequest.model_validate(b) for b in (first, second, other_day, broken, out_of_range, both)]
    batched = engine.score_inline_many(requests)
    assert isinstance(batched[3], InputError)
    assert isinstance(batched[4], InputError) and batched[4].problems == [
        (("body", "customers", 0, "created_at"), "timestamp is outside the years 0001-9999 once converted to UTC")
    ]
    assert isinstance(batched[5], InputError) and sorted(loc for loc, _ in batched[5].problems) == [
        ("body", "customers", 0, "created_at"),
        ("body", "customers", 1, "created_at"),
        ("body", "customers", 1, "customer_id"),
    ]
    for request, outcome in zip(requests[:3], batched[:3], strict=True):
        assert outcome == engine.score_inline(request)
