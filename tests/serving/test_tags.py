"""Tag rules: loading and line-numbered validation, the safe condition parser, vectorised
evaluation with known answers, missing values, hysteresis and its idempotence."""

from __future__ import annotations

import ast
import hashlib
import textwrap
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.errors import CrmScoringError
from serving import tags as tags_module
from serving.tags import (
    AlignedPreviousTags,
    ConditionTag,
    PassThroughTag,
    TagInputError,
    TagRulesError,
    TierTag,
    evaluate_tag_columns,
    evaluate_tags,
    load_tag_rules,
    parse_tag_rules,
)

MARK = "# <-"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def marked_line(text: str) -> int:
    """The 1-based line carrying the `# <-` marker: where the error must point."""
    lines = [i for i, line in enumerate(textwrap.dedent(text).splitlines(), start=1) if MARK in line]
    assert len(lines) == 1, "each bad-rules case marks exactly one line"
    return lines[0]


def rejected(tmp_path: Path, text: str) -> tuple[TagRulesError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(TagRulesError) as info:
        load_tag_rules(path)
    return info.value, path


# --------------------------------------------------------------------------- the shipped default


def test_default_rules_load_from_the_package() -> None:
    rules = load_tag_rules()
    assert rules.source == "<default>"
    assert rules.version == 1
    assert rules.tag_names() == ("lead_tier", "churn_risk", "value_tier", "rfm_segment", "at_risk_high_value")
    assert rules.segment_names() == ("win_back", "mql")
    assert rules.required_scores() == {"lead_probability", "churn_probability", "ltv_percentile", "rfm_segment"}
    shipped = resources.files("serving").joinpath("default_tags.yaml")
    # A data file inside the package directory is what hatch puts in the wheel.
    assert shipped.is_file()
    assert rules.digest == hashlib.sha256(shipped.read_bytes()).hexdigest()
    churn = rules.tag("churn_risk")
    assert isinstance(churn, TierTag)
    assert churn.values == ("high", "medium", "low") and churn.hysteresis > 0
    assert isinstance(rules.tag("at_risk_high_value"), ConditionTag)


def test_default_rfm_values_are_the_rfm_family_vocabulary() -> None:
    from features.families.rfm import LEAD_SEGMENT, RFM_SEGMENTS

    rfm = load_tag_rules().tag("rfm_segment")
    assert isinstance(rfm, PassThroughTag)
    assert rfm.values == (*RFM_SEGMENTS, LEAD_SEGMENT)


def test_default_segments_on_a_small_population() -> None:
    scores = pd.DataFrame(
        {
            "customer_id": ["lead-hot", "lead-cold", "vip-leaving", "vip-staying", "small-leaving"],
            "lead_probability": [0.8, 0.05, np.nan, np.nan, np.nan],
            "churn_probability": [np.nan, np.nan, 0.9, 0.1, 0.9],
            "ltv_percentile": [np.nan, np.nan, 0.95, 0.95, 0.1],
            "rfm_segment": [None, None, "at_risk", "champions", "hibernating"],
        }
    )
    out = evaluate_tags(load_tag_rules(), scores)
    assert out["segment_mql"].tolist() == [True, False, False, False, False]
    assert out["segment_win_back"].tolist() == [False, False, True, False, False]
    assert out["tag_at_risk_high_value"].tolist()[2] == "true"


# --------------------------------------------------------------------------- a valid custom file

CUSTOM = """\
version: 1
tags:
  churn_risk:
    description: chance of no order within the horizon
    score: churn.probability
    tiers:
      - {name: high, min: 0.6}
      - {name: medium, min: 0.3}
      - {name: low, min: 0.0}
  value_tier:
    score: ltv.percentile
    tiers: [{name: top, min: 0.9}, {name: high, min: 0.7}, {name: medium, min: 0.3}, {name: low, min: 0.0}]
  spend:
    score: ltv.clv              # not a unit score: thresholds above 1 are fine
    tiers: [{name: whale, min: 1000}, {name: regular, min: 50}]
  rfm_segment:
    from: rfm_segment
  vip_at_risk:                  # refers to a condition tag defined below it
    when: at_risk_high_value and spend == 'whale'
  at_risk_high_value:
    when: "churn_risk == 'high' and value_tier in ('top', 'high')"
segments:
  win_back: at_risk_high_value
  safe: "churn_risk != 'high'"
  not_high: "not churn_risk == 'high'"
  engaged: "ltv.p_alive >= 0.5 or rfm_segment in ['champions', 'loyal']"
  scored: {when: "has(churn.probability)", description: has a churn score}
  clv_band: "ltv.clv > 100 and ltv.clv <= 1000"
  relative: "churn.percentile > ltv.percentile"
  not_lost: "rfm_segment not in ('lost', 'hibernating')"
  everyone: "true"
"""


def custom_scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c4", "c5"],
            "churn_probability": [0.7, 0.45, 0.6, np.nan, 0.0],
            "churn_percentile": [0.9, 0.5, 0.8, np.nan, 0.1],
            "ltv_percentile": [0.95, 0.75, 0.5, np.nan, 0.0],
            "ltv_clv": [2000.0, 150.0, 49.99, np.nan, 50.0],
            "ltv_p_alive": [0.2, 0.8, 0.5, np.nan, np.nan],
            "rfm_segment": ["at_risk", "champions", "lost", None, ""],
        },
        index=[10, 11, 12, 13, 14],  # the output keeps the input's index
    )


def test_custom_rules_parse_into_typed_rules() -> None:
    rules = parse_tag_rules(CUSTOM, "custom.yaml")
    assert rules.tag_names() == ("churn_risk", "value_tier", "spend", "rfm_segment", "vip_at_risk", "at_risk_high_value")
    assert [t.kind for t in rules.tags] == ["tier", "tier", "tier", "passthrough", "condition", "condition"]
    assert rules.tags[0].description == "chance of no order within the horizon"
    assert rules.tags[0].line == 3
    vip = rules.tag("vip_at_risk")
    assert isinstance(vip, ConditionTag) and vip.condition.tags == {"at_risk_high_value", "spend"}
    assert rules.segments[4].description == "has a churn score"
    assert rules.required_scores() == {
        "churn_probability",
        "churn_percentile",
        "ltv_percentile",
        "ltv_clv",
        "ltv_p_alive",
        "rfm_segment",
    }


def test_evaluation_gives_the_known_answers() -> None:
    scores = custom_scores()
    out = evaluate_tags(parse_tag_rules(CUSTOM), scores)
    assert list(out.index) == [10, 11, 12, 13, 14]
    assert out["customer_id"].tolist() == ["c1", "c2", "c3", "c4", "c5"]

    def tag(name: str) -> list[str | None]:
        column = out[f"tag_{name}"]
        assert column.dtype == "str"
        return [None if pd.isna(v) else v for v in column]

    # 0.6 is the first value of 'high' (a tier includes its min); 49.99 is below every spend tier.
    assert tag("churn_risk") == ["high", "medium", "high", None, "low"]
    assert tag("value_tier") == ["top", "high", "medium", None, "low"]
    assert tag("spend") == ["whale", "regular", None, None, "regular"]
    assert tag("rfm_segment") == ["at_risk", "champions", "lost", None, None]  # a blank segment is none
    assert tag("at_risk_high_value") == ["true", None, None, None, None]
    assert tag("vip_at_risk") == ["true", None, None, None, None]
    expected_segments = {
        "win_back": [True, False, False, False, False],
        "safe": [False, True, False, False, True],  # a missing tier compares as false ...
        "not_high": [False, True, False, True, True],  # ... and `not` of false is true
        "engaged": [False, True, True, False, False],
        "scored": [True, True, True, False, True],
        "clv_band": [False, True, False, False, False],
        "relative": [False, False, True, False, True],
        "not_lost": [True, True, False, False, False],
        "everyone": [True, True, True, True, True],
    }
    for name, expected in expected_segments.items():
        assert out[f"segment_{name}"].dtype == bool
        assert out[f"segment_{name}"].tolist() == expected, name


def test_missing_values_never_match_a_comparison() -> None:
    rules = parse_tag_rules(
        textwrap.dedent(
            """\
        version: 1
        tags:
          churn_risk: {score: churn.probability, tiers: [{name: high, min: 0.6}, {name: low, min: 0.0}]}
        segments:
          eq: "churn_risk == 'high'"
          ne: "churn_risk != 'high'"
          not_in: "churn_risk not in ('high',)"
          below: "churn.probability < 0.5"
          ne_score: "churn.probability != 0.5"
          not_in_score: "churn.probability not in (0.5, 0.7)"
          absent: "not has(churn_risk)"
        """
        )
    )
    scores = pd.DataFrame({"customer_id": ["lead", "leaving"], "churn_probability": [np.nan, 0.7]})
    out = evaluate_tags(rules, scores)
    assert out["tag_churn_risk"].isna().tolist() == [True, False]
    for segment in ("eq", "ne", "not_in", "below", "ne_score", "not_in_score"):
        assert not out[f"segment_{segment}"].iloc[0], segment
    assert out["segment_eq"].tolist() == [False, True]
    assert out["segment_absent"].tolist() == [True, False]


def test_scores_in_nullable_and_object_dtypes() -> None:
    rules = parse_tag_rules(CUSTOM)
    scores = custom_scores()
    scores["churn_probability"] = scores["churn_probability"].astype("Float64")
    scores["rfm_segment"] = scores["rfm_segment"].astype(object)
    expected = evaluate_tags(rules, custom_scores())
    pd.testing.assert_frame_equal(evaluate_tags(rules, scores), expected)


def test_chunked_arrow_columns() -> None:
    """pandas keeps concatenated Arrow-backed columns in several chunks."""
    rules = sticky_rules(0.03)
    halves = [churn_scores([0.61, 0.2], ["a", "b"]), churn_scores([0.59], ["c"])]
    scores = pd.concat(halves, ignore_index=True).astype({"customer_id": "str"})
    previous = pd.concat([evaluate_tags(rules, h) for h in halves], ignore_index=True).iloc[::-1]
    out = evaluate_tags(rules, scores, previous)
    assert out["tag_churn_risk"].tolist() == ["high", "low", "medium"]


def test_missing_or_unusable_score_columns_are_errors() -> None:
    rules = parse_tag_rules(CUSTOM)
    with pytest.raises(TagInputError, match="ltv_clv"):
        evaluate_tags(rules, custom_scores().drop(columns="ltv_clv"))
    bad = custom_scores()
    bad["ltv_clv"] = ["a", "b", "c", "d", "e"]
    with pytest.raises(TagInputError, match="ltv_clv"):
        evaluate_tags(rules, bad)
    assert issubclass(TagInputError, CrmScoringError)


def test_tag_columns_from_arrays_equal_the_frame() -> None:
    """The API evaluates score arrays without a frame: the same tags and segments as `evaluate_tags`."""
    rules = parse_tag_rules(CUSTOM)
    scores = custom_scores()
    arrays = {c: scores[c].to_numpy(dtype=object if c == "rfm_segment" else "float64") for c in scores.columns if c != "customer_id"}
    frame = evaluate_tags(rules, scores)
    lists = evaluate_tag_columns(rules, arrays, len(scores)).to_lists()
    assert list(lists) == list(frame.columns[1:])
    for column, values in lists.items():
        assert values == [None if pd.isna(v) else v for v in frame[column]], column
    with pytest.raises(TagInputError, match="ltv_clv"):
        evaluate_tag_columns(rules, {**arrays, "ltv_clv": np.array(list("abcde"), dtype=object)}, len(scores))


def test_empty_population() -> None:
    out = evaluate_tags(parse_tag_rules(CUSTOM), custom_scores().iloc[:0])
    assert len(out) == 0
    assert "segment_win_back" in out.columns and "tag_churn_risk" in out.columns


# --------------------------------------------------------------------------- malformed files

BAD_RULES = {
    "yaml_syntax": (
        """\
        version: 1
        tags:
          churn_risk: {score: churn.probability, tiers: [{name: high, min: 0.6}]
        segments: {}  # <-
        """,
        "invalid YAML: expected ',' or '}', but got '<scalar>' (while parsing a flow mapping on line 3)",
    ),
    "duplicate_tag": (
        """\
        version: 1
        tags:
          churn_risk: {score: churn.probability, tiers: [{name: high, min: 0.6}]}
          churn_risk: {score: churn.probability, tiers: [{name: high, min: 0.5}]}  # <-
        """,
        "duplicate key 'churn_risk' (first on line 3)",
    ),
    "duplicate_key_in_a_tag": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            score: lead.probability  # <-
            tiers: [{name: high, min: 0.6}]
        """,
        "duplicate key 'score'",
    ),
    "unknown_top_level_key": (
        """\
        version: 1
        tags:
          churn_risk: {score: churn.probability, tiers: [{name: high, min: 0.6}]}
        segment:  # <-
          mql: "churn_risk == 'high'"
        """,
        "unknown key 'segment' (allowed: version, tags, segments); did you mean 'segments'?",
    ),
    "unknown_tag_key": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            tiers: [{name: high, min: 0.6}]
            hysterisis: 0.03  # <-
        """,
        "did you mean 'hysteresis'?",
    ),
    "wrong_version": ("version: 2  # <-\ntags: {}\n", "unsupported version 2"),
    "version_as_text": ("version: '1'  # <-\ntags: {}\n", "unsupported version the text '1'"),
    "missing_version": ("tags: {}  # <-\n", "missing 'version'"),
    "unsorted_tiers": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            tiers:
              - {name: medium, min: 0.3}
              - {name: high, min: 0.6}  # <-
        """,
        "tiers must be listed highest first, but 'high' (min 0.6) comes after 'medium' (min 0.3)",
    ),
    "overlapping_tiers": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            tiers:
              - {name: high, min: 0.3}
              - {name: medium, min: 0.3}  # <-
        """,
        "tiers 'high' and 'medium' overlap",
    ),
    "duplicate_tier": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            tiers:
              - {name: high, min: 0.6}
              - {name: high, min: 0.3}  # <-
        """,
        "duplicate tier 'high'",
    ),
    "probability_threshold_above_one": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            tiers:
              - {name: high, min: 60}  # <-
        """,
        "outside [0, 1]",
    ),
    "percentile_threshold_below_zero": (
        """\
        version: 1
        tags:
          value_tier:
            score: ltv.percentile
            tiers: [{name: top, min: 0.9}, {name: low, min: -0.1}]  # <-
        """,
        "'min' -0.1 of tier 'low' is outside [0, 1]",
    ),
    "threshold_as_text": (
        """\
        version: 1
        tags:
          churn_risk: {score: churn.probability, tiers: [{name: high, min: 1e-3}]}  # <-
        """,
        "must be a number, found the text '1e-3' (PyYAML reads 1e-3 as text: write 0.001)",
    ),
    "tier_without_min": (
        """\
        version: 1
        tags:
          churn_risk: {score: churn.probability, tiers: [{name: high}]}  # <-
        """,
        "a tier needs 'name' and 'min'",
    ),
    "negative_hysteresis": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            tiers: [{name: high, min: 0.6}, {name: low, min: 0.0}]
            hysteresis: -0.01  # <-
        """,
        "'hysteresis' must be >= 0",
    ),
    "hysteresis_wider_than_a_tier": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn.probability
            tiers: [{name: high, min: 0.6}, {name: medium, min: 0.3}, {name: low, min: 0.0}]
            hysteresis: 0.3  # <-
        """,
        "'hysteresis' 0.3 is not smaller than tier 'medium'",
    ),
    "unknown_score": (
        """\
        version: 1
        tags:
          churn_risk:
            score: churn_probability  # <-
            tiers: [{name: high, min: 0.6}]
        """,
        "unknown score 'churn_probability'",
    ),
    "tiers_over_text": (
        """\
        version: 1
        tags:
          segment_tier:
            score: rfm_segment  # <-
            tiers: [{name: high, min: 0.6}]
        """,
        "is text, not a number",
    ),
    "copy_of_a_number": (
        """\
        version: 1
        tags:
          churn:
            from: churn.probability  # <-
        """,
        "is a number: give it 'score' and 'tiers'",
    ),
    "two_kinds_at_once": (
        """\
        version: 1
        tags:
          churn_risk:  # <-
            score: churn.probability
            tiers: [{name: high, min: 0.6}]
            when: "true"
        """,
        "tag 'churn_risk' has keys of several kinds (`score`, `tiers`, `when`)",
    ),
    "no_kind": (
        """\
        version: 1
        tags:
          churn_risk:  # <-
            description: nothing else
        """,
        "tag 'churn_risk' needs `score` + `tiers`",
    ),
    "bad_tag_name": (
        """\
        version: 1
        tags:
          ChurnRisk: {score: churn.probability, tiers: [{name: high, min: 0.6}]}  # <-
        """,
        "tag name 'ChurnRisk' must be lower case",
    ),
    "reserved_tag_name": (
        """\
        version: 1
        tags:
          not: {score: churn.probability, tiers: [{name: high, min: 0.6}]}  # <-
        """,
        "reserved word",
    ),
    "rules_not_a_mapping": ("- version: 1  # <-\n", "the rules file must be a mapping, found a list"),
    "python_object_tag": (
        """\
        version: 1
        tags:
          churn_risk: {score: !!python/object/apply:os.system ["echo pwned"], tiers: []}  # <-
        """,
        "'score' must be text",
    ),
}

TIERS_HEADER = """\
version: 1
tags:
  churn_risk:
    score: churn.probability
    tiers: [{name: high, min: 0.6}, {name: medium, min: 0.3}, {name: low, min: 0.0}]
  value_tier:
    score: ltv.percentile
    tiers: [{name: top, min: 0.9}, {name: high, min: 0.7}, {name: low, min: 0.0}]
  rfm_segment:
    from: rfm_segment
    values: [champions, at_risk]
  at_risk_high_value:
    when: "churn_risk == 'high' and value_tier in ('top', 'high')"
"""

BAD_CONDITIONS = {
    "unknown_name": ("win_back: \"churn_rsk == 'high'\"", "churn_rsk", "unknown name 'churn_rsk': did you mean 'churn_risk'?"),
    "tier_typo": (
        "win_back: \"churn_risk == 'hgh'\"",
        "'hgh'",
        "'hgh' is not a tier of tag 'churn_risk' (its tiers: high, medium, low); did you mean 'high'?",
    ),
    "tier_typo_in_list": ("win_back: \"value_tier in ('top', 'hihg')\"", "'hihg'", "is not a tier of tag 'value_tier'"),
    "tag_compared_with_a_number": (
        "win_back: \"churn_risk >= 0.6\"",
        "0.6",
        "tag 'churn_risk' holds a name such as 'high', 'medium', 'low', so it can only be compared with a quoted value, "
        "not 0.6 (to compare the score, write churn.probability >= 0.6)",
    ),
    "ordering_a_tag": ("win_back: \"churn_risk > 'low'\"", ">", "tags have no order"),
    "condition_tag_value": ("win_back: \"at_risk_high_value == 'yes'\"", "'yes'", "is a condition tag"),
    "undeclared_passthrough_value": ("win_back: \"rfm_segment == 'champion'\"", "'champion'", "did you mean 'champions'?"),
    "score_compared_with_text": ("win_back: \"churn.probability > 'high'\"", "'high'", "score 'churn.probability' is a number"),
    "bare_score": ("win_back: \"churn.probability\"", "churn.probability", "is not a condition"),
    "unbalanced_parenthesis": ("win_back: \"(churn_risk == 'high'\"", None, "expected ')', found the end of the condition"),
    "single_equals": ("win_back: \"churn_risk = 'high'\"", "=", "use '==' to compare"),
    "ampersands": ("win_back: \"churn_risk == 'high' && has(value_tier)\"", "&&", "use 'and'"),
    "unquoted_list": ("win_back: \"value_tier in (top, high)\"", "top", "list items are quoted values: write 'top'"),
    "chained_comparison": ("win_back: \"0.3 < churn.probability < 0.6\"", "< 0.6", "comparisons cannot be chained"),
    "segment_in_a_segment": ("mql: \"churn_risk == 'high'\"\n  win_back: \"mql and has(value_tier)\"", "mql and", "it is a segment"),
    "unknown_function": ("win_back: \"len(churn_risk) > 2\"", "len", "unknown function 'len'"),
}


@pytest.mark.parametrize("case", BAD_RULES, ids=list(BAD_RULES))
def test_malformed_rules_are_rejected_with_their_line(tmp_path: Path, case: str) -> None:
    text, fragment = BAD_RULES[case]
    error, path = rejected(tmp_path, text)
    line = marked_line(text)
    assert any(p.line == line and fragment in p.message for p in error.problems), str(error)
    assert f"{path}:{line}:" in str(error)


@pytest.mark.parametrize("case", BAD_CONDITIONS, ids=list(BAD_CONDITIONS))
def test_bad_conditions_point_at_the_character(tmp_path: Path, case: str) -> None:
    segment, at, fragment = BAD_CONDITIONS[case]
    text = TIERS_HEADER + "segments:\n  " + segment + "\n"
    error, path = rejected(tmp_path, text)
    assert len(error.problems) == 1, str(error)
    problem = error.problems[0]
    assert fragment in problem.message, problem.message
    line_text = text.splitlines()[problem.line - 1]
    assert "win_back" in line_text  # the line of the condition
    if at is not None:
        assert line_text[problem.column - 1 :].startswith(at), (line_text, problem.column)
    assert str(error).startswith(f"{path}:{problem.line}:{problem.column}: segment 'win_back': ")


def test_condition_in_a_block_scalar_names_the_character_offset(tmp_path: Path) -> None:
    text = TIERS_HEADER + "segments:\n  win_back: >\n    churn_risk == 'high' and\n    value_tier in ('top', 'hgh')\n"
    error, _path = rejected(tmp_path, text)
    (problem,) = error.problems
    assert text.splitlines()[problem.line - 1] == "  win_back: >"
    offset = "churn_risk == 'high' and value_tier in ('top', 'hgh')".index("'hgh'") + 1
    assert f"(at character {offset} of the condition)" in problem.message


@pytest.mark.parametrize(
    ("conditions", "cycle"),
    [
        ({"a": "b", "b": "a"}, "a -> b -> a"),
        ({"a": "has(a)"}, "a -> a"),
        ({"a": "b and churn_risk == 'high'", "b": "c", "c": "a or b"}, "a -> b -> c -> a"),
    ],
)
def test_cycles_between_condition_tags_are_rejected(tmp_path: Path, conditions: dict[str, str], cycle: str) -> None:
    body = "".join(f"  {name}:\n    when: \"{text}\"\n" for name, text in conditions.items())
    error, _path = rejected(tmp_path, TIERS_HEADER + body)
    assert any(cycle in p.message for p in error.problems), str(error)
    first = next(p for p in error.problems if "depends on itself" in p.message)
    assert first.line == (TIERS_HEADER + body).splitlines().index("  a:") + 1


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
    version: 3
    tags:
      churn_risk:
        score: churn.probability
        tiers: [{name: high, min: 0.3}, {name: low, min: 0.6}]
    segments:
      win_back: "churn_riks == 'high'"
    """
    error, path = rejected(tmp_path, text)
    assert [p.line for p in error.problems] == [1, 5, 7]
    assert str(error).count(f"{path}:") == 3


def test_conditions_naming_an_unreadable_tag_do_not_repeat_its_problem(tmp_path: Path) -> None:
    """One typo in a tag used to be reported again as "unknown name" by every condition naming it."""
    text = """\
    version: 1
    tags:
      churn_risk:
        score: churn.probabilty  # <-
        tiers: [{name: high, min: 0.6}, {name: low, min: 0.0}]
      lost:
        when: "churn_risk == 'high'"
    segments:
      win_back: "churn_risk == 'high' and lost"
      careless: "churn_risk == 'hgh'"
    """
    error, _ = rejected(tmp_path, text)
    assert [p.line for p in error.problems] == [marked_line(text)]
    assert "unknown score 'churn.probabilty'" in error.problems[0].message


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    error, path = rejected(tmp_path, "# nothing but a comment\n")
    assert str(error) == f"{path}: the file is empty: it needs at least `version: 1` and `tags:`"
    with pytest.raises(TagRulesError, match="cannot read the tag rules"):
        load_tag_rules(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"version: 1\ntags: {}\n# caf\xe9\n")
    with pytest.raises(TagRulesError, match=r"latin1\.yaml:3:1: the file is not UTF-8"):
        load_tag_rules(tmp_path / "latin1.yaml")


def test_the_tier_of_a_prediction_comes_from_its_tier_tag_whatever_its_name() -> None:
    default = load_tag_rules()
    assert [default.tier_tag_for(p, n) for p, n in (("lead", "lead_tier"), ("churn", "churn_risk"), ("ltv", "value_tier"))] == [
        "lead_tier", "churn_risk", "value_tier",
    ]
    renamed = parse_tag_rules(TIERS_HEADER.replace("churn_risk:", "churn_level:").replace("churn_risk ==", "churn_level =="))
    assert renamed.tier_tag_for("churn", "churn_risk") == "churn_level"  # the output's churn "tier" is not lost
    assert renamed.tier_tag_for("lead", "lead_tier") is None  # no tier over the lead scores


def test_hostile_rules_files_get_problems_with_lines_not_crashes(tmp_path: Path) -> None:
    """Deep nesting, explicit YAML tags, huge numbers, control characters and alias bombs:
    each a TagRulesError that names the file (and the line where there is one), never a
    RecursionError, ValueError or a message of megabytes."""
    deep = "(" * 200 + "churn_risk == 'high'" + ")" * 200
    error, path = rejected(tmp_path, TIERS_HEADER + f'segments:\n  s: "{deep}"\n')
    assert "nested too deeply" in str(error) and f"{path}:{TIERS_HEADER.count(chr(10)) + 2}:" in str(error), str(error)
    error, _ = rejected(tmp_path, TIERS_HEADER + 'segments:\n  s: "' + "not " * 3000 + "churn_risk == 'high'\"\n")
    assert "nested too deeply" in str(error)
    # 32 levels load, and evaluate deeper in the stack than the loading did.
    fine = parse_tag_rules(TIERS_HEADER + 'segments:\n  s: "' + "not " * 32 + "churn_risk == 'high'\"\n")
    assert "s" in {s.name for s in fine.segments}
    error, _ = rejected(tmp_path, "version: 1\ntags: " + "[" * 2000 + "]" * 2000 + "\n")
    assert "nested too deeply" in str(error)

    bad_number = TIERS_HEADER.replace("min: 0.6}", "min: !!int abc}")
    error, path = rejected(tmp_path, bad_number)
    line = next(n for n, text in enumerate(bad_number.splitlines(), 1) if "!!int abc" in text)
    assert f"{path}:{line}:" in str(error) and "must be a number" in str(error), str(error)
    error, _ = rejected(tmp_path, TIERS_HEADER.replace("min: 0.6}", "min: " + "9" * 400 + "}"))
    assert "must be a number" in str(error) or "finite" in str(error), str(error)
    error, _ = rejected(tmp_path, TIERS_HEADER.replace("version: 1", "version: !!int x"))
    assert "unsupported version" in str(error)

    error, path = rejected(tmp_path, TIERS_HEADER + "segments:\n  s:\n    when: \"churn_risk == 'high'\"\n    description: ring\x07\n")
    assert f"{path}:{TIERS_HEADER.count(chr(10)) + 4}:" in str(error) and "'\\x07'" in str(error), str(error)

    many = TIERS_HEADER.replace("values: [champions, at_risk]", "values: [" + ", ".join(f"segment_value_{i}" for i in range(30)) + "]")
    error, _ = rejected(tmp_path, many + "segments:\n  s: \"rfm_segment == 'segment_value_7x'\"\n")
    assert "did you mean 'segment_value_7'?" in str(error), str(error)  # a long message keeps its hint

    bomb = TIERS_HEADER.replace("values: [champions, at_risk]", "values: [&b " + "x" * 20_000 + ", " + ", ".join(["*b"] * 3000) + "]")
    error, _ = rejected(tmp_path, bomb)
    assert len(str(error)) < 100_000 and "more problem(s) not listed" in str(error), len(str(error))


# --------------------------------------------------------------------------- the parser is not eval

EVAL_LIKE = [
    "__import__('os')",
    "__import__('os').system('echo pwned')",
    "churn_risk.__class__",
    "().__class__.__bases__",
    "open('/etc/passwd')",
    "eval('1')",
    "lambda: 1",
    "churn_risk[0] == 'h'",
    "churn.probability + 1 > 0",
    "churn_risk == 'high'; import os",
    "{'a': 1}",
    "has(__import__)",
    "has('churn_risk')",
    "exec",
    "churn.probability.real > 0",
]


@pytest.mark.parametrize("expression", EVAL_LIKE)
def test_parser_rejects_anything_eval_like(expression: str) -> None:
    quoted = expression.replace('"', '\\"')
    with pytest.raises(TagRulesError):
        parse_tag_rules(TIERS_HEADER + f'segments:\n  s: "{quoted}"\n')


def test_the_tags_package_never_calls_eval_exec_or_compile() -> None:
    modules = sorted(Path(tags_module.__file__).parent.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "conditions.py", "rules_file.py", "evaluation.py"}
    for module in modules:
        tree = ast.parse(module.read_text(encoding="utf-8"))
        called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert not called & {"eval", "exec", "compile", "__import__", "getattr"}, module.name


# --------------------------------------------------------------------------- hysteresis

STICKY = """\
version: 1
tags:
  churn_risk:
    score: churn.probability
    tiers: [{name: high, min: 0.6}, {name: medium, min: 0.3}, {name: low, min: 0.0}]
    hysteresis: MARGIN
segments:
  win_back: "churn_risk == 'high'"
"""


@lru_cache(maxsize=None)
def sticky_rules(margin: float):
    return parse_tag_rules(STICKY.replace("MARGIN", repr(margin)))


def churn_scores(values: list[float], ids: list[str] | None = None) -> pd.DataFrame:
    ids = ids if ids is not None else [f"c{i}" for i in range(len(values))]
    return pd.DataFrame({"customer_id": ids, "churn_probability": values})


def changes(before: pd.DataFrame, after: pd.DataFrame) -> int:
    """How many customers changed tier: each change is a tag.exited + tag.entered pair."""
    a = before.set_index("customer_id")["tag_churn_risk"]
    b = after.set_index("customer_id")["tag_churn_risk"]
    return int((a.fillna("-") != b.fillna("-")).sum())


def test_a_score_wobbling_around_a_boundary_does_not_flip() -> None:
    rng = np.random.default_rng(7)
    runs = [0.6 + rng.choice([-0.01, 0.01], size=200) for _ in range(12)]
    for margin, expect_flips in ((0.03, False), (0.0, True)):
        rules = sticky_rules(margin)
        previous = evaluate_tags(rules, churn_scores(list(runs[0])))
        flips = 0
        for values in runs[1:]:
            current = evaluate_tags(rules, churn_scores(list(values)), previous)
            flips += changes(previous, current)
            previous = current
        assert (flips > 0) == expect_flips, (margin, flips)


def test_a_big_move_changes_the_tier() -> None:
    rules = sticky_rules(0.03)
    first = evaluate_tags(rules, churn_scores([0.61, 0.59, 0.61, 0.59]))
    assert first["tag_churn_risk"].tolist() == ["high", "medium", "high", "medium"]
    # Inside the widened ranges [0.57, inf) for high and [0.27, 0.63) for medium: kept.
    kept = evaluate_tags(rules, churn_scores([0.58, 0.62, 0.571, 0.629]), first)
    assert kept["tag_churn_risk"].tolist() == ["high", "medium", "high", "medium"]
    assert kept["segment_win_back"].tolist() == [True, False, True, False]
    # Past the margin: the plain tier of the score.
    moved = evaluate_tags(rules, churn_scores([0.55, 0.65, 0.2, 0.95]), kept)
    assert moved["tag_churn_risk"].tolist() == ["medium", "high", "low", "high"]


def test_hysteresis_joins_the_previous_run_by_customer_id() -> None:
    rules = sticky_rules(0.03)
    previous = evaluate_tags(rules, churn_scores([0.61, 0.61, 0.61], ["gone", "b", "a"]))
    # Different order, a customer gone, a new one (plain tier), a missing score (no tag).
    current = evaluate_tags(rules, churn_scores([0.59, 0.59, 0.59, np.nan], ["a", "new", "b", "lead"]), previous.iloc[::-1])
    assert current["customer_id"].tolist() == ["a", "new", "b", "lead"]
    assert current["tag_churn_risk"].tolist()[:3] == ["high", "medium", "high"]
    assert pd.isna(current["tag_churn_risk"].iloc[3])
    # A previous run from before the tag existed means no history for it.
    older = previous.drop(columns="tag_churn_risk")
    plain = evaluate_tags(rules, churn_scores([0.59], ["a"]), older)
    assert plain["tag_churn_risk"].tolist() == ["medium"]
    assert evaluate_tags(rules, churn_scores([0.59], ["a"]), previous.iloc[:0])["tag_churn_risk"].tolist() == ["medium"]
    # A tier the rules no longer have is no history either.
    renamed = previous.assign(tag_churn_risk="very_high")
    assert evaluate_tags(rules, churn_scores([0.59], ["a"]), renamed)["tag_churn_risk"].tolist() == ["medium"]


def test_previous_run_with_duplicate_customers_is_an_error() -> None:
    rules = sticky_rules(0.03)
    previous = evaluate_tags(rules, churn_scores([0.61, 0.2], ["a", "a"]))
    with pytest.raises(TagInputError, match="customer 'a' more than once"):
        evaluate_tags(rules, churn_scores([0.59], ["a"]), previous)


def reference_tier(value: float, previous: str | None, margin: float) -> str | None:
    """The hysteresis rule for one customer, written plainly to check the vectorised one."""
    bounds = {"high": (0.6, np.inf), "medium": (0.3, 0.6), "low": (0.0, 0.3)}
    if np.isnan(value):
        return None
    if previous in bounds:
        low, high = bounds[previous]
        if low - margin <= value < high + margin:
            return previous
    return next((name for name, (low, high) in bounds.items() if low <= value < high), None)


BOUNDARY_SCORES = [0.0, 0.27, 0.3, 0.33, 0.57, 0.6, 0.63, 0.29, 0.31, 0.59, 0.61, 1.0, -0.01]
score_values = st.one_of(st.just(float("nan")), st.floats(-0.05, 1.0), st.sampled_from(BOUNDARY_SCORES))
previous_tiers = st.sampled_from([None, "high", "medium", "low", "retired_tier"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(score_values, previous_tiers), min_size=1, max_size=30),
    margin=st.sampled_from([0.0, 0.01, 0.03, 0.1]),
    order_seed=st.integers(0, 1000),
)
def test_hysteresis_is_idempotent_and_matches_the_rule(rows: list[tuple[float, str | None]], margin: float, order_seed: int) -> None:
    rules = sticky_rules(margin)
    values = [v for v, _ in rows]
    scores = churn_scores(values)
    previous = pd.DataFrame(
        {
            "customer_id": [*scores["customer_id"], "only-in-previous"],
            "tag_churn_risk": pd.Series([p for _, p in rows] + ["high"], dtype="str"),
        }
    ).sample(frac=1, random_state=order_seed)

    once = evaluate_tags(rules, scores, previous)
    twice = evaluate_tags(rules, scores, once)
    pd.testing.assert_frame_equal(once, twice)

    expected = [reference_tier(v, p, margin) for v, p in rows]
    got = [None if pd.isna(t) else t for t in once["tag_churn_risk"]]
    assert got == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(score_values, previous_tiers), min_size=1, max_size=30), margin=st.sampled_from([0.0, 0.03, 0.1]))
def test_previous_tiers_given_per_row_equal_those_joined_by_customer_id(rows: list[tuple[float, str | None]], margin: float) -> None:
    """The API passes the snapshot's tiers already matched to its rows (`AlignedPreviousTags`)."""
    rules = sticky_rules(margin)
    scores = churn_scores([v for v, _ in rows])
    tiers = [p for _, p in rows]
    previous = pd.DataFrame({"customer_id": scores["customer_id"], "tag_churn_risk": pd.Series(tiers, dtype="str")})
    joined = evaluate_tags(rules, scores, previous.iloc[::-1])
    aligned = AlignedPreviousTags({"tag_churn_risk": np.array(tiers, dtype=object)})
    pd.testing.assert_frame_equal(evaluate_tags(rules, scores, aligned), joined)
    columns = evaluate_tag_columns(rules, {"churn_probability": scores["churn_probability"].to_numpy()}, len(scores), aligned)
    assert columns.to_lists() == {c: [None if pd.isna(v) else v for v in joined[c]] for c in joined.columns[1:]}
