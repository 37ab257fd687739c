"""The entry point: one raw RFC 5322 message in, one normalized :class:`Message` out."""

from __future__ import annotations

import codecs
from email import utils as _email_utils
from email.parser import BytesParser
from urllib.parse import unquote as _unquote

from .addresses import ANGLE_ID, fallback_thread_key, id_list, normalize_message_id, parse_addresses, parse_in_reply_to
from .classify import classify
from .dates import parse_date
from .defects import Defects, scrub
from .headers import first_header, read_headers
from .model import Message
from .tree import CID_REF, PARSE_POLICY, Walker

__all__ = ["DEFAULT_MAX_HEADER_LENGTH", "parse_message"]

#: Default cut for every decoded header value, in characters.
DEFAULT_MAX_HEADER_LENGTH = 16384


def parse_message(raw: bytes, *, max_header_length: int = DEFAULT_MAX_HEADER_LENGTH) -> Message:
    """Parse one raw RFC 5322 message. Never raises on bad input.

    ``raw`` must be bytes-like (``TypeError`` otherwise: that is a caller bug,
    not bad input); ``max_header_length`` must be ≥ 1 (``ValueError``).
    Whatever is wrong with the message is reported in ``Message.defects``.
    If even the fallbacks fail (a bug in this module), the result has empty
    fields and a defect starting with ``"internal error"``.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"raw must be bytes, not {type(raw).__name__}")
    if max_header_length < 1:
        raise ValueError("max_header_length must be >= 1")
    data = bytes(raw)
    try:
        return _parse(data, max_header_length)
    except Exception as exc:  # noqa: BLE001 - last resort; fuzzing keeps this unreachable
        return _empty(data, [f"internal error: {type(exc).__name__}: {exc}"])


def _empty(data: bytes, defects: list[str]) -> Message:
    return Message(
        message_id=None, in_reply_to=None, references=[], thread_key=fallback_thread_key("", None),
        from_=None, to=[], cc=[], reply_to=[], sender=None, return_path=None, subject="", date=None,
        text_body=None, html_body=None, headers=[], attachments=[], size=len(data),
        is_auto_reply=False, is_bounce=False, auto_reason=None, defects=[scrub(d) for d in defects],
    )


def _parse(data: bytes, max_len: int) -> Message:
    defects = Defects()
    source = data
    if source.startswith(codecs.BOM_UTF8):
        # Windows tools save .eml files with a BOM; it would glue itself to the first header name.
        defects.add("", "byte-order mark before the headers removed")
        source = source[3:]
    try:
        msg = BytesParser(policy=PARSE_POLICY).parsebytes(source)
    except Exception as exc:  # noqa: BLE001 - RecursionError on absurd nesting, parser bugs
        defects.add("", f"MIME structure unreadable ({type(exc).__name__}), body read as text")
        try:
            msg = BytesParser(policy=PARSE_POLICY).parsebytes(source, headersonly=True)
        except Exception as exc2:  # noqa: BLE001
            return _empty(data, [*defects.result(), f"unparseable message ({type(exc2).__name__})"])
    headers = read_headers(list(msg.raw_items()), max_len, defects)

    def value_of(key: str) -> str | None:
        header = first_header(headers, key, defects)
        return header.value if header is not None else None

    message_id = None
    mid_raw = value_of("message-id")
    if mid_raw is None:
        defects.add("", "missing Message-ID")
    else:
        message_id = normalize_message_id(mid_raw)
        if message_id is None:
            defects.add("header Message-ID", f"unusable value {mid_raw!r}")
    references = id_list(" ".join(h.value for h in headers if h.key == "references"))
    irt_raw = value_of("in-reply-to")
    in_reply_to = parse_in_reply_to(irt_raw) if irt_raw else None

    from_list = parse_addresses(first_header(headers, "from", defects), defects)
    from_ = from_list[0] if from_list else None
    to = parse_addresses(first_header(headers, "to"), defects)
    cc = parse_addresses(first_header(headers, "cc"), defects)
    reply_to = parse_addresses(first_header(headers, "reply-to"), defects)
    sender_list = parse_addresses(first_header(headers, "sender"), defects)
    sender = sender_list[0].address if sender_list else None
    return_path = None
    rp = first_header(headers, "return-path")
    if rp is not None:
        rp_value = rp.value.strip()
        match = ANGLE_ID.search(rp_value)
        return_path = "".join(match.group(1).split()) if match else (rp_value.split() or [""])[0]

    subject = value_of("subject") or ""
    date_raw = value_of("date")
    date = parse_date(date_raw, defects) if date_raw is not None else None
    if date_raw is None:
        defects.add("", "missing Date")

    walker = Walker(defects, max_len)
    try:
        walker.walk(msg, "", 0, (), 0)
    except Exception as exc:  # noqa: BLE001 - keep the headers even if the body is lost
        defects.add("body", f"unreadable ({type(exc).__name__}: {exc})")
    text_body = "\n".join(walker.text) if walker.text else None
    html_body = "".join(walker.html) if walker.html else None

    # cid: URLs are %-encoded (RFC 2392); most mailers do not bother.
    referenced = {_unquote(m.group(1).strip()) for m in CID_REF.finditer(html_body)} if html_body else set()
    attachments = []
    for attachment, in_related in walker.attachments:
        cid = attachment.content_id
        attachment.inline = bool(cid) and (in_related or cid in referenced)
        attachments.append(attachment)

    try:
        top_type = msg.get_content_type()
        report_type = msg.get_param("report-type") if top_type == "multipart/report" else None
        report_type = str(_email_utils.collapse_rfc2231_value(report_type)).strip().lower() if report_type else None
    except Exception:  # noqa: BLE001
        top_type, report_type = "text/plain", None
    is_auto, is_bounce, reason = classify(
        headers, top_type, report_type, has_delivery_status=walker.has_delivery_status,
        has_calendar=walker.has_calendar, from_=from_, return_path=return_path, subject=subject)

    thread_key = (references[0] if references else None) or in_reply_to or message_id
    if thread_key is None:
        thread_key = fallback_thread_key(subject, from_)

    return Message(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        thread_key=thread_key,
        from_=from_,
        to=to,
        cc=cc,
        reply_to=reply_to,
        sender=sender,
        return_path=scrub(return_path) if return_path is not None else None,
        subject=subject,
        date=date,
        text_body=text_body,
        html_body=html_body,
        headers=[(h.name, h.value) for h in headers],
        attachments=attachments,
        size=len(data),
        is_auto_reply=is_auto,
        is_bounce=is_bounce,
        auto_reason=reason,
        defects=defects.result(),
    )
