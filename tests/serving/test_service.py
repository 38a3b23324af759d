"""The scoring API in process (auth, limits, field paths, reload) and under a real `bentoml serve`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from features.pipeline import FEATURE_DEFINITIONS_VERSION
from tests.serving.conftest import ADMIN_KEY, API_KEY, AS_OF, TrainedProject
from serving.cli_serving import ServeError, check_port_free
from serving.inline import inline_customers

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(trained_project: TrainedProject) -> Iterator[TestClient]:
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in trained_project.env.items() if k.startswith("CRMSCORE_")})
    os.environ["CRMSCORE_MAX_CUSTOMERS_PER_REQUEST"] = "5"
    os.environ["CRMSCORE_MAX_BODY_BYTES"] = "200000"
    try:
        from serving.service import CrmScoring

        with TestClient(CrmScoring.to_asgi()) as test_client:
            yield test_client
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def customer(trained_project: TrainedProject) -> dict[str, Any]:
    import pandas as pd

    orders = pd.read_parquet(trained_project.profile / "orders.parquet")
    buyer = str(orders.customer_id.iloc[0])
    return inline_customers(trained_project.profile, [buyer])[0]


def body(*customers: dict[str, Any], as_of: str | None = f"{AS_OF}T00:00:00Z") -> dict[str, Any]:
    return {"as_of": as_of, "customers": list(customers)} if as_of else {"customers": list(customers)}


def test_the_app_has_bentoml_middleware_but_no_idle_tracing(client: TestClient) -> None:
    # No trace exporter is configured here: BentoML's tracing middleware would only make
    # spans nobody receives (serving.bentoml_fixes). Metrics and the fixed timeout stay.
    names = [m.cls.__name__ for m in client.app.user_middleware]
    assert "OpenTelemetryMiddleware" not in names
    assert {"RunnerTrafficMetricsMiddleware", "CancellingTimeoutMiddleware"} <= set(names)


def test_health_endpoints_are_open(client: TestClient) -> None:
    for path in ("/healthz", "/livez", "/readyz"):
        assert client.get(path).status_code == 200, path


def test_every_v1_endpoint_needs_a_key(client: TestClient, customer: dict[str, Any]) -> None:
    assert client.post("/v1/score", json=body(customer)).status_code == 401
    assert client.post("/v1/score", json=body(customer), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/score", json=body(customer), headers={"Authorization": API_KEY}).status_code == 401
    assert client.get("/v1/models").status_code == 401
    assert client.post("/v1/score/by-id", json={"customer_ids": ["x"]}).status_code == 401
    assert client.post("/v1/admin/reload", headers=AUTH).status_code == 403


def test_score_follows_the_output_contract(client: TestClient, customer: dict[str, Any]) -> None:
    response = client.post("/v1/score", json=body(customer), headers=AUTH)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["customer_id"] == customer["customer_id"]
    assert result["as_of"] == f"{AS_OF}T00:00:00Z"
    assert set(result["predictions"]) == {"churn", "lead_conversion", "ltv"}
    churn = result["predictions"]["churn"]
    assert 0.0 <= churn["probability"] <= 1.0 and 0.0 <= churn["percentile"] <= 1.0
    assert churn["model"] == "churn_propensity" and churn["version"] and churn["tier"] in {"high", "medium", "low"}
    assert churn["reasons"] and {"feature", "value", "contribution", "text"} <= set(churn["reasons"][0])
    assert result["predictions"]["lead_conversion"] is None and "lead_conversion" in result["not_applicable"]
    assert result["tags"]["churn_risk"] == churn["tier"]
    assert isinstance(result["segments"], list)


def test_without_as_of_a_lead_created_seconds_ago_is_scored(client: TestClient, customer: dict[str, Any]) -> None:
    from datetime import UTC, timedelta

    now = datetime.now(UTC).replace(tzinfo=None)
    lead = {**customer, "customer_id": "new-lead", "orders": [], "events": []}
    lead["created_at"] = (now - timedelta(seconds=2)).isoformat(timespec="microseconds") + "Z"
    response = client.post("/v1/score", json=body(lead, as_of=None), headers=AUTH)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    # as_of: the next whole minute, so the lead is in (created before as_of), whatever the second.
    as_of = datetime.fromisoformat(result["as_of"].removesuffix("Z"))
    assert as_of > now and as_of.second == 0 and as_of - now <= timedelta(minutes=1)
    assert result["predictions"]["lead_conversion"] is not None, result


def test_models_endpoint(client: TestClient) -> None:
    response = client.get("/v1/models", headers=AUTH)
    assert response.status_code == 200
    names = {m["name"] for m in response.json()["models"]}
    assert names == {"lead_scoring", "churn_propensity", "customer_ltv"}
    churn = next(m for m in response.json()["models"] if m["name"] == "churn_propensity")
    assert "val_roc_auc" in churn["metrics"]
    # Every as_of of the API is ISO UTC with a "Z", the models' (from MLflow tags) too.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", churn["as_of"]), churn["as_of"]
    assert response.json()["snapshot"]["as_of"] == f"{AS_OF}T00:00:00Z"
    # customer_ltv's answers forecast over its CLV horizon, not its training run's holdout.
    ltv = next(m for m in response.json()["models"] if m["name"] == "customer_ltv")
    assert "clv_horizon_days" in ltv and "clv_horizon_days" not in churn
    assert churn["currency"] == ltv["currency"] == "USD"  # of the training profile's amounts
    assert churn["feature_version"] == ltv["feature_version"] == FEATURE_DEFINITIONS_VERSION


def _loc(response: httpx.Response) -> list[list[Any]]:
    return [d["loc"] for d in response.json()["detail"]]


@pytest.mark.parametrize(
    ("mutate", "status", "loc"),
    [
        (lambda c: c.pop("customer_id"), 422, ["body", "customers", 0, "customer_id"]),
        (lambda c: c.update(customer_id=""), 422, ["body", "customers", 0, "customer_id"]),
        (lambda c: c.update(created_at="not a date"), 422, ["body", "customers", 0, "created_at"]),
        (lambda c: c.update(created_at="2099-01-01T00:00:00Z"), 422, ["body", "customers", 0, "created_at"]),
        (lambda c: c["orders"][0].update(amount=-3), 422, ["body", "customers", 0, "orders", 0, "amount"]),
        (lambda c: c["orders"][0].update(amount="ten"), 422, ["body", "customers", 0, "orders", 0, "amount"]),
        (lambda c: c["orders"][0].update(ordered_at="2099-01-01T00:00:00Z"), 422, ["body", "customers", 0, "orders", 0, "ordered_at"]),
        (lambda c: c["orders"][0].update(coupon="x"), 422, ["body", "customers", 0, "orders", 0, "coupon"]),
        (lambda c: c.update(events=[{"occurred_at": "2025-01-01T00:00:00Z"}]), 422, ["body", "customers", 0, "events", 0, "event_type"]),
        (lambda c: c.update(events=[{"occurred_at": "2099-01-01T00:00:00+05:00", "event_type": "x"}, *c["events"]]), 422, ["body", "customers", 0, "events", 0, "occurred_at"]),
        (lambda c: c.update(loyalty=1), 422, ["body", "customers", 0, "loyalty"]),
        # Amounts are never converted: the batch population and the models are in USD.
        (lambda c: [o.update(currency="EUR") for o in c["orders"]], 422, ["body", "customers", 0, "orders", 0, "currency"]),
        (lambda c: c.update(orders="none"), 422, ["body", "customers", 0, "orders"]),
        (lambda c: c["attributes"].update(industry=5), 422, ["body", "customers", 0, "attributes", "industry"]),
        (lambda c: c["orders"].insert(1, dict(c["orders"][0])), 422, ["body", "customers", 0, "orders", 1, "order_id"]),
        # Zone offsets that carry a timestamp past year 9999 or before year 1 in UTC.
        (lambda c: c.update(created_at="9999-12-31T23:59:59-05:00"), 422, ["body", "customers", 0, "created_at"]),
        (lambda c: c["orders"][0].update(ordered_at="0001-01-01T00:00:00+01:00"), 422, ["body", "customers", 0, "orders", 0, "ordered_at"]),
        (lambda c: c.update(events=[{"event_id": "e", "occurred_at": "2025-01-01T00:00:00Z", "event_type": "x"}, {"event_id": "e", "occurred_at": "0001-01-01T00:00:00+01:00", "event_type": "x"}]), 422, ["body", "customers", 0, "events", 1, "occurred_at"]),
        # Numbers are not timestamps (pydantic would read seconds since 1970), nor true or text amounts.
        (lambda c: c.update(created_at=1700000000), 422, ["body", "customers", 0, "created_at"]),
        (lambda c: c.update(created_at="20250615"), 422, ["body", "customers", 0, "created_at"]),
        (lambda c: c["orders"][0].update(amount=True), 422, ["body", "customers", 0, "orders", 0, "amount"]),
        (lambda c: c["orders"][0].update(amount="44.69"), 422, ["body", "customers", 0, "orders", 0, "amount"]),
        # Sums of amounts must stay finite (CLV of 1e308 orders was infinite).
        (lambda c: c["orders"][0].update(amount=1e308), 422, ["body", "customers", 0, "orders", 0, "amount"]),
        # Attributes: the path ends at the attribute; two spellings of one column are refused.
        (lambda c: c["attributes"].update(industry=[1]), 422, ["body", "customers", 0, "attributes", "industry"]),
        (lambda c: c["attributes"].update(Industry="software"), 422, ["body", "customers", 0, "attributes", "Industry"]),
    ],
)
def test_bad_fields_get_422_with_the_field_path(client: TestClient, customer: dict[str, Any], mutate: Any, status: int, loc: list[Any]) -> None:
    bad = json.loads(json.dumps(customer))
    mutate(bad)
    response = client.post("/v1/score", json=body(bad), headers=AUTH)
    assert response.status_code == status, response.text
    assert loc in _loc(response), _loc(response)


# Values a client might send by mistake, and the edges of what the schema accepts.
_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        ["", "2025-13-01", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2025-06-01T00:00:00+14:00", "2025-06-01",
         "2025-06-14T23:59:59.999999Z", "1970-01-01T00:00:00Z", "NaN", "1e400", "\x00", "purchase", "EUR"]
    ),
    st.sampled_from([-0.0, 1e308, 5e-324, 2**63, -(2**63), 2**64]),
)
_ODD_JSON = st.recursive(_ODD_VALUES, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=5)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key / index path of a JSON value (the first 3 items of a list)."""
    if prefix:
        yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node[:3]) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


def _like(value: Any) -> st.SearchStrategy[Any]:
    """Values of the kind of `value`: timestamps before the request's as_of, amounts, texts, flags."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int | float):
        return st.one_of(st.floats(min_value=0, max_value=1e6), st.sampled_from([0, 0.01, 5e-324]))
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT.*", value):
        instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2025, 6, 14, 23, 59, 59))
        return instants.map(lambda t: t.isoformat() + "Z")
    if isinstance(value, str):
        return st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=12)
    if isinstance(value, list):
        return st.just(value[1:])  # one item fewer
    return st.just(value)


@st.composite
def _mutated(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """`valid` with 1-4 random edits: a value replaced or deleted, an unknown key added, a list item repeated."""
    mutated = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(mutated))
        if not paths:  # everything deleted
            break
        path = draw(st.sampled_from(paths))
        parent = mutated
        for key in path[:-1]:
            parent = parent[key]
        key, edit = path[-1], draw(st.sampled_from(["like", "like", "replace", "delete", "add", "repeat"]))
        if edit == "like":  # a value of the same kind, mostly still valid: scoring sees odd data
            parent[key] = draw(_like(parent[key]))
        elif edit == "replace":
            parent[key] = draw(_ODD_JSON)
        elif edit == "delete":
            del parent[key]
        elif edit == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(_ODD_JSON)
        elif edit == "repeat" and isinstance(parent[key], list) and parent[key]:
            parent[key].append(parent[key][0])
    return mutated


def _check_answer(response: httpx.Response, sent: Any) -> None:
    """What holds for any request: no 5xx; a 422 names field paths under the body; a 200 answers every customer."""
    event(f"status {response.status_code}")  # --hypothesis-show-statistics shows the mix
    assert response.status_code in (200, 413, 422), response.text
    if response.status_code == 422:
        locations = _loc(response)
        assert locations and all(loc[0] == "body" for loc in locations), response.text
    elif response.status_code == 200:
        answered = [r["customer_id"] for r in response.json()["results"]]
        assert answered == [c["customer_id"] for c in sent["customers"]]


def test_no_edit_of_a_valid_body_gets_a_server_error(client: TestClient, customer: dict[str, Any]) -> None:
    """Property: random edits anywhere in a valid request (wrong types, missing and unknown
    fields, edge values, repeated items) get a 200, 413 or 422 with field paths, never a 5xx."""
    other = {
        **customer,
        "customer_id": "other-customer",
        "orders": [{**o, "order_id": f"{o['order_id']}-b"} for o in customer["orders"]],
        "events": [{**e, "event_id": f"{e['event_id']}-b"} for e in customer["events"] if "event_id" in e],
    }
    valid = body(customer, other)
    assert client.post("/v1/score", json=valid, headers=AUTH).status_code == 200

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_mutated(valid))
    def check(sent: dict[str, Any]) -> None:
        response = client.post("/v1/score", content=json.dumps(sent).encode(), headers={**AUTH, "Content-Type": "application/json"})
        _check_answer(response, sent)

    check()


def test_no_corruption_of_a_valid_body_gets_a_server_error(client: TestClient, customer: dict[str, Any]) -> None:
    """Property: a valid body with a slice replaced by random bytes (truncated, broken
    UTF-8, stray brackets) gets a 200 or 422, never a 5xx."""
    valid = json.dumps(body(customer)).encode()

    @settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(valid)), st.integers(0, len(valid)), st.binary(max_size=6))
    def check(start: int, end: int, junk: bytes) -> None:
        start, end = sorted((start, end))
        sent = valid[:start] + junk + valid[end:]
        response = client.post("/v1/score", content=sent, headers={**AUTH, "Content-Type": "application/json"})
        event(f"status {response.status_code}")
        assert response.status_code in (200, 422), response.text
        if response.status_code == 422:
            assert all(loc[0] == "body" for loc in _loc(response)), response.text

    check()


def test_the_openapi_document_describes_the_score_body(client: TestClient) -> None:
    # /v1/score reads its body itself (serving.service.read_body); the document still shows it.
    document = client.get("/v1/openapi.json").json()
    body_schema = document["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/ScoreRequest"}
    schemas = document["components"]["schemas"]
    assert schemas["ScoreRequest"]["properties"]["customers"]["items"] == {"$ref": "#/components/schemas/CustomerIn"}
    assert schemas["CustomerIn"]["properties"]["orders"]["items"] == {"$ref": "#/components/schemas/OrderIn"}
    assert {"OrderIn", "EventIn", "ScoreResponse"} <= set(schemas)


def test_request_level_problems(client: TestClient, customer: dict[str, Any]) -> None:
    assert client.post("/v1/score", json={**body(customer), "debug": True}, headers=AUTH).status_code == 422
    assert client.post("/v1/score", json={"customers": []}, headers=AUTH).status_code == 422
    assert client.post("/v1/score", json=body(customer, as_of="2099-01-01"), headers=AUTH).status_code == 422
    dup = client.post("/v1/score", json=body(customer, customer), headers=AUTH)
    assert dup.status_code == 422 and ["body", "customers", 1, "customer_id"] in _loc(dup)
    malformed = client.post("/v1/score", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert malformed.status_code == 422 and _loc(malformed)[0][0] == "body"
    assert client.post("/v1/score", content=b"", headers=AUTH).status_code == 422
    assert client.post("/v1/score", content=b"[]", headers={**AUTH, "Content-Type": "application/json"}).status_code == 422
    assert client.post("/v1/score/by-id", json={"customer_ids": "c-1"}, headers=AUTH).status_code == 422
    early = client.post("/v1/score", json=body(customer, as_of="0001-01-01T00:00:00+01:00"), headers=AUTH)
    assert early.status_code == 422 and _loc(early) == [["body", "as_of"]]
    # A body that is not JSON: the path is the body, not a character offset; by-id alike.
    for path in ("/v1/score", "/v1/score/by-id"):
        broken = client.post(path, content=b'{"customer_ids": [1,', headers={**AUTH, "Content-Type": "application/json"})
        assert broken.status_code == 422 and broken.json()["error"] == "invalid request" and _loc(broken) == [["body"]], broken.text
        deep = client.post(path, content=b"[" * 100_000, headers={**AUTH, "Content-Type": "application/json"})
        assert deep.status_code == 422 and _loc(deep) == [["body"]], deep.text
    # A POST without a body and without Content-Length (curl -X POST) is an empty body.
    assert client.post("/v1/score", headers=AUTH).status_code == 422


def test_many_problems_are_listed_up_to_a_limit(client: TestClient, customer: dict[str, Any]) -> None:
    """A body of thousands of broken items must not make an answer of millions of errors."""
    from serving.service import MAX_REPORTED_PROBLEMS

    repeated = {**customer, "orders": [customer["orders"][0]] * 300}  # 299 duplicate order ids
    response = client.post("/v1/score", json=body(repeated), headers=AUTH)
    assert response.status_code == 422
    assert len(response.json()["detail"]) == MAX_REPORTED_PROBLEMS and response.json()["problems_total"] == 299
    # The same for what pydantic finds: 60 empty customers miss 2 fields each.
    response = client.post("/v1/score", json={"customers": [{}] * 60}, headers=AUTH)
    assert response.status_code == 422
    assert len(response.json()["detail"]) == MAX_REPORTED_PROBLEMS and response.json()["problems_total"] == 120
    # The first broken order of a customer ends that list's checks (pydantic's fail_fast).
    broken = {**customer, "orders": [{}] * 2_000}
    response = client.post("/v1/score", json=body(broken), headers=AUTH)
    assert response.status_code == 422 and len(response.json()["detail"]) < 10
    assert ["body", "customers", 0, "orders", 0, "order_id"] in _loc(response)


def test_too_many_customers_and_too_large_bodies(client: TestClient, customer: dict[str, Any]) -> None:
    many = [{"customer_id": f"lead-{i}", "created_at": "2025-01-01T00:00:00Z"} for i in range(6)]
    response = client.post("/v1/score", json=body(*many), headers=AUTH)
    assert response.status_code == 413 and "limit is 5" in response.json()["error"]
    huge = {**customer, "attributes": {"industry": "x" * 250_000}}
    assert client.post("/v1/score", json=body(huge), headers=AUTH).status_code == 413


def test_score_by_id(client: TestClient, customer: dict[str, Any]) -> None:
    response = client.post("/v1/score/by-id", json={"customer_ids": [customer["customer_id"], "nobody"]}, headers=AUTH)
    assert response.status_code == 200
    payload = response.json()
    assert payload["missing"] == ["nobody"] and payload["results"][0]["customer_id"] == customer["customer_id"]
    assert payload["as_of"].startswith(AS_OF)


def test_score_by_id_finds_any_id_a_batch_may_hold(client: TestClient, trained_project: TrainedProject) -> None:
    """Batch scoring takes every string as an id; a lookup must not refuse one (it used to
    apply the inline ids' no-control-characters rule)."""
    odd = ["a,b\"c\nd", "tab\there", "nul\x00", "é" * 300]
    response = client.post("/v1/score/by-id", json={"customer_ids": odd}, headers=AUTH)
    assert response.status_code == 200 and response.json()["missing"] == odd
    assert client.post("/v1/score/by-id", json={"customer_ids": [""]}, headers=AUTH).status_code == 422


def test_failed_reload_keeps_the_old_models(client: TestClient, customer: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.engine

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    before = client.post("/v1/score", json=body(customer), headers=AUTH).json()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise serving.engine.CrmScoringError("champion v9 cannot be loaded: artifact missing")

    with monkeypatch.context() as patch:
        patch.setattr(serving.engine, "build_engine", broken)
        failed = client.post("/v1/admin/reload", headers=admin)
    assert failed.status_code == 409 and "still serving the previous models" in failed.json()["error"]
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/score", json=body(customer), headers=AUTH).json() == before
    service = _service(client)
    previous = service.engine
    reloaded = client.post("/v1/admin/reload", headers=admin)
    assert reloaded.status_code == 200 and reloaded.json()["reloaded"] is True
    assert client.post("/v1/score", json=body(customer), headers=AUTH).json() == before
    assert service.engine is not previous and previous.builder._closed  # the old feature process is stopped
    assert service.engine.builder.pid is not None and service.engine.builder.pid != previous.builder.pid


def test_a_reload_with_other_tag_rules_than_the_snapshot_is_refused(
    client: TestClient, customer: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """by-id answers from the snapshot, inline with the server's rules: with other rules the
    two would tag one customer differently, so the change goes through `score` first."""
    from importlib import resources

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    before = client.post("/v1/score", json=body(customer), headers=AUTH).json()
    edited = tmp_path / "my_tags.yaml"
    edited.write_text(resources.files("serving").joinpath("default_tags.yaml").read_text().replace("min: 0.6", "min: 0.8"))
    service = _service(client)
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"tags_file": edited}))

    refused = client.post("/v1/admin/reload", headers=admin)

    assert refused.status_code == 409
    error = refused.json()["error"]
    assert "still serving the previous models" in error and f"other tag rules: {edited} (sha256 " in error
    assert "are not the run's" in error and "run `crm-scoring score" in error
    assert client.post("/v1/score", json=body(customer), headers=AUTH).json() == before


def test_by_id_answers_503_when_the_snapshot_file_is_gone(
    client: TestClient, customer: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dataclasses

    engine = _service(client).engine
    monkeypatch.setattr(engine, "snapshot", dataclasses.replace(engine.snapshot, path=tmp_path / "moved.parquet"))

    response = client.post("/v1/score/by-id", json={"customer_ids": [customer["customer_id"]]}, headers=AUTH)

    assert response.status_code == 503  # was a plain-text 500
    assert response.json()["error"] == "the latest batch snapshot cannot be read; an operator must re-run `crm-scoring score` and reload"


def test_not_ready_answers_say_why_and_when_to_retry(client: TestClient, customer: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(client)
    monkeypatch.setattr(service, "engine", None)
    monkeypatch.setattr(service, "load_error", "SnapshotMismatchError: the latest batch run r1 was scored with other models")

    for path, payload in (("/v1/score", body(customer)), ("/v1/score/by-id", {"customer_ids": ["c-1"]})):
        response = client.post(path, json=payload, headers=AUTH)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.json()["error"] == "not ready: SnapshotMismatchError: the latest batch run r1 was scored with other models"
    assert client.get("/readyz").status_code == 503


def _service(client: TestClient) -> Any:
    """The running CrmScoring instance behind the test client."""
    from serving.service import app

    return app.state.service


def test_a_feature_failure_is_a_503_not_a_500(client: TestClient, customer: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.online import OnlineFeatureError

    engine = _service(client).engine

    def broken(requests: Any) -> Any:
        raise OnlineFeatureError("the feature process stopped (features; exit code -9)")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "prepare_batch", broken)
        response = client.post("/v1/score", json=body(customer), headers=AUTH)
    assert response.status_code == 503 and "retry" in response.json()["error"]
    assert client.post("/v1/score", json=body(customer), headers=AUTH).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_bentoml_serve(trained_project: TrainedProject, customer: dict[str, Any]) -> None:
    port = _free_port()
    cli = str(Path(sys.executable).with_name("crm-scoring"))
    server = subprocess.Popen(
        [cli, "serve", "--port", str(port)], cwd=trained_project.root, env=trained_project.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else "server exited"
            time.sleep(0.5)
        else:
            pytest.fail("the server did not become ready in 120 s")
        response = httpx.post(f"{base}/v1/score", json=body(customer), headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["predictions"]["churn"]["probability"] > 0
        assert httpx.post(f"{base}/v1/score", json=body(customer), timeout=30).status_code == 401
        metrics = httpx.get(f"{base}/metrics", timeout=30)
        assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    finally:
        # Only the command's own process, as a supervisor signals it: `serve` execs BentoML,
        # which stops its worker and the feature processes (it used to keep serving alone).
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=60)
            stopped = True
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            output, _ = server.communicate()
            stopped = False
    assert stopped, "the server did not stop on SIGTERM"
    deadline = time.monotonic() + 15
    while True:
        try:
            check_port_free("127.0.0.1", port)
            break
        except ServeError:
            assert time.monotonic() < deadline, "the port is still taken after the server stopped"
            time.sleep(0.2)
    log = output.decode(errors="replace")
    # No request bodies or personal data in the logs.
    assert customer["customer_id"] not in log
    for value in customer["attributes"].values():
        if isinstance(value, str) and "@" in value:
            assert value not in log


def test_quickstart_without_a_snapshot_or_demo_data_says_what_to_run(trained_project: TrainedProject, tmp_path: Path) -> None:
    """`make run` with champions but neither a batch snapshot nor the demo profile: one line, exit 1."""
    cli = str(Path(sys.executable).with_name("crm-scoring"))
    env = {**trained_project.env, "CRMSCORE_STORE_DIR": str(tmp_path / "empty-store")}
    result = subprocess.run(
        [cli, "quickstart", "--data", str(tmp_path / "no-demo")], cwd=trained_project.root, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "champions found" in result.stdout
    assert f"error: no batch snapshot yet and no demo profile at {tmp_path / 'no-demo' / 'profile'}" in said
    assert "Usage:" not in said and "Traceback" not in said
