"""The timeout middleware fix: same behaviour as BentoML's, and no timer left behind."""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic

from serving import bentoml_fixes
from serving.bentoml_fixes import CancellingTimeoutMiddleware


def _call(middleware: Any, scope: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Run one request through `middleware`: the messages sent, and its timeout timers still scheduled."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> int:
        await middleware(scope, receive, send)
        loop = asyncio.get_running_loop()
        timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        return sum(1 for h in timers if getattr(h._callback, "__name__", "") == "_set_timer_out")

    return sent, asyncio.run(run())


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await asyncio.sleep(5)
    await _ok(scope, receive, send)


HTTP = {"type": "http", "path": "/v1/score", "method": "POST", "headers": []}


def test_a_finished_request_leaves_no_timer_scheduled() -> None:
    sent, pending = _call(CancellingTimeoutMiddleware(_ok, timeout=60), HTTP)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert pending == 0


def test_bentoml_original_keeps_its_timer_which_is_what_the_fix_is_for() -> None:
    # If this starts failing, BentoML fixed the leak upstream and the fix can go.
    original = CancellingTimeoutMiddleware.__mro__[1]
    assert original.__module__ == traffic.__name__
    _, pending = _call(original(_ok, timeout=60), HTTP)
    assert pending == 1


def test_a_request_over_the_timeout_gets_bentoml_504() -> None:
    sent, pending = _call(CancellingTimeoutMiddleware(_slow, timeout=0.05), HTTP)
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in sent[1]["body"]
    assert pending == 0


def test_lifespan_messages_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    _call(CancellingTimeoutMiddleware(app, timeout=60), {"type": "lifespan"})
    assert seen == ["lifespan"]


def test_the_service_module_installs_the_fix() -> None:
    import serving.service  # noqa: F401 - importing it installs the fix

    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware
    bentoml_fixes.install()  # idempotent
    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware


def test_tracing_middleware_is_left_out_only_when_nothing_is_exported() -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from starlette.middleware import Middleware

    built = [Middleware(OpenTelemetryMiddleware), Middleware(CancellingTimeoutMiddleware, timeout=60)]
    idle = TracerProvider()  # BentoML's provider when tracing.exporter_type is unset
    assert not bentoml_fixes.exports_spans(idle)
    assert [m.cls for m in bentoml_fixes.without_idle_tracing(built, idle)] == [CancellingTimeoutMiddleware]

    exporting = TracerProvider()
    exporting.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert bentoml_fixes.exports_spans(exporting)
    assert bentoml_fixes.without_idle_tracing(built, exporting) == built
    # A provider we cannot look into is assumed to export: tracing stays.
    assert bentoml_fixes.without_idle_tracing(built, object()) == built
