"""Address lists, message ids and the thread key.

Addresses: ``email.utils.getaddresses`` plus a rescue pass for garbage.

Thread key
    First id of References, else In-Reply-To, else the own Message-ID (all
    normalized). Without any of them: ``"sha256:" + sha256(subject + "\\n" +
    from address)``, where the subject has its reply/forward prefixes removed
    (``Re:``, ``Fwd:``, ``AW:``, ``WG:``, ``SV:``, ``Antw:`` …, repeated, also
    ``Re[2]:``), whitespace collapsed and is casefolded, and the address is
    lowercased. The key is stable across re-parses and across "Re:" variants.
"""

from __future__ import annotations

import hashlib
import re
from email import utils as _email_utils

from .defects import Defects
from .headers import COMMENT, ENCODED_WORD, Header, decode_words, one_line
from .model import Address

__all__ = [
    "ANGLE_ID",
    "fallback_thread_key",
    "id_list",
    "normalize_message_id",
    "parse_addresses",
    "parse_in_reply_to",
]


_ADDR_SPEC = re.compile(r'(?:"[^"\r\n]*"|[^\s<>()\[\],;:"@\\]+)@[^\s<>()\[\],;:"@\\]+')
_LOCAL_ONLY = re.compile(r'[^\s<>()\[\],;:"@\\]+')
_RESCUE = re.compile(r'<\s*(?P<angle>[^<>\s@]+@[^<>\s@]+?)\s*>|(?P<bare>[^\s<>,;:"()\[\]@]+@[^\s<>,;:"()\[\]@]+)')
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def parse_addresses(header: Header | None, defects: Defects) -> list[Address]:
    """Parse an address-list header into Addresses; garbage → defect + best effort.

    ``email.utils.getaddresses`` does the parsing, on the still-encoded text
    with encoded-words replaced by placeholders (an encoded word may hide a
    comma). Entries whose address is not an addr-spec trigger a rescue pass
    that picks ``<addr>`` and bare ``local@domain`` tokens out of the raw text.
    A bare local part without a domain (``MAILER-DAEMON``) is kept, with a
    defect. Group syntax (``undisclosed-recipients:;``) yields nothing.
    """
    if header is None or not header.text.strip():
        return []
    where = f"header {header.name}"
    text = header.text
    words: list[str] = []
    if "=?" in text:

        def protect(match: re.Match[str]) -> str:
            words.append(match.group(0))
            return f"\ue000{len(words) - 1}\ue001"

        text = ENCODED_WORD.sub(protect, text)
    try:
        pairs = _email_utils.getaddresses([text])
    except Exception as exc:  # noqa: BLE001 - stdlib parser bugs on garbage
        defects.add(where, f"address parser failed ({type(exc).__name__})")
        pairs = [("", "\x00")]
    result: list[Address] = []
    bad = False
    for name, addr in pairs:
        name, addr = name.strip(), addr.strip()
        if not name and not addr:
            continue
        if words:
            name = _PLACEHOLDER.sub(lambda m: words[int(m.group(1))], name)
            addr = _PLACEHOLDER.sub(lambda m: words[int(m.group(1))], addr)
        if _ADDR_SPEC.fullmatch(addr):
            result.append(Address(one_line(decode_words(name, defects, where)), one_line(addr)))
        elif addr and _LOCAL_ONLY.fullmatch(addr) and _only_mailbox(header.text, addr):
            defects.add(where, f"address without domain {addr!r}")
            result.append(Address(one_line(decode_words(name, defects, where)), one_line(addr)))
        else:
            bad = True
    if bad or (not result and "@" in header.text):
        defects.add(where, "unparseable address list, addresses rescued best effort")
        seen = {a.address.lower() for a in result}
        raw = header.text
        pos = 0
        for match in _RESCUE.finditer(raw):
            if match.group("angle"):
                addr = match.group("angle")
                name = raw[pos : match.start()].strip(" \t,;\"'")
            else:
                addr, name = match.group("bare"), ""
            pos = match.end()
            if addr.lower() in seen:
                continue
            seen.add(addr.lower())
            result.append(Address(one_line(decode_words(name, defects, where)), one_line(addr)))
    return result


def _only_mailbox(text: str, local: str) -> bool:
    """True if ``text`` is just ``local``, ``local (comment)`` or ``Name <local>``.

    getaddresses() turns "not an address at all" into the mailbox "not";
    a domain-less mailbox is only believed when it is all there is.
    """
    text = " ".join(COMMENT.sub(" ", text).split())
    return re.fullmatch(r"(?:[^<>]*<\s*)?" + re.escape(local) + r"\s*>?", text) is not None


ANGLE_ID = re.compile(r"<([^<>]*)>")


def normalize_message_id(value: str | None) -> str | None:
    """Normalize a Message-ID / Content-ID / In-Reply-To value; None if empty.

    The content of the first ``<…>`` if there is one, else the first
    whitespace-separated token with stray ``<``/``>`` removed; whitespace
    inside is removed (folding artifacts). Case is preserved: ids are
    compared byte for byte by mail clients, so ``<A@B>`` and ``<a@b>`` stay
    different. ``normalize_message_id(" <abc@example.com> ") == "abc@example.com"``.
    """
    if value is None:
        return None
    value = value.strip()
    match = ANGLE_ID.search(value)
    if match is not None:
        value = "".join(match.group(1).split())
    else:
        parts = value.split()
        value = parts[0].strip("<>") if parts else ""
    return value or None


def id_list(value: str) -> list[str]:
    """All ids of a References header, in order, without duplicates."""
    found = ANGLE_ID.findall(value)
    if not found:  # Some mailers drop the brackets; then tokens are ids.
        found = [token for token in re.split(r"[\s,]+", value) if token]
    ids: list[str] = []
    seen: set[str] = set()
    for item in found:
        norm = normalize_message_id(f"<{item.strip('<>')}>")
        if norm and norm not in seen:
            seen.add(norm)
            ids.append(norm)
    return ids


def parse_in_reply_to(value: str) -> str | None:
    match = ANGLE_ID.search(value)
    if match is not None:
        return normalize_message_id(match.group(0))
    for token in value.split():  # "abc@host (Bob's message of …)" without brackets
        if "@" in token:
            return normalize_message_id(token)
    return None


_REPLY_PREFIX = re.compile(
    r"^(?:\s*(?:re|fwd?|aw|wg|sv|vs|vb|antw|doorst|tr|rif|rv|res|enc|odp|pd|ynt|ilt|vl|atb|fs|r)"
    r"(?:\s*\[\d+\]|\s*\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)


def fallback_thread_key(subject: str, from_: Address | None) -> str:
    base = " ".join(_REPLY_PREFIX.sub("", subject).split()).casefold()
    sender = from_.address.lower() if from_ is not None else ""
    return "sha256:" + hashlib.sha256(f"{base}\n{sender}".encode("utf-8", "surrogatepass")).hexdigest()
