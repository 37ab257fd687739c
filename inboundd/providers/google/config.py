"""The ``[[google]]`` table: one Gmail mailbox, its credentials, its push subscription.

Pure module: the struct with its cross-field checks, and :func:`check_accounts`
(the provider's check across every ``[[google]]`` table, run once the
secrets are read): one mailbox per account, one ``certs_url`` for all (a push
token is verified before the mailbox it names is known), credentials that
parse (``oauth.parse_credentials``), and readable CA files.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import msgspec

from ...config_convert import Duration, SecretKey
from ...config_schema import AccountConfig
from .proto import POST_ACTION_PATTERN
from .oauth import parse_credentials

__all__ = ["DEFAULT_CERTS_URL", "DEFAULT_GMAIL_URL", "DEFAULT_SKIP_LABELS", "GoogleAccountConfig", "check_accounts"]

DEFAULT_GMAIL_URL = "https://gmail.googleapis.com"
#: Google's signing certificates as ``{kid: PEM}`` (the v1 form; see PROVIDERS-NOTES B2).
DEFAULT_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
DEFAULT_SKIP_LABELS = ("SENT", "DRAFT", "SPAM", "TRASH")

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_TOPIC = re.compile(r"projects/[^/\s]+/topics/[^/\s]+")
_HTTP_URL = re.compile(r"https?://[^\s/]+(/\S*)?")


class GoogleAccountConfig(AccountConfig, kw_only=True):
    #: The mailbox: the Gmail API's ``userId`` and the push's ``emailAddress``.
    email: str
    #: ``projects/<project>/topics/<topic>``; the Gmail watch publishes to it.
    topic: str
    #: The ``aud`` claim of the push subscription's OIDC token.
    push_audience: str
    #: The ``email`` claim of that token: the subscription's service account.
    push_service_account: str
    #: A service-account key (domain-wide delegation, subject = email) or an
    #: authorized-user file with a refresh token; the token_uri inside is honoured.
    credentials_file: Annotated[str, SecretKey.file(required=True)] = ""
    credentials_credential: Annotated[str, SecretKey.credential(required=True)] = ""
    label_ids: list[str] = msgspec.field(default_factory=lambda: ["INBOX"])
    skip_labels: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SKIP_LABELS))
    post_action: str = "none"
    #: A history walk this often even without a push (Pub/Sub may drop pushes).
    resync_interval: Duration = 1800.0
    gmail_url: str = DEFAULT_GMAIL_URL
    certs_url: str = DEFAULT_CERTS_URL
    #: Extra CA bundle (PEM) trusted besides the system's, for the Gmail API,
    #: the token endpoint and the certificates URL (proxies, tests).
    ca_file: str = ""

    def check(self, path: str, problems: list[str]) -> None:
        if not _EMAIL.fullmatch(self.email):
            problems.append(f"{path}.email: expected a mailbox address like \"support@acme.com\", got {self.email!r}")
        if not _TOPIC.fullmatch(self.topic):
            problems.append(
                f"{path}.topic: expected \"projects/<project>/topics/<topic>\", got {self.topic!r}"
            )
        if not self.push_audience.strip():
            problems.append(f"{path}.push_audience: must not be empty (the push subscription's OIDC audience)")
        if not _EMAIL.fullmatch(self.push_service_account):
            problems.append(
                f"{path}.push_service_account: expected the push subscription's service account "
                f"(name@project.iam.gserviceaccount.com), got {self.push_service_account!r}"
            )
        for key in ("label_ids", "skip_labels"):
            for index, label in enumerate(getattr(self, key)):
                if not label.strip():
                    problems.append(f"{path}.{key}[{index}]: must not be empty")
        overlap = sorted(set(self.label_ids) & set(self.skip_labels))
        if overlap:
            problems.append(
                f"{path}.skip_labels: {', '.join(overlap)} is also in label_ids: every watched message would be skipped"
            )
        if not re.fullmatch(POST_ACTION_PATTERN, self.post_action):
            problems.append(
                f"{path}.post_action: expected \"none\", \"mark_read\", \"archive\" or \"label:NAME\", "
                f"got {self.post_action!r}"
            )
        if self.resync_interval < 60:
            problems.append(f"{path}.resync_interval: must be at least 1m (each walk costs Gmail API quota)")
        for key in ("gmail_url", "certs_url"):
            if not _HTTP_URL.fullmatch(getattr(self, key)):
                problems.append(f"{path}.{key}: expected an http:// or https:// URL, got {getattr(self, key)!r}")


def check_accounts(cfg: Any, problems: list[str]) -> None:
    """Checks across every ``[[google]]`` table of *cfg*, and of each one's credentials (see the module docstring)."""
    accounts: list[GoogleAccountConfig] = list(getattr(cfg, "google", None) or [])
    mailboxes: dict[str, int] = {}
    for index, account in enumerate(accounts):
        first = mailboxes.setdefault(account.email.lower(), index)
        if first != index:
            problems.append(f"google[{index}].email: mailbox {account.email!r} is also google[{first}]'s "
                            "(a push names the mailbox, so it must belong to one account)")
        if account.certs_url != accounts[0].certs_url:
            problems.append(f"google[{index}].certs_url: every [[google]] account must use the same certs_url "
                            f"(google[0] uses {accounts[0].certs_url!r}): a push token is verified before "
                            "the mailbox it names is known")
        if account.ca_file and not os.access(account.ca_file, os.R_OK):
            problems.append(f"google[{index}].ca_file: cannot read {account.ca_file!r}")
        secret = cfg.secret(f"google[{index}].credentials")
        if secret is not None:
            try:
                parse_credentials(secret.reveal())
            except ValueError as exc:
                problems.append(f"{secret.source}: {exc}")
