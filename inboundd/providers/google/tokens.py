"""Access tokens of one Gmail account: google-auth in a worker thread, over httpx, rotation persisted.

google-auth is blocking (PROVIDERS-NOTES B4), so a refresh runs through
``trio.to_thread.run_sync`` with an :class:`HttpxRequest` transport: an
``httpx.Client`` that trusts the account's ``ca_file`` besides the system's.
One :class:`AccessTokens` per account holds the credentials object and
serialises refreshes with a ``trio.Lock``; callers get a cached token until
google-auth considers it expired (a few minutes early).

A refresh token the endpoint rotates (a new ``refresh_token`` in the answer)
is written to ``inbound_oauth_tokens`` before the new access token is used,
and read back on start, so neither a restart nor another daemon presents the
revoked one. A refusal that only the operator can fix (``invalid_grant``,
``unauthorized_client``: reconsent, or a missing delegation grant) is an
:class:`AuthFailure`; anything else — the endpoint unreachable, 5xx — a
:class:`~inboundd.outcomes.TransientError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import httpx
import trio
from google.auth import exceptions as google_exceptions
from google.auth import transport as google_transport
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from ... import log
from ...outcomes import TransientError
from .oauth import CredentialsInfo, token_origin

__all__ = ["AccessTokens", "AuthFailure", "HttpxRequest", "RotatedTokens", "TOKEN_TIMEOUT"]

_log = log.get_logger("google.tokens")

#: One token-endpoint request (google-auth retries 5xx itself, a few times).
TOKEN_TIMEOUT = 10.0


class AuthFailure(Exception):
    """Google refused the account's credentials; retrying soon cannot help.

    ``reason`` is the OAuth error (``invalid_grant``, ``unauthorized_client``,
    ``insufficientPermissions`` …), ``detail`` its description.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RotatedTokens(Protocol):
    """Where rotated refresh tokens live (``store.oauth_tokens.DbRotatedTokens``)."""

    async def load(self, account: str, origin: str) -> str | None: ...

    async def save(self, account: str, origin: str, refresh_token: str) -> None: ...


class _Response(google_transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxRequest(google_transport.Request):
    """google-auth's transport interface over a (blocking) ``httpx.Client``."""

    def __init__(self, client: httpx.Client, timeout: float = TOKEN_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None, **kwargs: Any) -> _Response:
        try:
            response = self.client.request(method, url, content=body, headers=headers,
                                           timeout=timeout or self.timeout)
        except httpx.HTTPError as exc:
            raise google_exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc
        return _Response(response)


def _oauth_error(exc: google_exceptions.GoogleAuthError) -> tuple[str, str]:
    """(error, description) of a token-endpoint refusal; google-auth keeps the answer in ``args[1]``."""
    data = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, str):
            return error, str(data.get("error_description") or "")[:200]
    return "refresh_failed", str(exc.args[0] if exc.args else exc)[:200]


class AccessTokens:
    """The access tokens of one account (its ``id``), refreshed as needed.

    ``subject`` is the mailbox a service account acts for (domain-wide
    delegation); ``scopes`` what it asks for (an authorized-user token keeps
    the scopes it was granted).
    """

    def __init__(self, account: str, info: CredentialsInfo, *, subject: str, scopes: list[str],
                 client: httpx.Client, rotated: RotatedTokens | None,
                 limiter: trio.CapacityLimiter | None = None) -> None:
        self.account = account
        self.info = info
        self.subject = subject
        self.scopes = scopes
        self.request = HttpxRequest(client)
        self.rotated = rotated
        self.limiter = limiter
        self.origin = token_origin(info.refresh_token) if info.refresh_token else ""
        self.refreshes = 0
        self._lock = trio.Lock()
        self._loaded = rotated is None or info.kind != "authorized_user"
        self._unsaved: str | None = None
        self._stale = False
        self._credentials = self._build(info.refresh_token)

    def _build(self, refresh_token: str | None) -> Any:
        if self.info.kind == "service_account":
            return service_account.Credentials.from_service_account_info(
                self.info.info, scopes=self.scopes, subject=self.subject,
            )
        info = self.info.info
        return user_credentials.Credentials(
            token=None, refresh_token=refresh_token, token_uri=self.info.token_uri,
            client_id=info["client_id"], client_secret=info["client_secret"],
        )

    @property
    def refresh_token(self) -> str | None:
        """The refresh token in use (authorized-user credentials), for tests and diagnostics."""
        return getattr(self._credentials, "refresh_token", None)

    def invalidate(self) -> None:
        """The API refused the current token (401): the next :meth:`get` refreshes."""
        self._stale = True

    async def get(self) -> str:
        """A valid access token. Refreshes at most once at a time per account.

        Raises :class:`AuthFailure` or :class:`~inboundd.outcomes.TransientError`.
        Cancellation waits for a refresh already in its thread (bounded by
        :data:`TOKEN_TIMEOUT` per request), so the credentials are never
        changed by a thread nobody waits for.
        """
        async with self._lock:
            if not self._loaded:
                await self._load_rotation()
            if self._unsaved is not None:
                await self._save_rotation()
            credentials = self._credentials
            if credentials.valid and not self._stale:
                return credentials.token
            try:
                await self._refresh()
            except AuthFailure:
                if not await self._adopt_newer_rotation():
                    raise
                await self._refresh()
            self._stale = False
            return self._credentials.token

    async def _refresh(self) -> None:
        credentials = self._credentials
        before = self.refresh_token
        try:
            await trio.to_thread.run_sync(credentials.refresh, self.request, limiter=self.limiter)
        except google_exceptions.RefreshError as exc:
            error, description = _oauth_error(exc)
            if exc.retryable:
                raise TransientError(f"token endpoint of {self.account!r}: {error} {description}".strip()) from exc
            log.event(_log, "google.token.refused", level=logging.WARNING, account=self.account, error=error,
                      description=description)
            raise AuthFailure(error, description) from exc
        except google_exceptions.TransportError as exc:
            raise TransientError(f"token endpoint of {self.account!r} unreachable: {exc}") from exc
        except google_exceptions.GoogleAuthError as exc:  # malformed key or answer: the operator must look
            raise AuthFailure("credentials_invalid", str(exc)[:200]) from exc
        self.refreshes += 1
        after = self.refresh_token
        log.event(_log, "google.token.refreshed", level=logging.DEBUG, account=self.account,
                  rotated=bool(after and after != before))
        if after and after != before and self.rotated is not None:
            self._unsaved = after
            await self._save_rotation()

    async def _load_rotation(self) -> None:
        assert self.rotated is not None
        try:
            newer = await self.rotated.load(self.account, self.origin)
        except Exception as exc:  # without it we might present a revoked token: wait, do not guess
            raise TransientError(f"cannot read the rotated refresh token of {self.account!r}: {exc}") from exc
        self._loaded = True
        if newer and newer != self.refresh_token:
            self._credentials = self._build(newer)
            log.event(_log, "google.token.rotation_loaded", account=self.account)

    async def _adopt_newer_rotation(self) -> bool:
        """After a refusal: another daemon may have rotated the token. True if a newer one was adopted."""
        if self.rotated is None or self.info.kind != "authorized_user":
            return False
        try:
            newer = await self.rotated.load(self.account, self.origin)
        except Exception:  # noqa: BLE001 - the refusal stands
            return False
        if not newer or newer == self.refresh_token:
            return False
        self._credentials = self._build(newer)
        log.event(_log, "google.token.rotation_loaded", account=self.account, after="refusal")
        return True

    async def _save_rotation(self) -> None:
        """Persist the rotated refresh token; on failure keep it pending and say so loudly."""
        assert self.rotated is not None and self._unsaved is not None
        token = self._unsaved
        try:
            await self.rotated.save(self.account, self.origin, token)
        except Exception as exc:  # noqa: BLE001 - the token works now; retried on the next get()
            log.event(_log, "google.token.rotation_unsaved", level=logging.ERROR, account=self.account,
                      error=f"{type(exc).__name__}: {exc}",
                      note="a restart before this is saved would present a revoked refresh token")
            return
        self._unsaved = None
        log.event(_log, "google.token.rotation_saved", account=self.account)
