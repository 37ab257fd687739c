"""Gmail decisions without I/O: history pages, resync bounds, watch timing, errors, post-actions.

The Gmail client (``gmail_api``) and the walker only move bytes and wait;
they ask this module what a response means and what to do next. Tests drive
every decision here directly, table by table (``tests/test_google_pure.py``).

Vocabulary:

* the *cursor* of a mailbox is the last ``historyId`` up to which every
  added message has a pointer job acknowledged by Redis. It only moves
  forward (:func:`advance`).
* a *walk* reads ``history.list`` from the cursor (``historyTypes=messageAdded``,
  every page) and turns the added messages into pointer jobs; the cursor then
  becomes the ``historyId`` of the last page.
* a *resync* replaces a walk when Gmail no longer knows the cursor (404): a
  ``messages.list`` bounded by date (:func:`plan_resync`).

Wire formats: ``gmail.v1.json`` (google-api-python-client discovery document)
and the push guide; see PROVIDERS-NOTES B1, B3, B5.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import msgspec

from ...ingress.retry_after import parse_retry_after

__all__ = [
    "HISTORY_PAGE_SIZE",
    "LIST_PAGE_SIZE",
    "POST_ACTION_PATTERN",
    "RENEW_EVERY",
    "RESYNC_MARGIN",
    "STALE_AFTER",
    "AddedMessage",
    "GmailFailure",
    "GmailFormatError",
    "HistoryPage",
    "MessageList",
    "PostAction",
    "ResyncPlan",
    "Selection",
    "WalkGate",
    "WatchResult",
    "advance",
    "check_fetch",
    "classify_error",
    "decode_raw",
    "history_params",
    "list_params",
    "modify_body",
    "next_watch_renewal",
    "parse_history_page",
    "parse_history_id",
    "parse_message_list",
    "parse_post_action",
    "parse_retry_after",
    "parse_watch",
    "plan_resync",
    "select_messages",
    "watch_body",
    "watch_health",
]

#: ``maxResults`` of history.list and messages.list (the API's maximum; default would be 100).
HISTORY_PAGE_SIZE = 500
LIST_PAGE_SIZE = 500


class GmailFormatError(ValueError):
    """A Gmail response that does not have the documented shape; the message names what was wrong."""


def parse_history_id(value: object, what: str = "historyId") -> int:
    """A Gmail historyId (``"1234"`` or ``1234``: the API sends strings, Pub/Sub numbers) as an int ≥ 1."""
    if isinstance(value, bool):
        raise GmailFormatError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value.lstrip("0")) > 20:  # ≥ 10^20 > 2^64; int() refuses thousands of digits with a ValueError
            raise GmailFormatError(f"{what}: a number of {len(value)} digits is out of range (1 to 2^64-1)")
        number = int(value)
    else:
        raise GmailFormatError(f"{what}: expected a positive integer or a string of digits, got {value!r:.80}")
    if not 1 <= number < 2**64:
        shown = number if number.bit_length() <= 128 else f"a number of {number.bit_length()} bits"
        raise GmailFormatError(f"{what}: {shown} is out of range (1 to 2^64-1)")
    return number


def _object(body: object, what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise GmailFormatError(f"{what}: expected a JSON object, got {type(body).__name__}")
    return body


def _page_token(body: Mapping[str, Any], what: str) -> str | None:
    token = body.get("nextPageToken")
    if token is None or token == "":
        return None
    if not isinstance(token, str):
        raise GmailFormatError(f"{what}.nextPageToken: expected a string, got {token!r}")
    return token


# --------------------------------------------------------------------------- history walk


class AddedMessage(msgspec.Struct, frozen=True):
    """One ``messagesAdded[].message`` of a history record."""

    id: str
    label_ids: tuple[str, ...]
    #: The history record that added it.
    history_id: int


class HistoryPage(msgspec.Struct, frozen=True):
    """One page of ``history.list``: the added messages in order, and where to go on."""

    added: tuple[AddedMessage, ...]
    next_page_token: str | None
    #: The mailbox's current historyId (the cursor after the last page).
    history_id: int


def history_params(start_history_id: int, label_ids: Sequence[str],
                   page_token: str | None = None) -> list[tuple[str, str]]:
    """Query of ``GET users/{userId}/history`` for one page of added messages from *start_history_id*.

    history.list filters on one ``labelId`` at most: with exactly one watched
    label the server filters, with several :func:`select_messages` does.
    """
    params = [
        ("startHistoryId", str(start_history_id)),
        ("historyTypes", "messageAdded"),
        ("maxResults", str(HISTORY_PAGE_SIZE)),
    ]
    if len(label_ids) == 1:
        params.append(("labelId", label_ids[0]))
    if page_token:
        params.append(("pageToken", page_token))
    return params


def parse_history_page(body: object) -> HistoryPage:
    """Read one ``history.list`` answer. Only ``messagesAdded`` counts (``messages`` repeats them)."""
    page = _object(body, "history.list")
    added: list[AddedMessage] = []
    records = page.get("history", [])
    if not isinstance(records, list):
        raise GmailFormatError(f"history.list.history: expected an array, got {type(records).__name__}")
    for index, record in enumerate(records):
        where = f"history.list.history[{index}]"
        record = _object(record, where)
        record_id = parse_history_id(record.get("id"), f"{where}.id")
        for position, item in enumerate(record.get("messagesAdded") or []):
            message = _object(_object(item, f"{where}.messagesAdded[{position}]").get("message"),
                              f"{where}.messagesAdded[{position}].message")
            message_id = message.get("id")
            if not isinstance(message_id, str) or not message_id:
                raise GmailFormatError(f"{where}.messagesAdded[{position}].message.id: expected a non-empty string")
            labels = message.get("labelIds") or []
            if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
                raise GmailFormatError(f"{where}.messagesAdded[{position}].message.labelIds: expected strings")
            added.append(AddedMessage(message_id, tuple(labels), record_id))
    return HistoryPage(tuple(added), _page_token(page, "history.list"),
                       parse_history_id(page.get("historyId"), "history.list.historyId"))


class Selection(msgspec.Struct, frozen=True):
    """The messages of a walk to enqueue (first occurrence, in history order) and those dropped."""

    keep: tuple[AddedMessage, ...]
    #: ``(message id, why)``: ``label:SENT`` (a skip label), ``not_watched`` (no watched label).
    dropped: tuple[tuple[str, str], ...]


def select_messages(
    added: Iterable[AddedMessage], label_ids: Sequence[str], skip_labels: Sequence[str],
    already: set[str] | None = None,
) -> Selection:
    """Drop messages carrying a skip label or none of the watched labels; each id once.

    *already* holds ids kept by earlier pages of the same walk (updated in
    place): one message can appear in several history records.
    """
    seen = already if already is not None else set()
    watched, skip = set(label_ids), set(skip_labels)
    keep: list[AddedMessage] = []
    dropped: list[tuple[str, str]] = []
    for message in added:
        if message.id in seen:
            continue
        seen.add(message.id)
        labels = set(message.label_ids)
        hit = sorted(labels & skip)
        if hit:
            dropped.append((message.id, f"label:{hit[0]}"))
        elif watched and not labels & watched:
            dropped.append((message.id, "not_watched"))
        else:
            keep.append(message)
    return Selection(tuple(keep), tuple(dropped))


def advance(stored: int | None, walked: int) -> int | None:
    """The cursor to store after reaching *walked*, or ``None``: a cursor never moves backwards."""
    if stored is None or walked > stored:
        return walked
    return None


class WalkGate:
    """One history walk in flight per mailbox in this process; pushes meanwhile fold into it.

    A push (or a periodic tick, ``history_id`` 0) *arrives*: with no walk in
    flight it starts one (``"walk"``); with one in flight it is recorded and
    answered ``"joined"`` — its job can be acknowledged at once, because the
    walk in flight is asked, when it ends, whether a joined push named a
    historyId beyond what it reached (:meth:`finished` → walk again). A walk
    that fails must still call :meth:`finished` (or :meth:`abandoned`): its
    own job is retried by the queue and walks from the cursor to the end,
    which covers every push that joined it.
    """

    def __init__(self) -> None:
        self.in_flight = False
        self.wanted = 0
        #: A joined periodic tick (history_id 0) asks for one more walk whatever was reached.
        self._forced = False

    def arrive(self, history_id: int) -> Literal["walk", "joined"]:
        if self.in_flight:
            if history_id:
                self.wanted = max(self.wanted, history_id)
            else:
                self._forced = True
            return "joined"
        self.in_flight, self.wanted, self._forced = True, history_id, False
        return "walk"

    def finished(self, reached: int) -> bool:
        """The walk reached cursor *reached*: ``True`` to walk once more (still in flight), else done."""
        if self._forced or self.wanted > reached:
            self._forced = False
            return True
        self.in_flight = False
        return False

    def abandoned(self) -> None:
        """The walk failed or was cancelled: the next arrival starts a new one."""
        self.in_flight, self.wanted, self._forced = False, 0, False


# --------------------------------------------------------------------------- resync after a stale cursor


#: A resync starts this long before the last stored message: clocks and internalDate differ a little.
RESYNC_MARGIN = timedelta(hours=1)


class ResyncPlan(msgspec.Struct, frozen=True):
    """A ``messages.list`` bounded by date, replacing a walk whose cursor Gmail forgot."""

    #: Epoch seconds: only messages after this are listed.
    after: int
    #: The ``q`` parameter (Gmail search syntax).
    query: str
    #: ``last_stored`` (the newest stored message's date) or ``cursor_time`` (when the cursor last moved).
    bound: str


def plan_resync(last_stored: datetime | None, cursor_time: datetime | None, now: datetime,
                margin: timedelta = RESYNC_MARGIN) -> ResyncPlan:
    """Bound a resync so nothing since the old cursor is missed and nothing older comes back.

    Everything the old cursor covered was enqueued before the cursor moved,
    and every stored message came from it, so listing from the newest stored
    message's date (less *margin*) misses nothing; the ledger absorbs the
    overlap. Without a stored message the cursor's own last move bounds it.
    """
    if last_stored is not None:
        start, bound = last_stored, "last_stored"
    elif cursor_time is not None:
        start, bound = cursor_time, "cursor_time"
    else:
        start, bound = now, "now"
    after = int(min(start, now).timestamp() - margin.total_seconds())
    return ResyncPlan(after=max(after, 0), query=f"after:{max(after, 0)}", bound=bound)


def list_params(query: str, label_ids: Sequence[str], page_token: str | None = None) -> list[tuple[str, str]]:
    """Query of ``GET users/{userId}/messages`` for one page of a resync (spam and trash excluded)."""
    params = [("q", query), ("maxResults", str(LIST_PAGE_SIZE)), ("includeSpamTrash", "false")]
    params.extend(("labelIds", label) for label in label_ids)
    if page_token:
        params.append(("pageToken", page_token))
    return params


class MessageList(msgspec.Struct, frozen=True):
    ids: tuple[str, ...]
    next_page_token: str | None


def parse_message_list(body: object) -> MessageList:
    """Read one ``messages.list`` answer (``messages`` is absent when nothing matched)."""
    page = _object(body, "messages.list")
    items = page.get("messages") or []
    if not isinstance(items, list):
        raise GmailFormatError("messages.list.messages: expected an array")
    ids = []
    for index, item in enumerate(items):
        message_id = _object(item, f"messages.list.messages[{index}]").get("id")
        if not isinstance(message_id, str) or not message_id:
            raise GmailFormatError(f"messages.list.messages[{index}].id: expected a non-empty string")
        ids.append(message_id)
    return MessageList(tuple(ids), _page_token(page, "messages.list"))


# --------------------------------------------------------------------------- watch


#: Google: re-call watch at least every 7 days, once a day recommended.
RENEW_EVERY = 86400.0
#: Renew at the latest this long before the watch expires.
RENEW_BEFORE_EXPIRY = 3600.0
#: No successful renewal for this long: the mailbox is degraded (watch expiry is silent).
STALE_AFTER = 48 * 3600.0


class WatchResult(msgspec.Struct, frozen=True):
    history_id: int
    #: Epoch seconds.
    expiration: float


def watch_body(topic: str, label_ids: Sequence[str]) -> dict[str, Any]:
    """Body of ``POST users/{userId}/watch``; no labels means the whole mailbox."""
    body: dict[str, Any] = {"topicName": topic}
    if label_ids:
        body["labelIds"] = list(label_ids)
        body["labelFilterBehavior"] = "include"
    return body


def parse_watch(body: object) -> WatchResult:
    """Read ``{"historyId": "…", "expiration": "<epoch ms>"}``."""
    answer = _object(body, "watch")
    expiration = answer.get("expiration")
    if isinstance(expiration, bool) or not isinstance(expiration, (int, str)) or not str(expiration).isdigit():
        raise GmailFormatError(f"watch.expiration: expected epoch milliseconds, got {expiration!r}")
    return WatchResult(parse_history_id(answer.get("historyId"), "watch.historyId"), int(expiration) / 1000)


def next_watch_renewal(last_success: float | None, expiration: float | None, now: float,
                       every: float = RENEW_EVERY) -> float:
    """Seconds until the watch should be renewed (0: now), all times in epoch seconds."""
    if last_success is None:
        return 0.0
    due = last_success + every
    if expiration is not None:
        due = min(due, expiration - RENEW_BEFORE_EXPIRY)
    return max(0.0, due - now)


def watch_health(last_success: float | None, expiration: float | None, now: float) -> Literal[
        "ok", "stale", "expired", "never"]:
    """``ok``; ``stale``: no success within 48 h; ``expired``: Google stopped publishing; ``never`` watched."""
    if last_success is None:
        return "never"
    if expiration is not None and expiration <= now:
        return "expired"
    if now - last_success > STALE_AFTER:
        return "stale"
    return "ok"


# --------------------------------------------------------------------------- errors


#: 403 reasons that mean "slow down", not "forbidden" (handle-errors guide).
RATE_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded", "dailyLimitExceeded", "quotaExceeded",
                          "RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})
#: Reasons that only the operator can fix: the account's auth-failure policy.
AUTH_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "authError",
                          "invalid_grant", "unauthorized_client", "failedPrecondition", "domainPolicy",
                          "forbidden", "SERVICE_DISABLED", "PERMISSION_DENIED"})


class GmailFailure(msgspec.Struct, frozen=True):
    """What a failed Gmail call means.

    ``kind``: ``not_found`` (message deleted, history cursor stale),
    ``rate_limited`` and ``unavailable`` (back off and retry), ``auth``
    (credentials or permissions: the account's auth-failure policy),
    ``invalid`` (a request Gmail refuses: a bug, not retried quickly).
    """

    kind: Literal["not_found", "rate_limited", "unavailable", "auth", "invalid"]
    status: int
    reason: str
    message: str = ""
    retry_after: float | None = None


def _error_reasons(body: object) -> tuple[list[str], str, str]:
    reasons: list[str] = []
    if not isinstance(body, Mapping):
        return reasons, "", ""
    error = body.get("error")
    if isinstance(error, str):  # OAuth token endpoint: {"error": "invalid_grant", "error_description": …}
        return [error], str(body.get("error_description") or ""), ""
    if not isinstance(error, Mapping):
        return reasons, "", ""
    for item in error.get("errors") or []:
        if isinstance(item, Mapping) and isinstance(item.get("reason"), str):
            reasons.append(item["reason"])
    for item in error.get("details") or []:
        if isinstance(item, Mapping) and isinstance(item.get("reason"), str):
            reasons.append(item["reason"])
    status = error.get("status") if isinstance(error.get("status"), str) else ""
    return reasons, str(error.get("message") or ""), status


def classify_error(status: int, body: bytes, retry_after: str | None = None, *, now: float = 0.0) -> GmailFailure:
    """Classify a non-2xx Gmail answer (*status*, raw *body*, its ``Retry-After`` header)."""
    try:
        decoded = json.loads(body) if body else None
    except ValueError:
        decoded = None
    reasons, message, api_status = _error_reasons(decoded)
    if not message:
        message = body[:200].decode("utf-8", "replace").strip()
    reason = reasons[0] if reasons else (api_status or f"http_{status}")
    wait = parse_retry_after(retry_after, now)
    if status == 404:
        return GmailFailure("not_found", status, reason, message)
    if status == 429 or (status == 403 and (set(reasons) & RATE_REASONS or api_status == "RESOURCE_EXHAUSTED")):
        rate_reason = next((r for r in reasons if r in RATE_REASONS), reason)
        return GmailFailure("rate_limited", status, rate_reason, message, wait)
    if status in (401, 403):
        return GmailFailure("auth", status, reason, message)
    if status == 400 and (set(reasons) & AUTH_REASONS or api_status == "FAILED_PRECONDITION"):
        # e.g. "Mail service not enabled", "Precondition check failed" for a suspended user.
        return GmailFailure("auth", status, reason, message)
    if status in (408, 500, 502, 503, 504):
        return GmailFailure("unavailable", status, reason, message, wait)
    return GmailFailure("invalid", status, reason, message)


# --------------------------------------------------------------------------- consume-time fetch


def check_fetch(meta: object, skip_labels: Sequence[str], max_size: int) -> tuple[str, str] | None:
    """Whether a message whose ``format=minimal`` answer is *meta* should be downloaded.

    ``None`` to download, or ``(reason, detail)`` to skip it: ``label_skipped``
    (it carries a skip label, e.g. a draft that a walk could not tell apart)
    or ``oversize`` (``sizeEstimate`` above *max_size*; 0 means no limit).
    """
    answer = _object(meta, "messages.get")
    labels = answer.get("labelIds") or []
    hit = sorted(set(labels) & set(skip_labels)) if isinstance(labels, list) else []
    if hit:
        return ("label_skipped", f"message carries label {hit[0]}")
    size = answer.get("sizeEstimate")
    if isinstance(size, int) and not isinstance(size, bool) and max_size and size > max_size:
        return ("oversize", f"sizeEstimate {size} bytes exceeds the limit of {max_size}")
    return None


def decode_raw(value: object) -> bytes:
    """The RFC 5322 bytes of a ``format=raw`` answer's ``raw`` (base64url, padding optional)."""
    if not isinstance(value, str):
        raise GmailFormatError(f"messages.get.raw: expected a base64url string, got {type(value).__name__}")
    text = value.strip().replace("+", "-").replace("/", "_").rstrip("=")
    if len(text) % 4 == 1:
        raise GmailFormatError("messages.get.raw: truncated base64url (length leaves one character over)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise GmailFormatError(f"messages.get.raw: not base64url: {exc}") from None


def internal_date(meta: Mapping[str, Any]) -> datetime | None:
    """``internalDate`` (epoch ms as a string) as an aware UTC datetime, or ``None``."""
    value = meta.get("internalDate")
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).isdigit():
        return datetime.fromtimestamp(int(value) / 1000, timezone.utc)
    return None


# --------------------------------------------------------------------------- post-actions


POST_ACTION_PATTERN = r"none|mark_read|archive|label:\S.*"


class PostAction(msgspec.Struct, frozen=True):
    """What to do with a stored message in Gmail: nothing, remove UNREAD, remove INBOX, add a label."""

    kind: Literal["none", "mark_read", "archive", "label"]
    label: str = ""


def parse_post_action(text: str) -> PostAction:
    """Parse ``none``, ``mark_read``, ``archive`` or ``label:NAME``; raises ``ValueError`` naming the value."""
    value = text.strip()
    if value in ("none", "mark_read", "archive"):
        return PostAction(value)  # type: ignore[arg-type]
    if value.startswith("label:") and value[6:].strip():
        return PostAction("label", value[6:].strip())
    raise ValueError(f'post_action: expected "none", "mark_read", "archive" or "label:NAME", got {text!r}')


def modify_body(action: PostAction, label_id: str | None = None) -> dict[str, list[str]] | None:
    """Body of ``POST users/{userId}/messages/{id}/modify`` for *action* (``None``: nothing to do)."""
    if action.kind == "mark_read":
        return {"addLabelIds": [], "removeLabelIds": ["UNREAD"]}
    if action.kind == "archive":
        return {"addLabelIds": [], "removeLabelIds": ["INBOX"]}
    if action.kind == "label":
        if not label_id:
            raise ValueError(f"post_action label:{action.label}: the label's id is needed")
        return {"addLabelIds": [label_id], "removeLabelIds": []}
    return None
