"""The ``[[imap]]`` table: one IMAP account (its folders, TLS, credentials, timing, ownership)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from ...config_convert import Duration, ReadableFile, Renamed, SecretKey
from ...config_schema import AccountConfig

__all__ = ["ImapAccountConfig"]


class ImapAccountConfig(AccountConfig, kw_only=True):
    host: str
    username: str
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    ca_file: ReadableFile = ""
    auth: Literal["password", "xoauth2"] = "password"
    password_file: Annotated[str, SecretKey.file(required=True)] = ""
    password_credential: Annotated[str, SecretKey.credential(required=True)] = ""
    oauth_token_file: ReadableFile = ""
    folders: list[str] = msgspec.field(default_factory=lambda: ["INBOX"])
    start_from: str = "now"
    idle: bool = True
    idle_refresh: Duration = 1500.0
    poll_interval: Duration = 60.0
    poll_with_idle: bool = False
    read_timeout: Duration = 60.0
    auth_failure_limit: Annotated[int, msgspec.Meta(ge=1)] = 3
    auth_retry_interval: Duration = 900.0
    reconnect_base: Duration = 1.0
    reconnect_cap: Duration = 300.0
    post_action: str = "none"
    fetch_connections: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    examine_interval: Annotated[Duration, Renamed("noop_interval"), msgspec.Meta(description=(
        "Every this long while idling, end IDLE and EXAMINE the folder again, whatever the server said "
        "meanwhile (keepalives prove the connection, not the folder): a dead connection is then noticed "
        "within read_timeout, and a folder replaced under the listener by its new UIDVALIDITY."
    ))] = 300.0
    lease: Annotated[Duration, msgspec.Meta(description=(
        "Mailbox ownership across daemons sharing Redis: the owner renews a lease this long; after a crash "
        "another daemon takes over within it. 0 disables ownership."
    ))] = 30.0

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

    def secret_needed(self, name: str, required: bool) -> bool:
        # XOAUTH2 logs in with a token from oauth_token_file, not a password.
        return required and not (name == "password" and self.auth == "xoauth2")
