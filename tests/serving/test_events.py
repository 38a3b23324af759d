"""The snapshot diff into tag/segment events, event ids and the event JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.events import (
    EVENT_COLUMNS,
    SEGMENT_ENTERED,
    SEGMENT_EXITED,
    TAG_ENTERED,
    TAG_EXITED,
    SnapshotDiffError,
    diff_snapshots,
    event_body,
    event_id,
    json_timestamp,
)

AS_OF = datetime(2025, 7, 1)
CREATED = datetime(2025, 7, 1, 2, 13, 7)


def snapshot(rows: dict[str, tuple[str | None, bool]], *, tag: str = "churn_risk", segment: str = "win_back") -> pd.DataFrame:
    """customer_id -> (tag value or None, in segment); plus a score column the diff must ignore."""
    ids = list(rows)
    return pd.DataFrame(
        {
            "customer_id": pd.Series(ids, dtype="str"),
            "churn_probability": [0.5] * len(ids),
            f"tag_{tag}": pd.Series([rows[c][0] for c in ids], dtype="str"),
            f"segment_{segment}": pd.Series([rows[c][1] for c in ids], dtype=bool),
        }
    )


def diff(previous: pd.DataFrame | None, current: pd.DataFrame, run_id: str = "run_2", **kwargs: object) -> pd.DataFrame:
    return diff_snapshots(previous, current, run_id=run_id, as_of=AS_OF, created_at=CREATED, **kwargs)  # type: ignore[arg-type]


def triples(events: pd.DataFrame) -> list[tuple[str, str, str, object]]:
    return [(r.type, r.customer_id, r.name, r.value) for r in events.itertuples()]


def test_tier_change_is_an_exit_then_an_entry_with_both_values() -> None:
    events = diff(snapshot({"c1": ("medium", False)}), snapshot({"c1": ("high", False)}))
    assert triples(events) == [(TAG_EXITED, "c1", "churn_risk", "medium"), (TAG_ENTERED, "c1", "churn_risk", "high")]
    assert events["previous_value"].tolist() == ["medium", "medium"]
    assert events["next_value"].tolist() == ["high", "high"]
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert set(events["status"]) == {"pending"} and set(events["attempts"]) == {0}
    assert events["next_attempt_at"].tolist() == events["created_at"].tolist()


def test_unchanged_customers_make_no_event_whatever_the_row_order() -> None:
    rows = {f"c{i}": (["low", "high", None][i % 3], i % 2 == 0) for i in range(30)}
    previous = snapshot(rows)
    current = snapshot(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)
    current["churn_probability"] = 0.9  # scores move, tags do not
    assert diff(previous, current).empty


def test_new_and_deleted_customers_enter_and_exit_everything() -> None:
    previous = snapshot({"gone": ("high", True), "stay": ("low", False)})
    current = snapshot({"stay": ("low", False), "new": ("medium", True)})
    assert triples(diff(previous, current)) == [
        (TAG_EXITED, "gone", "churn_risk", "high"),
        (SEGMENT_EXITED, "gone", "win_back", None),
        (TAG_ENTERED, "new", "churn_risk", "medium"),
        (SEGMENT_ENTERED, "new", "win_back", None),
    ]


def test_losing_or_gaining_a_tag_and_segments() -> None:
    previous = snapshot({"a": ("high", True), "b": (None, False), "c": ("low", True)})
    current = snapshot({"a": (None, False), "b": ("low", True), "c": ("low", True)})
    events = diff(previous, current)
    assert triples(events) == [
        (TAG_EXITED, "a", "churn_risk", "high"),
        (SEGMENT_EXITED, "a", "win_back", None),
        (TAG_ENTERED, "b", "churn_risk", "low"),
        (SEGMENT_ENTERED, "b", "win_back", None),
    ]
    exited = events.iloc[0]
    assert (exited["previous_value"], exited["next_value"]) == ("high", None)
    entered = events.iloc[2]
    assert (entered["previous_value"], entered["next_value"]) == (None, "low")


def test_null_segment_values_count_as_not_in_the_segment() -> None:
    previous = pd.DataFrame({"customer_id": ["a", "b"], "segment_vip": pd.Series([True, None], dtype="boolean")})
    current = pd.DataFrame({"customer_id": ["a", "b"], "segment_vip": pd.Series([None, None], dtype="boolean")})
    assert triples(diff(previous, current)) == [(SEGMENT_EXITED, "a", "vip", None)]


def test_a_tag_added_to_or_removed_from_the_rules() -> None:
    previous = snapshot({"a": ("high", False)}, tag="old")
    current = snapshot({"a": ("x", False)}, tag="new")
    assert triples(diff(previous, current)) == [(TAG_EXITED, "a", "old", "high"), (TAG_ENTERED, "a", "new", "x")]


def test_first_run_is_a_baseline_unless_asked() -> None:
    current = snapshot({"a": ("high", True), "b": (None, False)})
    assert diff(None, current).empty
    assert list(diff(None, current).columns) == list(EVENT_COLUMNS)
    assert triples(diff(None, current, emit_initial=True)) == [
        (TAG_ENTERED, "a", "churn_risk", "high"),
        (SEGMENT_ENTERED, "a", "win_back", None),
    ]


def test_ids_are_deterministic_and_belong_to_the_run() -> None:
    previous = snapshot({"a": ("medium", False), "b": ("low", True)})
    current = snapshot({"a": ("high", True), "b": (None, True)})
    first = diff(previous, current)
    again = diff(previous.iloc[::-1], current.iloc[::-1])
    pd.testing.assert_frame_equal(first, again)
    assert first["id"].is_unique and first["id"].str.match(r"^evt_[0-9a-f]{32}$").all()
    row = first.iloc[0]
    assert row["id"] == event_id("run_2", row["type"], row["customer_id"], row["name"], row["value"])
    assert set(diff(previous, current, run_id="run_3")["id"]).isdisjoint(first["id"])
    # Fields are separated unambiguously: shifting text between customer and tag changes the id.
    assert event_id("r", TAG_ENTERED, "a|b", "c", None) != event_id("r", TAG_ENTERED, "a", "b|c", None)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"id": ["a"]}), "no customer_id"),
        (pd.DataFrame({"customer_id": ["a", "a"], "tag_x": ["1", "2"]}), "duplicated customer_id"),
        (pd.DataFrame({"customer_id": ["a", None]}), "without a customer_id"),
        (pd.DataFrame({"customer_id": ["a"], "segment_x": ["yes"]}), "not boolean"),
    ],
)
def test_bad_snapshots_are_refused(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(SnapshotDiffError, match=message):
        diff(snapshot({"a": ("x", True)}), frame)


def test_event_body_for_tags_and_segments() -> None:
    events = diff(snapshot({"c-42": ("medium", True)}), snapshot({"c-42": ("high", False)}))
    bodies = [event_body(row) for _, row in events.iterrows()]
    assert bodies[0] == {
        "id": events.iloc[0]["id"],
        "type": "tag.exited",
        "timestamp": "2025-07-01T02:13:07Z",
        "data": {
            "customer_id": "c-42",
            "tag": "churn_risk",
            "value": "medium",
            "previous_value": "medium",
            "next_value": "high",
            "as_of": "2025-07-01T00:00:00Z",
            "run_id": "run_2",
        },
    }
    assert bodies[1]["type"] == "segment.exited"
    assert bodies[1]["data"] == {"customer_id": "c-42", "segment": "win_back", "as_of": "2025-07-01T00:00:00Z", "run_id": "run_2"}
    json.dumps(bodies)  # plain JSON types only
    # The same body from a plain dict (a store row).
    assert event_body(events.iloc[0].to_dict()) == bodies[0]


def test_json_timestamps_are_utc() -> None:
    assert json_timestamp(datetime(2025, 7, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))) == "2025-07-01T00:00:00Z"
    assert json_timestamp(datetime(2025, 7, 1, 0, 0, 0, 500, tzinfo=UTC)) == "2025-07-01T00:00:00.000500Z"
    assert json_timestamp("2025-07-01T00:00:00.000000Z") == "2025-07-01T00:00:00Z"
    assert json_timestamp(datetime(1, 1, 1)) == "0001-01-01T00:00:00Z"  # ISO 8601 has four-digit years


tier = st.one_of(st.none(), st.sampled_from(["low", "medium", "high"]))
state = st.dictionaries(st.sampled_from([f"c{i}" for i in range(12)]), st.tuples(tier, tier, st.booleans()), max_size=12)


def as_frame(rows: dict[str, tuple[str | None, str | None, bool]]) -> pd.DataFrame:
    ids = sorted(rows)
    return pd.DataFrame(
        {
            "customer_id": pd.Series(ids, dtype="str"),
            "tag_a": pd.Series([rows[c][0] for c in ids], dtype="str"),
            "tag_b": pd.Series([rows[c][1] for c in ids], dtype="str"),
            "segment_s": pd.Series([rows[c][2] for c in ids], dtype=bool),
        }
    )


def memberships(rows: dict[str, tuple[str | None, str | None, bool]]) -> set[tuple[str, str, str | None]]:
    held: set[tuple[str, str, str | None]] = set()
    for customer, (a, b, s) in rows.items():
        held |= {(customer, "a", a)} if a is not None else set()
        held |= {(customer, "b", b)} if b is not None else set()
        held |= {(customer, "s", None)} if s else set()
    return held


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=state, after=state)
def test_replaying_the_events_turns_the_previous_state_into_the_current_one(before: dict, after: dict) -> None:
    events = diff(as_frame(before), as_frame(after))
    held = memberships(before)
    for row in events.itertuples():
        member = (row.customer_id, row.name, row.value)
        if row.type.endswith(".exited"):
            assert member in held
            held.remove(member)
        else:
            assert member not in held
            held.add(member)
    assert held == memberships(after)
    assert events["id"].is_unique
