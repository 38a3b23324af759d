"""The BentoML service: `bentoml serve serving.service:CrmScoring` (or `crm-scoring serve`).

A new-style `@bentoml.service` class with the API mounted as a FastAPI app under `/v1`
(FastAPI gives pydantic validation with field paths, OpenAPI docs at `/v1/docs`, and
exception handlers that keep every input problem a 4xx). BentoML supplies the process
model and `/healthz`, `/livez`, `/readyz` (ready = models loaded and the probe
prediction passed, see `__is_ready__`) and `/metrics`, which stay open without a key.

Endpoints (bearer API key required):
  POST /v1/score          inline profiles -> output contract per customer
  POST /v1/score/by-id    customer ids -> rows of the latest batch snapshot
  GET  /v1/models         served models (name, version, as_of, metrics) and snapshot
  POST /v1/admin/reload   (admin key) load the current champions; a failure keeps the old ones

Concurrent `/v1/score` requests are micro-batched (`MicroBatcher`): those that arrive
while a batch is being scored go together into the next feature query, since a query's
cost is mostly fixed. Results equal scoring each request alone (tested).

Status codes: 401 missing/invalid key, 403 admin endpoint without an admin key, 411 POST
without Content-Length, 413 body or batch too large, 422 invalid fields (with `loc`),
429 too many requests in flight, 503 not ready / scoring timeout. Logs carry method,
path, status, counts and durations, never bodies, attribute values or emails.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from typing import Any

import anyio
import bentoml
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.schemas import ModelsResponse, ScoreByIdRequest, ScoreByIdResponse, ScoreRequest, ScoreResponse
from serving.settings import ServingSettings

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
    def bearer(request: Request) -> bytes | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip().encode() if scheme.lower() == "bearer" and token.strip() else None

    def allowed(self, token: bytes | None) -> bool:
        return token is not None and self._matches(token, self._keys)

    def admin(self, token: bytes | None) -> bool:
        return token is not None and self._matches(token, self._admin)


class MicroBatcher:
    """Adaptive batching of `/v1/score` requests into one feature query.

    DuckDB's cost per query is mostly fixed (planning the feature SQL), so while one batch
    is being scored the requests that arrive queue up and go together in the next one.
    No fixed delay: a lone request is scored at once. `lanes` batches run in parallel.
    """

    def __init__(self, score_many: Any, max_customers: int, lanes: int = 2) -> None:
        self.score_many = score_many
        self.max_customers = max_customers
        self.lanes = lanes
        self._queue: asyncio.Queue[tuple[ScoreRequest, asyncio.Future[Any]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, request: ScoreRequest) -> Any:
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._tasks = [t for t in self._tasks if not t.done()]
        while len(self._tasks) < self.lanes:
            self._tasks.append(asyncio.get_running_loop().create_task(self._lane()))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _lane(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            customers = len(first[0].customers)
            while not self._queue.empty() and customers < self.max_customers:
                item = self._queue.get_nowait()
                batch.append(item)
                customers += len(item[0].customers)
            live = [(r, f) for r, f in batch if not f.done()]  # timed-out callers are gone
            if not live:
                continue
            try:
                outcomes = await anyio.to_thread.run_sync(self.score_many, [r for r, _ in live])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(live, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)


def _problem(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


@app.middleware("http")
async def guard(request: Request, call_next: Any) -> Any:
    """Authentication and body-size limits before anything reads the body."""
    path = request.url.path
    relative = path[len(request.scope.get("root_path", "")) :] if path.startswith(request.scope.get("root_path", "")) else path
    if any(relative.endswith(p) for p in OPEN_PATHS):
        return await call_next(request)
    keys: KeyChecker | None = getattr(request.app.state, "keys", None)
    token = KeyChecker.bearer(request)
    if keys is None or not keys.allowed(token):
        return _problem(401, "missing or invalid API key (Authorization: Bearer <key>)")
    if "/admin/" in relative and not keys.admin(token):
        return _problem(403, "this endpoint needs an admin key")
    if request.method in ("POST", "PUT", "PATCH"):
        limit = request.app.state.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is None:
            return _problem(411, "send the request with a Content-Length header")
        if not length.isdigit() or int(length) > limit:
            return _problem(413, f"request body is larger than {limit:,} bytes", limit_bytes=limit)
    return await call_next(request)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Field path and message only: echoing inputs back would copy personal data into proxies' logs.
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    return JSONResponse({"error": "invalid request", "detail": jsonable_encoder(detail)}, status_code=422)


@bentoml.service(name="crm_scoring", workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(app, path="/v1")
class CrmScoring:
    """Scoring API over the `champion` models (see the module docstring)."""

    def __init__(self) -> None:
        from training.config import TrainingSettings

        self.settings = ServingSettings()
        self.training_settings = TrainingSettings()
        app.state.settings = self.settings
        app.state.keys = KeyChecker(self.settings.resolved_api_keys(), self.settings.resolved_admin_keys())
        if not self.settings.resolved_api_keys() and not self.settings.resolved_admin_keys():
            logger.warning("no API keys configured (CRMSCORE_API_KEYS / CRMSCORE_API_KEYS_FILE): every /v1 call gets 401")
        self.engine: Any = None
        self.load_error: str | None = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        # Batches go to whichever engine is current (a reload swaps it between batches).
        self._batcher = MicroBatcher(lambda requests: self.engine.score_inline_many(requests), self.settings.max_customers_per_request)
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
                self.training_settings,
                workers=self.settings.online_workers,
            )
        except Exception as exc:  # noqa: BLE001 - any failure keeps the service up but not ready
            self.load_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            logger.error("model load failed: %s", self.load_error)
            raise
        self.engine = engine
        self.load_error = None
        logger.info("serving %s (loaded in %.1f s)", engine.models.versions, time.perf_counter() - started)

    def __is_ready__(self) -> bool:
        return self.engine is not None

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
            return _problem(503, f"scoring took longer than {self.settings.request_timeout_seconds:g} s")
        finally:
            with self._lock:
                self._in_flight -= 1

    def _not_ready(self) -> JSONResponse | None:
        if self.engine is None:
            return _problem(503, "models are not loaded" + (f": {self.load_error}" if self.load_error else ""))
        return None

    @app.post("/score", response_model=ScoreResponse)
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
        started = time.perf_counter()
        results = await self._limited(lambda: self._batcher.submit(body))
        if isinstance(results, InputError):
            detail = [{"loc": list(loc), "msg": msg, "type": "value_error"} for loc, msg in results.problems]
            return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)
        if isinstance(results, JSONResponse):
            return results
        logger.info("scored %d customer(s) in %.1f ms", len(body.customers), 1000 * (time.perf_counter() - started))
        return JSONResponse({"results": results})

    @app.post("/score/by-id", response_model=ScoreByIdResponse)
    async def score_by_id(self, body: ScoreByIdRequest) -> Any:
        if (problem := self._not_ready()) is not None:
            return problem
        engine = self.engine
        outcome = await self._run(engine.score_by_ids, body.customer_ids)
        if isinstance(outcome, JSONResponse):
            return outcome
        results, missing = outcome
        snapshot = engine.snapshot
        return JSONResponse(
            {
                "results": results,
                "missing": missing,
                "run_id": snapshot.run.run_id if snapshot else None,
                "as_of": snapshot.run.as_of.isoformat() + "Z" if snapshot else None,
            }
        )

    @app.get("/models", response_model=ModelsResponse)
    async def models(self) -> Any:
        if (problem := self._not_ready()) is not None:
            return problem
        return JSONResponse(jsonable_encoder(self.engine.describe()))

    @app.post("/admin/reload")
    async def reload(self) -> Any:
        """Load the current champions; on failure the previous engine keeps serving."""
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
        return JSONResponse({"reloaded": True, **jsonable_encoder(self.engine.describe())})
