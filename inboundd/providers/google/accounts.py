"""A configured Gmail account at run time: its config, credentials, tokens and API client.

HTTP clients are shared: one ``httpx.AsyncClient`` (Gmail calls, certificate
fetches) and one blocking ``httpx.Client`` (google-auth's token requests, in
worker threads) per distinct ``ca_file``: :class:`~inboundd.ingress.httpclients.HttpClients`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec

from ...ingress.auth import AccountPause
from ...ingress.httpclients import HttpClients
from .config import GoogleAccountConfig
from .gmail_api import GmailApi
from .proto import PostAction, parse_post_action
from .oauth import CredentialsInfo, parse_credentials, scopes_for
from .tokens import AccessTokens, RotatedTokens

__all__ = ["AUTH_RETRY_INTERVAL", "GoogleAccount", "HttpClients", "build_account", "by_email"]

#: An account whose credentials Google refused is paused this long between tries (renewal, walks, fetches).
AUTH_RETRY_INTERVAL = 900.0


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
        #: Whether Google refused the credentials lately: shared by the renewer, the walks and the fetches.
        self.auth = AccountPause(AUTH_RETRY_INTERVAL)
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
