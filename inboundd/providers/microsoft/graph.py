"""The Graph REST calls inboundd makes for one mailbox, on httpx under trio.

Every call carries the account's bearer token and ``Prefer:
IdType="ImmutableId"`` (ids that survive folder moves; the header applies
per request). A 401 drops the token and tries once more with a fresh one; a
second 401 is an auth failure. At most :data:`CONCURRENCY` calls run at once
per mailbox (Outlook's documented limit is four). Non-2xx answers raise
:class:`GraphError` carrying :func:`~.proto.classify_failure`'s verdict;
network failures raise it too, as ``unavailable`` with status 0.

``$value`` (the raw MIME) is streamed: an announced ``Content-Length`` above
the cap is refused before any body byte is read, and a body without one is
abandoned as soon as it passes the cap.

Cancellation: every method may be cancelled; the connection of an
interrupted call is closed, never reused half-read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec
import trio

from ... import clock
from . import delta as delta_mod, proto
from .token import TokenError

__all__ = ["CONCURRENCY", "GraphClient", "GraphError", "Oversize", "SubscriptionInfo"]

#: Concurrent Graph calls per mailbox (Outlook: 4 concurrent requests per app and mailbox).
CONCURRENCY = 4
#: Bytes of an error body read for its ``error.code``; the rest is not worth the wait.
ERROR_BODY_LIMIT = 64 * 1024


class Tokens(Protocol):
    async def token(self) -> str: ...

    async def refresh(self, refused: str | None = None) -> str: ...


class GraphError(Exception):
    """Graph answered non-2xx (or could not be reached: status 0, kind ``unavailable``)."""

    def __init__(self, failure: proto.GraphFailure, what: str) -> None:
        super().__init__(f"{what}: {failure.describe()}")
        self.failure = failure

    @property
    def kind(self) -> proto.FailureKind:
        return self.failure.kind


class SubscriptionInfo(msgspec.Struct, frozen=True):
    """A subscription as Graph confirmed it."""

    id: str
    #: Epoch seconds.
    expires_at: float
    resource: str = ""


class Oversize(msgspec.Struct, frozen=True):
    """``$value`` refused for its size: announced (``Content-Length``) or found while streaming."""

    limit: int
    #: The announced size, when there was one.
    announced: int | None = None
    #: Body bytes read before giving up (0 when refused on the announcement).
    read: int = 0

    def describe(self) -> str:
        if self.announced is not None:
            return f"{self.announced} bytes announced, max_message_size is {self.limit}"
        return f"more than {self.limit} bytes (max_message_size), abandoned after {self.read}"


class _Subscription(msgspec.Struct, rename="camel"):
    id: str
    expiration_date_time: str
    resource: str = ""


class GraphClient:
    """Graph calls for one mailbox, through a shared ``httpx.AsyncClient`` (``HttpClients.async_client``)."""

    def __init__(self, http: httpx.AsyncClient, graph_url: str, mailbox: str, tokens: Tokens) -> None:
        self.http = http
        self.graph_url = graph_url.rstrip("/")
        self.mailbox = mailbox
        self.tokens = tokens
        self.limiter = trio.CapacityLimiter(CONCURRENCY)
        parts = urlsplit(self.graph_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"

    def url(self, path: str) -> str:
        return f"{self.graph_url}/{path}"

    def _check_link(self, link: str) -> str:
        # A nextLink/deltaLink gets our bearer token: it must point at our own Graph.
        parts = urlsplit(link)
        if f"{parts.scheme}://{parts.netloc}" != self._origin:
            raise GraphError(proto.GraphFailure("error", 0, "", f"link outside {self._origin}: {link[:200]}"),
                             "delta")
        return link

    # ------------------------------------------------------------------ transport

    @asynccontextmanager
    async def _call(
        self, method: str, url: str, what: str, *, json: Any = None, params: dict[str, str] | None = None,
        prefer: tuple[str, ...] = (),
    ) -> AsyncIterator[httpx.Response]:
        """Send one call and yield its 2xx response, body not yet read; raise :class:`GraphError` otherwise."""
        headers = {"Prefer": ", ".join((proto.IMMUTABLE_ID, *prefer)), "Accept": "application/json"}
        async with self.limiter:
            try:
                token = await self.tokens.token()
            except TokenError as exc:
                raise _token_failure(exc, what) from exc
            for attempt in (1, 2):
                request = self.http.build_request(
                    method, url, json=json, params=params, headers={**headers, "Authorization": f"Bearer {token}"}
                )
                try:
                    response = await self.http.send(request, stream=True)
                except httpx.TransportError as exc:
                    failure = proto.GraphFailure("unavailable", 0, "", f"{type(exc).__name__}: {exc}")
                    raise GraphError(failure, what) from exc
                try:
                    if response.status_code == 401 and attempt == 1:
                        await response.aclose()
                        try:
                            token = await self.tokens.refresh(refused=token)
                        except TokenError as exc:
                            raise _token_failure(exc, what) from exc
                        continue
                    if response.status_code >= 300:
                        body = await _read_some(response, ERROR_BODY_LIMIT)
                        headers_lower = {k.lower(): v for k, v in response.headers.items()}
                        failure = proto.classify_failure(response.status_code, headers_lower, body, clock.wall())
                        raise GraphError(failure, what)
                    yield response
                    return
                finally:
                    await response.aclose()
        raise AssertionError("unreachable")

    async def _json(self, method: str, url: str, what: str, **kwargs: Any) -> bytes:
        async with self._call(method, url, what, **kwargs) as response:
            return await response.aread()

    # ------------------------------------------------------------------ subscriptions

    async def create_subscription(
        self, *, resource: str, notification_url: str, lifecycle_url: str, client_state: str, expires_at: float,
    ) -> SubscriptionInfo:
        """``POST /subscriptions`` (``changeType=created``); Graph validates both URLs before answering 201."""
        body = {
            "changeType": "created",
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": resource,
            "expirationDateTime": proto.format_graph_time(expires_at),
            "clientState": client_state,
            "latestSupportedTlsVersion": "v1_2",
        }
        data = await self._json("POST", self.url("subscriptions"), "create subscription", json=body)
        return _subscription(data, "create subscription")

    async def renew_subscription(self, subscription_id: str, expires_at: float) -> SubscriptionInfo:
        """``PATCH /subscriptions/{id}`` with a new expiry (this also reauthorizes it)."""
        data = await self._json(
            "PATCH", self.url(f"subscriptions/{subscription_id}"), "renew subscription",
            json={"expirationDateTime": proto.format_graph_time(expires_at)},
        )
        return _subscription(data, "renew subscription")

    async def delete_subscription(self, subscription_id: str) -> bool:
        """``DELETE /subscriptions/{id}``; False when Graph no longer had it (404)."""
        try:
            await self._json("DELETE", self.url(f"subscriptions/{subscription_id}"), "delete subscription")
        except GraphError as exc:
            if exc.kind == "not_found":
                return False
            raise
        return True

    # ------------------------------------------------------------------ delta

    async def delta_page(self, *, link: str | None = None, folder: str | None = None,
                         since: float | None = None) -> delta_mod.DeltaPage:
        """One delta page: from *link* (a stored deltaLink or a nextLink), or a fresh delta of *folder*."""
        prefer = (f"odata.maxpagesize={delta_mod.PAGE_SIZE}",)
        if link is not None:
            data = await self._json("GET", self._check_link(link), "delta", prefer=prefer)
        else:
            assert folder is not None, "a fresh delta needs a folder"
            data = await self._json("GET", self.url(proto.delta_path(self.mailbox, folder)), "delta",
                                    params=delta_mod.first_query(since), prefer=prefer)
        try:
            return delta_mod.parse_delta_page(data)
        except delta_mod.DeltaFormatError as exc:
            raise GraphError(proto.GraphFailure("error", 200, "", str(exc)), "delta") from None

    # ------------------------------------------------------------------ messages

    async def fetch_mime(self, message_id: str, max_size: int) -> bytes | Oversize:
        """The raw RFC 822 bytes of a message (``$value``), or :class:`Oversize` past *max_size* (0: no cap).

        The cap is enforced before the whole body is read: on the announced
        length when there is one, else while streaming.
        """
        url = self.url(proto.message_path(self.mailbox, message_id, "$value"))
        async with self._call("GET", url, "fetch message") as response:
            announced = response.headers.get("content-length")
            size = int(announced) if announced and announced.isdigit() else None
            if max_size and size is not None and size > max_size:
                return Oversize(max_size, announced=size)
            chunks: list[bytes] = []
            read = 0
            async for chunk in response.aiter_bytes():
                read += len(chunk)
                if max_size and read > max_size:
                    return Oversize(max_size, read=read)
                chunks.append(chunk)
            return b"".join(chunks)

    async def mark_read(self, message_id: str) -> None:
        """``PATCH`` the message ``isRead: true`` (needs Mail.ReadWrite)."""
        await self._json("PATCH", self.url(proto.message_path(self.mailbox, message_id)), "mark read",
                         json={"isRead": True})

    async def move(self, message_id: str, folder: str) -> str:
        """Move the message to *folder* (well-known name or id); returns its id there (immutable: the same)."""
        data = await self._json("POST", self.url(proto.message_path(self.mailbox, message_id, "move")), "move",
                                json={"destinationId": folder})
        try:
            return str(msgspec.json.decode(data).get("id") or message_id)
        except (msgspec.DecodeError, AttributeError):
            return message_id


def _subscription(data: bytes, what: str) -> SubscriptionInfo:
    try:
        sub = msgspec.json.decode(data, type=_Subscription)
        return SubscriptionInfo(sub.id, proto.parse_graph_time(sub.expiration_date_time), sub.resource)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise GraphError(proto.GraphFailure("error", 200, "", f"unreadable subscription: {exc}"), what) from None


def _token_failure(exc: TokenError, what: str) -> GraphError:
    kind: proto.FailureKind = "unavailable" if exc.transient else "auth"
    return GraphError(proto.GraphFailure(kind, 0, "token", str(exc)), what)


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit])
