"""The BentoML service: `bentoml serve serving.service:CrmScoring` (or `crm-scoring serve`).

A new-style `@bentoml.service` class with the API mounted as a FastAPI app under `/v1`
(FastAPI gives pydantic validation with field paths, OpenAPI docs at `/v1/docs`, and
exception handlers that keep every input problem a 4xx). BentoML supplies the process
model and `/healthz`, `/livez`, `/readyz` (ready = a batch snapshot found, models loaded
and the probe prediction passed, see `__is_ready__`) and `/metrics`, which stay open
without a key. Before the first batch run the service is up but not ready: inline scores
are relative to the batch-scored population (RFM score edges, percentiles). It serves the
model versions that scored the latest batch run (`engine.served_run`), with tag rules that
must be the run's: after a promotion or a rules change, `crm-scoring score`, then a reload.

Endpoints (bearer API key required):
  POST /v1/score          inline profiles -> output contract per customer
  POST /v1/score/by-id    customer ids -> rows of the latest batch snapshot
  GET  /v1/models         served models (name, version, as_of, metrics) and snapshot
  POST /v1/admin/reload   (admin key) load the latest batch run and its model versions; a failure keeps the old ones

Concurrent `/v1/score` requests are micro-batched (`MicroBatcher`): those that arrive
while a batch is being computed go together into the next feature query, since a query's
cost is mostly fixed. Results equal scoring each request alone (tested). The feature
queries run in a child process (`serving.feature_process`) so that DuckDB does not queue
for this process's GIL behind request handling.

Status codes: 401 missing/invalid key, 403 admin endpoint without an admin key, 411 a
chunked POST body (no Content-Length), 413 body or batch too large, 422 invalid fields
(with `loc`; at most `MAX_REPORTED_PROBLEMS` listed), 429 too many requests in flight,
503 not ready / scoring timeout / feature process restarting / snapshot file unreadable
(429 and 503 with Retry-After, but for the unreadable snapshot, which needs an operator). Logs carry method, path, status, counts and durations, never bodies,
attribute values or emails.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import anyio
import bentoml
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

from serving import bentoml_fixes
from serving.events import json_timestamp
from serving.schemas import ModelsResponse, ScoreByIdRequest, ScoreByIdResponse, ScoreRequest, ScoreResponse
from serving.settings import read_settings, unknown_variables

logger = logging.getLogger("crm_scoring.serving")

app = FastAPI(
    title="crm-scoring",
    summary="Lead, churn and lifetime-value scores with predictive tags for CRM systems.",
    version="1",
)

OPEN_PATHS = ("/docs", "/openapi.json", "/redoc")


class KeyChecker:
    """Bearer keys compared in constant time (every key is compared, match or not)."""

    def __init__(self, keys: list[str], admin_keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys + admin_keys]
        self._admin = [k.encode() for k in admin_keys]

    @staticmethod
    def _matches(candidate: bytes, keys: list[bytes]) -> bool:
        found = False
        for key in keys:
            found |= hmac.compare_digest(candidate, key)
        return found

    @staticmethod
    def bearer(headers: Headers) -> bytes | None:
        header = headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip().encode() if scheme.lower() == "bearer" and token.strip() else None

    def allowed(self, token: bytes | None) -> bool:
        return token is not None and self._matches(token, self._keys)

    def admin(self, token: bytes | None) -> bool:
        return token is not None and self._matches(token, self._admin)


class MicroBatcher:
    """Adaptive batching of `/v1/score` requests into one feature query, in two stages.

    A feature query's cost is mostly fixed (~17 ms for 1 customer, ~21 ms for 8), so the
    requests that arrive while a batch is computed go together into the next one. A batch
    is *formed* and its features computed (`prepare`, in the feature process) by one lane
    at a time, then *finished* (`finish`: models, tags, rendering). With `lanes` > 1 the
    next lane forms and prepares the next batch meanwhile; on two cores one lane measured
    as well or better (the two stages then do not compete for the cores), so the service
    defaults to one (`CRMSCORE_BATCH_LANES`).

    Forming: the first queued request starts a batch. While fewer requests are queued
    than were in flight at the busiest moment since the last batch was formed (clients
    that were just answered are sending their next requests), it waits up to `max_wait`
    seconds for them, then takes everything queued (up to `max_customers`). So a steady
    set of clients is served in one batch per round instead of drifting into groups that
    each pay the fixed cost, and a lone client never waits.
    """

    def __init__(self, prepare: Any, finish: Any, max_customers: int, lanes: int = 1, max_wait: float = 0.008) -> None:
        self.prepare = prepare
        self.finish = finish
        self.max_customers = max_customers
        self.lanes = lanes
        self.max_wait = max_wait
        self._queue: asyncio.Queue[tuple[ScoreRequest, asyncio.Future[Any]]] | None = None
        self._forming: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0  # submitted, not yet answered
        self._peak = 0  # most in flight at once since the last batch was formed

    async def submit(self, request: ScoreRequest) -> Any:
        if self._queue is None or self._forming is None:
            self._queue = asyncio.Queue()
            self._forming = asyncio.Lock()
        self._tasks = [t for t in self._tasks if not t.done()]
        while len(self._tasks) < self.lanes:
            self._tasks.append(asyncio.get_running_loop().create_task(self._lane()))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        try:
            await self._queue.put((request, future))
            return await future
        finally:
            self._in_flight -= 1

    async def _form(self) -> list[tuple[ScoreRequest, asyncio.Future[Any]]]:
        """The next batch (see the class doc); callers that timed out meanwhile are dropped."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        customers = len(batch[0][0].customers)
        expected = self._peak
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while customers < self.max_customers:
            if self._queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if len(batch) >= expected or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            batch.append(item)
            customers += len(item[0].customers)
        self._peak = self._in_flight
        return [(r, f) for r, f in batch if not f.done()]

    async def _alone(self, live: list[tuple[ScoreRequest, asyncio.Future[Any]]], exc: Exception) -> None:
        """After a batch failed: each request again on its own, so that a request that breaks
        scoring fails alone instead of with every other caller of its batch. A failure of the
        feature process itself (`OnlineFeatureError`) is every caller's."""
        from serving.online import OnlineFeatureError

        if len(live) == 1 or isinstance(exc, OnlineFeatureError):
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        logger.warning("a batch of %d requests failed (%s); scoring them one by one", len(live), type(exc).__name__)
        for request, future in live:
            if future.done():
                continue
            try:
                async with self._forming:  # type: ignore[union-attr]
                    prepared = await anyio.to_thread.run_sync(self.prepare, [request])
                (outcome,) = await anyio.to_thread.run_sync(self.finish, prepared)
            except Exception as alone:  # noqa: BLE001 - this caller's error
                if not future.done():
                    future.set_exception(alone)
                continue
            if not future.done():
                future.set_result(outcome)

    async def _lane(self) -> None:
        assert self._forming is not None
        while True:
            async with self._forming:
                live = await self._form()
                if not live:
                    continue
                try:
                    prepared = await anyio.to_thread.run_sync(self.prepare, [r for r, _ in live])
                except Exception as exc:  # noqa: BLE001 - settled per request below
                    prepared, failure = None, exc
            if prepared is None:
                await self._alone(live, failure)
                continue
            try:
                outcomes = await anyio.to_thread.run_sync(self.finish, prepared)
            except Exception as exc:  # noqa: BLE001 - settled per request
                await self._alone(live, exc)
                continue
            for (_, future), outcome in zip(live, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)


def _problem(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if "retry_after_seconds" in extra:
        headers["Retry-After"] = str(extra["retry_after_seconds"])
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers or None)


class Guard:
    """Authentication and body-size limits before anything reads the body.

    A plain ASGI middleware: Starlette's `@app.middleware("http")` runs every request
    through an extra task and memory streams (about 0.3 ms here).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is not None:
            await problem(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _problem(scope: dict[str, Any]) -> JSONResponse | None:
        path, root = scope["path"], scope.get("root_path", "")
        relative = path[len(root) :] if path.startswith(root) else path
        if any(relative.endswith(p) for p in OPEN_PATHS):
            return None
        headers = Headers(scope=scope)
        keys: KeyChecker | None = getattr(app.state, "keys", None)
        token = KeyChecker.bearer(headers)
        if keys is None or not keys.allowed(token):
            return _problem(401, "missing or invalid API key (Authorization: Bearer <key>)")
        if "/admin/" in relative and not keys.admin(token):
            return _problem(403, "this endpoint needs an admin key")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            limit = app.state.settings.max_body_bytes
            length = headers.get("content-length")
            if length is None:
                # No length and no transfer coding: no body (HTTP/1.1), e.g. `curl -X POST`.
                if "transfer-encoding" in headers:
                    return _problem(411, "send the request with a Content-Length header")
                return None
            if not (length.isascii() and length.isdigit()) or int(length) > limit:
                return _problem(413, f"request body is larger than {limit:,} bytes", limit_bytes=limit)
        return None


app.add_middleware(Guard)


#: Problems listed in one 422 answer; the count says how many there were.
MAX_REPORTED_PROBLEMS = 100


def _invalid(problems: Sequence[tuple[Sequence[str | int], str, str]], total: int | None = None) -> JSONResponse:
    """422 with the field path, message and type of the first `MAX_REPORTED_PROBLEMS` problems."""
    detail = [{"loc": list(loc), "msg": msg, "type": kind} for loc, msg, kind in problems[:MAX_REPORTED_PROBLEMS]]
    total = len(problems) if total is None else total
    body: dict[str, Any] = {"error": "invalid request", "detail": detail}
    if total > len(detail):
        body["problems_total"] = total
    return JSONResponse(body, status_code=422)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Field path and message only: echoing inputs back would copy personal data into proxies' logs.
    errors = exc.errors()
    problems = [
        (tuple(e.get("loc", ())), str(e.get("msg", "")), str(e.get("type", ""))) for e in errors[:MAX_REPORTED_PROBLEMS]
    ]
    return _invalid(problems, total=len(errors))


# Before BentoML assembles the app's middleware (see serving.bentoml_fixes).
bentoml_fixes.install()


@bentoml.service(name="crm_scoring", workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(app, path="/v1")
class CrmScoring:
    """Scoring API over the model versions of the latest batch run (see the module docstring)."""

    def __init__(self) -> None:
        self.settings = read_settings()
        for line in unknown_variables(os.environ):  # `bentoml serve` run directly has no CLI to say it
            logger.warning("%s", line)
        self.feature_params = self.settings.feature_params()
        app.state.settings = self.settings
        app.state.service = self
        app.state.keys = KeyChecker(self.settings.resolved_api_keys(), self.settings.resolved_admin_keys())
        if not self.settings.resolved_api_keys() and not self.settings.resolved_admin_keys():
            logger.warning("no API keys configured (CRMSCORE_API_KEYS / CRMSCORE_API_KEYS_FILE): every /v1 call gets 401")
        self.engine: Any = None
        self.load_error: str | None = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        # A batch is prepared by whichever engine is current (a reload swaps it between
        # batches) and finished by the same one.
        self._batcher = MicroBatcher(
            self._prepare_batch,
            lambda prepared: prepared.engine.finish_batch(prepared),
            self.settings.max_customers_per_request,
            lanes=self.settings.batch_lanes,
            max_wait=self.settings.batch_wait_ms / 1000,
        )
        try:
            self._load()
        except Exception:  # noqa: BLE001 - stay up and say why on /readyz and every call
            pass

    def _load(self) -> None:
        from serving.engine import build_engine

        started = time.perf_counter()
        try:
            engine = build_engine(
                self.settings.resolved_store_dir,
                self.settings.tags_file,
                self.settings,
                feature_params=self.feature_params,
                workers=self.settings.online_workers,
                parallelism=self.settings.online_parallelism,
                feature_process=self.settings.online_feature_process,
                pin_threads=self.settings.online_pin_threads,
                prediction_threads=self.settings.resolved_prediction_threads,
            )
        except Exception as exc:  # noqa: BLE001 - any failure keeps the service up but not ready
            self.load_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            logger.error("model load failed: %s", self.load_error)
            raise
        self.engine = engine
        self.load_error = None
        # The models, MLflow, pandas and the snapshot make a large heap that never goes
        # away; without freezing it every full collection walks it (pauses of ~200 ms seen
        # under load, the p99 of /v1/score).
        gc.freeze()
        logger.info("serving %s (loaded in %.1f s)", engine.models.versions, time.perf_counter() - started)

    def _prepare_batch(self, requests: list[ScoreRequest]) -> Any:
        """Features for a batch with the current engine (again with the new one if a reload closed it meanwhile)."""
        from serving.feature_process import FeatureProcessClosedError

        engine = self.engine
        try:
            return engine.prepare_batch(requests)
        except FeatureProcessClosedError:
            if self.engine is engine:
                raise
            return self.engine.prepare_batch(requests)

    def __is_ready__(self) -> bool:
        return self.engine is not None

    @bentoml.on_shutdown
    def _close(self) -> None:
        """Stop the engine's feature process with the service."""
        if self.engine is not None:
            self.engine.close()

    # ----------------------------------------------------------------------------------

    async def _run(self, function: Any, *args: Any) -> Any:
        """Run scoring in a worker thread with the in-flight limit and the time limit."""
        return await self._limited(lambda: anyio.to_thread.run_sync(function, *args))

    async def _limited(self, work: Any) -> Any:
        """Await `work()` under the in-flight limit (429 above it) and the time limit (503)."""
        with self._lock:
            if self._in_flight >= self.settings.max_concurrent_requests:
                return _problem(429, "too many requests in flight; retry shortly", retry_after_seconds=1)
            self._in_flight += 1
        try:
            return await asyncio.wait_for(work(), self.settings.request_timeout_seconds)
        except TimeoutError:
            return _problem(503, f"scoring took longer than {self.settings.request_timeout_seconds:g} s", retry_after_seconds=1)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _not_ready(self) -> JSONResponse | None:
        if self.engine is None:
            return _problem(
                503, "not ready" + (f": {self.load_error}" if self.load_error else ": loading the models"), retry_after_seconds=5
            )
        return None

    async def score(self, body: ScoreRequest) -> Any:
        from serving.engine import InputError

        if (problem := self._not_ready()) is not None:
            return problem
        limit = self.settings.max_customers_per_request
        if len(body.customers) > limit:
            return _problem(
                413,
                f"{len(body.customers):,} customers in one request; the limit is {limit:,}",
                detail=[{"loc": ["body", "customers"], "msg": f"at most {limit} customers per request"}],
            )
        from serving.online import OnlineFeatureError

        started = time.perf_counter()
        try:
            results = await self._limited(lambda: self._batcher.submit(body))
        except OnlineFeatureError as exc:  # e.g. the feature process restarting: retry later
            logger.error("online features failed: %s", exc)
            return _problem(503, f"online features are unavailable, retry shortly: {exc}", retry_after_seconds=5)
        if isinstance(results, InputError):
            return _invalid([(loc, msg, "value_error") for loc, msg in results.problems])
        if isinstance(results, JSONResponse):
            return results
        logger.debug("scored %d customer(s) in %.1f ms", len(body.customers), 1000 * (time.perf_counter() - started))
        return JSONResponse({"results": results})

    async def score_by_id(self, body: ScoreByIdRequest) -> Any:
        if (problem := self._not_ready()) is not None:
            return problem
        from serving.engine import SnapshotUnavailableError

        engine = self.engine
        try:
            outcome = await self._run(engine.score_by_ids, body.customer_ids)
        except SnapshotUnavailableError as exc:  # the path and the cause are for the operator, in the log
            logger.error("%s", exc)
            return _problem(503, "the latest batch snapshot cannot be read; an operator must re-run `crm-scoring score` and reload")
        if isinstance(outcome, JSONResponse):
            return outcome
        results, missing = outcome
        snapshot = engine.snapshot
        return JSONResponse(
            {
                "results": results,
                "missing": missing,
                "run_id": snapshot.run.run_id if snapshot else None,
                "as_of": json_timestamp(snapshot.run.as_of) if snapshot else None,
            }
        )

    async def models(self) -> Any:
        if (problem := self._not_ready()) is not None:
            return problem
        return JSONResponse(jsonable_encoder(self.engine.describe()))

    async def reload(self) -> Any:
        """Load the latest batch run and its model versions; on failure the previous engine keeps serving."""
        if not self._reload_lock.acquire(blocking=False):
            return _problem(409, "a reload is already running")
        previous = self.engine
        try:
            await anyio.to_thread.run_sync(self._load)
        except Exception:  # noqa: BLE001 - reported to the caller, old models keep serving
            self.engine = previous
            return _problem(409, f"reload failed; still serving the previous models: {self.load_error}")
        finally:
            self._reload_lock.release()
        if previous is not None and previous is not self.engine:
            await anyio.to_thread.run_sync(previous.close)  # its feature process; a batch it was preparing retries
        return JSONResponse({"reloaded": True, **jsonable_encoder(self.engine.describe())})


# The routes call the running service. Its instance comes from an async dependency:
# BentoML's class views (routes declared on the class) inject it with a plain function,
# which FastAPI runs in a worker thread on every request (~0.2 ms of each /v1/score).


async def _service() -> Any:
    service = getattr(app.state, "service", None)
    if service is None:
        raise HTTPException(503, "the service is starting", headers={"Retry-After": "5"})
    return service


# `/v1/score` reads its body itself: pydantic validates the JSON bytes in one pass, where a
# declared body parameter makes FastAPI decode the JSON in Python and validate the objects
# (measured: 0.29 -> 0.22 ms of FastAPI work per request; a round of 8 requests parses them
# one after the other). Its errors are the same 422 with the field path under "body"; the
# OpenAPI document still describes the body (`_openapi`).
def _body_schema(model: str) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}
    }


Body = TypeVar("Body", bound=BaseModel)


def read_body(model: type[Body], body: bytes) -> Body:
    """The request body as `model`; RequestValidationError (422) names the field path (a
    body that is not JSON: `["body"]`)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        # JSON syntax errors carry a character offset where a field path would be. (Every
        # error is passed on: the handler lists the first ones and counts them all.)
        located = [
            {**e, "loc": ("body",) if e["type"] == "json_invalid" else ("body", *e["loc"])}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise RequestValidationError(located) from None


async def _body(request: Request) -> bytes | JSONResponse:
    try:
        return await request.body()
    except ClientDisconnect:  # the client is gone: nothing to answer, and not a server error
        return _problem(400, "the client closed the connection before sending the whole body")


@app.post("/score", response_model=ScoreResponse, openapi_extra=_body_schema("ScoreRequest"))
async def score(request: Request, service: Any = Depends(_service)) -> Any:
    """Scores, tags and segments for inline profiles (see the module docstring)."""
    body = await _body(request)
    return body if isinstance(body, JSONResponse) else await service.score(read_body(ScoreRequest, body))


@app.post("/score/by-id", response_model=ScoreByIdResponse, openapi_extra=_body_schema("ScoreByIdRequest"))
async def score_by_id(request: Request, service: Any = Depends(_service)) -> Any:
    """Rows of the latest batch snapshot, and the ids it does not hold."""
    body = await _body(request)
    return body if isinstance(body, JSONResponse) else await service.score_by_id(read_body(ScoreByIdRequest, body))


@app.get("/models", response_model=ModelsResponse)
async def models(service: Any = Depends(_service)) -> Any:
    """The served models and the snapshot in use."""
    return await service.models()


@app.post("/admin/reload")
async def reload(service: Any = Depends(_service)) -> Any:
    """(admin key) Load the latest batch run and its model versions; a failure keeps the old ones serving."""
    return await service.reload()


def _openapi() -> dict[str, Any]:
    """FastAPI's OpenAPI document plus the schemas of the bodies routes read themselves."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (ScoreRequest, ScoreByIdRequest):
            request_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(request_schema.pop("$defs", {}))
            schemas[model.__name__] = request_schema
        app.openapi_schema = document
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]
