"""Evaluating tag rules on score columns, vectorised (numpy and Arrow), with hysteresis
against the previous run's tiers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from serving.tags.conditions import (
    AllOf,
    AnyOf,
    Condition,
    Invert,
    NumberCompare,
    NumberIn,
    ScorePresent,
    TagIn,
    TagPresent,
    TextIn,
)
from serving.tags.rules import (
    SEGMENT_COLUMN_PREFIX,
    TAG_COLUMN_PREFIX,
    ConditionTag,
    PassThroughTag,
    TagInputError,
    TagRule,
    TagRules,
    TierTag,
)



class _TagValues:
    """A tag's values for every row: small-integer codes into a vocabulary (tiers, conditions)
    or the text itself (pass-through). Codes keep comparisons numpy-cheap."""

    def __init__(self, codes: np.ndarray | None = None, categories: tuple[str, ...] = (), text: pa.Array | None = None) -> None:
        self.codes = codes
        self.categories = categories
        self.text = text

    def isin(self, values: tuple[str, ...]) -> np.ndarray:
        if self.codes is not None:
            wanted = [self.categories.index(v) for v in values if v in self.categories]
            if not wanted:
                return np.zeros(len(self.codes), dtype=bool)
            result = self.codes == wanted[0]
            for code in wanted[1:]:
                result |= self.codes == code
            return result
        assert self.text is not None
        return _text_isin(self.text, values)

    def present(self) -> np.ndarray:
        if self.codes is not None:
            return self.codes >= 0
        assert self.text is not None
        return pc.is_valid(self.text).to_numpy(zero_copy_only=False)

    def to_array(self) -> pd.api.extensions.ExtensionArray:
        if self.codes is not None:
            indices = pa.array(self.codes, mask=self.codes < 0)
            arrow = pa.array(self.categories, type=pa.string()).take(indices)
        else:
            arrow = self.text
        return _as_str_array(arrow)

    def to_list(self) -> list[str | None]:
        """The values as Python strings, None where the row does not have the tag."""
        if self.codes is not None:
            return [self.categories[code] if code >= 0 else None for code in self.codes.tolist()]
        assert self.text is not None
        return self.text.to_pylist()


def _as_str_array(arrow: pa.Array) -> pd.api.extensions.ExtensionArray:
    """Arrow text as pandas' default string dtype (what a snapshot reads back from Parquet)."""
    series = arrow.to_pandas()
    if series.dtype != "str":
        series = series.astype("str")
    return series.array


def _text_isin(text: pa.Array, values: tuple[str, ...]) -> np.ndarray:
    return pc.fill_null(pc.is_in(text, value_set=pa.array(values, type=text.type)), False).to_numpy(zero_copy_only=False)


#: Score columns by name: a frame, or numpy arrays of one length (numbers as floats, texts as objects).
Scores = pd.DataFrame | Mapping[str, pd.Series | np.ndarray]


class _Frame:
    """Score columns of the evaluated rows, converted once and shared by every rule."""

    def __init__(self, scores: Scores, n_rows: int) -> None:
        self.scores = scores
        self.n_rows = n_rows
        self._numbers: dict[str, np.ndarray] = {}
        self._texts: dict[str, pa.Array] = {}

    def number(self, column: str) -> np.ndarray:
        if column not in self._numbers:
            values = self.scores[column]
            try:
                if isinstance(values, pd.Series):
                    self._numbers[column] = values.to_numpy(dtype=np.float64, na_value=np.nan)
                else:
                    self._numbers[column] = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise TagInputError(f"score column '{column}' must be numeric ({exc})") from exc
        return self._numbers[column]

    def text(self, column: str) -> pa.Array:
        """Text values with blanks as missing (a blank segment is no segment)."""
        if column not in self._texts:
            arrow = _text_arrow(self.scores[column])
            if not (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
                raise TagInputError(f"score column '{column}' must hold text, found {arrow.type}")
            self._texts[column] = pc.if_else(pc.equal(arrow, ""), pa.scalar(None, arrow.type), arrow)
        return self._texts[column]


def _text_arrow(column: pd.Series | np.ndarray) -> pa.Array:
    """One Arrow array for a pandas (or numpy object) column (pandas may hold several
    chunks); categories and all-null object columns become plain strings."""
    arrow = pa.array(column, from_pandas=True)
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    if pa.types.is_dictionary(arrow.type) or pa.types.is_null(arrow.type):
        arrow = arrow.cast(pa.string())
    return arrow


def _evaluate(node: Condition, frame: _Frame, tags: Mapping[str, _TagValues]) -> np.ndarray:
    if isinstance(node, TagIn):
        values = tags[node.tag]
        found = values.isin(node.values)
        return values.present() & ~found if node.negated else found
    if isinstance(node, NumberCompare):
        left = frame.number(node.left)
        right = frame.number(node.right) if isinstance(node.right, str) else node.right
        result = _COMPARE[node.op](left, right)
        if node.op == "!=":  # NaN != x is True in IEEE; a missing score compares as false
            result &= ~np.isnan(left)
            if isinstance(right, np.ndarray):
                result &= ~np.isnan(right)
        return result
    if isinstance(node, AllOf):
        result = _evaluate(node.items[0], frame, tags).copy()
        for item in node.items[1:]:
            result &= _evaluate(item, frame, tags)
        return result
    if isinstance(node, AnyOf):
        result = _evaluate(node.items[0], frame, tags).copy()
        for item in node.items[1:]:
            result |= _evaluate(item, frame, tags)
        return result
    if isinstance(node, Invert):
        return ~_evaluate(node.item, frame, tags)
    if isinstance(node, TagPresent):
        return tags[node.tag].present()
    if isinstance(node, ScorePresent):
        if node.text:
            return pc.is_valid(frame.text(node.column)).to_numpy(zero_copy_only=False)
        return ~np.isnan(frame.number(node.column))
    if isinstance(node, NumberIn):
        values = frame.number(node.column)
        found = np.isin(values, np.array(node.values))
        return ~np.isnan(values) & ~found if node.negated else found
    if isinstance(node, TextIn):
        text = frame.text(node.column)
        found = _text_isin(text, node.values)
        return pc.is_valid(text).to_numpy(zero_copy_only=False) & ~found if node.negated else found
    return np.full(frame.n_rows, node.value, dtype=bool)


_COMPARE = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _tier_codes(values: np.ndarray, mins: np.ndarray, margin: float = 0.0, previous: np.ndarray | None = None) -> np.ndarray:
    """Tier index per value (0 = highest tier, -1 = none), with hysteresis against `previous`.

    `mins` are the tiers' thresholds, strictly decreasing. Tier i covers
    [mins[i], mins[i-1]) (the top tier is unbounded above). With a previous tier p, the row
    keeps p while the value is in [mins[p] - margin, mins[p-1] + margin).
    """
    count = len(mins)
    below = np.searchsorted(mins[::-1], values, side="right")  # how many thresholds <= value
    codes = np.where(below > 0, count - below, -1)
    missing = np.isnan(values)
    codes[missing] = -1
    if previous is not None and margin > 0:
        had = (previous >= 0) & ~missing
        tier = np.where(had, previous, 0)
        lower = mins - margin
        upper = np.concatenate(([np.inf], mins[:-1])) + margin
        keep = had & (values >= lower[tier]) & (values < upper[tier])
        codes = np.where(keep, previous, codes)
    return codes.astype(np.int16)


class PreviousTiers(Protocol):
    """The previous run's tags as hysteresis reads them."""

    def codes(self, column: str, categories: tuple[str, ...]) -> np.ndarray | None:
        """Previous tier codes per current row (-1: no previous tier); None if the previous
        run did not have this tag."""


def _codes_among(text: pa.Array, categories: tuple[str, ...]) -> np.ndarray:
    """Position of each value among `categories` (-1: null or not among them)."""
    found = pc.index_in(text, value_set=pa.array(categories, type=text.type))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int16)


class AlignedPreviousTags:
    """The previous run's tag values given one per current row (None: no previous value),
    e.g. read by position from the latest snapshot; `values` by column (`tag_<name>`).

    For the API's few rows: the values are looked up in a dict (an Arrow round trip would
    cost more than the rest of the hysteresis).
    """

    def __init__(self, values: Mapping[str, Sequence[str | None]]) -> None:
        self.values = values

    def codes(self, column: str, categories: tuple[str, ...]) -> np.ndarray | None:
        if column not in self.values:
            return None
        code_of = {category: code for code, category in enumerate(categories)}
        return np.array([code_of.get(value, -1) if isinstance(value, str) else -1 for value in self.values[column]], dtype=np.int16)


class _PreviousTags:
    """The previous run's tags, aligned to the current rows by customer_id."""

    def __init__(self, previous: pd.DataFrame, scores: pd.DataFrame) -> None:
        if "customer_id" not in previous.columns:
            raise TagInputError("the previous tags have no 'customer_id' column")
        self.previous = previous
        self.rows = _align(_text_arrow(scores["customer_id"]), _text_arrow(previous["customer_id"]))

    def codes(self, column: str, categories: tuple[str, ...]) -> np.ndarray | None:
        if column not in self.previous.columns:
            return None
        codes = _codes_among(_text_arrow(self.previous[column]), categories)
        if self.rows is None:
            return codes
        return np.append(codes, np.int16(-1))[self.rows]  # row -1 picks the appended "none"


def _align(current: pa.Array, previous: pa.Array) -> np.ndarray | None:
    """Row of `previous` for each current customer (-1: absent); None if both list the same
    customers in the same order (the usual case between batch runs, and the cheapest)."""
    current, previous = _as_ids(current), _as_ids(previous)
    if len(current) == len(previous) and current.equals(previous):
        return None
    # One hash pass over both id columns gives shared integer codes; the rest is numpy.
    encoded = pc.dictionary_encode(pa.concat_arrays([previous, current]))
    distinct = len(encoded.dictionary)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    previous_codes, current_codes = codes[: len(previous)], codes[len(previous) :]
    known = previous_codes >= 0
    counts = np.bincount(previous_codes[known], minlength=distinct)
    if counts.size and counts.max() > 1:
        duplicate = encoded.dictionary[int(counts.argmax())].as_py()
        raise TagInputError(f"the previous tags list customer '{duplicate}' more than once")
    row_of = np.full(distinct + 1, -1, dtype=np.int64)  # last slot: a null id matches nothing
    row_of[previous_codes[known]] = np.flatnonzero(known)
    return row_of[np.where(current_codes >= 0, current_codes, distinct)]


def _as_ids(ids: pa.Array) -> pa.Array:
    """Ids as one Arrow type, so int ids, str ids and Arrow's two string types compare."""
    return ids if pa.types.is_large_string(ids.type) else ids.cast(pa.large_string())


def evaluate_tags(rules: TagRules, scores: pd.DataFrame, previous: pd.DataFrame | PreviousTiers | None = None) -> pd.DataFrame:
    """Tags and segments for every row of `scores` (one row per customer).

    Returns a frame with the index and order of `scores`: `customer_id`, `tag_<name>` per
    tag (string; missing = the customer does not have the tag) and `segment_<name>` per
    segment (bool). `previous` is an earlier output of this function; it is only read for
    hysteresis and is joined by customer_id (customers may come and go), unless given as
    tiers already matched to these rows (`AlignedPreviousTags`). Every column in
    `rules.required_scores()` must be present (NaN / null where a model does not apply):
    a column that is silently absent would make every customer leave its tiers at once.
    """
    _check_scores(rules, scores.columns, ("customer_id",))
    if isinstance(previous, pd.DataFrame):
        previous = _PreviousTags(previous, scores) if _sticky(rules) else None
    tags = evaluate_tag_columns(rules, scores, len(scores), previous)
    return pd.DataFrame({"customer_id": scores["customer_id"].array, **tags.to_arrays()}, index=scores.index)


@dataclass(frozen=True)
class TagColumns:
    """What `evaluate_tags` gives for each row, before it is put in a frame."""

    tags: dict[str, _TagValues]  # by tag name, in the rules' order
    segments: dict[str, np.ndarray]  # by segment name: bool per row

    def to_arrays(self) -> dict[str, object]:
        """`tag_<name>` (pandas strings) and `segment_<name>` (bool) columns, as `evaluate_tags` returns them."""
        columns: dict[str, object] = {TAG_COLUMN_PREFIX + name: values.to_array() for name, values in self.tags.items()}
        columns.update({SEGMENT_COLUMN_PREFIX + name: flags for name, flags in self.segments.items()})
        return columns

    def to_lists(self) -> dict[str, list[str | None] | list[bool]]:
        """The same columns as Python lists: a tag's value or None, a segment's flag."""
        columns: dict[str, list[str | None] | list[bool]] = {TAG_COLUMN_PREFIX + name: values.to_list() for name, values in self.tags.items()}
        columns.update({SEGMENT_COLUMN_PREFIX + name: flags.tolist() for name, flags in self.segments.items()})
        return columns


def evaluate_tag_columns(rules: TagRules, scores: Scores, n_rows: int, previous: PreviousTiers | None = None) -> TagColumns:
    """The tags and segments of `evaluate_tags`, from score columns by name (`n_rows` each),
    with the previous run's tiers already matched to the rows (`previous`).

    `evaluate_tags` puts the result in a frame; the API reads it as lists (for a few rows a
    frame costs more than evaluating the rules).
    """
    _check_scores(rules, scores.keys())
    frame = _Frame(scores, n_rows)
    history = previous if _sticky(rules) else None
    values: dict[str, _TagValues] = {}
    for rule in _evaluation_order(rules.tags):
        if isinstance(rule, TierTag):
            earlier = None
            if history is not None and rule.hysteresis > 0:
                earlier = history.codes(TAG_COLUMN_PREFIX + rule.name, rule.values)
            mins = np.array([tier.min for tier in rule.tiers], dtype=np.float64)
            codes = _tier_codes(frame.number(rule.column), mins, rule.hysteresis, earlier)
            values[rule.name] = _TagValues(codes, rule.values)
        elif isinstance(rule, PassThroughTag):
            values[rule.name] = _TagValues(text=frame.text(rule.column))
        else:
            holds = _evaluate(rule.condition.root, frame, values)
            values[rule.name] = _TagValues(np.where(holds, 0, -1).astype(np.int16), rule.values)
    return TagColumns(
        {rule.name: values[rule.name] for rule in rules.tags},
        {segment.name: _evaluate(segment.condition.root, frame, values) for segment in rules.segments},
    )


def _check_scores(rules: TagRules, columns: Iterable[str], also: tuple[str, ...] = ()) -> None:
    missing = sorted({*also, *rules.required_scores()} - set(columns))
    if missing:
        raise TagInputError(f"the scores lack column(s) {', '.join(missing)} that the tag rules ({rules.source}) read")


def _sticky(rules: TagRules) -> bool:
    """Whether any tag reads the previous run (hysteresis)."""
    return any(isinstance(rule, TierTag) and rule.hysteresis > 0 for rule in rules.tags)


def _evaluation_order(tags: Sequence[TagRule]) -> list[TagRule]:
    """Tags with every condition tag after the tags it reads (declaration order otherwise)."""
    by_name = {t.name: t for t in tags}
    done: set[str] = set()
    order: list[TagRule] = []

    def visit(rule: TagRule) -> None:
        if rule.name in done:
            return
        done.add(rule.name)
        if isinstance(rule, ConditionTag):
            for dependency in sorted(rule.condition.tags):
                visit(by_name[dependency])
        order.append(rule)

    for rule in tags:
        visit(rule)
    return order
