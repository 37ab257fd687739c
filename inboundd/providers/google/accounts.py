"""A configured Gmail account at run time: its config, credentials, tokens and API client.

HTTP clients are shared: one ``httpx.AsyncClient`` (Gmail calls, certificate
fetches) and one blocking ``httpx.Client`` (google-auth's token requests, in
worker threads) per distinct ``ca_file``, owned by :class:`HttpClients` and
closed with it.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable
from typing import Any

import httpx
import msgspec
import trio

from .config import GoogleAccountConfig
from .gmail_api import GmailApi
from .gmail_proto import PostAction, parse_post_action
from .oauth import CredentialsInfo, parse_credentials, scopes_for
from .tokens import AccessTokens, RotatedTokens

__all__ = ["GoogleAccount", "HttpClients", "build_account"]

#: Gmail calls: connect quickly or report the API unreachable; a raw download may take a while.
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def ssl_context(ca_file: str) -> ssl.SSLContext:
    """The system's trust store, plus *ca_file* when given."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class HttpClients:
    """The httpx clients of the Google provider, by ``ca_file``. Close with :meth:`aclose`."""

    def __init__(self) -> None:
        self._async: dict[str, httpx.AsyncClient] = {}
        self._sync: dict[str, httpx.Client] = {}
        #: Token requests run in threads; a few at once are plenty (tokens live an hour).
        self.token_limiter = trio.CapacityLimiter(4)

    def async_client(self, ca_file: str = "") -> httpx.AsyncClient:
        client = self._async.get(ca_file)
        if client is None:
            client = self._async[ca_file] = httpx.AsyncClient(
                verify=ssl_context(ca_file), timeout=HTTP_TIMEOUT,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            )
        return client

    def sync_client(self, ca_file: str = "") -> httpx.Client:
        client = self._sync.get(ca_file)
        if client is None:
            client = self._sync[ca_file] = httpx.Client(verify=ssl_context(ca_file), timeout=HTTP_TIMEOUT)
        return client

    async def aclose(self) -> None:
        """Close every client (shielded: runs on the way out of cancelled scopes too)."""
        with trio.CancelScope(shield=True):
            for client in self._async.values():
                await client.aclose()
            for sync in self._sync.values():
                sync.close()
        self._async.clear()
        self._sync.clear()


class GoogleAccount:
    """One ``[[google]]`` account, ready to call Gmail."""

    def __init__(self, config: GoogleAccountConfig, credentials: CredentialsInfo, tokens: AccessTokens,
                 api: GmailApi) -> None:
        self.config = config
        self.credentials = credentials
        self.tokens = tokens
        self.api = api
        self.post_action: PostAction = parse_post_action(config.post_action)
        #: Id of the ``label:<name>`` post-action's label, once looked up.
        self.post_label_id: str | None = None
        self._fingerprint = _fingerprint(config, credentials)

    @property
    def id(self) -> str:
        return self.config.id

    def fingerprint(self) -> str:
        """Changes when anything that needs a new client or new tokens changed (reload)."""
        return self._fingerprint


def _fingerprint(config: GoogleAccountConfig, credentials: CredentialsInfo) -> str:
    data: Any = [msgspec.to_builtins(config), credentials.info]
    return hashlib.sha256(msgspec.json.encode(data)).hexdigest()


def build_account(config: GoogleAccountConfig, credentials_text: str, clients: HttpClients,
                  rotated: RotatedTokens | None) -> GoogleAccount:
    """The run-time account of *config*; raises ``ValueError`` when the credentials are unusable."""
    credentials = parse_credentials(credentials_text)
    tokens = AccessTokens(
        config.id, credentials, subject=config.email, scopes=scopes_for(parse_post_action(config.post_action)),
        client=clients.sync_client(config.ca_file), rotated=rotated, limiter=clients.token_limiter,
    )
    api = GmailApi(clients.async_client(config.ca_file), config.gmail_url, config.email, tokens)
    return GoogleAccount(config, credentials, tokens, api)


def by_email(accounts: Iterable[GoogleAccount]) -> dict[str, GoogleAccount]:
    """Accounts keyed by lower-cased mailbox address (how pushes name them)."""
    return {account.config.email.lower(): account for account in accounts}
