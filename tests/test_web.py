"""The public app's translation between HTTP and a provider's framework-free request and reply values."""

from __future__ import annotations

import time

from inboundd.ingress.webhook import Route, WebhookReply, WebhookRequest
from inboundd.provider import Provider, Runtime
from inboundd.web import RETRY_AFTER, create_app

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
