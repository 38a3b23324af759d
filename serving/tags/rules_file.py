"""Reading a tag rules file (YAML, version 1; the format is in `serving.tags`).

Every problem is collected with its line and column and reported together as
`TagRulesError`, so a marketer fixes a file in one pass. One exception: conditions that
name a tag which could not be read are not checked (they would only repeat its problem
as "unknown name"); their own mistakes show once the tag is fixed.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from serving.tags.conditions import RESERVED_NAMES, UNREADABLE_TAG, Expression, TagHeader, compile_condition
from serving.tags.rules import (
    CONDITION_TRUE,
    DEFAULT_RULES_SOURCE,
    RULES_VERSION,
    SCORE_BY_COLUMN,
    SCORES,
    ConditionTag,
    PassThroughTag,
    RuleProblem,
    ScoreSpec,
    SegmentRule,
    TagRule,
    TagRules,
    TagRulesError,
    Tier,
    TierTag,
)

#: The default rules, shipped in the `serving` package.
_DEFAULT_RULES_FILE = "default_tags.yaml"


_STR = "tag:yaml.org,2002:str"
#: Problems listed in one error, and the longest message (a quoted value is cut there).
MAX_PROBLEMS = 100
MAX_MESSAGE = 300
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
_TIER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")

_TOP_KEYS = ("version", "tags", "segments")
_TIER_TAG_KEYS = ("score", "tiers", "hysteresis", "description")
_PASSTHROUGH_KEYS = ("from", "values", "description")
_CONDITION_KEYS = ("when", "description")
_TIER_KEYS = ("name", "min")
_SEGMENT_KEYS = ("when", "description")


class _Problems:
    """The problems found, at most `MAX_PROBLEMS`, each message at most `MAX_MESSAGE` characters:
    YAML aliases can repeat a long value thousands of times (megabytes of messages)."""

    def __init__(self) -> None:
        self.items: list[RuleProblem] = []
        self.dropped = 0

    def at(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.at_position(mark.line + 1, mark.column + 1, message)

    def at_position(self, line: int | None, column: int | None, message: str) -> None:
        if len(self.items) >= MAX_PROBLEMS:
            self.dropped += 1
            return
        if len(message) > MAX_MESSAGE:  # cut in the middle: the end often holds the hint
            half = (MAX_MESSAGE - 3) // 2
            message = message[:half] + " … " + message[-half:]
        self.items.append(RuleProblem(line, column, message))

    @property
    def count(self) -> int:
        """Problems found so far, listed or not."""
        return len(self.items) + self.dropped

    def all(self) -> list[RuleProblem]:
        if not self.dropped:
            return self.items
        return [*self.items, RuleProblem(None, None, f"and {self.dropped:,} more problem(s) not listed")]


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
        try:  # an explicit `!!int abc`, or an integer too large for a float
            value = float(constructor.construct_yaml_int(node) if node.tag == _INT else constructor.construct_yaml_float(node))
        except (ValueError, OverflowError):
            problems.at(node, f"{what} must be a number, found {_describe(node)}")
            return None
        if math.isfinite(value):
            return value
        problems.at(node, f"{what} must be a finite number, found {node.value}")
        return None
    hint = " (PyYAML reads 1e-3 as text: write 0.001)" if isinstance(node, yaml.ScalarNode) and _looks_numeric(node.value) else ""
    problems.at(node, f"{what} must be a number, found {_describe(node)}{hint}")
    return None


def _yaml_int(node: yaml.ScalarNode) -> int | None:
    """The integer of an int-tagged scalar; None for an explicit `!!int` that is no integer."""
    try:
        return yaml.constructor.SafeConstructor().construct_yaml_int(node)
    except ValueError:
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
    if key in RESERVED_NAMES:
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
    before = problems.count
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
    if problems.count > before or score is None:
        return None
    return TierTag(name, score.name, tuple(tiers), hysteresis, description, line)


def _known_score(name: str, node: yaml.Node, what: str, problems: _Problems) -> ScoreSpec | None:
    if name in SCORES:
        return SCORES[name]
    if name in SCORE_BY_COLUMN:
        hint = f"; did you mean '{SCORE_BY_COLUMN[name].name}'?"
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
    before = problems.count
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
    if problems.count > before or score is None:
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
) -> tuple[list[TierTag | PassThroughTag | str], dict[str, TagHeader]]:
    """Tier and pass-through tags are complete here; condition tags are left as names and
    their conditions in `pending`, checked once every tag (in any order) is known."""
    entries = _mapping(node, "'tags'", problems)
    order: list[TierTag | PassThroughTag | str] = []
    headers: dict[str, TagHeader] = {}
    for name, key_node, value_node in entries or []:
        if not _entry_name(name, key_node, "tag", problems):
            continue
        what = f"tag '{name}'"
        line = key_node.start_mark.line + 1
        # Known from here on even if unreadable: conditions that name it report nothing more.
        headers[name] = TagHeader(name, UNREADABLE_TAG, None, None)
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
            headers[name] = TagHeader(name, "condition", (CONDITION_TRUE,), None)
            order.append(name)
            continue
        if rule is not None:
            headers[name] = TagHeader(name, rule.kind, rule.values, rule.score)
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
    item: _PendingCondition, headers: Mapping[str, TagHeader], segment_names: frozenset[str], problems: _Problems
) -> Expression | None:
    what = f"segment '{item.name}'" if item.is_segment else f"tag '{item.name}'"
    expression, found = compile_condition(item.text, headers, segment_names)
    for offset, message in found:
        item.site.report(problems, offset, f"{what}: {message}")
    return expression


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
    except yaml.reader.ReaderError as exc:  # a control character: no mark, a character position
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        shown = repr(chr(exc.character)) if isinstance(exc.character, int) else repr(exc.character)
        raise TagRulesError(source, [RuleProblem(line, column, f"invalid YAML: the character {shown} is not allowed ({exc.reason})")]) from exc
    except yaml.YAMLError as exc:
        raise TagRulesError(source, [RuleProblem(None, None, f"invalid YAML: {exc}")]) from exc
    except RecursionError as exc:
        raise TagRulesError(source, [RuleProblem(None, None, "invalid rules: the YAML is nested too deeply")]) from exc
    if root is None:
        raise TagRulesError(source, [RuleProblem(None, None, f"the file is empty: it needs at least `version: {RULES_VERSION}` and `tags:`")])

    problems = _Problems()
    rules = _read_rules(root, problems, source, digest)
    if problems.items or rules is None:
        raise TagRulesError(source, problems.all())
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
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT and _yaml_int(node) == RULES_VERSION:
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
