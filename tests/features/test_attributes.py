"""Attribute family: every extra customer column becomes a feature, PII never does."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta

import ibis
import pandas as pd
import pyarrow as pa
import pytest

from features.backend import connect
from features.families.attributes import AttributeParams, attribute_features, attribute_plan
from features.families.engagement import engagement_features
from features.families.funnel import funnel_features
from features.families.transactions import transaction_features
from features.schema import DEFAULT_PII_COLUMNS
from features.validation import profile_from_frames

AS_OF = datetime(2025, 7, 1)
ORDERS = pd.DataFrame(
    {"order_id": ["o-1"], "customer_id": ["c1"], "ordered_at": [datetime(2025, 2, 1)], "amount": [5.0]}
)


@pytest.fixture(scope="module")
def con():
    return connect()


def customer_frame(**attributes) -> pd.DataFrame:
    base = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3"],
            "created_at": [datetime(2025, 1, 1), datetime(2025, 1, 1), AS_OF],  # c3 is not eligible yet
        }
    )
    for name, values in attributes.items():
        base[name] = values
    return base


def build(con, frame, params=AttributeParams(), as_of=AS_OF) -> pd.DataFrame:
    profile = profile_from_frames(con, frame, ORDERS).profile
    return con.to_pandas(attribute_features(profile, as_of, params)).set_index("customer_id").sort_index()


def test_each_type_becomes_a_prefixed_feature(con):
    frame = customer_frame(
        industry=["retail", None, "saas"],
        employees=pd.array([10, 250, None], dtype="Int64"),
        arr=[1200.5, None, 3.0],
        is_partner=pd.array([True, False, None], dtype="boolean"),
        signed_up_at=[datetime(2025, 6, 30, 12), datetime(2025, 7, 2), None],  # c2's is after as_of
        trial_ends=[date(2025, 6, 1), None, None],
    )
    out = build(con, frame)
    assert list(out.columns) == [
        "attr_industry",
        "attr_employees",
        "attr_arr",
        "attr_is_partner",
        "attr_signed_up_at_age_days",
        "attr_trial_ends_age_days",
    ]
    assert list(out.index) == ["c1", "c2"]  # one row per eligible customer
    c1, c2 = out.loc["c1"], out.loc["c2"]
    assert c1["attr_industry"] == "retail" and pd.isna(c2["attr_industry"])
    assert c1["attr_employees"] == 10 and c2["attr_employees"] == 250
    assert c1["attr_arr"] == pytest.approx(1200.5) and pd.isna(c2["attr_arr"])
    assert c1["attr_is_partner"] == 1 and c2["attr_is_partner"] == 0
    assert c1["attr_signed_up_at_age_days"] == pytest.approx(0.5)
    assert pd.isna(c2["attr_signed_up_at_age_days"])  # unknown at as_of: no negative age
    assert c1["attr_trial_ends_age_days"] == pytest.approx(30.0)


def test_types_of_the_feature_columns(con):
    frame = customer_frame(
        industry=["a", "b", "c"], seats=[1, 2, 3], flag=[True, False, True], seen_at=[datetime(2025, 1, 1)] * 3
    )
    profile = profile_from_frames(con, frame, ORDERS).profile
    schema = attribute_features(profile, AS_OF).schema()
    assert schema["attr_industry"].is_string()
    assert schema["attr_seats"].is_integer()
    assert schema["attr_flag"].is_int64()
    assert schema["attr_seen_at_age_days"].is_float64()
    kinds = {f.source: f.kind for f in attribute_plan(profile)}
    assert kinds == {"industry": "categorical", "seats": "numeric", "flag": "boolean", "seen_at": "age_days"}


def test_pii_columns_never_appear(con):
    frame = customer_frame(
        Email=["a@x", "b@x", "c@x"],
        PHONE=["1", "2", "3"],
        **{"First Name": ["A", "B", "C"]},
        date_of_birth=[datetime(1990, 1, 1)] * 3,
        industry=["retail", "saas", "saas"],
    )
    out = build(con, frame)
    assert list(out.columns) == ["attr_industry"]
    values = out.astype(str).to_numpy().ravel().tolist()
    assert not any("@" in v for v in values)
    # A custom PII list replaces the defaults and is matched case-insensitively too.
    custom = build(con, frame, AttributeParams(pii_columns=("INDUSTRY", *DEFAULT_PII_COLUMNS)))
    assert list(custom.columns) == []
    assert list(custom.index) == ["c1", "c2"]


def test_exclude_columns_and_clashing_names(con):
    frame = customer_frame(external_ref=["x", "y", "z"], industry=["a", "b", "c"])
    out = build(con, frame, AttributeParams(exclude_columns=("External_Ref",)))
    assert list(out.columns) == ["attr_industry"]
    clash = customer_frame(**{"Company Size": [1, 2, 3], "company_size": [1, 2, 3]})
    profile = profile_from_frames(con, clash, ORDERS).profile
    with pytest.raises(ValueError, match="same feature name"):
        attribute_features(profile, AS_OF)


@pytest.mark.parametrize("values", [[1.5, 2.0, None], [1, 2, 3], ["a", "b", "c"], [True, False, True]])
def test_only_a_timestamp_may_give_an_age_days_feature(con, values):
    # Online scoring takes a float attr_<x>_age_days feature for the age of timestamp <x>.
    frame = customer_frame(**{"Account Age Days": values})
    profile = profile_from_frames(con, frame, ORDERS).profile
    with pytest.raises(ValueError, match=r"customers.Account Age Days is .* rename the column \(say, to account_age\)"):
        attribute_features(profile, AS_OF)
    assert attribute_features(profile, AS_OF, AttributeParams(exclude_columns=("account_age_days",))).columns == ("customer_id",)
    stamped = customer_frame(account=[datetime(2025, 1, 1), None, datetime(2025, 6, 1)])
    assert "attr_account_age_days" in attribute_features(profile_from_frames(con, stamped, ORDERS).profile, AS_OF).columns


def test_timezone_aware_timestamps_are_read_in_utc(con):
    # Built in pyarrow: pandas 3.1 warns when pyarrow converts zone-aware columns.
    instants = [datetime(2025, 6, 30, 20), datetime(2025, 6, 29, 12), None]  # UTC
    frame = pa.Table.from_pandas(customer_frame(), preserve_index=False).append_column(
        "last_contact",
        pa.array(instants, type=pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us", tz="Europe/Berlin")),
    )
    out = build(con, frame)
    assert out.loc["c1", "attr_last_contact_age_days"] == pytest.approx(4 / 24)
    assert out.loc["c2", "attr_last_contact_age_days"] == pytest.approx(1.5)


def test_all_null_column_and_unsupported_types(con):
    # A column without a type (all nulls, e.g. from one inline request) still gives a stable float column.
    profile = profile_from_frames(con, customer_frame(), ORDERS).profile
    untyped = replace(profile, customers=profile.customers.mutate(notes=ibis.null()), attribute_columns=("notes",))
    out = con.to_pandas(attribute_features(untyped, AS_OF))
    assert list(out.columns) == ["customer_id", "attr_notes"] and out["attr_notes"].isna().all()
    assert attribute_features(untyped, AS_OF).schema()["attr_notes"].is_float64()
    nested = pa.Table.from_pandas(customer_frame(), preserve_index=False).append_column(
        "tags", pa.array([["a"], ["b"], []], type=pa.list_(pa.string()))
    )
    profile = profile_from_frames(con, nested, ORDERS).profile
    with pytest.raises(ValueError, match="customers.tags .*exclude_columns"):
        attribute_features(profile, AS_OF)
    excluded = attribute_features(profile, AS_OF, AttributeParams(exclude_columns=("tags",)))
    assert excluded.columns == ("customer_id",)


def test_no_attributes_gives_the_key_only(con):
    out = build(con, customer_frame())
    assert list(out.columns) == [] and list(out.index) == ["c1", "c2"]


def test_family_names_never_collide(con):
    """`attr_` keeps attributes apart, even for attribute names equal to other families' columns."""
    frame = customer_frame(orders_30d=[1, 2, 3], funnel_stage=["a", "b", "c"])
    events = pd.DataFrame(
        {"customer_id": ["c1"], "occurred_at": [AS_OF - timedelta(days=1)], "event_type": ["page_view"]}
    )
    profile = profile_from_frames(con, frame, ORDERS, events).profile
    columns: list[str] = []
    for family in (transaction_features, engagement_features, funnel_features, attribute_features):
        table = family(profile, AS_OF)
        assert table.columns[0] == "customer_id"
        columns += table.columns[1:]
    assert len(columns) == len(set(columns))
    assert {"attr_orders_30d", "attr_funnel_stage", "orders_30d", "funnel_stage"} <= set(columns)


def test_bad_params():
    with pytest.raises(ValueError, match="max_categories"):
        AttributeParams(max_categories=0)
