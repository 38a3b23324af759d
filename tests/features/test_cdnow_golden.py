"""The RFM family reproduces the published CDNOW calibration summary for every customer.

Source: the CDNOW 2,357-customer sample of Fader, Hardie & Lee (2005), "Counting your
customers the easy way: an alternative to the Pareto/NBD model", Marketing Science 24(2),
275-284, with its calibration summary (x, t_x, T in weeks, zbar) as shipped in the lifetimes
package: `lifetimes/datasets/cdnow_customers_summary_with_transactions.csv`. The calibration
period is 1997-01-01..1997-09-30, so as_of is 1997-10-01 (the last observed day is 09-30).
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources

import pandas as pd
import pytest

from features.backend import connect
from features.cdnow import cdnow_to_profile
from features.families.rfm import rfm_features
from features.io import read_cdnow_transactions
from features.validation import profile_from_frames

# The published file rounds to 2 decimals: a correct value is within half a unit of it
# (plus float noise for exact halves such as 22.345 -> 22.35).
TOLERANCE = 0.005 + 1e-9


def published_summary() -> pd.DataFrame:
    path = resources.files("lifetimes") / "datasets" / "cdnow_customers_summary_with_transactions.csv"
    with path.open("r") as fh:
        return pd.read_csv(fh, dtype={"ID": str})


@pytest.mark.slow
def test_rfm_matches_the_published_cdnow_calibration_summary():
    con = connect()
    cdnow = cdnow_to_profile(read_cdnow_transactions(sample=True))
    profile = profile_from_frames(con, cdnow.customers, cdnow.orders).profile
    ours = rfm_features(profile, datetime(1997, 10, 1)).to_pandas()
    published = published_summary()
    assert len(published) == 2357 and len(ours) == 2357

    merged = published.merge(ours, left_on="ID", right_on="customer_id", how="outer", validate="one_to_one", indicator=True)
    assert (merged["_merge"] == "both").all(), "customer ids differ from the published summary"

    computed = {
        "x": merged["frequency"],
        "t_x": merged["recency_days"] / 7,
        "T": merged["T_days"] / 7,
        "zbar": merged["monetary_value"],
    }
    for column, values in computed.items():
        error = (values - merged[column]).abs()
        worst = error.idxmax()
        assert error.max() <= TOLERANCE, (
            f"{column}: customer {merged.at[worst, 'ID']} has {values[worst]} vs published {merged.at[worst, column]}"
        )
