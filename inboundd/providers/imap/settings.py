"""The ``[[imap]]`` table: one IMAP account (its folders, TLS, credentials, timing, ownership)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from ...config_convert import Duration, ReadableFile, Renamed, SecretKey, doc
from ...config_schema import AccountConfig

__all__ = ["ImapAccountConfig"]


class ImapAccountConfig(AccountConfig, kw_only=True):
    about = "One [[imap]] table per IMAP account (none by default)."

    host: Annotated[str, doc("The IMAP server's host name.", examples=["imap.example.com"])]
    username: Annotated[str, doc("The account's login name.", examples=["support@example.com"])]
    port: Annotated[int, doc("The server's port; 0: 993 with tls = \"implicit\", 143 otherwise.", ge=0, le=65535)] = 0
    tls: Annotated[Literal["implicit", "starttls", "none"], doc(
        "implicit: TLS from the first byte (IMAPS); starttls: upgraded with STARTTLS; none: no TLS (loopback "
        "testing only).")] = "implicit"
    ca_file: Annotated[ReadableFile, doc(
        "CA bundle (PEM) to verify the server certificate with; \"\": the system's.")] = ""
    auth: Annotated[Literal["password", "xoauth2"], doc(
        "How to log in: password (LOGIN with the password secret), or xoauth2 (an OAuth 2 access token from "
        "oauth_token_file).")] = "password"
    password_file: Annotated[str, SecretKey.file(required=True), doc(
        "File holding the password (with auth = \"password\").",
        examples=["/etc/inboundd/support.password"])] = ""
    password_credential: Annotated[str, SecretKey.credential(required=True), doc(
        "Systemd credential holding the password, instead of password_file.")] = ""
    oauth_token_file: Annotated[ReadableFile, doc(
        "File holding the OAuth 2 access token (with auth = \"xoauth2\"; plain, or JSON with an access_token "
        "field); read again at every login, so another program may refresh it.")] = ""
    folders: Annotated[list[str], doc("Folders to watch, one listener each.")] = msgspec.field(
        default_factory=lambda: ["INBOX"])
    start_from: Annotated[str, doc(
        "What a folder without a stored cursor starts with: \"now\" (only mail arriving from now on), \"all\" "
        "(every message in it), or \"last:N\" (its N newest messages).")] = "now"
    idle: Annotated[bool, doc("Use IDLE when the server offers it; else (or without it) poll.")] = True
    idle_refresh: Annotated[Duration, doc("Re-issue IDLE this often (at most 29m, RFC 2177).")] = 1500.0
    poll_interval: Annotated[Duration, doc(
        "Polling period when the server lacks IDLE, idle is false, or with poll_with_idle.")] = 60.0
    poll_with_idle: Annotated[bool, doc("Also poll while idling, as a safety net.")] = False
    read_timeout: Annotated[Duration, doc(
        "Each answer the listener waits for (to a command, to ending IDLE, to EXAMINE) must arrive within this "
        "long; else the connection is taken for dead, dropped and opened again.")] = 60.0
    auth_failure_limit: Annotated[int, doc(
        "After this many consecutive authentication failures the listener reports auth_failed and retries only "
        "every auth_retry_interval (and on SIGHUP).", ge=1)] = 3
    auth_retry_interval: Annotated[Duration, doc(
        "Retry period of a listener in auth_failed.")] = 900.0
    reconnect_base: Annotated[Duration, doc(
        "First reconnect delay: reconnects back off exponentially from it, up to reconnect_cap, with jitter; "
        "the delay starts over after a healthy period.")] = 1.0
    reconnect_cap: Annotated[Duration, doc("Longest reconnect delay.")] = 300.0
    post_action: Annotated[str, doc(
        "What to do with a message in its folder once stored: \"none\", \"seen\" (flag it \\Seen), \"delete\" "
        "(expunge it) or \"move:FOLDER\".")] = "none"
    fetch_connections: Annotated[int, doc(
        "Connections per account used to fetch messages at consume time.", ge=1, le=32)] = 2
    examine_interval: Annotated[Duration, Renamed("noop_interval"), doc(
        "Every this long while idling, end IDLE and EXAMINE the folder again, whatever the server said "
        "meanwhile (keepalives prove the connection, not the folder): a dead connection is then noticed "
        "within read_timeout, and a folder replaced under the listener by its new UIDVALIDITY."
    )] = 300.0
    lease: Annotated[Duration, doc(
        "Mailbox ownership across daemons sharing Redis: the owner renews a lease this long; after a crash "
        "another daemon takes over within it. 0 disables ownership."
    )] = 30.0

    def check(self, path: str, problems: list[str]) -> None:
        if self.port == 0:
            self.port = 993 if self.tls == "implicit" else 143
        if not self.folders:
            problems.append(f"{path}.folders: expected at least one folder")
        if not re.fullmatch(r"now|all|last:[1-9]\d*", self.start_from):
            problems.append(
                f"{path}.start_from: expected \"now\", \"all\" or \"last:N\", got {self.start_from!r}"
            )
        if self.idle_refresh > 29 * 60:
            problems.append(f"{path}.idle_refresh: must be at most 29m (RFC 2177)")
        for name in ("idle_refresh", "examine_interval", "poll_interval", "read_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{path}.{name}: must be greater than 0 (0 would be a busy loop)")
        if not re.fullmatch(r"none|seen|delete|move:.+", self.post_action):
            problems.append(
                f"{path}.post_action: expected \"none\", \"seen\", \"delete\" or \"move:FOLDER\", "
                f"got {self.post_action!r}"
            )
        if self.post_action.startswith("move:") and self.post_action[5:] in self.folders:
            problems.append(
                f"{path}.post_action: moves into {self.post_action[5:]!r}, which is also in folders: "
                "every moved message would be ingested again"
            )
        if 0 < self.lease < 1.0:
            problems.append(f"{path}.lease: must be 0 (no ownership) or at least 1s")
        if self.auth == "xoauth2" and not self.oauth_token_file:
            problems.append(f"{path}.oauth_token_file: required when auth = \"xoauth2\"")

    def leases(self) -> dict[str, float]:
        return {"lease": self.lease}

    def secret_needed(self, name: str, required: bool) -> bool:
        # XOAUTH2 logs in with a token from oauth_token_file, not a password.
        return required and not (name == "password" and self.auth == "xoauth2")
