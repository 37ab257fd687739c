"""What one delivery attempt sends, and what its answer means: pure decisions, table-tested.

Requests:

* ``webhook`` — ``POST url`` with the JSON body (``payload.py``),
  ``content-type: application/json`` and the Standard Webhooks headers
  (``signing.py``), signed at the time of the attempt.
* ``action_mailbox`` — Rails Action Mailbox's relay ingress contract
  (``ActionMailbox::Ingresses::Relay::InboundEmailsController``, the same
  request ``bin/rails action_mailbox:ingress:postfix`` sends): ``POST url``
  (``…/rails/action_mailbox/relay/inbound_emails``), the body the exact raw
  RFC 822 bytes, ``Content-Type: message/rfc822``, HTTP basic auth with user
  ``actionmailbox`` and the ingress password. Rails answers 204 once the
  inbound email is recorded; a resent identical message is deduplicated by
  Rails (same Message-ID and checksum).

Answers (:func:`judge_response`, :func:`judge_failure`): 2xx delivered; 408,
429, 5xx, timeouts and connection errors are retried (``Retry-After``
honoured as a floor); any other status is dead at once, with the status and
an excerpt of the body kept. 408, 429, 502, 503, 504, timeouts and
connection errors also say the *target* is unavailable (``gate.py`` then
holds back every other delivery to it); a 500 is taken for one message's
problem.
:func:`next_step` turns a retry into ``dead`` once the attempts are used up.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

from .. import backoff
from ..ingress.retry_after import parse_retry_after
from .signing import signature_headers

__all__ = [
    "ACTION_MAILBOX_USER",
    "HttpRequest",
    "Step",
    "Verdict",
    "action_mailbox_request",
    "judge_failure",
    "judge_response",
    "next_step",
    "webhook_request",
]

ACTION_MAILBOX_USER = "actionmailbox"
#: How much of a refusing answer's body is kept in ``last_error``.
BODY_EXCERPT = 300
#: Statuses that say the target as a whole cannot take deliveries now.
UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504})


class HttpRequest(NamedTuple):
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def webhook_request(url: str, key: bytes, delivery_id: str, timestamp: int, body: bytes,
                    user_agent: str) -> HttpRequest:
    """The signed POST of one webhook attempt made at *timestamp* (integer seconds)."""
    headers = [("content-type", "application/json"), ("user-agent", user_agent)]
    headers += signature_headers(key, delivery_id, timestamp, body)
    return HttpRequest("POST", url, tuple(headers), body)


def action_mailbox_request(url: str, password: str, raw: bytes, delivery_id: str, user_agent: str) -> HttpRequest:
    """The relay-ingress POST of *raw*, unchanged."""
    credentials = base64.b64encode(f"{ACTION_MAILBOX_USER}:{password}".encode()).decode()
    headers = (("content-type", "message/rfc822"), ("authorization", f"Basic {credentials}"),
               ("user-agent", user_agent), ("webhook-id", delivery_id))
    return HttpRequest("POST", url, headers, raw)


class Verdict(NamedTuple):
    """What an attempt's answer (or its absence) means."""

    outcome: Literal["delivered", "retry", "dead"]
    http_status: int | None = None
    error: str | None = None
    #: Seconds the receiver asked us to wait (``Retry-After``), if it did.
    retry_after: float | None = None
    #: The target as a whole seems unable to take deliveries now (hold the others back).
    unavailable: bool = False


def _excerpt(body: bytes) -> str:
    text = body[: BODY_EXCERPT * 4].decode("utf-8", "replace")
    flat = " ".join(text.split())
    return flat if len(flat) <= BODY_EXCERPT else flat[: BODY_EXCERPT - 1] + "…"


def judge_response(status: int, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
    """The verdict on an HTTP answer; *headers* with lower-case names, *now* the wall clock."""
    if 200 <= status < 300:
        return Verdict("delivered", status)
    excerpt = _excerpt(body)
    error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in (408, 429) or status >= 500:
        return Verdict("retry", status, error, parse_retry_after(headers.get("retry-after"), now),
                       unavailable=status in UNAVAILABLE_STATUSES)
    return Verdict("dead", status, error)


def judge_failure(kind: Literal["timeout", "connect", "transport"], detail: str) -> Verdict:
    """The verdict when no answer came: timed out, could not connect, or the exchange broke."""
    what = {"timeout": "no answer within the timeout", "connect": "cannot connect",
            "transport": "connection failed"}[kind]
    return Verdict("retry", None, f"{what}: {detail}" if detail else what, unavailable=True)


class Step(NamedTuple):
    """What to record for an attempt: its outcome and, for a retry, the delay."""

    outcome: Literal["delivered", "retry", "dead"]
    delay: float = 0.0
    error: str | None = None


def next_step(verdict: Verdict, attempts: int, *, max_attempts: int, base: float, cap: float,
              rand: Callable[[], float] = random.random) -> Step:
    """The row's next state after attempt number *attempts* got *verdict*.

    A retry past *max_attempts* is dead (the error says so); its delay is
    the one backoff (equal jitter, never near zero) with ``Retry-After`` as
    a floor.
    """
    if verdict.outcome != "retry":
        return Step(verdict.outcome, 0.0, verdict.error)
    if attempts >= max_attempts:
        return Step("dead", 0.0, f"{verdict.error} (gave up after {attempts} attempts)")
    delay = backoff.delay(attempts, base, cap, jitter="equal", retry_after=verdict.retry_after, rand=rand)
    return Step("retry", delay, verdict.error)
