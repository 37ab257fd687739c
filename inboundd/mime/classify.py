"""Auto-reply and bounce classification: one pure verdict from the headers and the part tree's facts.

``is_auto_reply`` means "machine-generated: never send an automatic
acknowledgement to it"; ``is_bounce`` implies ``is_auto_reply``.

* bounce: ``multipart/report; report-type=delivery-status`` (or one with a
  ``message/delivery-status`` part), a top-level ``message/delivery-status``,
  mail from ``MAILER-DAEMON``, or a null ``Return-Path: <>`` from
  ``MAILER-DAEMON``/``postmaster``;
* auto-reply: ``Auto-Submitted`` other than ``no``; ``X-Autoreply``,
  ``X-Autorespond``, ``X-Autoresponder``, ``X-Mail-Autoreply`` (unless
  ``no``/``false``/``0``); ``Precedence: bulk|junk|list|auto_reply``;
  read receipts (``report-type=disposition-notification``); a null
  ``Return-Path: <>`` (RFC 3834 asks auto-responders to send with one).
  Note: Google Groups adds ``Precedence: list`` to every message it
  relays, so a support address that is a Google Group marks customer mail
  as auto; treat it as "do not auto-acknowledge", not as "drop".
* ``X-Auto-Response-Suppress`` alone is NOT a signal: Outlook sets it on
  ordinary mail and meeting requests. Neither is an auto-reply-looking
  subject alone ("Out of office next week?" is written by people). The
  two together (``All``/``OOF``/``AutoReply`` + a subject starting with an
  auto-reply prefix such as ``Automatic reply:`` / ``Out of Office:`` /
  ``Automatische Antwort:``), without a calendar part, mark an Exchange
  out-of-office reply (reason ``exchange-oof``).

``auto_reason`` is the strongest reason found, in this order: ``dsn``,
``mailer-daemon``, ``auto-submitted:<value>``, ``x-autoreply`` (the header
name), ``exchange-oof``, ``mdn``, ``precedence:<value>``,
``null-return-path``.
"""

from __future__ import annotations

import re

from .headers import Header
from .model import Address

__all__ = ["classify"]

_BOUNCE_SENDERS = frozenset({"mailer-daemon", "postmaster"})
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto(?:matic)?[- ]?(?:reply|response)|autoreply|out of (?:the )?office"
    r"(?: reply| autoreply)?|abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|absence"
    r"|respuesta autom[áa]tica|risposta automatica|automatisch antwoord|autosvar|automaattinen vastaus"
    r"|resposta autom[áa]tica|automatyczna odpowied[źz])\s*:",
    re.IGNORECASE,
)
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-mail-autoreply")
_REASON_ORDER = (
    "dsn", "mailer-daemon", "auto-submitted", "x-auto", "exchange-oof", "mdn", "precedence", "null-return-path",
)


def classify(
    headers: list[Header],
    top_type: str,
    report_type: str | None,
    *,
    has_delivery_status: bool,
    has_calendar: bool,
    from_: Address | None,
    return_path: str | None,
    subject: str,
) -> tuple[bool, bool, str | None]:
    """``(is_auto_reply, is_bounce, auto_reason)`` of a message (see the module docstring).

    *headers* are the top-level headers in order; *top_type* and *report_type*
    the top part's content type and ``report-type`` parameter (lowercased);
    *has_delivery_status* / *has_calendar* whether the part tree holds a
    ``message/delivery-status`` / ``text/calendar`` part.
    """
    bounce: list[str] = []
    auto: list[str] = []
    first = {h.key: h.value for h in reversed(headers)}  # first occurrence wins

    if top_type == "multipart/report" and (report_type == "delivery-status" or has_delivery_status):
        bounce.append("dsn")
    elif top_type in ("message/delivery-status", "message/global-delivery-status"):
        bounce.append("dsn")
    sender_local = from_.address.split("@", 1)[0].lower() if from_ is not None else ""
    if sender_local == "mailer-daemon" or (return_path == "" and sender_local in _BOUNCE_SENDERS):
        bounce.append("mailer-daemon")

    # "auto-replied (vacation)", "auto-generated; owner-email=…": the keyword is the first token.
    submitted = (re.split(r"[\s;(]", first.get("auto-submitted", "").strip(), maxsplit=1) or [""])[0].lower()
    if submitted and submitted != "no":
        auto.append(f"auto-submitted:{submitted}")
    for name in _AUTO_HEADERS:
        if name in first and first[name].strip().lower() not in ("no", "false", "0"):
            auto.append(name)
    suppress = {token for token in re.split(r"[\s,;]+", first.get("x-auto-response-suppress", "").lower()) if token}
    if suppress & {"all", "oof", "autoreply"} and _AUTO_SUBJECT.match(subject) and not has_calendar:
        auto.append("exchange-oof")
    if top_type == "multipart/report" and report_type == "disposition-notification":
        auto.append("mdn")
    precedence = first.get("precedence", "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        auto.append(f"precedence:{precedence}")
    if return_path == "":
        auto.append("null-return-path")

    reasons = bounce + auto
    if not reasons:
        return False, False, None
    best = min(reasons, key=lambda r: next(i for i, p in enumerate(_REASON_ORDER) if r.startswith(p)))
    return True, bool(bounce), best
