"""Google credential files without I/O: which kind, what is missing, which scopes, which token.

Two kinds are accepted (``credentials_file`` / ``credentials_credential``):

* ``"type": "service_account"`` — a key with domain-wide delegation; tokens
  are requested for the mailbox (``subject`` = the account's ``email``). Needs
  ``client_email``, ``private_key`` and ``token_uri``.
* ``"type": "authorized_user"`` — an OAuth client plus a user's refresh
  token. Needs ``client_id``, ``client_secret``, ``refresh_token``;
  ``token_uri`` defaults to Google's. google-auth ignores a ``token_uri`` in
  this kind of file (PROVIDERS-NOTES E), so it is passed explicitly.

A refresh token that the token endpoint rotates must outlive the process:
:func:`token_origin` names the refresh token of the configured file, so a
rotated token stored under that name (``store/oauth_tokens``) is used while the
file is unchanged, and ignored once an operator puts a new one in the file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import msgspec

from .proto import PostAction

__all__ = [
    "DEFAULT_TOKEN_URI",
    "SCOPE_MODIFY",
    "SCOPE_READONLY",
    "CredentialsInfo",
    "parse_credentials",
    "scopes_for",
    "token_origin",
]

DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPE_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
#: Needed for post-actions (remove UNREAD or INBOX, add a label, create that label).
SCOPE_MODIFY = "https://www.googleapis.com/auth/gmail.modify"

_REQUIRED = {
    "service_account": ("client_email", "private_key", "token_uri"),
    "authorized_user": ("client_id", "client_secret", "refresh_token"),
}


class CredentialsInfo(msgspec.Struct, frozen=True):
    kind: Literal["service_account", "authorized_user"]
    #: The parsed file, as google-auth's ``from_*_info`` constructors take it.
    info: dict[str, Any]
    token_uri: str

    @property
    def refresh_token(self) -> str | None:
        return self.info.get("refresh_token") if self.kind == "authorized_user" else None


def parse_credentials(text: str) -> CredentialsInfo:
    """Parse a credentials file's contents; raises ``ValueError`` saying what is wrong (never the secret)."""
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON (line {getattr(exc, 'lineno', '?')}): expected a Google credentials file") from None
    if not isinstance(info, dict):
        raise ValueError("expected a JSON object (a Google credentials file)")
    kind = info.get("type")
    if kind not in _REQUIRED:
        raise ValueError(
            f"\"type\" is {str(kind)[:40]!r}: expected \"service_account\" (domain-wide delegation) "
            "or \"authorized_user\" (refresh token)"
        )
    missing = [key for key in _REQUIRED[kind] if not isinstance(info.get(key), str) or not info[key].strip()]
    if missing:
        raise ValueError(f"{kind} credentials lack {', '.join(missing)}")
    token_uri = info.get("token_uri") or DEFAULT_TOKEN_URI
    if not isinstance(token_uri, str) or not token_uri.startswith(("https://", "http://")):
        raise ValueError(f"token_uri: expected an http(s) URL, got {str(token_uri)[:80]!r}")
    return CredentialsInfo(kind=kind, info=info, token_uri=token_uri)


def scopes_for(action: PostAction) -> list[str]:
    """The narrowest Gmail scope the account needs: read-only unless it has a post-action."""
    return [SCOPE_READONLY] if action.kind == "none" else [SCOPE_MODIFY]


def token_origin(refresh_token: str) -> str:
    """A stable, non-secret name of *refresh_token* (SHA-256, hex)."""
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()
