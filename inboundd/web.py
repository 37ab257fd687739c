"""The public HTTP app (quart-trio) and the one way inboundd serves HTTP (hypercorn).

Routes: ``GET /healthz`` (the process is alive), ``GET /readyz`` (Redis,
PostgreSQL and every provider's checks pass, and not draining), ``GET
/metrics`` (Prometheus), and every route of every registered provider
(``inboundd.providers``; webhooks live under ``/webhooks/``).

A provider's route never sees Quart: this module turns the request into a
frozen :class:`~inboundd.ingress.webhook.WebhookRequest` and the provider's
:class:`~inboundd.ingress.webhook.WebhookReply` back into a response, in an
ASGI middleware in front of Quart (:class:`ProviderRoutes`: webhooks are the
hot path). While
intake is stopped (starting, draining) every webhook answers 503 with
``Retry-After``; a ``/webhooks/…`` path no provider serves answers 404.

The app reads everything it reports from a :class:`Runtime`-like object
(duck-typed: the daemon), so it holds no state of its own.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

import trio
from hypercorn.config import Config as HypercornConfig, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from quart import Response, request
from quart_trio import QuartTrio

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

    app.asgi_app = ProviderRoutes(app.asgi_app, runtime, providers)  # type: ignore[method-assign]

    @app.route("/webhooks/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unserved_webhook(rest: str) -> Any:
        if not runtime.intake_open:
            return closed()
        return {"error": f"no provider of this daemon serves {request.method} /webhooks/{rest}"}, 404

    return app


class ProviderRoutes:
    """ASGI middleware: the providers' routes answered directly, everything else by the Quart app.

    Webhooks are the hot path (Graph throttles an endpoint slower than 3 s,
    and a provider may post hundreds of times a second), so their requests do
    not go through Quart's request and response machinery: the ASGI scope and
    body become the frozen :class:`~inboundd.ingress.webhook.WebhookRequest`
    (query decoded as form data, header names lower-case), and the provider's
    :class:`~inboundd.ingress.webhook.WebhookReply` is sent as is. While intake
    is closed the answer is 503 with ``Retry-After``; a body over
    :data:`MAX_BODY` is a 400 naming the limit, before the provider sees it. A
    handler that raises (a bug: handlers answer their documented failures
    themselves) gets a JSON 500, one ``webhook.handler_failed`` event with its
    traceback, and a count in ``inboundd_webhook_errors_total``.
    """

    def __init__(self, inner: Any, runtime: Runtime, providers: Iterable[Provider]) -> None:
        self.inner = inner
        self.runtime = runtime
        self.routes = {(route.method, route.path): (provider.name, route)
                       for provider in providers for route in provider.routes}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            found = self.routes.get((scope["method"], scope["path"]))
            if found is not None:
                await self._serve(found[0], found[1], scope, receive, send)
                return
        await self.inner(scope, receive, send)

    async def _serve(self, provider: str, route: Route, scope: dict[str, Any], receive: Any, send: Any) -> None:
        received_at = clock.wall()
        runtime = self.runtime
        if not runtime.intake_open:
            reply = WebhookReply.json(503, {"error": f"daemon is {runtime.state}; retry later"},
                                      headers=(("retry-after", str(RETRY_AFTER)),))
        else:
            body = await _read_body(receive, MAX_BODY)
            if body is None:
                reply = WebhookReply.json(400, {"error": f"body larger than {MAX_BODY} bytes"})
            else:
                query_string = scope.get("query_string")
                request = WebhookRequest(
                    method=scope["method"],
                    path=scope["path"],
                    query=tuple(parse_qsl(query_string.decode("utf-8", "replace"), keep_blank_values=True))
                    if query_string else (),
                    headers=tuple([(name.decode("latin-1").lower(), value.decode("latin-1"))
                                   for name, value in scope.get("headers", ())]),
                    body=body,
                    received_at=received_at,
                )
                try:
                    reply = await runtime.handle_webhook(provider, route, request)
                except Exception:  # a bug in the provider: answer JSON, not hypercorn's bare 500, and say so once
                    reply = _handler_failed(provider, route)
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers]
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


def _handler_failed(provider: str, route: Route) -> WebhookReply:
    """The 500 for a provider handler that raised (call it in the ``except``: it logs the traceback)."""
    error = sys.exc_info()[1]
    name = f"{route.method} {route.path}"
    metrics.child(metrics.webhook_errors, provider, name).inc()
    log.event(_log, "webhook.handler_failed", level=logging.ERROR, exc_info=True, provider=provider, route=name,
              error=f"{type(error).__name__}: {error}")
    return WebhookReply.json(500, {"error": f"internal error in the {provider} webhook; see the daemon's log"})


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes *limit* bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


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
