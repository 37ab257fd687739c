"""Access tokens for Graph: msal client credentials, one app per account, on trio.

msal is blocking and its constructor already talks to the network (OIDC
discovery of ``{authority_url}/{directory_id}/v2.0/.well-known/openid-configuration``),
so the app is built lazily, in a worker thread, on the first token request;
a failed build is retried on the next request. msal's ``http_client`` is an
``httpx.Client`` that trusts the system CAs plus ``ca_file``, so a proxy's or
a test's CA works without touching the process environment. Instance
discovery is off: ``authority_url`` is taken as given (sovereign clouds,
tests) instead of being checked against login.microsoftonline.com.

msal caches the token in the app (tokens with less than five minutes left
count as expired); :class:`MsalTokens` also remembers it, so the common
case costs no thread hop. Failures raise :class:`TokenError`, saying whether
waiting can help (``transient``: network, 5xx) or not (a wrong secret, an
unknown app or directory: the account's auth-failure policy applies).

Sources: ../shared/PROVIDERS-NOTES.md A5, ../shared/STACK-NOTES.md (msal).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import trio

__all__ = ["MsalTokens", "TokenError", "graph_scope", "token_tenant"]

#: A token is used until this many seconds before its expiry (msal refreshes 5 minutes early too).
EXPIRY_MARGIN = 300.0
#: msal errors that mean "the service is struggling, ask again later".
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "service_unavailable"})


class TokenError(Exception):
    """No token. ``transient``: retrying later may help; otherwise the credentials are wrong."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def graph_scope(graph_url: str) -> str:
    """The client-credentials scope of the Graph at *graph_url*: its origin + ``/.default``."""
    parts = urlsplit(graph_url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def token_tenant(access_token: str) -> str | None:
    """The ``tid`` claim (Azure AD tenant GUID, lower-case) of a JWT access token, or None.

    The token comes from our own authority over TLS; this reads, it does not
    verify. Graph's notifications carry the tenant as a GUID even when the
    configuration names the directory by domain, so this is how the two
    are matched.
    """
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = msgspec.json.decode(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, msgspec.DecodeError):
        return None
    tid = claims.get("tid") if isinstance(claims, dict) else None
    return tid.lower() if isinstance(tid, str) and tid else None


def _result_token(result: Any) -> tuple[str, float]:
    """(access token, seconds it lives) from msal's result dict, or :class:`TokenError`."""
    if not isinstance(result, dict):
        raise TokenError(f"msal returned {type(result).__name__}, not a token", transient=True)
    token = result.get("access_token")
    if isinstance(token, str) and token:
        try:
            lifetime = float(result.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0
        return token, lifetime
    error = str(result.get("error") or "no_token")
    # Azure AD's descriptions run over several lines (trace and correlation ids): keep the first.
    description = str(result.get("error_description") or "").strip().splitlines()
    detail = f"{error}: {description[0]}" if description else error
    raise TokenError(f"token request refused: {detail}", transient=error in _TRANSIENT_ERRORS)


class MsalTokens:
    """Client-credentials tokens of one Azure app registration for one Graph.

    Construct without I/O; :meth:`token` builds the msal app on first use.
    *http* is the blocking client msal sends with (it trusts the account's
    ``ca_file``: ``HttpClients.sync_client``); *limiter* bounds the worker
    threads token requests run in.
    """

    def __init__(
        self, *, client_id: str, client_secret: str, directory_id: str, authority_url: str, graph_url: str,
        http: httpx.Client, limiter: trio.CapacityLimiter,
    ) -> None:
        self.client_id = client_id
        self.authority = f"{authority_url.rstrip('/')}/{directory_id}"
        self.scope = graph_scope(graph_url)
        self._secret = client_secret
        self._http = http
        self._limiter = limiter
        self._app: Any = None
        self._lock = trio.Lock()
        self._token: str | None = None
        self._valid_until = float("-inf")
        #: The tenant GUID learned from the last token (None until one was issued).
        self.tenant_id: str | None = None
        #: Tokens obtained from the identity provider (not from a cache), for status and tests.
        self.issued = 0

    def __repr__(self) -> str:
        return f"MsalTokens(client_id={self.client_id!r}, authority={self.authority!r})"

    async def token(self) -> str:
        """A valid access token; raises :class:`TokenError`.

        Concurrent callers share one request. Cancellation waits for a
        request already running in its thread (bounded by the HTTP timeout).
        """
        if self._token is not None and trio.current_time() < self._valid_until:
            return self._token
        async with self._lock:
            if self._token is not None and trio.current_time() < self._valid_until:
                return self._token
            return await self._fetch(drop_cached=False)

    async def refresh(self, refused: str | None = None) -> str:
        """A new token, not from any cache: Graph refused *refused* (a 401). Raises :class:`TokenError`.

        When another task already replaced *refused* meanwhile, that newer
        token is returned without asking again.
        """
        async with self._lock:
            if self._token is not None and self._token != refused and trio.current_time() < self._valid_until:
                return self._token
            return await self._fetch(drop_cached=True)

    async def _fetch(self, *, drop_cached: bool) -> str:
        self._token, self._valid_until = None, float("-inf")
        started = trio.current_time()
        token, lifetime = await trio.to_thread.run_sync(self._acquire, drop_cached, limiter=self._limiter)
        self._token = token
        self._valid_until = started + max(lifetime - EXPIRY_MARGIN, 0.0)
        self.tenant_id = token_tenant(token) or self.tenant_id
        return token

    def _acquire(self, drop_cached: bool) -> tuple[str, float]:
        """In a worker thread: build the app if needed, then ask msal (cache first)."""
        import msal

        try:
            if self._app is None:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id, client_credential=self._secret, authority=self.authority,
                    http_client=self._http, instance_discovery=False,
                )
            if drop_cached:
                self._app.remove_tokens_for_client()
            result = self._app.acquire_token_for_client(scopes=[self.scope])
        except TokenError:
            raise
        except (httpx.TransportError, msal.exceptions.MsalServiceError, json.JSONDecodeError) as exc:
            raise TokenError(f"identity provider unreachable or failing: {type(exc).__name__}: {exc}",
                             transient=True) from exc
        except ValueError as exc:
            # msal's refusals of the authority itself: OIDC discovery answered 4xx (no such
            # directory), or an authority/token endpoint that is not https.
            raise TokenError(f"authority {self.authority!r} refused: {exc}", transient=False) from exc
        token, lifetime = _result_token(result)
        if result.get("token_source") != "cache":
            self.issued += 1
        return token, lifetime
