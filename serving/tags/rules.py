"""The tag rules model: the scores rules may read, the kinds of tag, segments, and the errors.

`serving.tags.rules_file` builds a `TagRules` from a YAML file (checking every condition
with `serving.tags.conditions`); `serving.tags.evaluation` applies it to scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Literal

from features.errors import CrmScoringError

if TYPE_CHECKING:
    from serving.tags.conditions import Expression

RULES_VERSION = 1
DEFAULT_RULES_SOURCE = "<default>"

TAG_COLUMN_PREFIX = "tag_"
SEGMENT_COLUMN_PREFIX = "segment_"
#: The value a condition tag holds when its condition is true (absent otherwise).
CONDITION_TRUE = "true"

ScoreKind = Literal["unit", "number", "text"]


@dataclass(frozen=True)
class ScoreSpec:
    """A score the rules may read: its dotted rules name, its column, what values it takes.

    `unit` scores (probabilities, percentiles) lie in [0, 1], so tier thresholds outside
    that range are a mistake the loader reports.
    """

    name: str
    column: str
    kind: ScoreKind


def _score(name: str, kind: ScoreKind) -> tuple[str, ScoreSpec]:
    return name, ScoreSpec(name, name.replace(".", "_"), kind)


#: The scores batch scoring provides (DESIGN.md, "Output contract"), by rules name.
SCORES: Mapping[str, ScoreSpec] = MappingProxyType(
    dict(
        [
            _score("lead.probability", "unit"),
            _score("lead.percentile", "unit"),
            _score("churn.probability", "unit"),
            _score("churn.percentile", "unit"),
            _score("ltv.p_alive", "unit"),
            _score("ltv.expected_purchases", "number"),
            _score("ltv.expected_order_value", "number"),
            _score("ltv.clv", "number"),
            _score("ltv.percentile", "unit"),
            _score("rfm_segment", "text"),
        ]
    )
)
SCORE_BY_COLUMN = {spec.column: spec for spec in SCORES.values()}


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class RuleProblem:
    """One problem in a rules file; `line` and `column` count from 1 (None: the whole file)."""

    line: int | None
    column: int | None
    message: str

    def format(self, source: str) -> str:
        if self.line is None:
            return f"{source}: {self.message}"
        return f"{source}:{self.line}:{self.column or 1}: {self.message}"


class TagRulesError(CrmScoringError):
    """A tag rules file is unreadable or invalid; carries every problem found, in file order."""

    def __init__(self, source: str, problems: Sequence[RuleProblem]) -> None:
        self.source = source
        self.problems = tuple(sorted(problems, key=lambda p: (p.line or 0, p.column or 0)))
        super().__init__("\n".join(p.format(source) for p in self.problems))


class TagInputError(CrmScoringError, ValueError):
    """The score frame (or the previous run's tags) cannot be evaluated with these rules."""


# --------------------------------------------------------------------------- rules model


@dataclass(frozen=True)
class Tier:
    name: str
    min: float


@dataclass(frozen=True)
class TierTag:
    """The tier of a score: tiers highest first, each from its `min` up to the next higher one.

    A score below the lowest tier's `min` gets no tag.
    """

    kind: ClassVar[str] = "tier"
    name: str
    score: str
    tiers: tuple[Tier, ...]
    hysteresis: float = 0.0
    description: str = ""
    line: int = 0

    @property
    def column(self) -> str:
        return SCORES[self.score].column

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)


@dataclass(frozen=True)
class PassThroughTag:
    """A text score copied as a tag (the RFM segment); `values`, if declared, is its vocabulary."""

    kind: ClassVar[str] = "passthrough"
    name: str
    score: str
    values: tuple[str, ...] | None = None
    description: str = ""
    line: int = 0

    @property
    def column(self) -> str:
        return SCORES[self.score].column


@dataclass(frozen=True)
class ConditionTag:
    """A tag that holds "true" while its condition holds and is absent otherwise."""

    kind: ClassVar[str] = "condition"
    name: str
    condition: Expression
    description: str = ""
    line: int = 0

    @property
    def values(self) -> tuple[str, ...]:
        return (CONDITION_TRUE,)


TagRule = TierTag | PassThroughTag | ConditionTag


@dataclass(frozen=True)
class SegmentRule:
    name: str
    condition: Expression
    description: str = ""
    line: int = 0


@dataclass(frozen=True)
class TagRules:
    """A validated rules file. `digest` (sha256 of the file bytes) identifies it in run ids."""

    version: str | int
    tags: tuple[TagRule, ...]
    segments: tuple[SegmentRule, ...]
    source: str
    digest: str

    def tag_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tags)

    def segment_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    def tag(self, name: str) -> TagRule:
        for rule in self.tags:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def tier_tag_for(self, prediction: str, preferred: str) -> str | None:
        """The tier tag that gives the `prediction` scores' (`lead`, `churn`, `ltv`) tier: the
        tag named `preferred` when it is a tier of those scores, else the first such tier tag
        in the file (a rules file may name it otherwise), else None."""
        names = self._tier_tags_by_prediction.get(prediction, ())
        return preferred if preferred in names else (names[0] if names else None)

    @cached_property
    def _tier_tags_by_prediction(self) -> dict[str, tuple[str, ...]]:
        # Once per rules object: `tier_tag_for` runs for every customer rendered.
        found: dict[str, list[str]] = {}
        for tag in self.tags:
            if isinstance(tag, TierTag):
                found.setdefault(tag.score.split(".")[0], []).append(tag.name)
        return {prediction: tuple(names) for prediction, names in found.items()}

    def required_scores(self) -> frozenset[str]:
        """The score columns `evaluate_tags` reads (the frame must have all of them)."""
        columns: set[str] = set()
        for rule in self.tags:
            if isinstance(rule, ConditionTag):
                columns |= rule.condition.scores
            else:
                columns.add(rule.column)
        for segment in self.segments:
            columns |= segment.condition.scores
        return frozenset(columns)
