"""Loopback fakes of Azure AD (client credentials) and Microsoft Graph (Outlook messages).

Both follow the documented wire formats (../shared/PROVIDERS-NOTES.md A1–A5)
closely enough that inboundd's real client code — msal, httpx — talks to
them unchanged, with only the base URLs and a CA file from configuration:

* :class:`FakeAzureAD` serves ``/{directory}/v2.0/.well-known/openid-configuration``
  and ``/{directory}/oauth2/v2.0/token`` over **https** (msal refuses
  anything else) with a certificate from a ``trustme`` CA. It issues
  JWT-shaped access tokens carrying ``tid``, and can revoke them.
* :class:`FakeGraph` serves ``/v1.0``: ``subscriptions`` (create with the
  validation handshake against both URLs, PATCH, DELETE), per-folder
  ``messages/delta`` (nextLink/deltaLink paging, ``$filter`` on
  ``receivedDateTime``, 410 ``syncStateNotFound`` for a reset token),
  ``messages/{id}/$value`` (Content-Length or chunked), ``PATCH isRead`` and
  ``move``. Every call needs a bearer token the fake AD issued. It delivers
  change notifications and lifecycle events to the subscribed URLs, the
  way Graph does, on the test's request.

Both run a ``ThreadingHTTPServer`` in a background thread, so they serve
trio tests (whose loop stays free while the client waits) and daemon
subprocesses alike. Failures are injected per route (:meth:`FakeGraph.fail`).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx

__all__ = ["FakeAzureAD", "FakeGraph", "asgi_lifespan", "graph_time", "make_ca"]

MAX_LIFETIME = 4230 * 60
MIN_LIFETIME = 45 * 60


def graph_time(epoch: float) -> str:
    """Graph's own format: seven fractional digits and ``Z``."""
    when = datetime.fromtimestamp(epoch, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _unb64(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


async def asgi_lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answer an ASGI lifespan scope (startup, shutdown) for a bare test endpoint."""
    while True:
        message = await receive()
        kind = message["type"].rsplit(".", 1)[-1]
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


def make_ca(directory: Path) -> tuple[Any, str]:
    """A trustme CA and the path of its PEM (the ``ca_file`` a client is configured with)."""
    import trustme

    ca = trustme.CA()
    path = directory / "fake-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


# --------------------------------------------------------------------------- HTTP plumbing


class _Reply(Exception):
    """Raised by a route to answer at once."""

    def __init__(self, status: int, body: Any = b"", headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, {"error": {"code": code, "message": message}}, headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: "_FakeServer"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(self.command, unquote(parts.path), parts.path, parse_qs(parts.query, keep_blank_values=True),
                          {k.lower(): v for k, v in self.headers.items()}, body)
        try:
            self.fake.route(request, self)
        except _Reply as reply:
            self.send_reply(reply.status, reply.body, reply.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = _dispatch

    def send_reply(self, status: int, body: Any = b"", headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
            headers.setdefault("Content-Type", "text/plain")
        else:
            data = body
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)


@dataclass
class Request:
    method: str
    path: str            # percent-decoded
    raw_path: str        # as sent
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise _error(400, "BadRequest", "body is not JSON") from None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class _FakeServer:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.lock = threading.RLock()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), name=type(self).__name__,
                                       daemon=True)

    def start(self) -> "_FakeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def route(self, request: Request, handler: _Handler) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- Azure AD


@dataclass
class App:
    directory: str
    client_id: str
    secret: str
    tid: str


@dataclass
class IssuedToken:
    client_id: str
    tid: str
    audience: str
    expires_at: float


class FakeAzureAD(_FakeServer):
    """Client-credentials token issuer over https (``authority_url`` = :attr:`url`)."""

    def __init__(self, ca: Any, *, lifetime: int = 3599) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        super().__init__(context)
        self.url = f"https://127.0.0.1:{self.port}"
        self.lifetime = lifetime
        self.apps: dict[tuple[str, str], App] = {}
        self.tokens: dict[str, IssuedToken] = {}
        #: Token requests answered (successful or not), and discovery documents served.
        self.token_requests = 0
        self.discoveries = 0
        #: Answers to give instead of the next token requests: (status, body).
        self.token_failures: list[tuple[int, Any]] = []

    def register_app(self, directory: str, client_id: str, secret: str, tid: str | None = None) -> App:
        """An app registration in *directory* (GUID or domain); returns it with its tenant GUID."""
        tid = tid or (directory if re.fullmatch(r"[0-9a-f-]{36}", directory) else str(uuid.uuid4()))
        app = App(directory, client_id, secret, tid)
        with self.lock:
            self.apps[(directory.lower(), client_id)] = app
        return app

    def revoke_all(self) -> None:
        """Every token issued so far stops working (Graph answers 401)."""
        with self.lock:
            self.tokens.clear()

    def valid(self, token: str) -> IssuedToken | None:
        with self.lock:
            issued = self.tokens.get(token)
        return issued if issued is not None and issued.expires_at > time.time() else None

    def _directory_known(self, directory: str) -> bool:
        return any(key[0] == directory.lower() for key in self.apps)

    def route(self, request: Request, handler: _Handler) -> None:
        match = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", request.path)
        if match and request.method == "GET":
            directory = match.group(1)
            with self.lock:
                self.discoveries += 1
                known = self._directory_known(directory)
            if not known:
                raise _Reply(400, {"error": "invalid_tenant",
                                   "error_description": f"AADSTS90002: Tenant '{directory}' not found."})
            base = f"{self.url}/{directory}"
            raise _Reply(200, {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{self.url}/{directory}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "token"],
            })
        match = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", request.path)
        if match and request.method == "POST":
            raise self._token(match.group(1), request)
        raise _Reply(404, {"error": "not_found"})

    def _token(self, directory: str, request: Request) -> _Reply:
        form = {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            client_id, secret = unquote(user), unquote(password)
        with self.lock:
            self.token_requests += 1
            if self.token_failures:
                status, body = self.token_failures.pop(0)
                return _Reply(status, body)
            app = self.apps.get((directory.lower(), client_id or ""))
        if form.get("grant_type") != "client_credentials":
            return _Reply(400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"})
        if app is None:
            return _Reply(400, {"error": "unauthorized_client",
                                "error_description": f"AADSTS700016: Application with identifier '{client_id}' "
                                                     f"was not found in the directory '{directory}'.\r\nTrace ID: x"})
        if secret != app.secret:
            return _Reply(401, {"error": "invalid_client",
                                "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: y"})
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return _Reply(400, {"error": "invalid_scope", "error_description": f"AADSTS1002012: scope {scope!r}"})
        audience = scope[: -len("/.default")]
        now = time.time()
        token = ".".join([
            _b64({"typ": "JWT", "alg": "RS256", "kid": "fake"}),
            _b64({"aud": audience, "iss": f"https://sts.windows.net/{app.tid}/", "iat": int(now), "nbf": int(now),
                  "exp": int(now + self.lifetime), "appid": app.client_id, "tid": app.tid,
                  "roles": ["Mail.ReadWrite"], "jti": secrets.token_hex(8)}),
            base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode(),
        ])
        with self.lock:
            self.tokens[token] = IssuedToken(app.client_id, app.tid, audience, now + self.lifetime)
        return _Reply(200, {"token_type": "Bearer", "expires_in": self.lifetime, "ext_expires_in": self.lifetime,
                            "access_token": token})


# --------------------------------------------------------------------------- Graph


@dataclass
class Message:
    id: str
    mailbox: str
    folder: str           # folder id
    raw: bytes
    received: float
    is_read: bool = False


@dataclass
class Folder:
    id: str
    name: str
    #: Append-only log of (sequence, message id) added to this folder.
    added: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Mailbox:
    upn: str
    guid: str
    tid: str
    folders: dict[str, Folder] = field(default_factory=dict)  # by folder id

    def folder(self, name_or_id: str) -> Folder | None:
        for folder in self.folders.values():
            if folder.id == name_or_id or folder.name.lower() == name_or_id.lower():
                return folder
        return None


@dataclass
class Subscription:
    id: str
    resource: str
    mailbox: str
    folder: str           # folder id
    notification_url: str
    lifecycle_url: str
    client_state: str
    expires_at: float
    tid: str
    immutable_ids: bool
    app_id: str


@dataclass
class Failure:
    status: int
    body: Any
    headers: dict[str, str]
    times: int


_RESOURCE = re.compile(r"users/([^/]+)/mailFolders\('((?:[^']|'')+)'\)/messages", re.IGNORECASE)


class FakeGraph(_FakeServer):
    """Microsoft Graph v1.0 for Outlook messages, in memory (``graph_url`` = :attr:`url`)."""

    def __init__(self, aad: FakeAzureAD, *, validate_urls: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        #: Graph's own clock for subscription expiries (a test may move it, with inboundd's).
        self.clock = clock
        self.aad = aad
        self.url = f"http://127.0.0.1:{self.port}/v1.0"
        self.validate_urls = validate_urls
        self.mailboxes: dict[str, Mailbox] = {}
        self.messages: dict[str, Message] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.deleted_subscriptions: list[str] = []
        self._seq = itertools.count(1)
        #: Delta tokens issued before this generation are refused with 410 syncStateNotFound.
        self.delta_generation = 0
        self.failures: dict[str, list[Failure]] = {}
        #: (method, route, path, headers, wall time) of every authorised call, in order.
        self.calls: list[tuple[str, str, str, dict[str, str], float]] = []
        #: Bytes of $value bodies actually written, by message id.
        self.bytes_sent: dict[str, int] = {}
        #: $value bodies sent chunked (no Content-Length) for these message ids.
        self.chunked: set[str] = set()
        self.page_size_default = 10

    # ------------------------------------------------------------------ state set-up

    def add_mailbox(self, upn: str, tid: str, folders: tuple[str, ...] = ("Inbox", "Archive", "Sent Items")) -> Mailbox:
        box = Mailbox(upn.lower(), str(uuid.uuid4()), tid.lower())
        for name in folders:
            fid = "AAMkF" + base64.urlsafe_b64encode(secrets.token_bytes(9)).decode()
            box.folders[fid] = Folder(fid, name)
        with self.lock:
            self.mailboxes[box.upn] = box
        return box

    def add_message(self, mailbox: str, folder: str, raw: bytes, *, received: float | None = None) -> str:
        """Put a message into a folder (as delivery would); returns its immutable id. No notification."""
        with self.lock:
            box = self.mailboxes[mailbox.lower()]
            target = box.folder(folder)
            assert target is not None, f"no folder {folder!r}"
            message_id = "AAMkAGI2" + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
            self.messages[message_id] = Message(message_id, box.upn, target.id, raw,
                                                received if received is not None else time.time())
            target.added.append((next(self._seq), message_id))
        return message_id

    def delete_message(self, message_id: str) -> None:
        with self.lock:
            self.messages.pop(message_id, None)

    def fail(self, route: str, status: int, body: Any = b"", headers: dict[str, str] | None = None,
             times: int = 1) -> None:
        """Answer the next *times* calls of *route* with *status* (routes: ``create``, ``renew``,
        ``delete``, ``delta``, ``value``, ``patch_message``, ``move``)."""
        with self.lock:
            self.failures.setdefault(route, []).append(Failure(status, body, dict(headers or {}), times))

    def reset_delta_tokens(self) -> None:
        """Every delta token issued so far answers 410 syncStateNotFound from now on."""
        with self.lock:
            self.delta_generation += 1

    def calls_to(self, route: str) -> list[tuple[str, str, str, dict[str, str], float]]:
        with self.lock:
            return [call for call in self.calls if call[1] == route]

    def subscriptions_of(self, mailbox: str, folder: str = "Inbox") -> list[Subscription]:
        with self.lock:
            box = self.mailboxes[mailbox.lower()]
            target = box.folder(folder)
            return [s for s in self.subscriptions.values() if s.mailbox == box.upn and s.folder == target.id]

    def drop_subscription(self, subscription_id: str) -> Subscription:
        """Graph removes a subscription on its own (expiry, revoked consent)."""
        with self.lock:
            return self.subscriptions.pop(subscription_id)

    # ------------------------------------------------------------------ what Graph sends

    def notification_item(self, sub: Subscription, message_id: str, **override: Any) -> dict[str, Any]:
        box = self.mailboxes[sub.mailbox]
        resource = f"Users/{box.guid}/Messages/{message_id}"
        item = {
            "id": "lsgTZMr9KwAAA",
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": graph_time(sub.expires_at),
            "clientState": sub.client_state,
            "changeType": "created",
            "resource": resource,
            "tenantId": sub.tid,
            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "@odata.id": resource,
                             "@odata.etag": 'W/"CQAAABYAAADkrWGo7bouTKlsgTZMr9KwAAAUWRHf"', "id": message_id},
        }
        item.update(override)
        return item

    def lifecycle_item(self, sub: Subscription, event: str, **override: Any) -> dict[str, Any]:
        item = {"subscriptionId": sub.id, "subscriptionExpirationDateTime": graph_time(sub.expires_at),
                "tenantId": sub.tid, "clientState": sub.client_state, "lifecycleEvent": event}
        item.update(override)
        return item

    def post(self, url: str, items: list[dict[str, Any]], timeout: float = 10.0) -> httpx.Response:
        """POST a notification collection to *url*, as Graph's delivery does."""
        return httpx.post(url, content=json.dumps({"value": items}).encode(), timeout=timeout,
                          headers={"Content-Type": "application/json; charset=utf-8"})

    def notify(self, message_ids: list[str], sub: Subscription | None = None, **override: Any) -> httpx.Response:
        """Deliver change notifications for *message_ids* (of *sub*'s folder) to its notificationUrl."""
        with self.lock:
            if sub is None:
                first = self.messages[message_ids[0]]
                sub = next(s for s in self.subscriptions.values()
                           if s.mailbox == first.mailbox and s.folder == first.folder)
            items = [self.notification_item(sub, m, **override) for m in message_ids]
        return self.post(sub.notification_url, items)

    def lifecycle(self, sub: Subscription, event: str, **override: Any) -> httpx.Response:
        return self.post(sub.lifecycle_url, [self.lifecycle_item(sub, event, **override)])

    # ------------------------------------------------------------------ routing

    def route(self, request: Request, handler: _Handler) -> None:
        if not request.path.startswith("/v1.0/"):
            raise _error(404, "ResourceNotFound", "no such API version")
        path = request.path[len("/v1.0/"):]
        raw = request.raw_path[len("/v1.0/"):]
        name, action = self._match(request.method, path, raw)
        issued = self._authorise(request)
        with self.lock:
            self.calls.append((request.method, name, request.raw_path, dict(request.headers), time.time()))
            pending = self.failures.get(name)
            if pending:
                failure = pending[0]
                failure.times -= 1
                if failure.times <= 0:
                    pending.pop(0)
                raise _Reply(failure.status, failure.body, failure.headers)
        action(request, handler, issued)

    def _match(self, method: str, path: str, raw: str) -> tuple[str, Callable[..., None]]:
        segments = [unquote(s) for s in raw.split("/")]
        if method == "POST" and path == "subscriptions":
            return "create", self._create
        if len(segments) == 2 and segments[0] == "subscriptions" and method in ("PATCH", "DELETE"):
            return ("renew" if method == "PATCH" else "delete"), lambda r, h, i: self._subscription(r, h, i, segments[1])
        if len(segments) == 6 and segments[0] == "users" and segments[2] == "mailFolders" and segments[4:] == [
                "messages", "delta"] and method == "GET":
            return "delta", lambda r, h, i: self._delta(r, h, i, segments[1], segments[3])
        if len(segments) >= 4 and segments[0] == "users" and segments[2] == "messages":
            mailbox, message_id, rest = segments[1], segments[3], segments[4:]
            if rest == ["$value"] and method == "GET":
                return "value", lambda r, h, i: self._value(r, h, i, mailbox, message_id)
            if rest == [] and method == "PATCH":
                return "patch_message", lambda r, h, i: self._patch_message(r, h, i, mailbox, message_id)
            if rest == ["move"] and method == "POST":
                return "move", lambda r, h, i: self._move(r, h, i, mailbox, message_id)
        raise _error(400, "BadRequest", f"Resource not found for the segment '{path}'.")

    def _authorise(self, request: Request) -> IssuedToken:
        auth = request.headers.get("authorization", "")
        issued = self.aad.valid(auth[7:]) if auth.startswith("Bearer ") else None
        if issued is None:
            raise _error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.",
                         {"WWW-Authenticate": 'Bearer realm=""'})
        if issued.audience != f"http://127.0.0.1:{self.port}":
            raise _error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
        return issued

    def _mailbox(self, upn: str, issued: IssuedToken) -> Mailbox:
        box = self.mailboxes.get(upn.lower())
        if box is None or box.tid != issued.tid:
            raise _error(404, "ErrorInvalidUser", f"The requested user '{upn}' is invalid.")
        return box

    # ------------------------------------------------------------------ subscriptions

    def _create(self, request: Request, handler: _Handler, issued: IssuedToken) -> None:
        body = request.json()
        for key in ("changeType", "notificationUrl", "resource", "expirationDateTime", "clientState"):
            if not isinstance(body.get(key), str):
                raise _error(400, "InvalidRequest", f"Property '{key}' is required.")
        if len(body["clientState"]) > 128:
            raise _error(400, "InvalidRequest", "clientState is longer than 128 characters.")
        match = _RESOURCE.fullmatch(body["resource"])
        if not match:
            raise _error(400, "InvalidRequest", f"Unsupported resource '{body['resource']}'.")
        box = self._mailbox(match.group(1), issued)
        folder = box.folder(match.group(2).replace("''", "'"))
        if folder is None:
            raise _error(404, "ErrorItemNotFound", "The specified folder could not be found in the store.")
        expires = self._expiry(body["expirationDateTime"])
        lifecycle_url = body.get("lifecycleNotificationUrl") or ""
        if self.validate_urls:
            for url in filter(None, (body["notificationUrl"], lifecycle_url)):
                problem = self._validate(url)
                if problem:
                    raise _error(400, "ValidationError",
                                 f"Subscription validation request failed. Notification endpoint must respond "
                                 f"with 200 OK to validation request. ({problem})")
        sub = Subscription(
            id=str(uuid.uuid4()), resource=body["resource"], mailbox=box.upn, folder=folder.id,
            notification_url=body["notificationUrl"], lifecycle_url=lifecycle_url, client_state=body["clientState"],
            expires_at=expires, tid=box.tid, immutable_ids='IdType="ImmutableId"' in request.headers.get("prefer", ""),
            app_id=issued.client_id,
        )
        with self.lock:
            self.subscriptions[sub.id] = sub
        handler.send_reply(201, self._subscription_body(sub, body["changeType"]))

    def _expiry(self, text: str) -> float:
        try:
            requested = _parse_time(text)
        except ValueError:
            raise _error(400, "InvalidRequest", f"expirationDateTime '{text}' is not a date") from None
        now = self.clock()
        if requested > now + MAX_LIFETIME:
            raise _error(400, "InvalidRequest",
                         "Subscription expiration can only be 4230 minutes in the future.")
        return max(requested, now + MIN_LIFETIME)

    def _validate(self, url: str) -> str | None:
        """Graph's handshake: POST ?validationToken=…, expect 200 text/plain echoing it decoded, within 10 s."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        sep = "&" if "?" in url else "?"
        try:
            response = httpx.post(f"{url}{sep}validationToken={quote(token)}", timeout=10.0,
                                  headers={"Content-Type": "text/plain; charset=utf-8"})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"status {response.status_code}"
        if not response.headers.get("content-type", "").startswith("text/plain"):
            return f"content type {response.headers.get('content-type')!r}"
        if response.text != token:
            return "body is not the decoded token"
        return None

    def _subscription_body(self, sub: Subscription, change_type: str = "created") -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": sub.id, "resource": sub.resource, "applicationId": sub.app_id, "changeType": change_type,
            "clientState": sub.client_state, "notificationUrl": sub.notification_url,
            "lifecycleNotificationUrl": sub.lifecycle_url or None, "expirationDateTime": graph_time(sub.expires_at),
            "creatorId": str(uuid.uuid4()), "latestSupportedTlsVersion": "v1_2",
        }

    def _subscription(self, request: Request, handler: _Handler, issued: IssuedToken, sub_id: str) -> None:
        with self.lock:
            sub = self.subscriptions.get(sub_id)
        if sub is None or sub.app_id != issued.client_id:
            raise _error(404, "ResourceNotFound", f"The object '{sub_id}' doesn't exist.")
        if request.method == "DELETE":
            with self.lock:
                self.subscriptions.pop(sub_id, None)
                self.deleted_subscriptions.append(sub_id)
            handler.send_reply(204)
            return
        body = request.json()
        sub.expires_at = self._expiry(str(body.get("expirationDateTime", "")))
        handler.send_reply(200, self._subscription_body(sub))

    # ------------------------------------------------------------------ delta

    def _delta(self, request: Request, handler: _Handler, issued: IssuedToken, upn: str, folder_ref: str) -> None:
        box = self._mailbox(upn, issued)
        folder = box.folder(folder_ref)
        if folder is None:
            raise _error(404, "ErrorItemNotFound", "The specified folder could not be found in the store.")
        skip, deltatoken = request.arg("$skiptoken"), request.arg("$deltatoken")
        prefer = request.headers.get("prefer", "")
        size_match = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        size = int(size_match.group(1)) if size_match else self.page_size_default
        with self.lock:
            upto = folder.added[-1][0] if folder.added else 0
            generation = self.delta_generation
        if skip is not None:
            state = _unb64(skip)
        elif deltatoken is not None:
            state = _unb64(deltatoken)
            state.update(upto=upto, offset=0)
        else:
            since_filter = None
            flt = request.arg("$filter")
            if flt:
                match = re.fullmatch(r"receivedDateTime ge (\S+)", flt)
                if not match:
                    raise _error(400, "ErrorInvalidUrlQueryFilter", f"Unsupported filter '{flt}'.")
                since_filter = _parse_time(match.group(1))
            state = {"after": 0, "upto": upto, "offset": 0, "since": since_filter, "gen": generation,
                     "created_only": request.arg("changeType") == "created"}
        if state["gen"] != generation:
            raise _error(410, "syncStateNotFound", "The sync state generation is not found.",
                         {"Location": f"{self.url}/users/{upn}/mailFolders/{folder_ref}/messages/delta"})
        with self.lock:
            ids = [mid for seq, mid in folder.added if state["after"] < seq <= state["upto"]]
            present = [self.messages[mid] for mid in dict.fromkeys(ids)
                       if mid in self.messages and self.messages[mid].folder == folder.id]
        if state["since"] is not None:
            present = [m for m in present if m.received >= state["since"]]
        chunk = present[state["offset"]:state["offset"] + size]
        value = [{"@odata.type": "#microsoft.graph.message", "@odata.etag": 'W/"x"', "id": m.id,
                  "receivedDateTime": graph_time(m.received)} for m in chunk]
        base = f"{self.url}/users/{quote(upn, safe='@')}/mailFolders/{quote(folder_ref, safe='')}/messages/delta"
        body: dict[str, Any] = {"@odata.context": f"{self.url}/$metadata#Collection(message)", "value": value}
        if state["offset"] + size < len(present):
            nxt = dict(state, offset=state["offset"] + size)
            body["@odata.nextLink"] = f"{base}?$skiptoken={_b64(nxt)}"
        else:
            done = dict(state, after=state["upto"], offset=0)
            body["@odata.deltaLink"] = f"{base}?$deltatoken={_b64(done)}"
        handler.send_reply(200, body)

    # ------------------------------------------------------------------ messages

    def _message(self, upn: str, message_id: str, issued: IssuedToken) -> Message:
        box = self._mailbox(upn, issued)
        with self.lock:
            message = self.messages.get(message_id)
        if message is None or message.mailbox != box.upn:
            raise _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return message

    def _value(self, request: Request, handler: _Handler, issued: IssuedToken, upn: str, message_id: str) -> None:
        message = self._message(upn, message_id, issued)
        raw = message.raw
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        sent = 0
        try:
            if message_id in self.chunked:
                handler.send_header("Transfer-Encoding", "chunked")
                handler.end_headers()
                for start in range(0, len(raw), 16384):
                    piece = raw[start:start + 16384]
                    handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    sent += len(piece)
                handler.wfile.write(b"0\r\n\r\n")
            else:
                handler.send_header("Content-Length", str(len(raw)))
                handler.end_headers()
                handler.wfile.write(raw)
                sent = len(raw)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            with self.lock:
                self.bytes_sent[message_id] = self.bytes_sent.get(message_id, 0) + sent

    def _patch_message(self, request: Request, handler: _Handler, issued: IssuedToken, upn: str,
                       message_id: str) -> None:
        message = self._message(upn, message_id, issued)
        body = request.json()
        if "isRead" in body:
            message.is_read = bool(body["isRead"])
        handler.send_reply(200, {"id": message.id, "isRead": message.is_read})

    def _move(self, request: Request, handler: _Handler, issued: IssuedToken, upn: str, message_id: str) -> None:
        message = self._message(upn, message_id, issued)
        box = self.mailboxes[message.mailbox]
        target = box.folder(str(request.json().get("destinationId", "")))
        if target is None:
            raise _error(404, "ErrorItemNotFound", "The specified folder could not be found in the store.")
        immutable = 'IdType="ImmutableId"' in request.headers.get("prefer", "")
        with self.lock:
            if not immutable:
                # Without ImmutableId a move gives the message a new id.
                self.messages.pop(message.id)
                message.id = "AAMkAGI2" + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
                self.messages[message.id] = message
            message.folder = target.id
            target.added.append((next(self._seq), message.id))
        handler.send_reply(201, {"id": message.id, "parentFolderId": target.id})
