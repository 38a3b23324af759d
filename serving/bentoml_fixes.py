"""Two changes to how BentoML 1.4 assembles the app's middleware, installed by `serving.service`.

1. Request timeouts without a leak.

BentoML wraps every request in `TimeoutMiddleware` (from the service's
`traffic.timeout`, 60 s by default, and it cannot be switched off). Its timer is armed
with `loop.call_later` and never cancelled, so every finished request stays referenced by
the event loop for the whole timeout: the timer handle holds a copy of the request's
context, and with it its OpenTelemetry span. At 180 requests a second that is ~11,000
requests' objects alive at any time, and every full garbage collection walks them
(measured: 8-client p99 of `/v1/score` 63-97 ms with the leak, 54-58 ms without).

`CancellingTimeoutMiddleware` behaves as BentoML's (504 with the same message once the
timeout passes before the response starts) and cancels its timer when the request ends.

2. No tracing middleware when no trace exporter is configured.

BentoML always adds OpenTelemetry's ASGI middleware, which starts a server span and a
span per response message for every request (~0.25 ms of a `/v1/score` call's ~1 ms of
HTTP work, measured in process), even when its tracer provider exports nothing (BentoML's
default: `tracing.exporter_type` unset). `without_idle_tracing` leaves the middleware out
in that case only; with an exporter configured, requests are traced as before. What goes
without it: the trace and span ids in BentoML's log lines, which then identify nothing
that was recorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bentoml._internal.server.http import traffic
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.middleware import Middleware
from starlette.responses import JSONResponse

_Scope = dict[str, Any]


def _import_app_factory() -> type:
    """BentoML's `ServiceAppFactory`, imported without the root log handler of its import.

    The import reaches circus, whose package calls `logging.basicConfig()`: a handler on
    the root logger, i.e. logging configured by importing `serving.service`. BentoML's
    server sets up its own logging, so the handler is taken off again.
    """
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        from _bentoml_impl.server.app import ServiceAppFactory
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
    return ServiceAppFactory


ServiceAppFactory = _import_app_factory()


class CancellingTimeoutMiddleware(traffic.TimeoutMiddleware):
    """BentoML's `TimeoutMiddleware` with its timer cancelled once the request is done."""

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)  # the response has started: the timeout no longer applies
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except asyncio.TimeoutError:
            if task.cancel():
                response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
                await response(scope, receive, send)
        else:
            await task
        finally:
            timer.cancel()


def exports_spans(tracer_provider: Any) -> bool:
    """Whether the tracer provider hands spans to any processor (an exporter).

    BentoML's provider (OpenTelemetry's SDK `TracerProvider`) gets a processor only when
    `tracing.exporter_type` is configured. A provider of another kind counts as exporting.
    """
    processors = getattr(getattr(tracer_provider, "_active_span_processor", None), "_span_processors", None)
    return not isinstance(processors, tuple) or len(processors) > 0


def without_idle_tracing(middlewares: list[Middleware], tracer_provider: Any) -> list[Middleware]:
    """`middlewares` without OpenTelemetry's ASGI middleware when `tracer_provider` exports nothing."""
    if exports_spans(tracer_provider):
        return middlewares
    return [m for m in middlewares if m.cls is not OpenTelemetryMiddleware]


class _MiddlewaresWithoutIdleTracing(property):
    """`ServiceAppFactory.middlewares`, filtered by `without_idle_tracing`."""


def install() -> None:
    """Make BentoML build its timeout middleware from `CancellingTimeoutMiddleware` and
    leave out the tracing middleware when nothing is exported.

    BentoML looks the timeout class up in its `traffic` module, and reads the factory's
    `middlewares` property, when it assembles the app, after the service module is
    imported, so replacing them there is enough. Idempotent.
    """
    traffic.TimeoutMiddleware = CancellingTimeoutMiddleware  # type: ignore[misc]
    if isinstance(ServiceAppFactory.__dict__["middlewares"], _MiddlewaresWithoutIdleTracing):
        return
    original = ServiceAppFactory.middlewares

    def middlewares(factory: ServiceAppFactory) -> list[Middleware]:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return without_idle_tracing(original.fget(factory), BentoMLContainer.tracer_provider.get())  # type: ignore[misc]

    ServiceAppFactory.middlewares = _MiddlewaresWithoutIdleTracing(middlewares)  # type: ignore[method-assign]
