"""A loopback fake of the Google endpoints inboundd talks to, following the documented formats.

One threaded HTTP server on 127.0.0.1 serves:

* ``POST /token`` — OAuth 2.0 token endpoint: ``grant_type=refresh_token``
  (authorized-user files; optional rotation of the refresh token, after which
  the old one is ``invalid_grant``) and the JWT-bearer grant of service
  accounts (the assertion's signature is checked with the service account's
  public key, its ``sub`` must be a delegated mailbox, else
  ``unauthorized_client``). PROVIDERS-NOTES B4.
* ``GET /oauth2/v1/certs`` — ``{kid: PEM certificate}`` of the push-signing
  keys, with ``Cache-Control: max-age``. B2.
* ``/gmail/v1/users/{userId}/…`` — ``history`` (404 for a cursor older than
  the mailbox keeps), ``messages`` (list with ``q=after:``), ``messages/{id}``
  (``format=minimal|raw``), ``messages/{id}/modify``, ``labels``, ``profile``,
  ``watch``, ``stop``; bearer tokens must come from ``/token``. B1, B3.

Tests change the fake's state directly (:meth:`FakeGoogle.add_message`,
:meth:`FakeGoogle.fail`) and read what it was asked (:attr:`FakeGoogle.calls`).
Push tokens are minted with :class:`SigningKey` the way Pub/Sub signs them.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as google_jwt

__all__ = ["FakeGoogle", "Mailbox", "SigningKey", "authorized_user_file", "push_body", "service_account_file"]

PUSH_AUDIENCE = "https://inbound.example.com/webhooks/google"
PUSH_SERVICE_ACCOUNT = "pubsub-push@acme.iam.gserviceaccount.com"


# --------------------------------------------------------------------------- keys and tokens


class SigningKey:
    """An RSA key with a self-signed certificate, like one of Google's push-signing keys."""

    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or secrets.token_hex(20)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "federated-signon.system.gserviceaccount.com")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=14)).sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        self.private_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.signer = crypt.RSASigner.from_string(self.private_pem, key_id=self.kid)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """The claims Pub/Sub puts in a push token (valid now), with *overrides* (``None`` removes a claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": PUSH_AUDIENCE, "azp": "113774264463038321964", "email": PUSH_SERVICE_ACCOUNT,
            "email_verified": True, "exp": now + 3600, "iat": now, "iss": "https://accounts.google.com",
            "sub": "113774264463038321964",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, **overrides: Any) -> str:
        """A push token signed by this key (RS256, this key's kid)."""
        return google_jwt.encode(self.signer, self.claims(**overrides)).decode()

    def token_with_kid(self, kid: str, **overrides: Any) -> str:
        """Signed by this key but naming *kid* in its header."""
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=kid)
        return google_jwt.encode(signer, self.claims(**overrides)).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(kid: str, **claims: Any) -> str:
    """``alg: none`` — what a forger sends."""
    header = _b64url(json.dumps({"alg": "none", "kid": kid, "typ": "JWT"}).encode())
    return f"{header}.{_b64url(json.dumps(claims).encode())}."


def push_body(email: str, history_id: int | str, *, message_id: str = "2070443601311540",
              urlsafe: bool = False, padding: bool = True) -> bytes:
    """A Pub/Sub push envelope as Gmail's notifications arrive (historyId a number unless a str is given)."""
    data = json.dumps({"emailAddress": email, "historyId": history_id}).encode()
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    if not padding:
        encoded = encoded.rstrip("=")
    return json.dumps({
        "message": {"data": encoded, "messageId": message_id, "message_id": message_id,
                    "publishTime": "2021-02-26T19:13:55.749Z", "publish_time": "2021-02-26T19:13:55.749Z",
                    "attributes": {}},
        "subscription": "projects/acme/subscriptions/inboundd-gmail",
    }).encode()


# --------------------------------------------------------------------------- credentials files


def authorized_user_file(fake: "FakeGoogle", refresh_token: str, *, token_uri: bool = True) -> str:
    info = {"type": "authorized_user", "client_id": "client-1.apps.googleusercontent.com",
            "client_secret": "s3cr3t", "refresh_token": refresh_token}
    if token_uri:
        info["token_uri"] = f"{fake.url}/token"
    return json.dumps(info)


def service_account_file(fake: "FakeGoogle", key: SigningKey, email: str = "inboundd@acme.iam.gserviceaccount.com") -> str:
    fake.service_accounts[email] = key
    return json.dumps({
        "type": "service_account", "project_id": "acme", "private_key_id": key.kid,
        "private_key": key.private_pem, "client_email": email, "client_id": "1234567890",
        "token_uri": f"{fake.url}/token",
    })


# --------------------------------------------------------------------------- mailboxes


@dataclass
class StoredMessage:
    id: str
    raw: bytes
    labels: list[str]
    internal_ms: int
    history_id: int
    #: What Gmail says the size is, when a test wants it to differ from the real one.
    size_estimate: int | None = None


@dataclass
class Mailbox:
    email: str
    history_id: int = 1000
    #: Gmail forgets history before this: an older startHistoryId is a 404.
    oldest_history: int = 1000
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    #: (history record id, message id) in ascending order.
    history: list[tuple[int, str]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # name → id (user labels)
    watches: list[dict[str, Any]] = field(default_factory=list)
    stops: int = 0


@dataclass
class _Failure:
    method: str
    path: re.Pattern[str]
    status: int
    body: Any
    times: int
    headers: dict[str, str]
    #: Matching requests still let through before the failures start.
    after: int = 0


class FakeGoogle:
    """The fake; use as a context manager (or :meth:`start` / :meth:`stop`)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.push_keys: list[SigningKey] = [SigningKey()]
        self.certs_max_age = 21600
        self.mailboxes: dict[str, Mailbox] = {}
        self.page_size: int | None = None
        # Token endpoint.
        self.refresh_tokens: dict[str, str] = {}  # refresh token → mailbox it may read
        self.rotate_refresh_tokens = False
        self.service_accounts: dict[str, SigningKey] = {}
        self.delegated: set[str] = set()
        self.access_tokens: dict[str, str] = {}  # access token → mailbox
        self.token_requests: list[dict[str, str]] = []
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []
        self.counts: Counter[str] = Counter()
        self._failures: list[_Failure] = []
        self._ids = itertools.count(1)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self.server is not None, "FakeGoogle not started"
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def certs_url(self) -> str:
        return f"{self.url}/oauth2/v1/certs"

    def start(self) -> "FakeGoogle":
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       name="fake-google", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None

    def __enter__(self) -> "FakeGoogle":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state

    def mailbox(self, email: str) -> Mailbox:
        with self.lock:
            if email not in self.mailboxes:
                self.mailboxes[email] = Mailbox(email)
            return self.mailboxes[email]

    def grant(self, email: str, refresh_token: str | None = None) -> str:
        """Let *refresh_token* (a new one by default) read *email*; also delegate *email* to service accounts."""
        token = refresh_token or f"1//rt-{secrets.token_hex(8)}"
        with self.lock:
            self.refresh_tokens[token] = email
            self.delegated.add(email)
            self.mailbox(email)
        return token

    def add_message(self, email: str, raw: bytes | None = None, labels: tuple[str, ...] = ("INBOX", "UNREAD"),
                    *, internal_ms: int | None = None, subject: str | None = None) -> str:
        """Deliver a message: it gets an id and a ``messageAdded`` history record."""
        with self.lock:
            box = self.mailbox(email)
            number = next(self._ids)
            message_id = f"18c{number:013x}"
            if raw is None:
                raw = (f"From: sender{number}@example.org\r\nTo: {email}\r\n"
                       f"Subject: {subject or f'Gmail message {number}'}\r\n"
                       f"Message-ID: <gmail-{number}-{secrets.token_hex(4)}@example.org>\r\n"
                       f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nBody {number}\r\n").encode()
            box.history_id += 1
            box.messages[message_id] = StoredMessage(message_id, raw, list(labels),
                                                     internal_ms if internal_ms is not None else int(time.time() * 1000),
                                                     box.history_id)
            box.history.append((box.history_id, message_id))
            return message_id

    def forget_history(self, email: str) -> None:
        """Gmail no longer keeps history before now: an older startHistoryId is 404."""
        with self.lock:
            box = self.mailbox(email)
            box.oldest_history = box.history_id

    def fail(self, method: str, path: str, status: int, body: Any = None, *, times: int = 1,
             headers: dict[str, str] | None = None, after: int = 0) -> None:
        """Answer *times* requests whose path matches the regex *path* with *status* and *body*,
        after letting the next *after* of them through."""
        with self.lock:
            self._failures.append(_Failure(method, re.compile(path), status, body, times, headers or {}, after))

    def count(self, what: str) -> int:
        with self.lock:
            return self.counts[what]

    def calls_to(self, method: str, path_regex: str) -> list[tuple[str, str, dict[str, list[str]]]]:
        pattern = re.compile(path_regex)
        with self.lock:
            return [call for call in self.calls if call[0] == method and pattern.search(call[1])]

    def certs_body(self) -> dict[str, str]:
        return {key.kid: key.cert_pem for key in self.push_keys}

    # ------------------------------------------------------------------ dispatch

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            self.calls.append((method, path, query))
            for failure in self._failures:
                if failure.method == method and failure.path.search(path) and failure.times > 0:
                    if failure.after > 0:
                        failure.after -= 1
                        break
                    failure.times -= 1
                    return failure.status, failure.body, dict(failure.headers)
        if path == "/oauth2/v1/certs" and method == "GET":
            with self.lock:
                self.counts["certs"] += 1
                cache = f"public, max-age={self.certs_max_age}, must-revalidate, no-transform"
                return 200, self.certs_body(), {"Cache-Control": cache}
        if path == "/token" and method == "POST":
            return self._token(parse_qs(body.decode()))
        match = re.fullmatch(r"/gmail/v1/users/([^/]+)(/.*)", path)
        if match:
            return self._gmail(method, unquote(match.group(1)), match.group(2), query, headers, body)
        return 404, {"error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}}, {}

    def _token(self, form: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        fields = {k: v[0] for k, v in form.items()}
        with self.lock:
            self.token_requests.append(fields)
            self.counts["token"] += 1
            grant = fields.get("grant_type")
            if grant == "refresh_token":
                old = fields.get("refresh_token", "")
                email = self.refresh_tokens.get(old)
                if email is None:
                    return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, {}
                answer: dict[str, Any] = {"access_token": self._issue(email), "expires_in": 3599,
                                          "scope": "https://www.googleapis.com/auth/gmail.modify",
                                          "token_type": "Bearer"}
                if self.rotate_refresh_tokens:
                    new = f"1//rt-{secrets.token_hex(8)}"
                    del self.refresh_tokens[old]
                    self.refresh_tokens[new] = email
                    answer["refresh_token"] = new
                return 200, answer, {}
            if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                assertion = fields.get("assertion", "")
                try:
                    unverified = google_jwt.decode(assertion, verify=False)
                    key = self.service_accounts[unverified["iss"]]
                    claims = google_jwt.decode(assertion, certs={key.kid: key.cert_pem}, verify=True)
                except Exception as exc:  # noqa: BLE001 - any defect is the documented refusal
                    return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}, {}
                if claims.get("sub") not in self.delegated:
                    return 401, {"error": "unauthorized_client",
                                 "error_description": "Client is unauthorized to retrieve access tokens using this "
                                                      "method, or client not authorized for any of the scopes requested."}, {}
                return 200, {"access_token": self._issue(claims["sub"]), "expires_in": 3599,
                             "token_type": "Bearer"}, {}
            return 400, {"error": "unsupported_grant_type"}, {}

    def _issue(self, email: str) -> str:
        token = f"ya29.{secrets.token_urlsafe(24)}"
        self.access_tokens[token] = email
        return token

    # ------------------------------------------------------------------ Gmail

    def _gmail(self, method: str, user: str, rest: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> tuple[int, Any, dict[str, str]]:
        auth = headers.get("authorization", "")
        with self.lock:
            owner = self.access_tokens.get(auth.removeprefix("Bearer "))
            if owner is None or owner.lower() != user.lower():
                return 401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                                       "status": "UNAUTHENTICATED"}}, {}
            box = self.mailbox(user)
            first = lambda name, default=None: query.get(name, [default])[0]  # noqa: E731
            if rest == "/profile" and method == "GET":
                return 200, {"emailAddress": user, "messagesTotal": len(box.messages),
                             "historyId": str(box.history_id)}, {}
            if rest == "/history" and method == "GET":
                self.counts["history"] += 1
                return self._history(box, query)
            if rest == "/messages" and method == "GET":
                self.counts["list"] += 1
                return self._list(box, query)
            match = re.fullmatch(r"/messages/([^/]+)(/modify)?", rest)
            if match:
                message = box.messages.get(unquote(match.group(1)))
                if message is None:
                    return 404, {"error": {"code": 404, "message": "Requested entity was not found.",
                                           "errors": [{"domain": "global", "reason": "notFound",
                                                       "message": "Requested entity was not found."}],
                                           "status": "NOT_FOUND"}}, {}
                if match.group(2) and method == "POST":
                    self.counts["modify"] += 1
                    change = json.loads(body or b"{}")
                    message.labels = [label for label in message.labels if label not in change.get("removeLabelIds", [])]
                    message.labels += [label for label in change.get("addLabelIds", []) if label not in message.labels]
                    return 200, self._resource(message, "minimal"), {}
                if method == "GET":
                    fmt = first("format", "full")
                    self.counts[f"get_{fmt}"] += 1
                    return 200, self._resource(message, fmt), {}
            if rest == "/labels" and method == "GET":
                return 200, {"labels": [{"id": label_id, "name": name, "type": "user"}
                                        for name, label_id in box.labels.items()]
                             + [{"id": name, "name": name, "type": "system"} for name in ("INBOX", "UNREAD", "SENT")]}, {}
            if rest == "/labels" and method == "POST":
                name = json.loads(body)["name"]
                box.labels[name] = f"Label_{len(box.labels) + 1}"
                return 200, {"id": box.labels[name], "name": name, "type": "user"}, {}
            if rest == "/watch" and method == "POST":
                request = json.loads(body)
                box.watches.append(request)
                self.counts["watch"] += 1
                expiration = int(time.time() * 1000) + 7 * 86400 * 1000
                return 200, {"historyId": str(box.history_id), "expiration": str(expiration)}, {}
            if rest == "/stop" and method == "POST":
                box.stops += 1
                self.counts["stop"] += 1
                return 204, None, {}
        return 404, {"error": {"code": 404, "message": f"no Gmail route {method} {rest}", "status": "NOT_FOUND"}}, {}

    def _page(self, items: list[Any], query: dict[str, list[str]], default: int) -> tuple[list[Any], str | None]:
        size = self.page_size or int(query.get("maxResults", [default])[0])
        start = int(query.get("pageToken", ["0"])[0])
        chunk = items[start:start + size]
        more = start + size < len(items)
        return chunk, (str(start + size) if more else None)

    def _history(self, box: Mailbox, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        start = int(query["startHistoryId"][0])
        if start < box.oldest_history:
            return 404, {"error": {"code": 404, "message": "Requested entity was not found.",
                                   "errors": [{"domain": "global", "reason": "notFound",
                                               "message": "Requested entity was not found."}],
                                   "status": "NOT_FOUND"}}, {}
        label = query.get("labelId", [None])[0]
        records = []
        for history_id, message_id in box.history:
            message = box.messages.get(message_id)
            if history_id <= start or message is None or (label and label not in message.labels):
                continue
            item = {"message": {"id": message_id, "threadId": message_id, "labelIds": list(message.labels)}}
            records.append({"id": str(history_id), "messages": [item["message"]], "messagesAdded": [item]})
        chunk, token = self._page(records, query, 100)
        answer: dict[str, Any] = {"historyId": str(box.history_id)}
        if chunk:
            answer["history"] = chunk
        if token:
            answer["nextPageToken"] = token
        return 200, answer, {}

    def _list(self, box: Mailbox, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        after = 0
        match = re.search(r"after:(\d+)", query.get("q", [""])[0])
        if match:
            after = int(match.group(1))
        labels = query.get("labelIds", [])
        found = [m for m in sorted(box.messages.values(), key=lambda m: -m.internal_ms)
                 if m.internal_ms // 1000 > after and all(label in m.labels for label in labels)
                 and not {"SPAM", "TRASH"} & set(m.labels)]
        chunk, token = self._page([{"id": m.id, "threadId": m.id} for m in found], query, 100)
        answer: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if chunk:
            answer["messages"] = chunk
        if token:
            answer["nextPageToken"] = token
        return 200, answer, {}

    @staticmethod
    def _resource(message: StoredMessage, fmt: str) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "id": message.id, "threadId": message.id, "labelIds": list(message.labels),
            "snippet": "",
            "sizeEstimate": message.size_estimate if message.size_estimate is not None else len(message.raw),
            "historyId": str(message.history_id),
            "internalDate": str(message.internal_ms),
        }
        if fmt == "raw":
            resource["raw"] = base64.urlsafe_b64encode(message.raw).decode().rstrip("=")
        return resource


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGoogle
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer, extra = self.fake.handle(self.command, split.path, parse_qs(split.query), headers, body)
        payload = b"" if answer is None else (answer if isinstance(answer, bytes) else json.dumps(answer).encode())
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve
