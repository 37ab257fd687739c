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

from ...backoff import Backoff
from ...ingress.auth import AuthPolicy
from ...ingress.httpclients import HttpClients
from .config import GoogleAccountConfig
from .gmail_api import GmailApi
from .proto import PostAction, parse_post_action
from .oauth import CredentialsInfo, parse_credentials, scopes_for
from .tokens import AccessTokens, RotatedTokens

__all__ = ["AUTH_RETRY_INTERVAL", "AccountAuth", "GoogleAccount", "HttpClients", "build_account", "by_email"]

#: An account whose credentials Google refused is paused this long between tries (renewal, walks, fetches).
AUTH_RETRY_INTERVAL = 900.0


class AccountAuth:
    """Whether an account's credentials work: shared by its renewer, its walks and its fetches.

    Google's refusals (``invalid_grant``, ``unauthorized_client``,
    ``insufficientPermissions``) do not heal by retrying, so the first one
    pauses the account (the auth-failure policy with a limit of one) for
    :data:`AUTH_RETRY_INTERVAL`: its jobs wait in the queue without calling
    Google, its state shows ``auth_failed`` with Google's reason, and other
    accounts go on. Any success (a renewal, a fetch) ends the pause; so does
    a reload (:meth:`kick`). Times are wall-clock seconds.
    """

    def __init__(self, retry_interval: float = AUTH_RETRY_INTERVAL) -> None:
        self.policy = AuthPolicy(1, retry_interval, Backoff(1.0, retry_interval))
        self.error: str | None = None
        self.paused_until: float | None = None

    def refused(self, reason: str, now: float) -> float:
        """Google refused the credentials at *now*: pause; returns how long."""
        retry = self.policy.auth_failed(reason, now)
        self.error = reason
        self.paused_until = now + retry.delay
        return retry.delay

    def worked(self, now: float) -> None:
        """A call with the credentials succeeded: the account is not paused."""
        self.policy.logged_in(now)
        self.error = None
        self.paused_until = None

    def paused_for(self, now: float) -> float | None:
        """Seconds the account stays paused, or None when it is not."""
        if self.paused_until is None or now >= self.paused_until:
            return None
        return self.paused_until - now

    def kick(self) -> None:
        """Try again at once (a reload may have fixed the credentials); a refusal pauses again."""
        self.paused_until = None


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
        self.auth = AccountAuth()
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
