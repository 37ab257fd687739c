"""The Graph client and the msal token source against loopback fakes of Azure AD and Graph.

Real client code (msal over an ``httpx.Client``, ``httpx.AsyncClient`` on
trio), real HTTPS for the identity provider (trustme CA given as
``ca_file``), and a fake Graph that validates subscription URLs with the
documented handshake against a real hypercorn endpoint.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from graph_fakes import FakeAzureAD, FakeGraph, asgi_lifespan, make_ca
from waiting import eventually
from inboundd.providers.microsoft import proto, webhook
from inboundd.ingress.httpclients import HttpClients
from inboundd.providers.microsoft.graph import GraphClient, GraphError, Oversize
from inboundd.providers.microsoft.token import MsalTokens, TokenError

DIRECTORY = "acme.onmicrosoft.com"
MAILBOX = "support@acme.com"
SECRET = "s3cret-value"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def aad(ca):
    with FakeAzureAD(ca[0]) as server:
        server.app = server.register_app(DIRECTORY, "app-1", SECRET)
        yield server


@pytest.fixture
def graph(aad):
    with FakeGraph(aad) as server:
        server.add_mailbox(MAILBOX, aad.app.tid)
        yield server


@pytest.fixture
async def clients() -> AsyncIterator[HttpClients]:
    shared = HttpClients()
    yield shared
    await shared.aclose()


def tokens_for(clients, aad, graph_url, ca_file, secret=SECRET, directory=DIRECTORY) -> MsalTokens:
    return MsalTokens(client_id="app-1", client_secret=secret, directory_id=directory, authority_url=aad.url,
                      graph_url=graph_url, http=clients.sync_client(ca_file), limiter=clients.token_limiter)


@pytest.fixture
def client(clients, aad, graph, ca) -> GraphClient:
    return GraphClient(clients.async_client(), graph.url, MAILBOX, tokens_for(clients, aad, graph.url, ca[1]))


# --------------------------------------------------------------------------- tokens (msal)


async def test_token_from_the_fake_authority_over_https_and_cached(clients, aad, graph, ca):
    tokens = tokens_for(clients, aad, graph.url, ca[1])
    first = await tokens.token()
    assert aad.valid(first) is not None
    assert tokens.tenant_id == aad.app.tid  # learned from the token: the domain-named directory's GUID
    assert await tokens.token() == first
    assert (aad.token_requests, aad.discoveries, tokens.issued) == (1, 1, 1)
    fresh = await tokens.refresh(refused=first)
    assert fresh != first and aad.token_requests == 2


async def test_concurrent_token_requests_share_one_call(clients, aad, graph, ca):
    tokens = tokens_for(clients, aad, graph.url, ca[1])
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(lambda: _append(got, tokens.token()))
    assert len(set(got)) == 1 and aad.token_requests == 1


async def _append(into, awaitable):
    into.append(await awaitable)


@pytest.mark.parametrize("secret, directory, transient, says", [
    ("wrong", DIRECTORY, False, "invalid_client: AADSTS7000215"),
    (SECRET, "nosuch.onmicrosoft.com", False, "nosuch.onmicrosoft.com' refused: Unable to get authority"),
])
async def test_token_refusals_are_not_transient(clients, aad, graph, ca, secret, directory, transient, says):
    tokens = tokens_for(clients, aad, graph.url, ca[1], secret=secret, directory=directory)
    with pytest.raises(TokenError, match=says) as caught:
        await tokens.token()
    assert caught.value.transient is transient
    assert secret not in str(caught.value)


async def test_token_endpoint_failing_is_transient_and_not_hammered(clients, aad, graph, ca):
    aad.token_failures.append((503, b"<html>busy</html>"))
    tokens = tokens_for(clients, aad, graph.url, ca[1])
    with pytest.raises(TokenError) as caught:
        await tokens.token()
    assert caught.value.transient
    # msal replays a 5xx for Retry-After (default 5 s) from its throttle cache: a retry
    # before then gets the same refusal without a request.
    requests = aad.token_requests
    with pytest.raises(TokenError):
        await tokens.token()
    assert aad.token_requests == requests


async def test_an_untrusted_authority_certificate_is_refused(clients, aad, graph):
    tokens = tokens_for(clients, aad, graph.url, ca_file="")  # the fake's CA is not in the system store
    with pytest.raises(TokenError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await tokens.token()
    assert aad.token_requests == 0


# --------------------------------------------------------------------------- subscriptions


async def handshake_app(scope, receive, send):
    """A bare ASGI endpoint answering Graph's validation handshake with the pure check."""
    if scope["type"] == "lifespan":
        await asgi_lifespan(receive, send)
        return
    while (await receive()).get("more_body"):
        pass
    try:
        token = webhook.validation_token(scope["query_string"])
    except webhook.BadRequest as exc:
        token, status, body = None, 400, str(exc).encode()
    else:
        status, body = (200, token.encode()) if token is not None else (202, b"")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def endpoint(nursery) -> AsyncIterator[str]:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    stop = trio.Event()
    binds = await nursery.start(lambda task_status: serve(handshake_app, config, shutdown_trigger=stop.wait,
                                                          task_status=task_status))
    yield binds[0]
    stop.set()


async def test_create_renew_delete_subscription(client, graph, endpoint):
    resource = proto.subscription_resource(MAILBOX, "Inbox")
    expires = time.time() + 70 * 3600
    sub = await client.create_subscription(
        resource=resource, notification_url=f"{endpoint}/webhooks/microsoft",
        lifecycle_url=f"{endpoint}/webhooks/microsoft/lifecycle", client_state="c" * 64, expires_at=expires,
    )
    (stored,) = graph.subscriptions_of(MAILBOX)
    assert stored.id == sub.id and stored.client_state == "c" * 64 and stored.immutable_ids
    assert stored.lifecycle_url.endswith("/lifecycle")
    assert abs(sub.expires_at - expires) < 0.01 and sub.resource == resource

    renewed = await client.renew_subscription(sub.id, expires - 3600)
    assert abs(renewed.expires_at - (expires - 3600)) < 0.01
    assert await client.delete_subscription(sub.id) is True
    assert await client.delete_subscription(sub.id) is False  # already gone: not an error
    with pytest.raises(GraphError) as caught:
        await client.renew_subscription(sub.id, expires)
    assert caught.value.kind == "not_found"


async def test_create_fails_when_the_endpoint_does_not_validate(client, graph, endpoint):
    with pytest.raises(GraphError) as caught:
        await client.create_subscription(
            resource=proto.subscription_resource(MAILBOX, "Inbox"),
            notification_url=f"{endpoint}/webhooks/microsoft", lifecycle_url="http://127.0.0.1:9/nothing",
            client_state="c", expires_at=time.time() + 3600,
        )
    assert caught.value.kind == "bad_request" and caught.value.failure.code == "ValidationError"
    assert graph.subscriptions == {}


async def test_expiry_beyond_the_outlook_maximum_is_refused_by_graph(client, endpoint):
    with pytest.raises(GraphError) as caught:
        await client.create_subscription(
            resource=proto.subscription_resource(MAILBOX, "Inbox"), notification_url=endpoint,
            lifecycle_url=endpoint, client_state="c", expires_at=time.time() + 4231 * 60,
        )
    assert caught.value.kind == "bad_request"


# --------------------------------------------------------------------------- delta


async def walk(client, *, link=None, folder=None, since=None):
    ids, pages = [], 0
    page = await client.delta_page(link=link, folder=folder, since=since)
    while True:
        pages += 1
        ids += [m.id for m in page.messages]
        if page.delta_link:
            return ids, page.delta_link, pages
        page = await client.delta_page(link=page.next_link)


async def test_delta_pages_then_only_what_is_new(client, graph):
    first = [graph.add_message(MAILBOX, "Inbox", b"Subject: %d\r\n\r\nx" % i) for i in range(250)]
    graph.add_message(MAILBOX, "Archive", b"Subject: elsewhere\r\n\r\nx")
    ids, link, pages = await walk(client, folder="Inbox")
    assert ids == first and pages == 3  # odata.maxpagesize=100
    new = [graph.add_message(MAILBOX, "Inbox", b"Subject: new\r\n\r\nx") for _ in range(2)]
    ids, link2, pages = await walk(client, link=link)
    assert ids == new and pages == 1
    assert all('IdType="ImmutableId"' in headers["prefer"] for _, _, _, headers, _ in graph.calls_to("delta"))


async def test_delta_filter_since(client, graph):
    graph.add_message(MAILBOX, "Inbox", b"old", received=time.time() - 7200)
    recent = graph.add_message(MAILBOX, "Inbox", b"recent", received=time.time() - 60)
    ids, _, _ = await walk(client, folder="Inbox", since=time.time() - 3600)
    assert ids == [recent]


async def test_delta_reset_token_is_sync_reset(client, graph):
    _, link, _ = await walk(client, folder="Inbox")
    graph.reset_delta_tokens()
    with pytest.raises(GraphError) as caught:
        await client.delta_page(link=link)
    assert caught.value.kind == "sync_reset" and caught.value.failure.status == 410


async def test_delta_link_to_another_host_is_refused_without_sending_the_token(client, graph):
    with pytest.raises(GraphError, match="link outside"):
        await client.delta_page(link="https://evil.example.com/v1.0/delta?$deltatoken=x")
    assert graph.calls_to("delta") == []


# --------------------------------------------------------------------------- $value


async def test_fetch_mime(client, graph):
    raw = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody\r\n"
    message_id = graph.add_message(MAILBOX, "Inbox", raw)
    assert await client.fetch_mime(message_id, 1024 * 1024) == raw
    (call,) = graph.calls_to("value")
    assert call[3]["prefer"].startswith('IdType="ImmutableId"')


async def test_fetch_mime_of_a_deleted_message_is_not_found(client, graph):
    message_id = graph.add_message(MAILBOX, "Inbox", b"x")
    graph.delete_message(message_id)
    with pytest.raises(GraphError) as caught:
        await client.fetch_mime(message_id, 1024)
    assert caught.value.kind == "not_found" and caught.value.failure.code == "ErrorItemNotFound"


async def test_fetch_mime_throttled_carries_retry_after(client, graph):
    message_id = graph.add_message(MAILBOX, "Inbox", b"x")
    graph.fail("value", 429, {"error": {"code": "ApplicationThrottled", "message": "slow down"}},
               {"Retry-After": "7"})
    with pytest.raises(GraphError) as caught:
        await client.fetch_mime(message_id, 1024)
    assert (caught.value.kind, caught.value.failure.retry_after) == ("throttled", 7.0)
    assert await client.fetch_mime(message_id, 1024) == b"x"


async def test_oversize_announced_is_refused_before_the_body(client, graph):
    message_id = graph.add_message(MAILBOX, "Inbox", b"x" * 200_000)
    result = await client.fetch_mime(message_id, 100_000)
    assert result == Oversize(100_000, announced=200_000, read=0)


async def test_oversize_streamed_is_abandoned_before_the_end(client, graph):
    total = 48 * 1024 * 1024  # far beyond what socket buffers hold
    message_id = graph.add_message(MAILBOX, "Inbox", b"x" * total)
    graph.chunked.add(message_id)
    result = await client.fetch_mime(message_id, 1024 * 1024)
    assert isinstance(result, Oversize) and result.announced is None
    assert 1024 * 1024 < result.read < 2 * 1024 * 1024
    await eventually(lambda: message_id in graph.bytes_sent, 10, "the fake Graph to give up sending")
    assert graph.bytes_sent[message_id] < total // 2


# --------------------------------------------------------------------------- auth


async def test_a_refused_token_is_replaced_once(client, graph, aad):
    message_id = graph.add_message(MAILBOX, "Inbox", b"x")
    assert await client.fetch_mime(message_id, 1024) == b"x"
    aad.revoke_all()
    assert await client.fetch_mime(message_id, 1024) == b"x"
    assert aad.token_requests == 2


async def test_refused_twice_is_an_auth_failure(client, graph, aad):
    message_id = graph.add_message(MAILBOX, "Inbox", b"x")
    graph.fail("value", 401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}}, times=2)
    with pytest.raises(GraphError) as caught:
        await client.fetch_mime(message_id, 1024)
    assert caught.value.kind == "auth" and aad.token_requests == 2


async def test_a_wrong_secret_surfaces_as_auth_failure(clients, aad, graph, ca):
    tokens = tokens_for(clients, aad, graph.url, ca[1], secret="wrong")
    client = GraphClient(clients.async_client(), graph.url, MAILBOX, tokens)
    with pytest.raises(GraphError) as caught:
        await client.fetch_mime("x", 1024)
    assert caught.value.kind == "auth" and graph.calls == []


async def test_graph_unreachable_is_unavailable(clients, aad, ca):
    nowhere = "http://127.0.0.1:9/v1.0"
    client = GraphClient(clients.async_client(), nowhere, MAILBOX, tokens_for(clients, aad, nowhere, ca[1]))
    with pytest.raises(GraphError) as caught:
        await client.fetch_mime("x", 1024)
    assert (caught.value.kind, caught.value.failure.status) == ("unavailable", 0)


# --------------------------------------------------------------------------- post-actions


async def test_mark_read_and_move(client, graph):
    message_id = graph.add_message(MAILBOX, "Inbox", b"x")
    await client.mark_read(message_id)
    assert graph.messages[message_id].is_read
    assert await client.move(message_id, "Archive") == message_id  # immutable id survives the move
    archive = graph.mailboxes[MAILBOX].folder("Archive")
    assert graph.messages[message_id].folder == archive.id
