"""Conditions of compound tags and segments: a small tokenizer and recursive-descent
parser, and the checker that turns a parsed condition into a closed tree of node types.

Nothing reaches `eval`: names resolve only to declared tags and known scores (`SCORES`),
and `has` is the only function. The checker collects every problem of a condition, each
with its offset in the text, so that the rules file reader can point at line and column.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from serving.tags.rules import CONDITION_TRUE, SCORE_BY_COLUMN, SCORES

# --------------------------------------------------------------------------- expressions: syntax


class _ExpressionSyntaxError(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_FUNCTIONS = frozenset({"has"})
#: Words a tag or segment cannot be named.
RESERVED_NAMES = _KEYWORDS | _FUNCTIONS
#: Deepest nesting of 'not' and parentheses a condition may have.
MAX_NESTING = 32
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
        self.depth = 0

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
            with self._nested(token):
                return _Negation(self._not(), token.offset)
        return self._comparison()

    @contextmanager
    def _nested(self, token: _Token) -> Iterator[None]:
        # Parsing, checking and evaluating recurse once per level: a bound here keeps a rule
        # that loads from overflowing Python's stack later, at scoring time.
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _ExpressionSyntaxError(f"the condition is nested too deeply (more than {MAX_NESTING} levels of 'not' and parentheses)", token.offset)
        try:
            yield
        finally:
            self.depth -= 1

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
            with self._nested(token):
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


@dataclass(frozen=True)
class Expression:
    """A checked condition: its text, the tags and score columns it reads, and its tree."""

    text: str
    tags: frozenset[str]
    scores: frozenset[str]
    root: Condition = field(repr=False)


# --------------------------------------------------------------------------- expressions: checked tree


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class AllOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Invert:
    item: Condition


@dataclass(frozen=True)
class TagIn:
    """tag in values (negated: tag present and not in values)."""

    tag: str
    values: tuple[str, ...]
    negated: bool


@dataclass(frozen=True)
class TagPresent:
    tag: str


@dataclass(frozen=True)
class ScorePresent:
    column: str
    text: bool


@dataclass(frozen=True)
class NumberCompare:
    """A comparison of numbers; a `str` side is a score column, a `float` side a constant."""

    op: str
    left: str
    right: str | float


@dataclass(frozen=True)
class NumberIn:
    column: str
    values: tuple[float, ...]
    negated: bool


@dataclass(frozen=True)
class TextIn:
    column: str
    values: tuple[str, ...]
    negated: bool


Condition = Const | AllOf | AnyOf | Invert | TagIn | TagPresent | ScorePresent | NumberCompare | NumberIn | TextIn

_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


#: `TagHeader.kind` of a tag declared in the file that could not be read.
UNREADABLE_TAG = "unreadable"


@dataclass(frozen=True)
class TagHeader:
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

    def __init__(self, tags: Mapping[str, TagHeader], segment_names: frozenset[str]) -> None:
        self.tags = tags
        self.segment_names = segment_names
        self.problems: list[tuple[int, str]] = []
        self.tags_used: set[str] = set()
        self.scores_used: set[str] = set()

    def _problem(self, offset: int, message: str) -> None:
        self.problems.append((offset, message))

    def condition(self, tree: _Syntax) -> Condition | None:
        if isinstance(tree, _Logic):
            items = [self.condition(item) for item in tree.items]
            if any(item is None for item in items):
                return None
            checked = tuple(item for item in items if item is not None)
            return AllOf(checked) if tree.op == "and" else AnyOf(checked)
        if isinstance(tree, _Negation):
            item = self.condition(tree.item)
            return None if item is None else Invert(item)
        if isinstance(tree, _Literal):
            if isinstance(tree.value, bool):
                return Const(tree.value)
            self._problem(tree.offset, f"{_literal_text(tree.value)} on its own is not a condition")
            return None
        if isinstance(tree, _Name):
            operand = self._resolve(tree)
            if operand is None:
                return None
            if operand.kind == "tag":
                return TagPresent(operand.name)
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
                return TagPresent(operand.name)
            return ScorePresent(operand.column, operand.kind == "text_score")
        if isinstance(tree, _Compare):
            return self._comparison(tree)
        return self._membership(tree)

    def _resolve(self, name: _Name) -> _Operand | None:
        text = name.text
        if text in self.tags and self.tags[text].kind == UNREADABLE_TAG:
            return None  # its own problem is reported; "unknown name" here would only repeat it
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
        if text in SCORE_BY_COLUMN:
            return f": did you mean the score '{SCORE_BY_COLUMN[text].name}'?"
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

    def _comparison(self, tree: _Compare) -> Condition | None:
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
                return NumberCompare(op, left.column, right.column)
            if right.kind == "number":
                assert isinstance(right.value, float)
                return NumberCompare(op, left.column, right.value)
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
        return TextIn(left.column, (right.value,), op == "!=")

    def _tag_comparison(self, offset: int, tag: _Operand, op: str, other: _Operand) -> Condition | None:
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
        return TagIn(tag.name, (other.value,), op == "!=")

    def _membership(self, tree: _Member) -> Condition | None:
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
            return TagIn(left.name, values, tree.negated) if all(ok) else None
        if left.kind == "number_score":
            if kinds != {"number"}:
                self._problem(tree.offset, f"score '{left.name}' is a number: the list must hold numbers")
                return None
            return NumberIn(left.column, tuple(float(item.value) for item in tree.items), tree.negated)
        if left.kind == "text_score":
            if kinds != {"text"}:
                self._problem(tree.offset, f"score '{left.name}' is text: the list must hold quoted values")
                return None
            return TextIn(left.column, tuple(str(item.value) for item in tree.items), tree.negated)
        self._problem(left.offset, f"'in' needs a tag or score on its left, not {_operand_text(left)}")
        return None

    def _value_ok(self, header: TagHeader, value: str, offset: int) -> bool:
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


def _example_values(header: TagHeader) -> str:
    if header.values:
        return ", ".join(f"'{v}'" for v in header.values[:3])
    return "a segment name"


def compile_condition(
    text: str, tags: Mapping[str, TagHeader], segment_names: frozenset[str]
) -> tuple[Expression | None, list[tuple[int, str]]]:
    """Parse and check a condition's text against the declared tags: its `Expression`, or
    None and every problem found as (offset in the text, message)."""
    try:
        tree = _Parser(text).parse()
    except _ExpressionSyntaxError as exc:
        return None, [(exc.offset, exc.message)]
    checker = _Checker(tags, segment_names)
    root = checker.condition(tree)
    if root is None or checker.problems:
        return None, checker.problems
    return Expression(text, frozenset(checker.tags_used), frozenset(checker.scores_used), root), []
