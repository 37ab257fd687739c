"""The ``[[google]]`` table: one Gmail mailbox, its credentials, its push subscription.

Pure module: the struct with its cross-field checks, and :func:`check_accounts`
(the provider's check across every ``[[google]]`` table, run once the
secrets are read): one mailbox per account, one ``certs_url`` for all (a push
token is verified before the mailbox it names is known), and credentials
that parse (``oauth.parse_credentials``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from ...config_convert import Duration, ReadableFile, SecretKey, doc
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
    about = """One [[google]] table per Gmail or Google Workspace mailbox (none by default).
Gmail publishes "this mailbox changed" to a Pub/Sub topic; a push subscription posts it to
POST /webhooks/google on the http listener (behind an HTTPS front end) with an OIDC token, verified
before anything else: RS256 with Google's certificates, iss accounts.google.com, aud = push_audience,
email = push_service_account, email_verified, exp and iat within 60 s; anything else is answered 401
or 403 and nothing else happens. A valid push is answered 204 once its job is in Redis (503 if Redis
did not take it, so Pub/Sub retries); unknown mailboxes and unreadable data are answered 204 and counted.
A consumer then walks the mailbox's history and queues one job per new message. Set up once per Google
Cloud project: the topic, Gmail's right to publish to it, and a push subscription with an OIDC token:

  gcloud pubsub topics create inboundd-gmail
  gcloud pubsub topics add-iam-policy-binding inboundd-gmail \\
    --member=serviceAccount:gmail-api-push@system.gserviceaccount.com \\
    --role=roles/pubsub.publisher
  gcloud pubsub subscriptions create inboundd-gmail-push --topic=inboundd-gmail \\
    --push-endpoint=https://inbound.example.com/webhooks/google \\
    --push-auth-service-account=pubsub-push@acme.iam.gserviceaccount.com \\
    --push-auth-token-audience=https://inbound.example.com/webhooks/google

Credentials: a service-account key whose client id has domain-wide delegation (Admin console: Security,
API controls, Domain-wide delegation) for the scope https://www.googleapis.com/auth/gmail.readonly, or
https://www.googleapis.com/auth/gmail.modify when post_action is not "none"; or an OAuth authorized-user
file whose refresh token was granted one of those scopes."""

    email: Annotated[str, doc(
        "The mailbox: the Gmail API's userId and what pushes name; one account per mailbox.",
        examples=["support@acme.com"])]
    topic: Annotated[str, doc(
        "The Pub/Sub topic users.watch publishes to (in the project of the credentials).",
        examples=["projects/acme/topics/inboundd-gmail"])]
    push_audience: Annotated[str, doc(
        "The audience of the push subscription's OIDC token (its --push-auth-token-audience).",
        examples=["https://inbound.example.com/webhooks/google"])]
    push_service_account: Annotated[str, doc(
        "The service account the push subscription signs its tokens as (its --push-auth-service-account).",
        examples=["pubsub-push@acme.iam.gserviceaccount.com"])]
    credentials_file: Annotated[str, SecretKey.file(required=True), doc(
        "File holding the Google credentials JSON: a service-account key (domain-wide delegation; tokens are "
        "requested for email) or an authorized-user file with a refresh token. The token_uri inside is "
        "honoured. A refresh token Google rotates is kept in PostgreSQL (inbound_oauth_tokens), so a restart "
        "never presents a revoked one.", examples=["/etc/inboundd/gmail.json"])] = ""
    credentials_credential: Annotated[str, SecretKey.credential(required=True), doc(
        "Systemd credential holding the Google credentials JSON, instead of credentials_file.")] = ""
    label_ids: Annotated[list[str], doc(
        "Labels users.watch covers ([]: the whole mailbox); new messages with none of them are not queued.")] = (
        msgspec.field(default_factory=lambda: ["INBOX"]))
    skip_labels: Annotated[list[str], doc(
        "New messages carrying any of these labels are not queued (a watch on INBOX also reports sent mail "
        "and drafts).")] = msgspec.field(default_factory=lambda: list(DEFAULT_SKIP_LABELS))
    post_action: Annotated[str, doc(
        "After a message is stored: none, mark_read (remove UNREAD), archive (remove INBOX) or label:NAME "
        "(add that label, created if missing); anything but none needs the gmail.modify scope.")] = "none"
    resync_interval: Annotated[Duration, doc(
        "Walk the mailbox's history this often even without a push (Pub/Sub may drop pushes); at least 1m. "
        "The watch itself is renewed daily by the daemon holding the mailbox's lease.")] = 1800.0
    gmail_url: Annotated[str, doc("Gmail API base URL (proxies, tests).")] = DEFAULT_GMAIL_URL
    certs_url: Annotated[str, doc(
        "Google's push-token signing certificates ({kid: PEM}); the same for every [[google]] table, since a "
        "token is verified before the mailbox it names is known.")] = DEFAULT_CERTS_URL
    ca_file: Annotated[ReadableFile, doc(
        "Extra CA bundle (PEM) trusted besides the system's for gmail_url, the token endpoint and certs_url; "
        "\"\": the system's only.")] = ""

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
        secret = cfg.secret(f"google[{index}].credentials")
        if secret is not None:
            try:
                parse_credentials(secret.reveal())
            except ValueError as exc:
                problems.append(f"{secret.source}: {exc}")
