"""The public HTTP app (quart-trio) and the one way inboundd serves HTTP (hypercorn).

Routes: ``GET /healthz`` (the process is alive), ``GET /readyz`` (Redis,
PostgreSQL and every provider's checks pass, and not draining), ``GET
/metrics`` (Prometheus), and every route of every registered provider
(``inboundd.providers``; webhooks live under ``/webhooks/``).

A provider's route never sees Quart: this module turns the request into a
frozen :class:`~inboundd.ingress.webhook.WebhookRequest` and the provider's
:class:`~inboundd.ingress.webhook.WebhookReply` back into a response. While
intake is stopped (starting, draining) every webhook answers 503 with
``Retry-After``; a ``/webhooks/…`` path no provider serves answers 404.

The app reads everything it reports from a :class:`Runtime`-like object
(duck-typed: the daemon), so it holds no state of its own.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from . import clock, log, metrics
from .ingress.webhook import Route, WebhookReply, WebhookRequest
from .outage import Unreachable
from .provider import Provider, ReadinessCheck

__all__ = ["ListenError", "create_app", "open_sockets", "readiness", "serve_app", "Runtime"]

_log = log.get_logger("web")

#: How long one readiness probe waits for Redis or PostgreSQL.
READINESS_TIMEOUT = 2.0
#: Retry-After (seconds) sent with a 503 while draining or when Redis refused an enqueue.
RETRY_AFTER = 30
#: Largest request body a provider route reads: webhooks carry pointers, never mail.
MAX_BODY = 1024 * 1024


class Runtime(Protocol):
    """What the HTTP apps need from the daemon."""

    state: str

    @property
    def intake_open(self) -> bool: ...

    async def check_redis(self) -> None: ...

    async def check_postgres(self) -> None: ...

    async def refresh_queue_gauges(self) -> None: ...

    def readiness_checks(self) -> Mapping[str, ReadinessCheck]: ...

    async def handle_webhook(self, provider: str, route: Route, request: WebhookRequest) -> WebhookReply: ...


async def readiness(runtime: Runtime) -> tuple[bool, dict[str, str]]:
    """Run every readiness check concurrently (Redis, PostgreSQL, each provider's).

    Returns (ready, {check: "ok" | problem}).
    """
    checks: dict[str, str] = {}

    async def probe(name: str, check: Any) -> None:
        with trio.move_on_after(READINESS_TIMEOUT) as scope:
            try:
                await check()
            except Unreachable as exc:  # already says what went wrong, its type included
                checks[name] = f"error: {exc}"
                return
            except Exception as exc:  # any failure means "not ready", with its reason shown
                checks[name] = f"error: {type(exc).__name__}: {exc}"
                return
            checks[name] = "ok"
        if scope.cancelled_caught:
            checks[name] = f"error: no answer within {READINESS_TIMEOUT:g}s"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, "redis", runtime.check_redis)
        nursery.start_soon(probe, "postgres", runtime.check_postgres)
        for name, check in runtime.readiness_checks().items():
            nursery.start_soon(probe, name, check)
    checks["intake"] = "ok" if runtime.intake_open else f"error: daemon is {runtime.state}"
    return all(value == "ok" for value in checks.values()), dict(sorted(checks.items()))


def create_app(runtime: Runtime, providers: Iterable[Provider] = ()) -> QuartTrio:
    """The public app bound to *runtime*, serving the routes of *providers* (the registry)."""
    app = QuartTrio("inboundd")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

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

    def closed() -> Any:
        return {"error": f"daemon is {runtime.state}; retry later"}, 503, {"Retry-After": str(RETRY_AFTER)}

    async def provider_route(provider: str, route: Route, **_: Any) -> Any:
        if not runtime.intake_open:
            return closed()
        try:
            value = await _request_value()
        except RequestEntityTooLarge:
            # A 400 with the reason, like any other body the provider cannot take.
            return {"error": f"body larger than {MAX_BODY} bytes"}, 400
        reply = await runtime.handle_webhook(provider, route, value)
        return Response(reply.body, status=reply.status, headers=list(reply.headers))

    for provider in providers:
        for route in provider.routes:
            app.add_url_rule(route.path, endpoint=f"{provider.name} {route.method} {route.path}",
                             view_func=partial(provider_route, provider.name, route), methods=[route.method])

    @app.route("/webhooks/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unserved_webhook(rest: str) -> Any:
        if not runtime.intake_open:
            return closed()
        return {"error": f"no provider of this daemon serves {request.method} /webhooks/{rest}"}, 404

    return app


async def _request_value() -> WebhookRequest:
    """The current Quart request as the frozen value providers see (body read in full, within the size cap)."""
    received_at = clock.wall()
    return WebhookRequest(
        method=request.method,
        path=request.path,
        query=tuple(request.args.items(multi=True)),
        headers=tuple((name.lower(), value) for name, value in request.headers.items()),
        body=await request.get_data(cache=False),
        received_at=received_at,
    )


class ListenError(Exception):
    """An address of a server could not be listened on: *address* as configured, and why."""

    def __init__(self, address: str, error: OSError) -> None:
        self.address = address
        self.reason = (error.strerror or str(error)).lower() if error.errno else str(error)
        super().__init__(f"cannot listen on {address}: {self.reason}")


def open_sockets(binds: list[str], hconfig: HypercornConfig) -> Sockets:
    """Bind and listen on every address of *binds* (hypercorn's forms: ``HOST:PORT``, ``unix:/path``).

    Raises :class:`ListenError` naming the first address that cannot be
    taken (in use, not permitted, no such host), the others closed again.
    """
    opened: list[socket.socket] = []
    for bind in binds:
        one = HypercornConfig()
        one.bind = [bind]
        try:
            created = one.create_sockets()
        except OSError as exc:
            for sock in opened:
                sock.close()
            raise ListenError(bind, exc) from None
        for sock in created.insecure_sockets:
            sock.listen(hconfig.backlog)
            opened.append(sock)
    return Sockets(secure_sockets=[], insecure_sockets=opened, quic_sockets=[])


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

    Binds every address first and raises :class:`ListenError` before
    reporting started when one cannot be taken. Reports the bound addresses
    through ``task_status`` once listening. Stop it with the trigger, not by
    cancelling: a cancel drops in-flight requests.
    """
    hconfig = HypercornConfig()
    hconfig.graceful_timeout = graceful_timeout
    hconfig.accesslog = None
    hconfig.errorlog = log.get_logger(f"http.{name}")
    hconfig.keep_alive_timeout = 5
    hconfig.include_server_header = False
    sockets = open_sockets(binds, hconfig)
    try:
        # hypercorn's serve() with sockets we bound, so a bind error names its address.
        await worker_serve(wrap_app(app, hconfig.wsgi_max_body_size, None), hconfig, sockets=sockets,
                           shutdown_trigger=shutdown_trigger, task_status=task_status)
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()
