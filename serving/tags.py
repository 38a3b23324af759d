"""Predictive tags and segments: the rules file, its validation, and vectorised evaluation.

Tags are configuration, not code: marketers move thresholds and define segments far more
often than models change (DESIGN.md, "Tags, segments, triggers"). The rules live in a
versioned YAML file; the project ships `serving/default_tags.yaml` and a user file replaces
it as a whole (no merging, so what runs is exactly what one file says).

Format (version 1)::

    version: 1
    tags:
      churn_risk:                      # a tier tag: the tier of a score
        score: churn.probability
        tiers:                         # highest first; a tier runs from its min (inclusive)
          - {name: high, min: 0.6}     # up to the next higher tier's min
          - {name: medium, min: 0.3}
          - {name: low, min: 0.0}
        hysteresis: 0.03               # optional margin, in score units
      rfm_segment:                     # a pass-through tag: copies a text score
        from: rfm_segment
        values: [champions, loyal]     # optional vocabulary, checked in conditions
      at_risk_high_value:              # a condition tag: "true" when the condition holds
        when: "churn_risk == 'high' and value_tier in ('top', 'high')"
    segments:
      win_back: "churn_risk == 'high'"             # or {when: "...", description: "..."}

Every tag and segment may have a `description`. Scores are named with dots
(`churn.probability` is the column `churn_probability`; see `SCORES`).

Conditions: `or`, `and`, `not`, parentheses; comparisons `== != < <= > >=`; `in` /
`not in` with a list in parentheses or brackets; operands are tag names, score names,
quoted strings, numbers, `true` / `false`; `has(name)` is true when a tag or score is
present, and a bare tag name means the same. A comparison with a missing value is false
(so `churn_risk != 'high'` is false for a customer without a churn score, while
`not churn_risk == 'high'` is true). Conditions are checked when the file is loaded:
unknown names, a tier the tag cannot take, a tag compared with a number, cycles between
condition tags. They are parsed by the small tokenizer and recursive-descent parser below
into a closed set of node types; nothing reaches `eval`, names resolve only to declared
tags and known scores, and `has` is the only function.

Hysteresis keeps customers from flapping between tiers (and so from generating
`tag.exited` / `tag.entered` events every run) when a score wobbles around a boundary:
a customer whose previous tier is T keeps T while its score stays inside T's range widened
by the margin on each side, and otherwise gets the plain tier of its score. Keeping T
needs the score to be inside T's widened range, and the plain tier is always inside its
own range, so applying the rule twice with the same scores changes nothing (idempotence,
which lets the online path reproduce the batch result from the batch's output).

Every problem in a rules file is collected and reported together as `TagRulesError`,
one `path:line:column: problem` per line (lines and columns from 1).
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from features.errors import CrmScoringError

RULES_VERSION = 1
DEFAULT_RULES_SOURCE = "<default>"
_DEFAULT_RULES_FILE = "default_tags.yaml"

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
_SCORE_BY_COLUMN = {spec.column: spec for spec in SCORES.values()}


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
class Expression:
    """A checked condition: its text, the tags and score columns it reads, and its tree."""

    text: str
    tags: frozenset[str]
    scores: frozenset[str]
    root: _Condition = field(repr=False)


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


# --------------------------------------------------------------------------- expressions: syntax


class _ExpressionSyntaxError(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_FUNCTIONS = frozenset({"has"})
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'[^'\n]*'|"[^"\n]*")
  | (?P<name>{_NAME}(?:\.{_NAME})*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
    """,
    re.VERBOSE,
)
_MISTAKES = {
    "=": "use '==' to compare",
    "&": "use 'and'",
    "|": "use 'or'",
    "!": "use 'not' (or '!=')",
    "'": "unterminated string",
    '"': "unterminated string",
    ".": "attribute access is not allowed",
}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, op, punct, keyword, end
    text: str
    offset: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            char = text[at]
            hint = _MISTAKES.get(char)
            raise _ExpressionSyntaxError(f"unexpected character '{char}'" + (f": {hint}" if hint else ""), at)
        kind = match.lastgroup or ""
        if kind != "space":
            word = match.group()
            tokens.append(_Token("keyword" if kind == "name" and word in _KEYWORDS else kind, word, at))
        at = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# Parse tree (names unresolved). Offsets are character positions in the expression text.


@dataclass(frozen=True)
class _Name:
    text: str
    offset: int


@dataclass(frozen=True)
class _Literal:
    value: str | float | bool
    offset: int


@dataclass(frozen=True)
class _Has:
    name: _Name
    offset: int


@dataclass(frozen=True)
class _Compare:
    op: str
    left: _Syntax
    right: _Syntax
    offset: int


@dataclass(frozen=True)
class _Member:
    left: _Syntax
    items: tuple[_Literal, ...]
    negated: bool
    offset: int


@dataclass(frozen=True)
class _Logic:
    op: str  # "and" | "or"
    items: tuple[_Syntax, ...]
    offset: int


@dataclass(frozen=True)
class _Negation:
    item: _Syntax
    offset: int


_Syntax = _Name | _Literal | _Has | _Compare | _Member | _Logic | _Negation


class _Parser:
    """Recursive descent over::

    expr       := or_expr END
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand [(OP operand) | ["not"] "in" list]
    operand    := NAME | "has" "(" NAME ")" | STRING | NUMBER | "true" | "false" | "(" or_expr ")"
    list       := ("(" | "[") literal ("," literal)* [","] (")" | "]")
    """

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.at = 0

    def parse(self) -> _Syntax:
        tree = self._or()
        token = self._peek()
        if token.kind != "end":
            raise _ExpressionSyntaxError(f"expected 'and', 'or' or the end of the condition, found {_shown(token)}", token.offset)
        return tree

    def _peek(self) -> _Token:
        return self.tokens[self.at]

    def _next(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _accept(self, kind: str, text: str | None = None) -> _Token | None:
        token = self._peek()
        if token.kind == kind and (text is None or token.text == text):
            self.at += 1
            return token
        return None

    def _or(self) -> _Syntax:
        first = self._and()
        items = [first]
        while self._accept("keyword", "or"):
            items.append(self._and())
        return first if len(items) == 1 else _Logic("or", tuple(items), first.offset)

    def _and(self) -> _Syntax:
        first = self._not()
        items = [first]
        while self._accept("keyword", "and"):
            items.append(self._not())
        return first if len(items) == 1 else _Logic("and", tuple(items), first.offset)

    def _not(self) -> _Syntax:
        token = self._accept("keyword", "not")
        if token is not None:
            return _Negation(self._not(), token.offset)
        return self._comparison()

    def _comparison(self) -> _Syntax:
        left = self._operand()
        token = self._peek()
        if token.kind == "op":
            self.at += 1
            tree: _Syntax = _Compare(token.text, left, self._operand(), token.offset)
        elif token.kind == "keyword" and token.text == "in":
            self.at += 1
            tree = _Member(left, self._list(), False, token.offset)
        elif token.kind == "keyword" and token.text == "not" and self.tokens[self.at + 1].text == "in":
            self.at += 2
            tree = _Member(left, self._list(), True, token.offset)
        else:
            return left
        after = self._peek()
        if after.kind == "op" or (after.kind == "keyword" and after.text == "in"):
            raise _ExpressionSyntaxError("comparisons cannot be chained: join them with 'and'", after.offset)
        return tree

    def _operand(self) -> _Syntax:
        token = self._next()
        if token.kind == "name":
            if self._peek().text == "(":
                return self._call(token)
            return _Name(token.text, token.offset)
        if token.kind == "string":
            return _Literal(token.text[1:-1], token.offset)
        if token.kind == "number":
            return _Literal(float(token.text), token.offset)
        if token.kind == "keyword" and token.text in ("true", "false"):
            return _Literal(token.text == "true", token.offset)
        if token.text == "(":
            inner = self._or()
            if not self._accept("punct", ")"):
                raise _ExpressionSyntaxError(f"expected ')', found {_shown(self._peek())}", self._peek().offset)
            return inner
        raise _ExpressionSyntaxError(f"expected a tag, score or value, found {_shown(token)}", token.offset)

    def _call(self, function: _Token) -> _Syntax:
        if function.text not in _FUNCTIONS:
            raise _ExpressionSyntaxError(
                f"unknown function '{function.text}': the only function is has(name)", function.offset
            )
        self.at += 1  # "("
        argument = self._next()
        if argument.kind != "name":
            raise _ExpressionSyntaxError(f"has() takes a tag or score name, found {_shown(argument)}", argument.offset)
        if not self._accept("punct", ")"):
            raise _ExpressionSyntaxError(f"expected ')' after has({argument.text}", self._peek().offset)
        return _Has(_Name(argument.text, argument.offset), function.offset)

    def _list(self) -> tuple[_Literal, ...]:
        opening = self._next()
        if opening.text not in ("(", "["):
            raise _ExpressionSyntaxError(f"'in' needs a list such as ('a', 'b'), found {_shown(opening)}", opening.offset)
        closing = ")" if opening.text == "(" else "]"
        items: list[_Literal] = []
        while True:
            token = self._next()
            if token.text == closing and token.kind == "punct":
                break
            if token.kind == "string":
                items.append(_Literal(token.text[1:-1], token.offset))
            elif token.kind == "number":
                items.append(_Literal(float(token.text), token.offset))
            elif token.kind == "name":
                raise _ExpressionSyntaxError(f"list items are quoted values: write '{token.text}'", token.offset)
            else:
                raise _ExpressionSyntaxError(f"expected a quoted value or a number in the list, found {_shown(token)}", token.offset)
            separator = self._next()
            if separator.text == closing and separator.kind == "punct":
                break
            if separator.text != ",":
                raise _ExpressionSyntaxError(f"expected ',' or '{closing}' in the list, found {_shown(separator)}", separator.offset)
        if not items:
            raise _ExpressionSyntaxError("the list is empty", opening.offset)
        return tuple(items)


def _shown(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the condition"
    return token.text if token.kind == "string" else f"'{token.text}'"


# --------------------------------------------------------------------------- expressions: checked tree


@dataclass(frozen=True)
class _Const:
    value: bool


@dataclass(frozen=True)
class _AllOf:
    items: tuple[_Condition, ...]


@dataclass(frozen=True)
class _AnyOf:
    items: tuple[_Condition, ...]


@dataclass(frozen=True)
class _Invert:
    item: _Condition


@dataclass(frozen=True)
class _TagIn:
    """tag in values (negated: tag present and not in values)."""

    tag: str
    values: tuple[str, ...]
    negated: bool


@dataclass(frozen=True)
class _TagPresent:
    tag: str


@dataclass(frozen=True)
class _ScorePresent:
    column: str
    text: bool


@dataclass(frozen=True)
class _NumberCompare:
    """A comparison of numbers; a `str` side is a score column, a `float` side a constant."""

    op: str
    left: str
    right: str | float


@dataclass(frozen=True)
class _NumberIn:
    column: str
    values: tuple[float, ...]
    negated: bool


@dataclass(frozen=True)
class _TextIn:
    column: str
    values: tuple[str, ...]
    negated: bool


_Condition = _Const | _AllOf | _AnyOf | _Invert | _TagIn | _TagPresent | _ScorePresent | _NumberCompare | _NumberIn | _TextIn

_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class _TagHeader:
    """What a condition needs to know about a tag before all conditions are checked."""

    name: str
    kind: str
    values: tuple[str, ...] | None
    score: str | None  # the score a tier / pass-through tag reads (for hints)


@dataclass(frozen=True)
class _Operand:
    kind: str  # tag, number_score, text_score, text, number, bool, condition
    offset: int
    name: str = ""
    column: str = ""
    value: str | float | bool | None = None


class _Checker:
    """Resolves names and checks types of one parsed condition, collecting every problem."""

    def __init__(self, tags: Mapping[str, _TagHeader], segment_names: frozenset[str]) -> None:
        self.tags = tags
        self.segment_names = segment_names
        self.problems: list[tuple[int, str]] = []
        self.tags_used: set[str] = set()
        self.scores_used: set[str] = set()

    def _problem(self, offset: int, message: str) -> None:
        self.problems.append((offset, message))

    def condition(self, tree: _Syntax) -> _Condition | None:
        if isinstance(tree, _Logic):
            items = [self.condition(item) for item in tree.items]
            if any(item is None for item in items):
                return None
            checked = tuple(item for item in items if item is not None)
            return _AllOf(checked) if tree.op == "and" else _AnyOf(checked)
        if isinstance(tree, _Negation):
            item = self.condition(tree.item)
            return None if item is None else _Invert(item)
        if isinstance(tree, _Literal):
            if isinstance(tree.value, bool):
                return _Const(tree.value)
            self._problem(tree.offset, f"{_literal_text(tree.value)} on its own is not a condition")
            return None
        if isinstance(tree, _Name):
            operand = self._resolve(tree)
            if operand is None:
                return None
            if operand.kind == "tag":
                return _TagPresent(operand.name)
            self._problem(
                tree.offset,
                f"score '{operand.name}' is not a condition: compare it (e.g. {operand.name} >= 0.5) or use has({operand.name})",
            )
            return None
        if isinstance(tree, _Has):
            operand = self._resolve(tree.name)
            if operand is None:
                return None
            if operand.kind == "tag":
                return _TagPresent(operand.name)
            return _ScorePresent(operand.column, operand.kind == "text_score")
        if isinstance(tree, _Compare):
            return self._comparison(tree)
        return self._membership(tree)

    def _resolve(self, name: _Name) -> _Operand | None:
        text = name.text
        if text in self.tags:
            self.tags_used.add(text)
            return _Operand("tag", name.offset, name=text)
        if text in SCORES:
            spec = SCORES[text]
            self.scores_used.add(spec.column)
            kind = "text_score" if spec.kind == "text" else "number_score"
            return _Operand(kind, name.offset, name=text, column=spec.column)
        self._problem(name.offset, f"unknown name '{text}'" + self._name_hint(text))
        return None

    def _name_hint(self, text: str) -> str:
        if text in self.segment_names:
            return ": it is a segment, and conditions cannot refer to segments (define it as a tag with `when:` instead)"
        if text in _SCORE_BY_COLUMN:
            return f": did you mean the score '{_SCORE_BY_COLUMN[text].name}'?"
        if text in _FUNCTIONS:
            return f": write {text}(name)"
        if text.lower() in _KEYWORDS:
            return f": write '{text.lower()}' in lower case"
        candidates = [*self.tags, *SCORES]
        close = difflib.get_close_matches(text, candidates, n=1)
        if close:
            return f": did you mean '{close[0]}'?"
        return f" (tags: {', '.join(self.tags) or 'none'}; scores: {', '.join(SCORES)})"

    def _operand(self, tree: _Syntax) -> _Operand | None:
        if isinstance(tree, _Name):
            return self._resolve(tree)
        if isinstance(tree, _Literal):
            kind = "bool" if isinstance(tree.value, bool) else "text" if isinstance(tree.value, str) else "number"
            return _Operand(kind, tree.offset, value=tree.value)
        return _Operand("condition", tree.offset)

    def _comparison(self, tree: _Compare) -> _Condition | None:
        left, right = self._operand(tree.left), self._operand(tree.right)
        if left is None or right is None:
            return None
        op = tree.op
        if "condition" in (left.kind, right.kind):
            self._problem(tree.offset, "a condition cannot be compared with a value: combine conditions with and / or / not")
            return None
        if "bool" in (left.kind, right.kind):
            self._problem(tree.offset, "true / false cannot be compared: write `name` or `not name` for a condition tag")
            return None
        constants = ("text", "number")
        if left.kind in constants and right.kind not in constants:
            left, right, op = right, left, _FLIPPED[op]
        if left.kind in constants:
            self._problem(tree.offset, "the comparison has no tag or score, only constants")
            return None
        if left.kind == "tag":
            return self._tag_comparison(tree.offset, left, op, right)
        if left.kind == "number_score":
            if right.kind == "number_score":
                return _NumberCompare(op, left.column, right.column)
            if right.kind == "number":
                assert isinstance(right.value, float)
                return _NumberCompare(op, left.column, right.value)
            self._problem(right.offset, f"score '{left.name}' is a number: compare it with a number, not {_operand_text(right)}")
            return None
        # text score (a pass-through column that no tag shadows)
        if right.kind != "text":
            self._problem(right.offset, f"score '{left.name}' is text: compare it with a quoted value, not {_operand_text(right)}")
            return None
        if op not in ("==", "!="):
            self._problem(tree.offset, f"'{op}' does not apply to text: use ==, != or in")
            return None
        assert isinstance(right.value, str)
        return _TextIn(left.column, (right.value,), op == "!=")

    def _tag_comparison(self, offset: int, tag: _Operand, op: str, other: _Operand) -> _Condition | None:
        header = self.tags[tag.name]
        if other.kind != "text":
            hint = ""
            if other.kind == "number" and header.score is not None:
                hint = f" (to compare the score, write {header.score} {op} {_literal_text(other.value)})"
            self._problem(
                other.offset,
                f"tag '{tag.name}' holds a name such as {_example_values(header)}, so it can only be compared "
                f"with a quoted value, not {_operand_text(other)}{hint}",
            )
            return None
        if op not in ("==", "!="):
            self._problem(offset, f"tags have no order, so '{op}' does not apply: use ==, != or in")
            return None
        assert isinstance(other.value, str)
        if not self._value_ok(header, other.value, other.offset):
            return None
        return _TagIn(tag.name, (other.value,), op == "!=")

    def _membership(self, tree: _Member) -> _Condition | None:
        left = self._operand(tree.left)
        if left is None:
            return None
        kinds = {"text" if isinstance(item.value, str) else "number" for item in tree.items}
        if left.kind == "tag":
            header = self.tags[left.name]
            if kinds != {"text"}:
                self._problem(tree.offset, f"tag '{left.name}' holds names: the list must hold quoted values")
                return None
            values = tuple(str(item.value) for item in tree.items)
            ok = [self._value_ok(header, str(item.value), item.offset) for item in tree.items]
            return _TagIn(left.name, values, tree.negated) if all(ok) else None
        if left.kind == "number_score":
            if kinds != {"number"}:
                self._problem(tree.offset, f"score '{left.name}' is a number: the list must hold numbers")
                return None
            return _NumberIn(left.column, tuple(float(item.value) for item in tree.items), tree.negated)
        if left.kind == "text_score":
            if kinds != {"text"}:
                self._problem(tree.offset, f"score '{left.name}' is text: the list must hold quoted values")
                return None
            return _TextIn(left.column, tuple(str(item.value) for item in tree.items), tree.negated)
        self._problem(left.offset, f"'in' needs a tag or score on its left, not {_operand_text(left)}")
        return None

    def _value_ok(self, header: _TagHeader, value: str, offset: int) -> bool:
        if header.values is None or value in header.values:
            return True
        close = difflib.get_close_matches(value, header.values, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        if header.kind == "tier":
            self._problem(offset, f"'{value}' is not a tier of tag '{header.name}' (its tiers: {', '.join(header.values)}){hint}")
        elif header.kind == "condition":
            self._problem(
                offset,
                f"tag '{header.name}' is a condition tag (its only value is '{CONDITION_TRUE}'): "
                f"write `{header.name}` or `not {header.name}`",
            )
        else:
            self._problem(offset, f"'{value}' is not a value of tag '{header.name}' (its values: {', '.join(header.values)}){hint}")
        return False


def _literal_text(value: object) -> str:
    if isinstance(value, str):
        return f"the text '{value}'"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower()


def _operand_text(operand: _Operand) -> str:
    if operand.kind == "tag":
        return f"tag '{operand.name}'"
    if operand.kind in ("number_score", "text_score"):
        return f"score '{operand.name}'"
    if operand.kind == "condition":
        return "a condition"
    return _literal_text(operand.value)


def _example_values(header: _TagHeader) -> str:
    if header.values:
        return ", ".join(f"'{v}'" for v in header.values[:3])
    return "a segment name"


# --------------------------------------------------------------------------- YAML reading

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
_TIER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_RESERVED = _KEYWORDS | _FUNCTIONS

_TOP_KEYS = ("version", "tags", "segments")
_TIER_TAG_KEYS = ("score", "tiers", "hysteresis", "description")
_PASSTHROUGH_KEYS = ("from", "values", "description")
_CONDITION_KEYS = ("when", "description")
_TIER_KEYS = ("name", "min")
_SEGMENT_KEYS = ("when", "description")


class _Problems:
    def __init__(self) -> None:
        self.items: list[RuleProblem] = []

    def at(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.items.append(RuleProblem(mark.line + 1, mark.column + 1, message))

    def at_position(self, line: int, column: int, message: str) -> None:
        self.items.append(RuleProblem(line, column, message))


@dataclass(frozen=True)
class _TextSite:
    """Where an expression's characters are in the file.

    Exact for a one-line plain or quoted scalar without escapes (the common case); for
    block or escaped scalars errors point at the scalar and name the character offset.
    """

    line: int
    column: int
    exact: bool

    @classmethod
    def of(cls, node: yaml.ScalarNode) -> _TextSite:
        start, end = node.start_mark, node.end_mark
        raw = start.buffer[start.index : end.index] if start.buffer is not None else None
        if raw is not None and "\n" not in raw:
            if node.style is None and raw == node.value:
                return cls(start.line + 1, start.column + 1, True)
            if node.style in ("'", '"') and raw == f"{node.style}{node.value}{node.style}":
                return cls(start.line + 1, start.column + 2, True)
        return cls(start.line + 1, start.column + 1, False)

    def report(self, problems: _Problems, offset: int, message: str) -> None:
        if self.exact:
            problems.at_position(self.line, self.column + offset, message)
        else:
            problems.at_position(self.line, self.column, f"{message} (at character {offset + 1} of the condition)")


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _STR:
        return f"the text '{node.value}'"
    if node.tag == _NULL:
        return "nothing"
    return str(node.value)


def _mapping(node: yaml.Node, what: str, problems: _Problems) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
    """A mapping's entries in file order; duplicate and non-text keys are reported and skipped.

    PyYAML's constructors keep the last of duplicate keys silently; reading the node graph
    lets a duplicated tag be reported instead of half of it disappearing.
    """
    if not isinstance(node, yaml.MappingNode):
        problems.at(node, f"{what} must be a mapping, found {_describe(node)}")
        return None
    entries: list[tuple[str, yaml.Node, yaml.Node]] = []
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
            shown = "'<<' (merge keys are not supported)" if key_node.tag.endswith(":merge") else _describe(key_node)
            problems.at(key_node, f"{what}: keys must be names, found {shown}")
            continue
        key = key_node.value
        if key in first_line:
            problems.at(key_node, f"{what}: duplicate key '{key}' (first on line {first_line[key]})")
            continue
        first_line[key] = key_node.start_mark.line + 1
        entries.append((key, key_node, value_node))
    return entries


def _unknown_keys(entries: list[tuple[str, yaml.Node, yaml.Node]], allowed: Sequence[str], what: str, problems: _Problems) -> None:
    for key, key_node, _value in entries:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.at(key_node, f"{what}: unknown key '{key}' (allowed: {', '.join(allowed)}){hint}")


def _text(node: yaml.Node, what: str, problems: _Problems) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return node.value
    problems.at(node, f"{what} must be text, found {_describe(node)}")
    return None


def _number(node: yaml.Node, what: str, problems: _Problems) -> float | None:
    if isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT):
        constructor = yaml.constructor.SafeConstructor()
        value = float(constructor.construct_yaml_int(node) if node.tag == _INT else constructor.construct_yaml_float(node))
        if math.isfinite(value):
            return value
        problems.at(node, f"{what} must be a finite number, found {node.value}")
        return None
    hint = " (PyYAML reads 1e-3 as text: write 0.001)" if isinstance(node, yaml.ScalarNode) and _looks_numeric(node.value) else ""
    problems.at(node, f"{what} must be a number, found {_describe(node)}{hint}")
    return None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _entry_name(key: str, key_node: yaml.Node, what: str, problems: _Problems) -> bool:
    if not _IDENTIFIER.fullmatch(key):
        problems.at(key_node, f"{what} name '{key}' must be lower case letters, digits and '_', starting with a letter")
        return False
    if key in _RESERVED:
        problems.at(key_node, f"{what} name '{key}' is a reserved word of conditions")
        return False
    return True


@dataclass
class _PendingCondition:
    """A condition tag or segment whose text is checked once every tag is known."""

    name: str
    text: str
    site: _TextSite
    description: str
    line: int
    column: int
    is_segment: bool


def _read_tier_tag(
    name: str, entries: list[tuple[str, yaml.Node, yaml.Node]], node: yaml.Node, line: int, problems: _Problems
) -> TierTag | None:
    what = f"tag '{name}'"
    _unknown_keys(entries, _TIER_TAG_KEYS, what, problems)
    values = {key: value for key, _k, value in entries}
    before = len(problems.items)
    score: ScoreSpec | None = None
    if "score" not in values:
        problems.at(node, f"{what}: 'tiers' needs a 'score' to read")
    else:
        score_name = _text(values["score"], f"{what}: 'score'", problems)
        if score_name is not None:
            score = _known_score(score_name, values["score"], what, problems)
            if score is not None and score.kind == "text":
                problems.at(values["score"], f"{what}: score '{score_name}' is text, not a number: use `from: {score_name}`")
                score = None
    tiers: list[Tier] = []
    if "tiers" not in values:
        problems.at(node, f"{what}: 'score' needs 'tiers' (highest first)")
    else:
        tiers = _read_tiers(values["tiers"], what, score, problems)
    hysteresis = 0.0
    if "hysteresis" in values:
        margin = _number(values["hysteresis"], f"{what}: 'hysteresis'", problems)
        if margin is not None and margin < 0:
            problems.at(values["hysteresis"], f"{what}: 'hysteresis' must be >= 0, found {margin:g}")
        elif margin is not None:
            hysteresis = margin
            _check_margin(values["hysteresis"], margin, tiers, what, problems)
    description = _description(values, what, problems)
    if len(problems.items) > before or score is None:
        return None
    return TierTag(name, score.name, tuple(tiers), hysteresis, description, line)


def _known_score(name: str, node: yaml.Node, what: str, problems: _Problems) -> ScoreSpec | None:
    if name in SCORES:
        return SCORES[name]
    if name in _SCORE_BY_COLUMN:
        hint = f"; did you mean '{_SCORE_BY_COLUMN[name].name}'?"
    else:
        close = difflib.get_close_matches(name, list(SCORES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
    problems.at(node, f"{what}: unknown score '{name}' (scores: {', '.join(SCORES)}){hint}")
    return None


def _read_tiers(node: yaml.Node, what: str, score: ScoreSpec | None, problems: _Problems) -> list[Tier]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        problems.at(node, f"{what}: 'tiers' must be a non-empty list of {{name, min}}, highest first")
        return []
    tiers: list[Tier] = []
    nodes: list[yaml.Node] = []
    seen: dict[str, int] = {}
    for item in node.value:
        entries = _mapping(item, f"{what}: a tier", problems)
        if entries is None:
            continue
        _unknown_keys(entries, _TIER_KEYS, f"{what}: a tier", problems)
        values = {key: value for key, _k, value in entries}
        if "name" not in values or "min" not in values:
            problems.at(item, f"{what}: a tier needs 'name' and 'min'")
            continue
        tier_name = _text(values["name"], f"{what}: a tier's 'name'", problems)
        minimum = _number(values["min"], f"{what}: 'min'", problems)
        if tier_name is None or minimum is None:
            continue
        if not _TIER_NAME.fullmatch(tier_name):
            problems.at(values["name"], f"{what}: tier name '{tier_name}' must be letters, digits, '_' or '-'")
            continue
        if tier_name in seen:
            problems.at(values["name"], f"{what}: duplicate tier '{tier_name}' (first on line {seen[tier_name]})")
            continue
        seen[tier_name] = values["name"].start_mark.line + 1
        if score is not None and score.kind == "unit" and not 0.0 <= minimum <= 1.0:
            problems.at(values["min"], f"{what}: 'min' {minimum:g} of tier '{tier_name}' is outside [0, 1], the range of {score.name}")
            continue
        tiers.append(Tier(tier_name, minimum))
        nodes.append(values["min"])
    for (upper, _), (lower, lower_node) in zip(zip(tiers, nodes), zip(tiers[1:], nodes[1:]), strict=False):
        if lower.min == upper.min:
            problems.at(lower_node, f"{what}: tiers '{upper.name}' and '{lower.name}' overlap: both start at {lower.min:g}")
        elif lower.min > upper.min:
            problems.at(
                lower_node,
                f"{what}: tiers must be listed highest first, but '{lower.name}' (min {lower.min:g}) "
                f"comes after '{upper.name}' (min {upper.min:g})",
            )
    return tiers


def _check_margin(node: yaml.Node, margin: float, tiers: list[Tier], what: str, problems: _Problems) -> None:
    """A margin as wide as a whole tier would let a customer keep a tier while its score is
    past the next one entirely: that is never the intent, so it is reported."""
    for upper, lower in zip(tiers, tiers[1:], strict=False):
        width = upper.min - lower.min
        if width > 0 and margin >= width:
            problems.at(
                node,
                f"{what}: 'hysteresis' {margin:g} is not smaller than tier '{lower.name}' ({lower.min:g} to {upper.min:g}), "
                "so a customer could keep a tier while its score is past the next tier entirely",
            )
            return


def _description(values: Mapping[str, yaml.Node], what: str, problems: _Problems) -> str:
    if "description" not in values:
        return ""
    return _text(values["description"], f"{what}: 'description'", problems) or ""


def _read_passthrough_tag(
    name: str, entries: list[tuple[str, yaml.Node, yaml.Node]], line: int, problems: _Problems
) -> PassThroughTag | None:
    what = f"tag '{name}'"
    _unknown_keys(entries, _PASSTHROUGH_KEYS, what, problems)
    values = {key: value for key, _k, value in entries}
    before = len(problems.items)
    score = None
    score_name = _text(values["from"], f"{what}: 'from'", problems)
    if score_name is not None:
        score = _known_score(score_name, values["from"], what, problems)
        if score is not None and score.kind != "text":
            problems.at(values["from"], f"{what}: score '{score_name}' is a number: give it 'score' and 'tiers' instead of 'from'")
            score = None
    vocabulary: tuple[str, ...] | None = None
    if "values" in values:
        vocabulary = _read_values(values["values"], what, problems)
    description = _description(values, what, problems)
    if len(problems.items) > before or score is None:
        return None
    return PassThroughTag(name, score.name, vocabulary, description, line)


def _read_values(node: yaml.Node, what: str, problems: _Problems) -> tuple[str, ...] | None:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        problems.at(node, f"{what}: 'values' must be a non-empty list of names")
        return None
    names: list[str] = []
    for item in node.value:
        value = _text(item, f"{what}: each of 'values'", problems)
        if value is None:
            continue
        if value in names:
            problems.at(item, f"{what}: duplicate value '{value}'")
            continue
        names.append(value)
    return tuple(names)


def _read_tags(
    node: yaml.Node, problems: _Problems, pending: list[_PendingCondition]
) -> tuple[list[TierTag | PassThroughTag | str], dict[str, _TagHeader]]:
    """Tier and pass-through tags are complete here; condition tags are left as names and
    their conditions in `pending`, checked once every tag (in any order) is known."""
    entries = _mapping(node, "'tags'", problems)
    order: list[TierTag | PassThroughTag | str] = []
    headers: dict[str, _TagHeader] = {}
    for name, key_node, value_node in entries or []:
        if not _entry_name(name, key_node, "tag", problems):
            continue
        what = f"tag '{name}'"
        line = key_node.start_mark.line + 1
        body = _mapping(value_node, what, problems)
        if body is None:
            continue
        keys = {key for key, _k, _v in body}
        markers = (("tier", ("score", "tiers")), ("passthrough", ("from",)), ("condition", ("when",)))
        kinds = [kind for kind, marker in markers if keys & set(marker)]
        if not kinds:
            problems.at(key_node, f"{what} needs `score` + `tiers` (a tier tag), `from` (a copied score) or `when` (a condition tag)")
            continue
        if len(kinds) > 1:
            found = ", ".join(f"`{key}`" for _kind, marker in markers for key in marker if key in keys)
            problems.at(key_node, f"{what} has keys of several kinds ({found}): a tag has either `score` + `tiers`, `from` or `when`")
            continue
        if kinds[0] == "tier":
            rule: TierTag | PassThroughTag | None = _read_tier_tag(name, body, value_node, line, problems)
        elif kinds[0] == "passthrough":
            rule = _read_passthrough_tag(name, body, line, problems)
        else:
            values = {key: value for key, _k, value in body}
            _unknown_keys(body, _CONDITION_KEYS, what, problems)
            text = _text(values["when"], f"{what}: 'when'", problems)
            if text is not None:
                description = _description(values, what, problems)
                pending.append(
                    _PendingCondition(name, text, _TextSite.of(values["when"]), description, line, key_node.start_mark.column + 1, False)
                )
            headers[name] = _TagHeader(name, "condition", (CONDITION_TRUE,), None)
            order.append(name)
            continue
        if rule is not None:
            headers[name] = _TagHeader(name, rule.kind, rule.values, rule.score)
            order.append(rule)
    return order, headers


def _read_segments(node: yaml.Node, problems: _Problems, pending: list[_PendingCondition]) -> list[str]:
    entries = _mapping(node, "'segments'", problems)
    names: list[str] = []
    for name, key_node, value_node in entries or []:
        if not _entry_name(name, key_node, "segment", problems):
            continue
        what = f"segment '{name}'"
        description = ""
        if isinstance(value_node, yaml.MappingNode):
            body = _mapping(value_node, what, problems) or []
            _unknown_keys(body, _SEGMENT_KEYS, what, problems)
            values = {key: value for key, _k, value in body}
            if "when" not in values:
                problems.at(value_node, f"{what} needs 'when' (its condition)")
                continue
            description = _description(values, what, problems)
            condition_node = values["when"]
        else:
            condition_node = value_node
        text = _text(condition_node, f"{what}: the condition", problems)
        if text is None:
            continue
        mark = key_node.start_mark
        pending.append(_PendingCondition(name, text, _TextSite.of(condition_node), description, mark.line + 1, mark.column + 1, True))
        names.append(name)
    return names


def _check_condition(
    item: _PendingCondition, headers: Mapping[str, _TagHeader], segment_names: frozenset[str], problems: _Problems
) -> Expression | None:
    what = f"segment '{item.name}'" if item.is_segment else f"tag '{item.name}'"
    try:
        tree = _Parser(item.text).parse()
    except _ExpressionSyntaxError as exc:
        item.site.report(problems, exc.offset, f"{what}: {exc.message}")
        return None
    checker = _Checker(headers, segment_names)
    root = checker.condition(tree)
    for offset, message in checker.problems:
        item.site.report(problems, offset, f"{what}: {message}")
    if root is None or checker.problems:
        return None
    return Expression(item.text, frozenset(checker.tags_used), frozenset(checker.scores_used), root)


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


def _cycles(conditions: Mapping[str, Expression], names_in_order: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Each cycle between condition tags once, as (first tag in file order, path)."""
    state: dict[str, str] = {}
    found: list[tuple[str, list[str]]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dependency in sorted(conditions[name].tags):
            if dependency not in conditions:
                continue
            if state.get(dependency) == "open":
                cycle = path[path.index(dependency) :] + [dependency]
                found.append((dependency, cycle))
            elif dependency not in state:
                visit(dependency, [*path, dependency])
        state[name] = "closed"

    for name in names_in_order:
        if name in conditions and name not in state:
            visit(name, [name])
    return found


def parse_tag_rules(data: bytes | str, source: str = "<string>") -> TagRules:
    """Validate rules text (the contents of a rules file) into `TagRules`.

    Raises `TagRulesError` with every problem found, each naming `source`, line and column.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TagRulesError(source, [RuleProblem(line, 1, f"the file is not UTF-8 text ({exc.reason})")]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = str(exc.problem or exc.context or exc)
        if exc.context and exc.problem:
            where = f" on line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            problem += f" ({exc.context}{where})"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise TagRulesError(source, [RuleProblem(line, column, f"invalid YAML: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise TagRulesError(source, [RuleProblem(None, None, f"invalid YAML: {exc}")]) from exc
    if root is None:
        raise TagRulesError(source, [RuleProblem(None, None, f"the file is empty: it needs at least `version: {RULES_VERSION}` and `tags:`")])

    problems = _Problems()
    rules = _read_rules(root, problems, source, digest)
    if problems.items or rules is None:
        raise TagRulesError(source, problems.items)
    return rules


def _read_rules(root: yaml.Node, problems: _Problems, source: str, digest: str) -> TagRules | None:
    entries = _mapping(root, "the rules file", problems)
    if entries is None:
        return None
    _unknown_keys(entries, _TOP_KEYS, "the rules file", problems)
    values = {key: value for key, _k, value in entries}
    version: int | None = None
    if "version" not in values:
        problems.at(root, f"missing 'version' (write `version: {RULES_VERSION}` at the top)")
    else:
        node = values["version"]
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT and yaml.constructor.SafeConstructor().construct_yaml_int(node) == RULES_VERSION:
            version = RULES_VERSION
        else:
            shown = node.value if isinstance(node, yaml.ScalarNode) and node.tag == _INT else _describe(node)
            problems.at(node, f"unsupported version {shown}: this crm-scoring reads version {RULES_VERSION} (the number)")
    if "tags" not in values:
        problems.at(root, "missing 'tags'")
        return None

    pending: list[_PendingCondition] = []
    order, headers = _read_tags(values["tags"], problems, pending)
    segment_names = _read_segments(values["segments"], problems, pending) if "segments" in values else []
    segment_set = frozenset(segment_names)
    expressions: dict[tuple[bool, str], Expression] = {}
    for item in pending:
        expression = _check_condition(item, headers, segment_set, problems)
        if expression is not None:
            expressions[(item.is_segment, item.name)] = expression

    conditions = {name: expr for (is_segment, name), expr in expressions.items() if not is_segment}
    names_in_order = [entry if isinstance(entry, str) else entry.name for entry in order]
    condition_items = {item.name: item for item in pending if not item.is_segment}
    for first, cycle in _cycles(conditions, names_in_order):
        item = condition_items[first]
        problems.at_position(item.line, item.column, f"tag '{first}' depends on itself: {' -> '.join(cycle)}")
    if problems.items or version is None:
        return None

    tags: list[TagRule] = []
    for entry in order:
        if isinstance(entry, str):
            item = condition_items[entry]
            tags.append(ConditionTag(entry, conditions[entry], item.description, item.line))
        else:
            tags.append(entry)
    segments = [
        SegmentRule(item.name, expressions[(True, item.name)], item.description, item.line)
        for item in pending
        if item.is_segment
    ]
    return TagRules(version, tuple(tags), tuple(segments), source, digest)


def load_tag_rules(path: Path | str | None = None) -> TagRules:
    """Load and validate a rules file; None loads the default shipped in the package.

    Meant to run at start-up, so a bad file stops the service or batch before it scores
    anyone. Raises `TagRulesError` (naming the file, line and problem).
    """
    if path is None:
        data = resources.files("serving").joinpath(_DEFAULT_RULES_FILE).read_bytes()
        return parse_tag_rules(data, DEFAULT_RULES_SOURCE)
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TagRulesError(str(path), [RuleProblem(None, None, f"cannot read the tag rules: {exc.strerror or exc}")]) from exc
    return parse_tag_rules(data, str(path))


# --------------------------------------------------------------------------- evaluation


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


def _evaluate(node: _Condition, frame: _Frame, tags: Mapping[str, _TagValues]) -> np.ndarray:
    if isinstance(node, _TagIn):
        values = tags[node.tag]
        found = values.isin(node.values)
        return values.present() & ~found if node.negated else found
    if isinstance(node, _NumberCompare):
        left = frame.number(node.left)
        right = frame.number(node.right) if isinstance(node.right, str) else node.right
        result = _COMPARE[node.op](left, right)
        if node.op == "!=":  # NaN != x is True in IEEE; a missing score compares as false
            result &= ~np.isnan(left)
            if isinstance(right, np.ndarray):
                result &= ~np.isnan(right)
        return result
    if isinstance(node, _AllOf):
        result = _evaluate(node.items[0], frame, tags).copy()
        for item in node.items[1:]:
            result &= _evaluate(item, frame, tags)
        return result
    if isinstance(node, _AnyOf):
        result = _evaluate(node.items[0], frame, tags).copy()
        for item in node.items[1:]:
            result |= _evaluate(item, frame, tags)
        return result
    if isinstance(node, _Invert):
        return ~_evaluate(node.item, frame, tags)
    if isinstance(node, _TagPresent):
        return tags[node.tag].present()
    if isinstance(node, _ScorePresent):
        if node.text:
            return pc.is_valid(frame.text(node.column)).to_numpy(zero_copy_only=False)
        return ~np.isnan(frame.number(node.column))
    if isinstance(node, _NumberIn):
        values = frame.number(node.column)
        found = np.isin(values, np.array(node.values))
        return ~np.isnan(values) & ~found if node.negated else found
    if isinstance(node, _TextIn):
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
