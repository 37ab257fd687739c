"""The public app's translation between HTTP and a provider's framework-free request and reply values."""

from __future__ import annotations

import logging
import time
from functools import partial

import httpx
import trio

from inboundd import metrics
from inboundd.ingress.webhook import Route, WebhookReply, WebhookRequest
from inboundd.provider import Provider, Runtime
from inboundd.web import RETRY_AFTER, create_app, serve_app

ECHO = Route("POST", "/webhooks/echo")


class Daemon:
    """The slice of the daemon the app reads, with one provider that records what it was handed."""

    def __init__(self) -> None:
        self.state = "running"
        self.seen: list[tuple[str, Route, WebhookRequest]] = []

    @property
    def intake_open(self) -> bool:
        return self.state == "running"

    async def check_redis(self) -> None:
        pass

    async def check_postgres(self) -> None:
        pass

    async def refresh_queue_gauges(self) -> None:
        pass

    def readiness_checks(self) -> dict:
        async def broken() -> None:
            raise RuntimeError("echo upstream down")

        return {"echo": broken}

    async def handle_webhook(self, provider: str, route: Route, request: WebhookRequest) -> WebhookReply:
        self.seen.append((provider, route, request))
        if request.body == b"crash":
            raise KeyError("a bug in the handler")
        return WebhookReply(status=202, headers=(("x-echo", "yes"), ("content-type", "text/plain")),
                            body=b"got " + request.body)


PROVIDERS = [Provider(name="echo", account_config=object, build=lambda ctx: Runtime(), routes=(ECHO,))]


async def test_a_provider_route_gets_the_request_as_a_value_and_its_reply_is_sent_as_is() -> None:
    daemon = Daemon()
    client = create_app(daemon, PROVIDERS).test_client()
    before = time.time()
    response = await client.post("/webhooks/echo?validationToken=a%20b&x=1&x=2", data=b"\x00raw bytes",
                                 headers={"X-Goog-Channel": "c1", "Content-Type": "application/octet-stream"})
    assert response.status_code == 202
    assert response.headers["x-echo"] == "yes" and response.headers["content-type"] == "text/plain"
    assert await response.get_data() == b"got \x00raw bytes"
    [(provider, route, request)] = daemon.seen
    assert (provider, route) == ("echo", ECHO)
    assert (request.method, request.path, request.body) == ("POST", "/webhooks/echo", b"\x00raw bytes")
    assert request.query == (("validationToken", "a b"), ("x", "1"), ("x", "2"))
    assert request.param("validationToken") == "a b" and request.param("missing") is None
    assert request.header("X-GOOG-CHANNEL") == "c1" and ("x-goog-channel", "c1") in request.headers
    assert before <= request.received_at <= time.time()


async def test_webhooks_answer_503_while_intake_is_stopped_and_404_where_no_provider_serves() -> None:
    daemon = Daemon()
    client = create_app(daemon, PROVIDERS).test_client()
    missing = await client.post("/webhooks/microsoft", json={"value": []})
    assert missing.status_code == 404 and "/webhooks/microsoft" in (await missing.get_json())["error"]
    daemon.state = "draining"
    for path in ("/webhooks/echo", "/webhooks/microsoft"):
        closed = await client.post(path, data=b"{}")
        assert closed.status_code == 503 and closed.headers["Retry-After"] == str(RETRY_AFTER)
    assert daemon.seen == []


async def test_readiness_includes_each_providers_checks() -> None:
    client = create_app(Daemon(), PROVIDERS).test_client()
    response = await client.get("/readyz")
    body = await response.get_json()
    assert response.status_code == 503 and body["failed"] == ["echo"]
    assert body["checks"]["echo"] == "error: RuntimeError: echo upstream down" and body["checks"]["redis"] == "ok"


def test_reply_helpers_set_the_content_type() -> None:
    assert WebhookReply.json(400, {"error": "bad"}) == WebhookReply(
        status=400, headers=(("content-type", "application/json"),), body=b'{"error":"bad"}')
    assert WebhookReply.text(200, "tok<en>").headers == (("content-type", "text/plain; charset=utf-8"),)


async def test_a_handler_that_raises_is_answered_500_with_json_logged_once_and_counted(caplog) -> None:
    daemon = Daemon()
    labels = {"provider": "echo", "route": "POST /webhooks/echo"}
    before = metrics.REGISTRY.get_sample_value("inboundd_webhook_errors_total", labels) or 0.0
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(partial(serve_app, create_app(daemon, PROVIDERS), ["127.0.0.1:0"],
                                                shutdown_trigger=stop.wait, graceful_timeout=1.0, name="test"))
        url = address if address.startswith("http") else f"http://{address}"
        with caplog.at_level(logging.INFO):
            async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
                crashed = await client.post("/webhooks/echo", content=b"crash")
                # The same keep-alive connection still answers, and a handled request is unchanged.
                fine = await client.post("/webhooks/echo", content=b"ok")
        stop.set()
    assert crashed.status_code == 500 and crashed.headers["content-type"] == "application/json"
    assert crashed.json() == {"error": "internal error in the echo webhook; see the daemon's log"}
    assert fine.status_code == 202 and fine.content == b"got ok"
    [record] = [r for r in caplog.records if r.getMessage() == "webhook.handler_failed"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.event_fields == {**labels, "error": "KeyError: 'a bug in the handler'"}
    assert metrics.REGISTRY.get_sample_value("inboundd_webhook_errors_total", labels) == before + 1
