"""Tag and segment events: the diff of two score snapshots, and the JSON body of one event.

Pure functions, no I/O: the store (`serving.store`) persists what `diff_snapshots` returns and
the delivery (`serving.delivery`) and export build the JSON with `event_body`.

Event types
-----------
``tag.entered``      the customer now has tag ``name`` with tier ``value`` (and did not before,
                     or had another tier: ``previous_value``);
``tag.exited``       the customer no longer has tier ``value`` of tag ``name`` (``next_value`` is
                     the tier it moved to, null when the tag is gone altogether);
``segment.entered``  the customer is now in segment ``name``;
``segment.exited``   the customer left segment ``name``.

A tier change (``churn_risk`` medium -> high) is two events: ``tag.exited`` medium then
``tag.entered`` high, both carrying ``previous_value`` = "medium" and ``next_value`` = "high", so a
receiver can act on either and tell a change from a plain exit. A customer present in the previous
snapshot and absent now (deleted, no longer eligible) exits all its tags and segments; a new
customer enters its tags and segments. A tag or segment column present on one side only is
treated as all-null / all-false on the other (a tag added to the rules makes its holders enter
it; a removed one makes everybody exit it).

The first run (``previous=None``) is a baseline and emits nothing unless ``emit_initial=True``
(then every set tag and true segment is an ``entered`` event): a first batch over a million
customers would otherwise start every journey for everybody at once.

Event JSON (webhook body, one JSONL line; Standard Webhooks payload shape)::

    {"id": "evt_3f0c...", "type": "tag.entered", "timestamp": "2025-07-01T02:13:07Z",
     "data": {"customer_id": "c-42", "tag": "churn_risk", "value": "high",
              "previous_value": "medium", "next_value": "high",
              "as_of": "2025-07-01T00:00:00Z", "run_id": "run_..."}}

    {"id": "evt_91ab...", "type": "segment.exited", "timestamp": "2025-07-01T02:13:07Z",
     "data": {"customer_id": "c-42", "segment": "win_back",
              "as_of": "2025-07-01T00:00:00Z", "run_id": "run_..."}}

``timestamp`` is when the batch run created the event (it stays the same on every retry and
rerun), ``as_of`` the scoring cut-off. ``id`` is deterministic (see `event_id`): the same run
yields the same ids, so receivers can de-duplicate on it (it is also the ``webhook-id`` header).

Within one run, events are ordered by customer, then exits before entries (tag.exited,
segment.exited, tag.entered, segment.entered), then name: a receiver processing them in order
never sees a customer in two tiers of one tag.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from features.errors import CrmScoringError

if TYPE_CHECKING:
    import pandas as pd

TAG_PREFIX = "tag_"
SEGMENT_PREFIX = "segment_"

TAG_ENTERED = "tag.entered"
TAG_EXITED = "tag.exited"
SEGMENT_ENTERED = "segment.entered"
SEGMENT_EXITED = "segment.exited"
#: Every event type, in the order events of one customer are emitted (exits first).
EVENT_TYPES: tuple[str, ...] = (TAG_EXITED, SEGMENT_EXITED, TAG_ENTERED, SEGMENT_ENTERED)

#: What an event says (set once by the diff, never changed).
EVENT_CONTENT_COLUMNS: tuple[str, ...] = (
    "id", "type", "run_id", "as_of", "customer_id", "name", "value", "previous_value", "next_value", "created_at",
)
#: Where its delivery stands (changed by delivery).
EVENT_DELIVERY_COLUMNS: tuple[str, ...] = ("status", "attempts", "next_attempt_at", "last_error", "delivered_at")
#: The outbox row: what `diff_snapshots` returns and what the store keeps.
EVENT_COLUMNS: tuple[str, ...] = EVENT_CONTENT_COLUMNS + EVENT_DELIVERY_COLUMNS

STATUS_PENDING = "pending"
STATUS_DELIVERED = "delivered"
STATUS_DEAD = "dead"
STATUSES: tuple[str, ...] = (STATUS_PENDING, STATUS_DELIVERED, STATUS_DEAD)

# Fields of the id are joined with the ASCII unit separator: unlike "|", it cannot appear in a
# customer id or tag value in practice, so two different events never hash the same text.
_ID_SEPARATOR = "\x1f"
_STORED_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class SnapshotDiffError(CrmScoringError):
    """A snapshot cannot be diffed (no customer_id, duplicated customers, non-boolean segment)."""


# --------------------------------------------------------------------------------------
# timestamps
# --------------------------------------------------------------------------------------


def to_utc_naive(value: datetime) -> datetime:
    """Aware datetimes convert to UTC; naive ones are taken as UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def format_timestamp(value: datetime) -> str:
    """Fixed-width ISO UTC text (microseconds, "Z"): sorts as text in the same order as in time."""
    return to_utc_naive(value).strftime(_STORED_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """The inverse of `format_timestamp` (naive UTC); accepts any ISO form."""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return to_utc_naive(datetime.fromisoformat(text))


def json_timestamp(value: datetime | str) -> str:
    """ISO UTC as shown to receivers: "2025-07-01T00:00:00Z", microseconds only when not zero."""
    moment = parse_timestamp(value) if isinstance(value, str) else to_utc_naive(value)
    return moment.isoformat() + "Z"  # four-digit years, unlike strftime's %Y before year 1000


# --------------------------------------------------------------------------------------
# ids and bodies
# --------------------------------------------------------------------------------------


def event_id(run_id: str, type: str, customer_id: str, name: str, value: str | None) -> str:  # noqa: A002
    """Deterministic id: ``evt_`` + the first 32 hex digits of sha256 over the event's identity.

    The same run (same run_id) produces the same ids, so committing it twice inserts nothing
    twice, and receivers can use the id as an idempotency key.
    """
    text = _ID_SEPARATOR.join((run_id, type, customer_id, name, "" if value is None else value))
    return "evt_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _none_if_missing(value: Any) -> Any:
    # pandas hands out NaN / pd.NA / None for a missing value depending on the dtype.
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    # pd.NA can only come from a loaded pandas; delivery reads SQLite rows and never imports it.
    pandas = sys.modules.get("pandas")
    if pandas is not None and value is pandas.NA:
        return None
    return value


def event_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON payload of one outbox row (a store row, a dict or a row of `diff_snapshots`).

    Tag events carry ``tag``, ``value``, ``previous_value`` and ``next_value``; segment events
    carry ``segment`` only. See the module docstring for the full shape.
    """
    type_ = str(row["type"])
    data: dict[str, Any] = {"customer_id": str(row["customer_id"])}
    if type_.startswith("tag."):
        data["tag"] = str(row["name"])
        data["value"] = _none_if_missing(row["value"])
        data["previous_value"] = _none_if_missing(row["previous_value"])
        data["next_value"] = _none_if_missing(row["next_value"])
    else:
        data["segment"] = str(row["name"])
    data["as_of"] = json_timestamp(row["as_of"])
    data["run_id"] = str(row["run_id"])
    return {"id": str(row["id"]), "type": type_, "timestamp": json_timestamp(row["created_at"]), "data": data}


# --------------------------------------------------------------------------------------
# the diff
# --------------------------------------------------------------------------------------


def empty_events() -> pd.DataFrame:
    """An outbox frame with no rows (the right columns and dtypes)."""
    import pandas as pd

    frame = pd.DataFrame({c: pd.Series([], dtype="object") for c in EVENT_COLUMNS})
    return frame.astype({"attempts": "int64"})


def _names(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [str(c)[len(prefix):] for c in frame.columns if str(c).startswith(prefix) and len(str(c)) > len(prefix)]


def _check_snapshot(frame: pd.DataFrame, label: str) -> None:
    import pandas as pd

    if "customer_id" not in frame.columns:
        raise SnapshotDiffError(f"the {label} snapshot has no customer_id column")
    missing = int(frame["customer_id"].isna().sum())
    if missing:
        raise SnapshotDiffError(f"the {label} snapshot has {missing} row(s) without a customer_id")
    for name in _names(frame, SEGMENT_PREFIX):
        column = frame[SEGMENT_PREFIX + name]
        if not (pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.infer_dtype(column, skipna=True) in ("boolean", "empty")):
            raise SnapshotDiffError(f"segment column {SEGMENT_PREFIX + name} of the {label} snapshot is not boolean ({column.dtype})")


def _check_unique(positions: Any, customers: Any, label: str) -> None:
    """One row per customer (checked on the integer codes: cheaper than on the strings)."""
    import numpy as np

    counts = np.bincount(positions, minlength=len(customers))
    if (counts > 1).any():
        dupes = [str(customers[i]) for i in np.flatnonzero(counts > 1)[:3]]
        raise SnapshotDiffError(
            f"the {label} snapshot has duplicated customer_id values (e.g. {', '.join(dupes)}); one row per customer"
        )


def _factorize_pair(previous: pd.Series, current: pd.Series, *, sort: bool = False) -> tuple[Any, Any, Any]:
    """Integer codes of two string columns over one shared vocabulary (-1 = missing)."""
    import pandas as pd

    both = pd.concat([previous.astype("str"), current.astype("str")], ignore_index=True)
    codes, uniques = pd.factorize(both, sort=sort, use_na_sentinel=True)
    return codes[: len(previous)], codes[len(previous):], uniques


def _segment_flags(frame: pd.DataFrame, column: str) -> Any:
    import numpy as np

    if column not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    values = frame[column]
    if values.dtype == bool:
        return values.to_numpy()
    return values.astype("boolean").fillna(False).to_numpy(dtype=bool)


def diff_snapshots(
    previous: pd.DataFrame | None,
    current: pd.DataFrame,
    *,
    run_id: str,
    as_of: datetime,
    created_at: datetime,
    emit_initial: bool = False,
) -> pd.DataFrame:
    """Outbox rows (status pending) for every tag/segment change between two snapshots.

    Reads the ``customer_id``, ``tag_<name>`` (string; null = no tag) and ``segment_<name>``
    (bool) columns and ignores the rest. Vectorised: customer ids and tag values become integer
    codes over a shared vocabulary, both snapshots are scattered onto the union of customers and
    compared column by column as integer arrays (a million customers take a couple of seconds,
    most of it hashing the event ids). ``previous=None`` is the first run: no events unless
    ``emit_initial``.
    """
    import numpy as np
    import pandas as pd

    _check_snapshot(current, "current")
    if previous is None:
        if not emit_initial:
            return empty_events()
        previous = current.iloc[0:0]
    else:
        _check_snapshot(previous, "previous")

    tags = sorted(set(_names(previous, TAG_PREFIX)) | set(_names(current, TAG_PREFIX)))
    segments = sorted(set(_names(previous, SEGMENT_PREFIX)) | set(_names(current, SEGMENT_PREFIX)))
    # Sorted codes: ordering events by customer code orders them by customer_id.
    prev_pos, cur_pos, customers = _factorize_pair(previous["customer_id"], current["customer_id"], sort=True)
    n = len(customers)
    _check_unique(prev_pos, customers, "previous")
    _check_unique(cur_pos, customers, "current")

    chunks: list[tuple[Any, int, int, Any, Any, Any]] = []  # customer codes, type rank, name index, value, previous, next
    rank = {t: i for i, t in enumerate(EVENT_TYPES)}

    def missing_column(frame: pd.DataFrame) -> pd.Series:
        return pd.Series([None] * len(frame), dtype="str")

    for name_index, tag in enumerate(tags):
        column = TAG_PREFIX + tag
        p_codes, c_codes, tiers = _factorize_pair(
            previous[column] if column in previous.columns else missing_column(previous),
            current[column] if column in current.columns else missing_column(current),
        )
        p_tier = np.full(n, -1, dtype=np.int64)
        c_tier = np.full(n, -1, dtype=np.int64)
        p_tier[prev_pos] = p_codes
        c_tier[cur_pos] = c_codes
        # Code -1 (no tag) picks the trailing None.
        labels = np.append(np.asarray(tiers, dtype=object), None)
        differ = p_tier != c_tier
        for type_, mask, value in (
            (TAG_EXITED, differ & (p_tier >= 0), p_tier),
            (TAG_ENTERED, differ & (c_tier >= 0), c_tier),
        ):
            rows = np.flatnonzero(mask)
            if len(rows):
                chunks.append((rows, rank[type_], name_index, labels[value[rows]], labels[p_tier[rows]], labels[c_tier[rows]]))
    for name_index, segment in enumerate(segments):
        column = SEGMENT_PREFIX + segment
        p_in = np.zeros(n, dtype=bool)
        c_in = np.zeros(n, dtype=bool)
        p_in[prev_pos] = _segment_flags(previous, column)
        c_in[cur_pos] = _segment_flags(current, column)
        for type_, mask in ((SEGMENT_EXITED, p_in & ~c_in), (SEGMENT_ENTERED, c_in & ~p_in)):
            rows = np.flatnonzero(mask)
            if len(rows):
                none = np.full(len(rows), None, dtype=object)
                chunks.append((rows, rank[type_], name_index, none, none, none))

    if not chunks:
        return empty_events()
    customer_code = np.concatenate([c[0] for c in chunks])
    type_rank = np.concatenate([np.full(len(c[0]), c[1], dtype=np.int8) for c in chunks])
    name_index = np.concatenate([np.full(len(c[0]), c[2], dtype=np.int32) for c in chunks])
    order = np.lexsort((name_index, type_rank, customer_code))
    type_rank, name_index = type_rank[order], name_index[order]
    is_tag = np.isin(type_rank, [rank[TAG_EXITED], rank[TAG_ENTERED]])
    names = np.where(
        is_tag,
        np.asarray(tags or [""], dtype=object)[np.where(is_tag, name_index, 0)],
        np.asarray(segments or [""], dtype=object)[np.where(is_tag, 0, name_index)],
    )
    customer_ids = np.asarray(customers.take(customer_code[order]), dtype=object)
    types = np.asarray(EVENT_TYPES, dtype=object)[type_rank]
    values = [np.concatenate([c[k] for c in chunks])[order] for k in (3, 4, 5)]

    as_of_text = format_timestamp(as_of)
    created_text = format_timestamp(created_at)
    # event_id inlined (same text, same hash): this loop is the one per-event Python step.
    sha256, sep = hashlib.sha256, _ID_SEPARATOR
    ids = [
        "evt_" + sha256(f"{run_id}{sep}{t}{sep}{c}{sep}{nm}{sep}{'' if v is None else v}".encode()).hexdigest()[:32]
        for t, c, nm, v in zip(types, customer_ids, names, values[0], strict=True)
    ]
    count = len(ids)

    def text(values: Any) -> pd.Series:
        # object dtype keeps None as the missing value (a str column would turn it into NaN).
        return pd.Series(values, dtype=object)

    return pd.DataFrame(
        {
            "id": text(ids),
            "type": text(types),
            "run_id": text(np.full(count, run_id, dtype=object)),
            "as_of": text(np.full(count, as_of_text, dtype=object)),
            "customer_id": text(customer_ids),
            "name": text(names),
            "value": text(values[0]),
            "previous_value": text(values[1]),
            "next_value": text(values[2]),
            "created_at": text(np.full(count, created_text, dtype=object)),
            "status": text(np.full(count, STATUS_PENDING, dtype=object)),
            "attempts": np.zeros(count, dtype="int64"),
            "next_attempt_at": text(np.full(count, created_text, dtype=object)),
            "last_error": text(np.full(count, None, dtype=object)),
            "delivered_at": text(np.full(count, None, dtype=object)),
        }
    )
