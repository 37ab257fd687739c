"""A configured Microsoft 365 account at run time: its settings, secret, tokens, Graph client and auth state.

Built from the ``[[microsoft]]`` tables (:func:`build_accounts`); the
renewer, the webhook handler and the consume-time source of one daemon share
the same :class:`MicrosoftAccount` objects, so an auth failure seen by any of
them pauses the account for all (and for nobody else).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import trio

from ...backoff import Backoff
from ...config_convert import Secret
from ...ingress.auth import AuthPolicy
from ...ingress.httpclients import HttpClients
from .config import MicrosoftAccountConfig
from .graph import GraphClient
from .proto import PostAction, parse_post_action
from .token import MsalTokens

__all__ = ["AUTH_RETRY_INTERVAL", "MicrosoftAccount", "build_accounts"]

#: After Graph or Azure AD refused the app's credentials, the account waits this long before it tries
#: again (a wrong secret or a revoked consent is not fixed in seconds); SIGHUP retries at once.
AUTH_RETRY_INTERVAL = 900.0


class MicrosoftAccount:
    """One ``[[microsoft]]`` account, ready to call Graph."""

    def __init__(self, config: MicrosoftAccountConfig, secret: Secret | None, clients: HttpClients) -> None:
        self.config = config
        self.secret = secret
        self.tokens = MsalTokens(
            client_id=config.client_id, client_secret=secret.reveal() if secret else "",
            directory_id=config.directory_id, authority_url=config.authority_url, graph_url=config.graph_url,
            http=clients.sync_client(config.ca_file), limiter=clients.token_limiter,
        )
        self.graph = GraphClient(clients.async_client(config.ca_file), config.graph_url, config.mailbox, self.tokens)
        self.post_action: PostAction = parse_post_action(config.post_action)
        # One refusal after a fresh token is conclusive: pause at once, retry slowly.
        self.auth = AuthPolicy(1, AUTH_RETRY_INTERVAL, Backoff(1.0, 60.0))
        #: While paused (trio time), fetches fail fast instead of calling Graph; and why.
        self.paused_until = float("-inf")
        self.auth_error: str | None = None
        self._fingerprint = hashlib.sha256(
            msgspec.json.encode([msgspec.to_builtins(config), secret.reveal() if secret else None])
        ).hexdigest()

    @property
    def id(self) -> str:
        return self.config.id

    def fingerprint(self) -> str:
        """Changes when anything that needs new tokens, a new client or new subscriptions changed (reload)."""
        return self._fingerprint

    def tenant_ids(self) -> frozenset[str]:
        """The Azure AD tenant ids its notifications may carry (configured, and learned from its token)."""
        ids = {self.config.directory_id.lower()}
        if self.tokens.tenant_id:
            ids.add(self.tokens.tenant_id)
        return frozenset(ids)

    # ------------------------------------------------------------------ auth failures

    def paused(self) -> bool:
        return trio.current_time() < self.paused_until

    def auth_failed(self, message: str) -> float:
        """Graph or Azure AD refused the credentials: pause the account; returns the seconds it stays paused."""
        retry = self.auth.auth_failed(message, trio.current_time())
        self.auth_error = message
        if retry.state == "auth_failed":
            self.paused_until = trio.current_time() + retry.delay
        return retry.delay

    def authenticated(self) -> None:
        """A Graph call succeeded: whatever paused the account is over."""
        if self.auth.consecutive or self.auth_error:
            self.auth.logged_in(trio.current_time())
            self.auth_error = None
            self.paused_until = float("-inf")

    def kick(self) -> None:
        """An operator's reload: try again now (a still-wrong secret pauses again at the next refusal)."""
        self.paused_until = float("-inf")


def build_accounts(cfg: Any, clients: HttpClients) -> dict[str, MicrosoftAccount]:
    """Every ``[[microsoft]]`` account of *cfg*, by id, with its secret."""
    accounts = {}
    for index, config in enumerate(getattr(cfg, "microsoft", None) or []):
        accounts[config.id] = MicrosoftAccount(config, cfg.secret(f"microsoft[{index}].client_secret"), clients)
    return accounts
