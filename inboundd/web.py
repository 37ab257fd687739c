"""The public HTTP app (quart-trio) and the one way inboundd serves HTTP (hypercorn).

Routes: ``GET /healthz`` (the process is alive), ``GET /readyz`` (Redis and
PostgreSQL reachable and not draining), ``GET /metrics`` (Prometheus), and the
provider webhooks ``POST /webhooks/microsoft`` and ``POST /webhooks/google``.

The app reads everything it reports from a :class:`Runtime`-like object
(duck-typed: the daemon), so it holds no state of its own.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from . import log, metrics

__all__ = ["create_app", "serve_app", "Runtime"]

_log = log.get_logger("web")

#: How long one readiness probe waits for Redis or PostgreSQL.
READINESS_TIMEOUT = 2.0
#: Retry-After (seconds) sent with a 503 while draining or when Redis refused an enqueue.
RETRY_AFTER = 30


class Runtime(Protocol):
    """What the HTTP apps need from the daemon."""

    state: str

    @property
    def intake_open(self) -> bool: ...

    async def check_redis(self) -> None: ...

    async def check_postgres(self) -> None: ...

    async def refresh_queue_gauges(self) -> None: ...

    def webhook_handler(self, provider: str) -> Any: ...


async def readiness(runtime: Runtime) -> tuple[bool, dict[str, str]]:
    """Run every readiness check concurrently; return (ready, {check: "ok" | problem})."""
    checks: dict[str, str] = {}

    async def probe(name: str, check: Any) -> None:
        with trio.move_on_after(READINESS_TIMEOUT) as scope:
            try:
                await check()
            except Exception as exc:  # any failure means "not ready", with its reason shown
                checks[name] = f"error: {type(exc).__name__}: {exc}"
                return
            checks[name] = "ok"
        if scope.cancelled_caught:
            checks[name] = f"error: no answer within {READINESS_TIMEOUT:g}s"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, "redis", runtime.check_redis)
        nursery.start_soon(probe, "postgres", runtime.check_postgres)
    checks["intake"] = "ok" if runtime.intake_open else f"error: daemon is {runtime.state}"
    return all(value == "ok" for value in checks.values()), dict(sorted(checks.items()))


def create_app(runtime: Runtime) -> QuartTrio:
    """The public app bound to *runtime*."""
    app = QuartTrio("inboundd")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024  # webhooks carry pointers, never mail

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "alive", "state": runtime.state}

    @app.get("/readyz")
    async def readyz() -> Any:
        ready, checks = await readiness(runtime)
        failed = [name for name, value in checks.items() if value != "ok"]
        body = {"ready": ready, "state": runtime.state, "checks": checks}
        if not ready:
            body["failed"] = failed
        return body, 200 if ready else 503

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        try:
            await runtime.refresh_queue_gauges()
        except Exception as exc:  # metrics must render even when Redis is down
            log.event(_log, "metrics.queue_gauges_failed", level=logging.WARNING, error=str(exc))
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    async def webhook(provider: str) -> Any:
        if not runtime.intake_open:
            return {"error": f"daemon is {runtime.state}; retry later"}, 503, {"Retry-After": str(RETRY_AFTER)}
        handler = runtime.webhook_handler(provider)
        if handler is None:
            return {"error": f"no [[{provider}]] account is configured on this daemon"}, 404
        return await handler(request)

    @app.post("/webhooks/microsoft")
    async def webhook_microsoft() -> Any:
        return await webhook("microsoft")

    @app.post("/webhooks/google")
    async def webhook_google() -> Any:
        return await webhook("google")

    return app


async def serve_app(
    app: Any,
    binds: list[str],
    *,
    shutdown_trigger: Any,
    graceful_timeout: float,
    name: str,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *binds* until *shutdown_trigger* returns.

    Reports the bound addresses through ``task_status`` once listening. Stop
    it with the trigger, not by cancelling: a cancel drops in-flight requests.
    """
    hconfig = HypercornConfig()
    hconfig.bind = list(binds)
    hconfig.graceful_timeout = graceful_timeout
    hconfig.accesslog = None
    hconfig.errorlog = log.get_logger(f"http.{name}")
    hconfig.keep_alive_timeout = 5
    hconfig.include_server_header = False
    await serve(app, hconfig, shutdown_trigger=shutdown_trigger, task_status=task_status)
