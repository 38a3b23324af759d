"""The engine without a trained project: what `build_engine` refuses before loading anything, and
how request attributes are converted to the columns the models read."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from serving.engine import NoSnapshotError, SnapshotMismatchError, _convert_attribute, build_engine, served_run
from serving.online import AttributeColumn
from serving.store import RunRecord
from serving.tags import load_tag_rules


def test_an_engine_needs_a_batch_snapshot(tmp_path: Path) -> None:
    """Before the first batch run an inline score would be ranked among the other customers
    of its micro-batch (RFM quintiles, percentiles): the engine is refused, saying what to run."""
    store = tmp_path / "scores"

    with pytest.raises(NoSnapshotError, match=r"no batch snapshot in .*scores: run `crm-scoring score --profile DIR --as-of DATE`"):
        build_engine(store, None)

    assert not store.exists()  # looking created nothing


def test_the_served_run_is_the_newest_at_the_latest_as_of_and_must_have_the_servers_rules() -> None:
    rules = load_tag_rules()

    def run(run_id: str, day: int, hour: int, churn: str, digest: str = rules.digest) -> RunRecord:
        return RunRecord(run_id, datetime(2025, 6, day), datetime(2025, 6, day, hour), None, 10, {"churn_propensity": churn}, digest)

    older = run("june-14", 14, 9, "3")
    first, second = run("a", 15, 1, "1"), run("b", 15, 2, "2")  # v1 scored, v2 promoted and scored
    assert served_run([older, first, second], rules) is second
    # Rolled back to v1 and re-scored: a new run (serving.batch.choose_run_id), the newest.
    back = run("c", 15, 3, "1")
    assert served_run([older, first, second, back], rules) is back
    # The newest run was scored with other rules: an error, not an older run of these rules
    # (its events have told the CRM other tags than that run holds).
    other = run("d", 15, 4, "2", digest="f" * 64)
    with pytest.raises(SnapshotMismatchError, match="run d"):
        served_run([older, first, second, other], rules)
    assert served_run([older, first, second, other, run("e", 15, 5, "2")], rules).run_id == "e"
    with pytest.raises(SnapshotMismatchError, match=r"run d \(as_of 2025-06-15 00:00\) was scored with other tag rules.*DATE at or after 2025-06-15 00:00"):
        served_run([older, other], rules)


def test_serving_a_run_of_other_versions_than_the_champions_is_logged(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """After a promotion or a rollback, until `score` runs: the API keeps the run's versions, and says so."""
    from types import SimpleNamespace

    import training.registry
    from serving.engine import _warn_if_not_the_champions

    run = RunRecord("run_a", datetime(2025, 6, 15), datetime(2025, 6, 15, 1), None, 10, {"churn_propensity": "2", "customer_ltv": "1"})
    champions = [SimpleNamespace(name="churn_propensity", version=1), SimpleNamespace(name="customer_ltv", version=1)]
    monkeypatch.setattr(training.registry, "champions", lambda settings=None: champions)
    with caplog.at_level("WARNING", logger="crm_scoring.serving"):
        _warn_if_not_the_champions(run, None)
    assert caplog.messages == [
        "serving the model versions of batch run run_a (churn_propensity v2, customer_ltv v1); the champions are now "
        "churn_propensity v1, customer_ltv v1: run `crm-scoring score`, then reload, to serve them"
    ]
    caplog.clear()
    champions[0] = SimpleNamespace(name="churn_propensity", version=2)
    _warn_if_not_the_champions(run, None)
    assert caplog.messages == []


@pytest.mark.parametrize(
    ("arrow_type", "value", "expected"),
    [
        (pa.float64(), 10**400, "expected a finite number"),
        (pa.float32(), 1e300, "expected a finite number of at most 3.40282e+38"),
        (pa.int64(), 2**70, "expected an integer from -9223372036854775808 to 9223372036854775807"),
        (pa.int32(), 1e300, "expected an integer from -2147483648 to 2147483647"),
        (pa.int64(), 2.5, "expected an integer"),
        (pa.timestamp("us"), "9999-12-31T23:59:59-05:00", "outside the years 0001-9999"),
    ],
)
def test_attribute_values_a_column_cannot_hold_are_input_errors(arrow_type: pa.DataType, value: object, expected: str) -> None:
    """Each becomes a 422 naming the attribute (it used to overflow into a 500)."""
    with pytest.raises(ValueError, match=re.escape(expected)):
        _convert_attribute(AttributeColumn("x", arrow_type), value)


def test_attribute_values_that_fit_are_converted() -> None:
    assert _convert_attribute(AttributeColumn("x", pa.int32()), 5.0) == 5
    assert _convert_attribute(AttributeColumn("x", pa.float64()), 1e300) == 1e300
    assert _convert_attribute(AttributeColumn("x", pa.timestamp("us")), "2025-01-01T01:00:00+01:00") == datetime(2025, 1, 1)
