"""The Gmail REST calls inboundd makes, for one mailbox, on a shared ``httpx.AsyncClient`` (trio).

Every call sends the account's access token (:class:`~.tokens.AccessTokens`);
a 401 refreshes it once and repeats the call. A non-2xx answer raises
:class:`GmailError` carrying :func:`~.proto.classify_error`'s verdict;
a network failure is a ``GmailError`` of kind ``unavailable``. Answers are
read with the pure parsers of ``proto``.

Raw messages are streamed: :meth:`GmailApi.message_raw` stops reading as soon
as the answer is larger than the caller's cap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from ... import clock
from ...outcomes import TransientError
from . import proto
from .tokens import AuthFailure

__all__ = ["GmailApi", "GmailError", "TokenSource", "raise_for", "raw_answer_cap"]

#: Answer of a raw message beyond its MIME size: the JSON envelope (ids, labels, snippet).
RAW_ENVELOPE_SLACK = 64 * 1024


class GmailError(Exception):
    """A Gmail call failed; ``failure`` says how (``kind``, HTTP status, Google's reason)."""

    def __init__(self, operation: str, failure: proto.GmailFailure) -> None:
        detail = f" ({failure.message[:200]})" if failure.message else ""
        super().__init__(f"Gmail {operation}: HTTP {failure.status} {failure.reason}{detail}")
        self.operation = operation
        self.failure = failure

    @property
    def kind(self) -> str:
        return self.failure.kind


def raise_for(exc: GmailError, account: str) -> None:
    """Re-raise a Gmail failure as what the consumer acts on; call it for every kind but the caller's own.

    ``rate_limited``/``unavailable`` → :class:`~inboundd.outcomes.TransientError`
    (with Gmail's ``Retry-After``), ``auth`` → :class:`~.tokens.AuthFailure`,
    anything else → *exc* itself (a job error).
    """
    failure = exc.failure
    if failure.kind in ("rate_limited", "unavailable"):
        raise TransientError(f"Gmail of {account!r}: {exc}", retry_after=failure.retry_after) from exc
    if failure.kind == "auth":
        raise AuthFailure(failure.reason, failure.message) from exc
    raise exc


class TokenSource(Protocol):
    async def get(self) -> str: ...

    def invalidate(self) -> None: ...


def raw_answer_cap(max_size: int) -> int | None:
    """Bytes of a ``format=raw`` answer allowed for a message of at most *max_size* bytes (0: no limit)."""
    if not max_size:
        return None
    return -(-max_size // 3) * 4 + RAW_ENVELOPE_SLACK


class GmailApi:
    """Gmail v1 for the mailbox *email*, at *base_url* (``https://gmail.googleapis.com`` or a fake)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, email: str, tokens: TokenSource) -> None:
        self.http = http
        self.email = email
        self.tokens = tokens
        self.user_url = f"{base_url.rstrip('/')}/gmail/v1/users/{quote(email, safe='@')}"

    # ------------------------------------------------------------------ plumbing

    async def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.tokens.get()}"}

    def _error(self, operation: str, response: httpx.Response, body: bytes) -> GmailError:
        failure = proto.classify_error(response.status_code, body, response.headers.get("retry-after"),
                                       now=clock.wall())
        return GmailError(operation, failure)

    @staticmethod
    def _network(operation: str, exc: httpx.HTTPError) -> GmailError:
        return GmailError(operation, proto.GmailFailure("unavailable", 0, type(exc).__name__, str(exc)[:200]))

    async def _call(self, operation: str, method: str, path: str, *, params: Any = None,
                    body: Any = None) -> Any:
        for attempt in (1, 2):
            headers = await self._headers()
            try:
                response = await self.http.request(method, f"{self.user_url}{path}", params=params, json=body,
                                                   headers=headers)
            except httpx.HTTPError as exc:
                raise self._network(operation, exc) from exc
            if response.status_code == 401 and attempt == 1:
                self.tokens.invalidate()
                continue
            if not response.is_success:
                raise self._error(operation, response, response.content)
            if not response.content:
                return {}
            try:
                return response.json()
            except ValueError:
                raise GmailError(operation, proto.GmailFailure("invalid", response.status_code, "not_json",
                                                               "answer is not JSON")) from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ calls

    async def profile_history_id(self) -> int:
        """The mailbox's current historyId (``users.getProfile``)."""
        answer = await self._call("getProfile", "GET", "/profile")
        return proto.parse_history_id(answer.get("historyId") if isinstance(answer, dict) else None,
                                      "getProfile.historyId")

    async def history_page(self, start_history_id: int, label_ids: Sequence[str],
                           page_token: str | None = None) -> proto.HistoryPage:
        """One page of added messages after *start_history_id*. A stale cursor is ``GmailError`` ``not_found``."""
        answer = await self._call("history.list", "GET", "/history",
                                  params=proto.history_params(start_history_id, label_ids, page_token))
        return proto.parse_history_page(answer)

    async def list_messages(self, query: str, label_ids: Sequence[str],
                            page_token: str | None = None) -> proto.MessageList:
        answer = await self._call("messages.list", "GET", "/messages",
                                  params=proto.list_params(query, label_ids, page_token))
        return proto.parse_message_list(answer)

    async def message_meta(self, message_id: str) -> dict[str, Any]:
        """``format=minimal``: labels, ``sizeEstimate`` and ``internalDate``, without the message."""
        answer = await self._call("messages.get", "GET", f"/messages/{quote(message_id, safe='')}",
                                  params=[("format", "minimal")])
        if not isinstance(answer, dict):
            raise GmailError("messages.get", proto.GmailFailure("invalid", 200, "not_object",
                                                                "answer is not an object"))
        return answer

    async def message_raw(self, message_id: str, cap: int | None) -> dict[str, Any] | None:
        """``format=raw`` answer, or ``None`` when it is longer than *cap* bytes (read no further)."""
        url = f"{self.user_url}/messages/{quote(message_id, safe='')}"
        for attempt in (1, 2):
            headers = await self._headers()
            try:
                async with self.http.stream("GET", url, params=[("format", "raw")], headers=headers) as response:
                    if response.status_code == 401 and attempt == 1:
                        self.tokens.invalidate()
                        continue
                    if not response.is_success:
                        body = await _read_capped(response, RAW_ENVELOPE_SLACK)
                        raise self._error("messages.get", response, body or b"")
                    body = await _read_capped(response, cap)
            except httpx.HTTPError as exc:
                raise self._network("messages.get", exc) from exc
            if body is None:
                return None
            try:
                answer = json.loads(body)
            except ValueError:
                raise GmailError("messages.get", proto.GmailFailure("invalid", 200, "not_json",
                                                                    "raw answer is not JSON")) from None
            if not isinstance(answer, dict):
                raise GmailError("messages.get", proto.GmailFailure("invalid", 200, "not_object", "answer"))
            return answer
        raise AssertionError("unreachable")

    async def watch(self, topic: str, label_ids: Sequence[str]) -> proto.WatchResult:
        answer = await self._call("watch", "POST", "/watch", body=proto.watch_body(topic, label_ids))
        return proto.parse_watch(answer)

    async def stop(self) -> None:
        await self._call("stop", "POST", "/stop")

    async def modify(self, message_id: str, body: dict[str, list[str]]) -> None:
        await self._call("messages.modify", "POST", f"/messages/{quote(message_id, safe='')}/modify", body=body)

    async def label_id(self, name: str, *, create: bool = True) -> str:
        """The id of the user label *name* (case-insensitive, as Gmail compares them); created if missing."""
        answer = await self._call("labels.list", "GET", "/labels")
        for label in answer.get("labels", []) if isinstance(answer, dict) else []:
            if isinstance(label, dict) and str(label.get("name", "")).lower() == name.lower():
                return str(label["id"])
        if not create:
            raise GmailError("labels.list", proto.GmailFailure("not_found", 404, "no_label", f"no label {name!r}"))
        created = await self._call("labels.create", "POST", "/labels",
                                   body={"name": name, "labelListVisibility": "labelShow",
                                         "messageListVisibility": "show"})
        return str(created["id"])


async def _read_capped(response: httpx.Response, cap: int | None) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds *cap* bytes (``None`` cap: read it all)."""
    declared = response.headers.get("content-length", "")
    if cap is not None and declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if cap is not None and total > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
