"""The feature table: one row per eligible customer, every family joined, stable column order."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import ibis
import pandas as pd
import pytest

import features.pipeline as pipeline
from features.backend import connect
from features.families.rfm import RfmParams, rfm_features
from features.pipeline import (
    FAMILIES,
    KEY,
    SHARED_COLUMNS,
    FeatureFamily,
    FeatureParams,
    build_features,
    categorical_feature_columns,
    family_names,
    family_tables,
    feature_columns,
)
from features.validation import profile_from_frames

AS_OF = datetime(2024, 3, 1)


@pytest.fixture(scope="module")
def con():
    return connect()


@pytest.fixture(scope="module")
def profile(con):
    start = datetime(2024, 1, 1)
    customers = pd.DataFrame(
        {
            "customer_id": [f"c-{i}" for i in (3, 1, 2, 4, 5, 6)],
            "created_at": pd.Series(
                [start, start, start + timedelta(days=20), start + timedelta(days=50), AS_OF, AS_OF + timedelta(days=1)],
                dtype="datetime64[us]",
            ),
            "industry": ["retail", "saas", None, "retail", "saas", "retail"],
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": [f"o-{i}" for i in range(7)],
            "customer_id": ["c-1", "c-1", "c-3", "c-3", "c-2", "c-5", "c-6"],
            "ordered_at": pd.Series(
                [
                    start + timedelta(days=3),
                    start + timedelta(days=40, hours=5),
                    start + timedelta(days=10),
                    AS_OF,  # a label-window order: no feature sees it
                    start + timedelta(days=30),
                    AS_OF + timedelta(days=2),
                    AS_OF + timedelta(days=3),
                ],
                dtype="datetime64[us]",
            ),
            "amount": [10.0, 25.0, 40.0, 99.0, 5.0, 7.0, 8.0],
            "status": pd.Series(["completed", None, "completed", "completed", "refunded", None, None], dtype="str"),
            "category": pd.Series(["books", "music", "books", None, "music", None, None], dtype="str"),
        }
    )
    events = pd.DataFrame(
        {
            "customer_id": ["c-1", "c-2", "c-4", "c-4", "c-5"],
            "occurred_at": pd.Series(
                [start + timedelta(days=2), start + timedelta(days=45), AS_OF - timedelta(days=1), AS_OF, AS_OF],
                dtype="datetime64[us]",
            ),
            "event_type": ["page_view", "pricing_page_view", "demo_request", "trial_start", "page_view"],
        }
    )
    return profile_from_frames(con, customers, orders, events).profile


def eligible_ids() -> list[str]:
    return ["c-1", "c-2", "c-3", "c-4"]  # created before as_of; c-5 at as_of, c-6 after


def test_one_row_per_eligible_customer_ordered_by_key(profile):
    table = build_features(profile, AS_OF).to_pandas()
    assert table[KEY].tolist() == eligible_ids()


def test_every_family_is_joined_in_registry_order(profile):
    assert family_names() == ("rfm", "transactions", "engagement", "funnel", "attributes")
    table = build_features(profile, AS_OF)
    expected = [KEY]
    for family in FAMILIES:
        alone = family.build(profile, AS_OF, getattr(FeatureParams(), family.name))
        assert alone.count().execute() == len(eligible_ids()), family.name
        expected += [c for c in alone.columns if c not in expected]
    assert list(table.columns) == expected
    assert feature_columns(table) == tuple(expected[1:])


def test_each_family_table_holds_every_eligible_customer_once(profile):
    # Online scoring runs the family tables without build_features' join onto the eligible
    # customers, so each must already have exactly those rows.
    tables = family_tables(profile, AS_OF)
    assert [name for name, _ in tables] == list(family_names())
    columns = [KEY]
    for name, table in tables:
        assert sorted(table.to_pandas()[KEY]) == eligible_ids(), name
        columns += [c for c in table.columns if c != KEY]
    assert columns == list(build_features(profile, AS_OF).columns)


def test_column_order_does_not_depend_on_how_families_are_named(profile):
    some = build_features(profile, AS_OF, families=["engagement", "rfm"])
    same = build_features(profile, AS_OF, families=("rfm", "engagement"))
    assert some.columns == same.columns
    rfm_columns = rfm_features(profile, AS_OF).columns
    assert some.columns[: len(rfm_columns)] == rfm_columns  # rfm is registered first
    everything = build_features(profile, AS_OF, families=list(reversed(family_names())))
    assert everything.columns == build_features(profile, AS_OF).columns


def test_family_values_survive_the_join(profile):
    params = FeatureParams(rfm=RfmParams())
    joined = build_features(profile, AS_OF, params).to_pandas()
    alone = rfm_features(profile, AS_OF, params.rfm).to_pandas().sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(joined[list(alone.columns)], alone, check_dtype=False)


def test_shared_columns_agree_between_families(profile):
    """Shared columns are dropped from later families, so every family must compute them identically."""
    tables = [f.build(profile, AS_OF, getattr(FeatureParams(), f.name)) for f in FAMILIES]
    for column in SHARED_COLUMNS:
        values = [
            t.select(KEY, column).to_pandas().sort_values(KEY).reset_index(drop=True) for t in tables if column in t.columns
        ]
        assert len(values) >= 2, f"{column} is no longer shared: drop it from SHARED_COLUMNS"
        for other in values[1:]:
            pd.testing.assert_frame_equal(values[0], other)


def test_unknown_family_is_an_error(profile):
    with pytest.raises(ValueError, match="unknown feature families \\['nope'\\]"):
        build_features(profile, AS_OF, families=["rfm", "nope"])
    with pytest.raises(ValueError, match="at least one"):
        build_features(profile, AS_OF, families=[])


def test_a_repeated_column_is_an_error(profile, monkeypatch):
    def clashing(profile, as_of, params):
        return rfm_features(profile, as_of).select(KEY, "frequency")

    monkeypatch.setattr(pipeline, "FAMILIES", (*FAMILIES, FeatureFamily("rfm_copy", clashing)))
    with pytest.raises(ValueError, match="'rfm_copy' repeats column\\(s\\) frequency \\(from 'rfm'\\)"):
        build_features(profile, AS_OF, params=_ParamsWithCopy(), families=["rfm", "rfm_copy"])


class _ParamsWithCopy(FeatureParams):
    """FeatureParams with a (parameterless) slot for the test family."""

    rfm_copy = None


def test_feature_and_categorical_columns(profile):
    table = build_features(profile, AS_OF)
    assert KEY not in feature_columns(table)
    categorical = categorical_feature_columns(table)
    assert "rfm_segment" in categorical
    assert all(c in feature_columns(table) for c in categorical)
    assert "frequency" not in categorical


def _as_of_literal_sql(as_of: datetime) -> str:
    """The text the DuckDB compiler writes for the as_of literal (`features.timeutil.as_of_literal`)."""
    sql = ibis.to_sql(ibis.literal(as_of, type="timestamp").name("as_of_literal"), dialect="duckdb")
    match = re.search(r"SELECT\s+(MAKE_TIMESTAMP\(.*?\))\s+AS", sql, re.S)
    assert match is not None, sql
    return match.group(1)


def test_compiled_sql_depends_on_as_of_only_through_its_literal(profile):
    """The online scorer compiles the feature SQL once and binds as_of as a parameter, so every
    as_of-dependent value must be derived inside the expression from the one as_of literal (never
    `as_of - timedelta(...)` in Python): the SQL at two as_of values (distinct microseconds, days
    and months) must be the same text once each as_of literal is replaced."""
    texts = []
    for as_of in (datetime(2024, 3, 1, 12, 30, 15, 123456), datetime(2024, 2, 20, 7, 5, 9, 654321)):
        sql = ibis.to_sql(build_features(profile, as_of), dialect="duckdb")
        literal = _as_of_literal_sql(as_of)
        assert literal in sql
        texts.append(sql.replace(literal, "<as_of>"))
    assert "MAKE_TIMESTAMP" not in texts[0]  # no other instant (e.g. a window start computed in Python)
    assert texts[0] == texts[1]
