"""Header values: 8-bit bytes and RFC 2047 encoded-words decoded leniently, unfolded and capped.

Headers
    Every header value (top level, in order) is unfolded, decoded and cut to
    ``max_header_length`` characters (defect recorded). Address headers are
    cut at the last comma before the limit so no half address is parsed. A
    line without a colon inside the header block ends the header block (as in
    the stdlib and in MTAs); the rest becomes body and a defect is recorded.
    CR/LF left after decoding become spaces (no header injection downstream).
"""

from __future__ import annotations

import binascii
import re

import msgspec

from .charsets import decode_text
from .defects import Defects, scrub

__all__ = [
    "COMMENT",
    "ENCODED_WORD",
    "Header",
    "decode_words",
    "first_header",
    "lenient_b64",
    "one_line",
    "raw_to_str",
    "read_headers",
    "unfold",
]

# Raw header text decoded at most (a multiple of max_header_length: a Q-encoded
# CJK character costs 9 raw characters for one decoded one).
_RAW_HEADER_FACTOR = 16

ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
# An encoded-word cut off at the end of a value (a mailer's length limit).
_ENCODED_WORD_TAIL = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?\s]+)\Z")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_FOLD = re.compile(r"\r?\n[ \t]")
_STRAY_EOL = re.compile(r"[\r\n]+")
#: An RFC 5322 comment (one level of parentheses).
COMMENT = re.compile(r"\([^()]*\)")


def raw_to_str(value: str, defects: Defects, where: str) -> str:
    """Turn a raw header value from the parser (ASCII + surrogate-escaped bytes) into text.

    8-bit bytes are RFC 6532 UTF-8 when they decode as such, else legacy
    windows-1252 (defect). Raw ISO-2022-JP escape sequences (old Japanese
    mailers put them into headers unencoded) are decoded as ISO-2022-JP.
    """
    if value.isascii():
        if "\x1b" in value:
            try:
                return value.encode("ascii").decode("iso2022_jp_2")
            except UnicodeError:
                defects.add(where, "undecodable escape sequence")
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        defects.add(where, "8-bit header is not UTF-8, decoded as windows-1252")
        return data.decode("cp1252", "replace")


def one_line(text: str) -> str:
    """Storable text without CR/LF (decoded ``=0D=0A`` must not smuggle header lines)."""
    text = scrub(text)
    return _STRAY_EOL.sub(" ", text) if "\r" in text or "\n" in text else text


def unfold(value: str) -> str:
    if "\n" not in value and "\r" not in value:
        return value
    return _STRAY_EOL.sub(" ", _FOLD.sub(" ", value))


def lenient_b64(raw: bytes) -> bytes:
    """Base64 that never fails: junk (and padding) dropped, padding repaired."""
    cleaned = _NOT_BASE64.sub(b"", raw)
    if len(cleaned) % 4 == 1:  # a single dangling sextet carries no byte
        cleaned = cleaned[:-1]
    try:
        return binascii.a2b_base64(cleaned + b"=" * (-len(cleaned) % 4))
    except binascii.Error:  # pragma: no cover - cleaned input is valid base64
        return b""


def _b_decode(text: str) -> tuple[bytes, bool]:
    """Lenient base64 for encoded-words. Returns (bytes, was_clean)."""
    raw = text.encode("ascii", "replace")
    clean = len(raw) % 4 == 0 and _NOT_BASE64.sub(b"", raw) == raw.rstrip(b"=")
    return lenient_b64(raw), clean


def _q_decode(text: str) -> bytes:
    # Encoded text should be ASCII; stray 8-bit characters are kept as UTF-8.
    return binascii.a2b_qp(text.encode("utf-8", "surrogateescape"), header=True)


def decode_words(value: str, defects: Defects, where: str) -> str:
    """Decode RFC 2047 encoded-words in ``value``, leniently.

    Accepted beyond RFC 2047: words inside quoted strings and inside other
    words, spaces inside the encoded text, missing base64 padding, unknown
    charsets (fallback chain), a word cut off at the end of the value, and
    multi-byte characters split across adjacent words (adjacent words of one
    charset are joined as bytes before decoding).
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending_charset
        if pending_charset is not None:
            text, defect = decode_text(bytes(pending), pending_charset)
            if defect:
                defects.add(where, f"encoded-word: {defect}")
            out.append(text)
        pending.clear()
        pending_charset = None

    def take(match: re.Match[str]) -> None:
        nonlocal pending_charset
        charset = match.group(1).split("*", 1)[0]  # RFC 2231 language suffix
        if match.group(2) in "bB":
            data, clean = _b_decode(match.group(3))
            if not clean:
                defects.add(where, "malformed base64 encoded-word")
        else:
            data = _q_decode(match.group(3))
        if pending_charset is not None and pending_charset.lower() != charset.lower():
            flush()
        pending_charset = charset
        pending.extend(data)

    for match in ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        # RFC 2047 section 6.2: whitespace between adjacent encoded-words is dropped.
        if gap and not (pending_charset is not None and not gap.strip()):
            flush()
            out.append(gap)
        take(match)
        pos = match.end()
    tail = value[pos:]
    cut = _ENCODED_WORD_TAIL.search(tail)
    if cut is not None:
        gap = tail[: cut.start()]
        if gap and not (pending_charset is not None and not gap.strip()):
            flush()
            out.append(gap)
        defects.add(where, "unterminated encoded-word")
        take(cut)
        tail = ""
    flush()
    out.append(tail)
    return "".join(out)


class Header(msgspec.Struct):
    name: str  # as given
    key: str  # lowercased name
    text: str  # 8-bit decoded, unfolded, still RFC 2047 encoded, capped
    value: str  # fully decoded and cut to max_header_length


_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc"})


def read_headers(items: list[tuple[str, str]], max_len: int, defects: Defects) -> list[Header]:
    headers: list[Header] = []
    raw_cap = max_len * _RAW_HEADER_FACTOR
    for raw_name, raw_value in items:
        try:
            name = scrub(raw_to_str(str(raw_name), defects, "header name").strip())
            key = name.lower()
            where = f"header {name}"
            raw_value = str(raw_value)
            raw_length = len(raw_value)
            truncated = raw_length > raw_cap
            if truncated:
                raw_value = raw_value[:raw_cap]
            text = unfold(raw_to_str(raw_value, defects, where))
            value = decode_words(text, defects, where)
            if "\x00" in value:
                defects.add(where, "NUL characters replaced by U+FFFD")
            value = one_line(value).strip()
            if len(value) > max_len:
                truncated = True
                value = value[:max_len]
            if truncated:
                defects.add(where, f"value truncated to {max_len} characters (raw value: {raw_length} characters)")
                if key in _ADDRESS_HEADERS:
                    # Undecoded text is longer than the decoded value; cut it
                    # too, at a comma, so the last address is a whole one.
                    limit = max(max_len * 4, 1)
                    if len(text) > limit:
                        text = text[:limit]
                    comma = text.rfind(",")
                    if comma > 0:
                        text = text[:comma]
            headers.append(Header(name=name, key=key, text=text, value=value))
        except Exception as exc:  # noqa: BLE001 - one bad header must not lose the message
            defects.add("header", f"unreadable header ({type(exc).__name__}: {exc})")
    return headers


def first_header(headers: list[Header], key: str, defects: Defects | None = None) -> Header | None:
    found = [h for h in headers if h.key == key]
    if not found:
        return None
    if defects is not None and len(found) > 1:
        defects.add(f"header {found[0].name}", f"{len(found)} occurrences, the first is used")
    return found[0]
