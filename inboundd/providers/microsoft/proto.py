"""Microsoft Graph decisions without I/O: errors, times, resource paths, post-actions.

Plain functions over values, table-tested in ``tests/test_microsoft_pure.py``.
The HTTP client (``graph.py``) asks :func:`classify_failure` what a Graph
answer means and raises accordingly; nothing here sends or waits.

Sources for the wire formats: ../shared/PROVIDERS-NOTES.md, section A
(Microsoft Graph documentation, ``concepts/throttling.md``,
``delta-query-overview.md``, ``outlook-immutable-id.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Literal
from urllib.parse import quote

import msgspec

from ...ingress.retry_after import parse_retry_after

__all__ = [
    "FailureKind",
    "GraphFailure",
    "IMMUTABLE_ID",
    "PostAction",
    "classify_failure",
    "format_graph_time",
    "delta_path",
    "message_path",
    "parse_graph_time",
    "parse_post_action",
    "subscription_resource",
]

#: Sent on every Graph call: message ids stay the same when a message moves between folders.
IMMUTABLE_ID = 'IdType="ImmutableId"'

# --------------------------------------------------------------------------- errors


FailureKind = Literal[
    "not_found",    # 404: the message, folder or subscription is gone
    "throttled",    # 429: wait Retry-After (or back off)
    "unavailable",  # 5xx: Graph is failing; retry later, honouring Retry-After
    "auth",         # 401: the token was refused
    "forbidden",    # 403: the app lacks a permission (Mail.Read / Mail.ReadWrite) or a policy blocks it
    "sync_reset",   # 410 or syncStateNotFound: the delta token is no longer valid; resync
    "bad_request",  # 400: Graph refused what we sent (e.g. a subscription it could not validate)
    "error",        # anything else
]

#: Error codes that mean "your delta token is no longer valid" whatever the status.
_SYNC_RESET_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})


class GraphFailure(msgspec.Struct, frozen=True):
    """What a non-2xx Graph answer means."""

    kind: FailureKind
    status: int
    #: ``error.code`` from the body (``ErrorItemNotFound``, ``syncStateNotFound`` …), or "".
    code: str = ""
    message: str = ""
    #: Seconds the server asked us to wait, when it said.
    retry_after: float | None = None

    def describe(self) -> str:
        """One line for logs and ledger errors: ``404 ErrorItemNotFound: The specified object …``."""
        code = f" {self.code}" if self.code else ""
        message = f": {self.message}" if self.message else ""
        return f"{self.status}{code}{message}"


class _ErrorBody(msgspec.Struct):
    code: str = ""
    message: str = ""


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None


def _error_body(body: bytes) -> _ErrorBody:
    try:
        envelope = msgspec.json.decode(body, type=_ErrorEnvelope)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _ErrorBody()
    return envelope.error or _ErrorBody()


def classify_failure(status: int, headers: Mapping[str, str], body: bytes, now: float) -> GraphFailure:
    """Classify a non-2xx Graph answer (*headers* with lower-case names, *now* = wall clock).

    The body is Graph's ``{"error": {"code", "message"}}`` when it is JSON;
    anything else still classifies by status. ``retry_after`` is read for
    every status (Graph sends it with 429 and 503, sometimes with others).
    """
    error = _error_body(body)
    code, message = error.code, error.message[:300]
    retry_after = parse_retry_after(headers.get("retry-after"), now)

    def failure(kind: FailureKind) -> GraphFailure:
        return GraphFailure(kind, status, code, message, retry_after)

    if status == 410 or code.lower() in _SYNC_RESET_CODES:
        return failure("sync_reset")
    if status == 404:
        return failure("not_found")
    if status == 429:
        return failure("throttled")
    if status == 401:
        return failure("auth")
    if status == 403:
        return failure("forbidden")
    if status >= 500:
        return failure("unavailable")
    if status == 400:
        return failure("bad_request")
    return failure("error")


# --------------------------------------------------------------------------- times


def parse_graph_time(text: str) -> float:
    """Graph's ``2026-01-03T11:00:00.0000000Z`` (any ISO 8601 with a zone) as epoch seconds.

    Raises ``ValueError`` naming the value; a time without a zone is refused
    rather than guessed.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected an ISO 8601 date-time like 2026-01-03T11:00:00Z, got {text!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"date-time without a time zone: {text!r}")
    return when.timestamp()


def format_graph_time(epoch: float) -> str:
    """Epoch seconds as Graph wants them in requests: ``2026-01-03T11:00:00.000Z`` (UTC, milliseconds)."""
    when = datetime.fromtimestamp(epoch, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- resources and paths


def subscription_resource(mailbox: str, folder: str) -> str:
    """The subscription ``resource`` of one folder: ``users/{mailbox}/mailFolders('{folder}')/messages``.

    A quote inside the folder name is doubled (an OData string literal).
    """
    return f"users/{mailbox}/mailFolders('{folder.replace(chr(39), chr(39) * 2)}')/messages"


def message_path(mailbox: str, message_id: str, *suffix: str) -> str:
    """``users/{mailbox}/messages/{id}[/suffix…]`` below ``graph_url``, mailbox and id percent-encoded.

    Message ids may contain ``/``, ``+`` and ``=``; *suffix* parts (``$value``,
    ``move``) are literal.
    """
    return "/".join(["users", quote(mailbox, safe="@"), "messages", quote(message_id, safe=""), *suffix])


def delta_path(mailbox: str, folder: str) -> str:
    """``users/{mailbox}/mailFolders/{folder}/messages/delta`` below ``graph_url`` (folder name or id)."""
    return f"users/{quote(mailbox, safe='@')}/mailFolders/{quote(folder, safe='')}/messages/delta"


# --------------------------------------------------------------------------- post-actions


class PostAction(msgspec.Struct, frozen=True):
    """What to do with a message in the mailbox once it is committed."""

    kind: Literal["none", "mark_read", "move"]
    #: Target folder of ``move`` (well-known name or folder id).
    folder: str = ""


def parse_post_action(text: str) -> PostAction:
    """Parse ``none``, ``mark_read`` or ``move:FOLDER``; raises ``ValueError`` naming the value."""
    value = text.strip()
    if value in ("none", "mark_read"):
        return PostAction(value)  # type: ignore[arg-type]
    if value.startswith("move:") and value[5:].strip():
        return PostAction("move", value[5:].strip())
    raise ValueError(f'post_action: expected "none", "mark_read" or "move:FOLDER", got {text!r}')
