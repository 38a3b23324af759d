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
condition tags. They are parsed by the small tokenizer and recursive-descent parser of
`serving.tags.conditions` into a closed set of node types; nothing reaches `eval`, names resolve only to declared
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

Modules: `rules` (the rules model and errors), `conditions` (parsing and checking
conditions), `rules_file` (reading and validating a file), `evaluation` (applying the
rules to scores). This package re-exports their public names.
"""

from serving.tags.conditions import Expression
from serving.tags.evaluation import (
    AlignedPreviousTags,
    PreviousTiers,
    Scores,
    TagColumns,
    evaluate_tag_columns,
    evaluate_tags,
)
from serving.tags.rules import (
    CONDITION_TRUE,
    DEFAULT_RULES_SOURCE,
    RULES_VERSION,
    SCORES,
    SEGMENT_COLUMN_PREFIX,
    TAG_COLUMN_PREFIX,
    ConditionTag,
    PassThroughTag,
    RuleProblem,
    ScoreSpec,
    SegmentRule,
    TagInputError,
    TagRule,
    TagRules,
    TagRulesError,
    Tier,
    TierTag,
)
from serving.tags.rules_file import load_tag_rules, parse_tag_rules

__all__ = [
    "CONDITION_TRUE",
    "DEFAULT_RULES_SOURCE",
    "RULES_VERSION",
    "SCORES",
    "SEGMENT_COLUMN_PREFIX",
    "TAG_COLUMN_PREFIX",
    "AlignedPreviousTags",
    "ConditionTag",
    "Expression",
    "PassThroughTag",
    "PreviousTiers",
    "RuleProblem",
    "ScoreSpec",
    "Scores",
    "SegmentRule",
    "TagColumns",
    "TagInputError",
    "TagRule",
    "TagRules",
    "TagRulesError",
    "Tier",
    "TierTag",
    "evaluate_tag_columns",
    "evaluate_tags",
    "load_tag_rules",
    "parse_tag_rules",
]
