"""MIME → Message: one raw RFC 5322 message in, one normalized :class:`Message` out.

Pure module: no I/O, no logging; the only module state is a bounded memo of
parsed MIME header objects (results do not depend on it). The entry point is
:func:`parse_message`; it never raises on bad input.
Everything that was wrong with the message is reported as a human-readable
string in :attr:`Message.defects` and the result is the best effort.

Parsing is done by the stdlib (``email.parser.BytesParser`` with
``email.policy.default``, whose header factory is memoized for speed).
Everything the stdlib is *strict* or *lossy* about is done here instead, on
the raw header values the parser keeps:

* header values: 8-bit bytes (RFC 6532 UTF-8, or legacy bytes) and RFC 2047
  encoded-words are decoded leniently (:func:`_raw_to_str`, :func:`_decode_words`);
  CR/LF left after decoding become spaces (no header injection downstream);
* addresses: ``email.utils.getaddresses`` plus a rescue pass for garbage;
* text: charsets go through one documented fallback chain (:func:`_decode_text`);
* attachment filenames: RFC 2231 parameters are read with the compat32 parameter
  parser, which keeps a filename "as given" (``policy.default`` drops the
  backslashes of ``..\\..\\evil.exe`` and cuts ``../x`` at the slash).

Decisions (each one is also documented where it is implemented):

Charset fallback chain (bodies, encoded-words, RFC 2231 values)
    1. A byte-order mark wins (UTF-8, UTF-16 LE/BE), as in browsers.
    2. The declared charset, resolved through WHATWG-style aliases
       (``iso-8859-1``/``latin1`` → windows-1252, ``gb2312``/``gbk`` → gb18030,
       ``shift_jis`` → cp932, ``euc-kr``/``ks_c_5601-1987`` → cp949, ``big5`` →
       big5hkscs, ``iso-2022-jp`` → iso2022_jp then its extensions …), decoded
       strictly. Exception: when the declared charset is a Western single-byte
       one (us-ascii, iso-8859-1/15, windows-1252) and the bytes are valid
       UTF-8 containing multi-byte sequences, UTF-8 wins — such bytes are
       practically never real Latin-1 text, and "declared latin-1, sent UTF-8"
       is a common lie.
    3. UTF-8, strictly.
    4. With replacement characters: UTF-8, if the label is UTF-8, us-ascii,
       missing or unknown and the valid multi-byte characters outnumber the
       broken sequences (a truncated or spliced UTF-8 mail); or the declared
       charset, if it is another multi-byte charset and loses at most 1 % of
       the text (a truncated Japanese mail keeps its Japanese).
    5. windows-1252 with replacement (never fails).
    Unknown or unusable names (``x-unknown``, ``utf8mb4``, bytes-to-bytes
    codecs such as ``rot13``, escape codecs such as ``unicode_escape``) skip
    step 2 and record a defect. A text part without a charset is treated as
    us-ascii (RFC 2045), i.e. UTF-8 then windows-1252; an HTML part without a
    charset parameter may name one in ``<meta charset>`` (first 2 KB).

Bodies
    ``text_body`` / ``html_body`` are the first ``text/plain`` / ``text/html``
    parts that are not attachments (no ``Content-Disposition: attachment``,
    no filename), in document order. Further parts of the same type that are
    siblings of that first one in a ``multipart/mixed`` are appended (Apple
    Mail splits one body around inline attachments). Other leftover text parts
    inside a ``multipart/alternative`` are alternative renderings and are
    dropped; leftover text parts elsewhere (a mailing-list footer part) are
    kept as unnamed attachments so no content is silently lost. A missing body
    type stays ``None``: nothing is converted from HTML to text. Line endings
    in bodies are normalized to ``\\n``. NUL characters (PostgreSQL ``text``
    cannot store them) are replaced by U+FFFD, with a defect.

Attachments
    Every leaf part that is not a body part: ``Content-Disposition:
    attachment``, non-text parts, text parts with a filename, ``text/calendar``
    (default filename ``invite.ics``), ``message/*``. ``inline`` means "shown
    inside the HTML body": the part has a Content-ID and either sits in a
    ``multipart/related`` or is referenced as ``cid:`` by the HTML body. (Apple
    Mail marks PDFs ``Content-Disposition: inline`` without a Content-ID; those
    are ``inline=False`` so they are listed as attachments.) Filenames are kept
    as given, path separators included (``..\\..\\evil.exe``): sanitizing is
    the job of whoever writes files, and the original name is evidence.
    ``data`` is the transfer-decoded bytes; ``size`` and ``sha256`` describe it.

Nested messages (``message/rfc822``, forwarded as attachment)
    Represented by one attachment of type ``message/rfc822`` whose data is the
    inner message (re-serialized by the stdlib generator with CRLF line
    endings; not guaranteed byte-identical to the original part) and whose
    filename defaults to the inner subject + ``.eml``. The inner message's own
    parts are NOT flattened into the outer attachment list: they belong to the
    forwarded message, and ``parse_message(attachment.data)`` recovers them.

Classification (``is_auto_reply`` means "machine-generated: never send an
automatic acknowledgement to it"; ``is_bounce`` implies ``is_auto_reply``)
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

Thread key
    First id of References, else In-Reply-To, else the own Message-ID (all
    normalized). Without any of them: ``"sha256:" + sha256(subject + "\\n" +
    from address)``, where the subject has its reply/forward prefixes removed
    (``Re:``, ``Fwd:``, ``AW:``, ``WG:``, ``SV:``, ``Antw:`` …, repeated, also
    ``Re[2]:``), whitespace collapsed and is casefolded, and the address is
    lowercased. The key is stable across re-parses and across "Re:" variants.

Headers
    Every header value (top level, in order) is unfolded, decoded and cut to
    ``max_header_length`` characters (defect recorded). Address headers are
    cut at the last comma before the limit so no half address is parsed. A
    line without a colon inside the header block ends the header block (as in
    the stdlib and in MTAs); the rest becomes body and a defect is recorded.
"""

from __future__ import annotations

import binascii
import codecs
import datetime as _dt
import functools
import hashlib
import io
import re
from email import policy as _email_policy
from email import headerregistry as _headerregistry
from email import utils as _email_utils
from email.generator import BytesGenerator
from email.message import Message as _Compat32Message
from email.parser import BytesParser
from urllib.parse import unquote as _unquote

import msgspec

try:  # The private variant keeps "no/unknown zone" (None) apart from "+0000" (0).
    from email._parseaddr import _parsedate_tz as _parsedate_tz
except ImportError:  # pragma: no cover - stdlib layout changed
    _parsedate_tz = _email_utils.parsedate_tz

__all__ = [
    "DEFAULT_MAX_HEADER_LENGTH",
    "Address",
    "Attachment",
    "Message",
    "normalize_message_id",
    "parse_message",
]

#: Default cut for every decoded header value, in characters.
DEFAULT_MAX_HEADER_LENGTH = 16384

# MIME nesting deeper than this is not walked (the stdlib parser itself fails
# with RecursionError a few hundred levels down; real mail is < 10 deep).
_MAX_DEPTH = 64
# Leaf parts processed per message; a message with 100 000 empty parts is an
# attack on CPU and storage, not correspondence.
_MAX_PARTS = 1000
# A pathological message can produce thousands of defects; keep the list useful.
_MAX_DEFECTS = 100
# Raw header text decoded at most (a multiple of max_header_length: a Q-encoded
# CJK character costs 9 raw characters for one decoded one).
_RAW_HEADER_FACTOR = 16


class _CachingHeaderRegistry(_headerregistry.HeaderRegistry):
    """``policy.default``'s header factory, memoized for short values.

    The stdlib re-parses a header every time it is read, and the parser
    itself reads Content-Type about a dozen times per part: memoizing more
    than halves the parse time. Header objects are immutable str subclasses, so sharing
    them is safe; values over 1 KB are not cached to bound the memory held.
    """

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one module-level instance
    def _cached(self, name: str, value: str) -> _headerregistry.BaseHeader:
        return super().__call__(name, value)

    def __call__(self, name: str, value: str) -> _headerregistry.BaseHeader:
        if len(value) <= 1024:
            return self._cached(name, value)
        return super().__call__(name, value)


_PARSE_POLICY = _email_policy.default.clone(header_factory=_CachingHeaderRegistry())
# refold_source="none": emit parsed headers as received instead of refolding.
_GEN_POLICY = _email_policy.default.clone(refold_source="none", linesep="\r\n")


class Address(msgspec.Struct, frozen=True):
    """One mailbox: display name (decoded, may be ``""``) and addr-spec as given."""

    name: str
    address: str


class Attachment(msgspec.Struct):
    """One attachment (see the module docstring for what counts as one)."""

    #: As given by the sender (RFC 2231/2047 decoded), path separators kept; None if none.
    filename: str | None
    #: Lowercased ``type/subtype``; ``application/octet-stream`` if unusable.
    content_type: str
    #: ``len(data)``.
    size: int
    #: Hex SHA-256 of ``data``.
    sha256: str
    #: Content-ID without ``<>``; None if none.
    content_id: str | None
    #: Shown inside the HTML body (has a Content-ID, in multipart/related or referenced by cid:).
    inline: bool
    #: Transfer-decoded bytes.
    data: bytes


class Message(msgspec.Struct, kw_only=True, rename={"from_": "from"}):
    """A parsed message. Field semantics are in the module docstring."""

    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    thread_key: str
    from_: Address | None
    to: list[Address]
    cc: list[Address]
    reply_to: list[Address]
    #: Address of the Sender header; None if missing or unparseable.
    sender: str | None
    #: Address of the first Return-Path header; ``""`` for the null path ``<>``; None if missing.
    return_path: str | None
    subject: str
    date: _dt.datetime | None
    text_body: str | None
    html_body: str | None
    headers: list[tuple[str, str]]
    attachments: list[Attachment]
    size: int
    is_auto_reply: bool
    is_bounce: bool
    auto_reason: str | None
    defects: list[str]


# ---------------------------------------------------------------------------
# Charsets


# WHATWG Encoding Standard labels whose browser decoder differs from the Python
# codec of the same name (or that Python does not know), mapped to the codecs
# tried in order. Anything else goes to codecs.lookup().
_ALIAS_GROUPS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (
        (
            "iso-8859-1", "iso8859-1", "iso_8859-1", "iso88591", "latin1", "latin-1", "l1",
            "iso-ir-100", "cp819", "ibm819", "csisolatin1", "iso_8859-1:1987",
            "windows-1252", "cp1252", "x-cp1252",
        ),
        # cp1252 leaves 0x81 0x8D 0x8F 0x90 0x9D undefined; latin-1 maps them
        # to C1 controls like the WHATWG decoder, so the label never fails.
        ("cp1252", "latin-1"),
    ),
    (("iso-8859-9", "iso8859-9", "latin5", "l5", "iso-ir-148", "csisolatin5", "windows-1254"), ("cp1254", "iso8859-9")),
    (("iso-8859-11", "tis-620", "tis620", "windows-874", "dos-874"), ("cp874",)),
    (
        (
            "gb2312", "gb_2312", "gb_2312-80", "gbk", "x-gbk", "cp936", "ms936", "windows-936",
            "chinese", "csgb2312", "csiso58gb231280", "iso-ir-58", "euc-cn", "gb18030",
        ),
        ("gb18030",),
    ),
    (("big5", "big-5", "cn-big5", "csbig5", "x-x-big5", "big5-hkscs"), ("big5hkscs", "cp950")),
    (
        ("shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "csshiftjis", "windows-31j", "ms932", "cp932"),
        ("cp932", "shift_jis_2004"),
    ),
    (("euc-jp", "x-euc-jp", "cseucpkdfmtjapanese"), ("euc_jp", "euc_jis_2004")),
    (("iso-2022-jp", "csiso2022jp"), ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_3")),
    (
        (
            "euc-kr", "ks_c_5601-1987", "ks_c_5601-1989", "ksc5601", "ksc_5601", "korean",
            "csksc56011987", "iso-ir-149", "windows-949", "cp949", "x-windows-949", "csEUCKR",
        ),
        ("cp949",),
    ),
    (("koi8-ru",), ("koi8_u",)),
    (("iso-8859-8-i", "iso-8859-8-e", "csiso88598i", "logical", "visual"), ("iso8859-8",)),
    (("macintosh", "mac", "csmacintosh", "x-mac-roman"), ("mac_roman",)),
    (("x-mac-cyrillic", "x-mac-ukrainian"), ("mac_cyrillic",)),
    (("unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "x-unicode20utf8", "utf8", "utf-8"), ("utf-8",)),
    (("us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us"), ("ascii",)),
]
_ALIASES = {label.lower(): group for labels, group in _ALIAS_GROUPS for label in labels}

# Codecs that are text encodings to Python but must never interpret mail:
# they turn backslash escapes or punycode into characters.
_FORBIDDEN_CODECS = frozenset({"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined"})
# Declared labels for which valid multi-byte UTF-8 content beats the label.
_WESTERN = frozenset({"ascii", "cp1252", "latin-1", "iso8859-1", "iso8859-15"})
_SINGLE_BYTE_PREFIXES = ("cp12", "iso8859", "latin", "koi8", "mac", "cp8", "cp4", "ascii", "tis")


@functools.lru_cache(maxsize=512)
def _resolve_charset(label: str) -> tuple[str, ...]:
    """Codec names to try for a MIME charset label; ``()`` if unknown or unusable."""
    label = label.strip().strip("\"'").strip().lower()
    if not label or len(label) > 64:
        return ()
    group = _ALIASES.get(label)
    if group is not None:
        return group
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return ()
    if not getattr(info, "_is_text_encoding", True) or info.name.replace("-", "_") in _FORBIDDEN_CODECS:
        return ()
    return (info.name,)


def _canonical(codec: str) -> str:
    try:
        return codecs.lookup(codec).name
    except LookupError:  # pragma: no cover - only names from _resolve_charset get here
        return codec


def _decode_text(data: bytes, label: str | None) -> tuple[str, str | None]:
    """Decode ``data`` declared as ``label`` by the module's fallback chain.

    Returns the text and a defect description (None if the declared charset
    was honoured, or nothing was declared and the text is ASCII/UTF-8).
    Never raises.
    """
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", "replace"), None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and len(data) % 2 == 0:
        return data.decode("utf-16", "replace"), None
    label = (label or "").strip()
    candidates = _resolve_charset(label) if label else ()
    unknown = f"unknown charset {label!r}" if label and not candidates else None
    if candidates and not data.isascii() and _canonical(candidates[0]) in _WESTERN:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return text, f"declared charset {label!r} but content is UTF-8"
    for codec in candidates:
        try:
            return data.decode(codec), None
        except (UnicodeError, LookupError):
            continue
    if not candidates and data.isascii():
        return data.decode("ascii"), unknown
    why = unknown or (f"content is not {label!r}" if label else None)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return text, f"{why}, decoded as UTF-8" if why else None
    first = _canonical(candidates[0]) if candidates else None
    if first in (None, "ascii", "utf-8"):
        # Mostly UTF-8 with a few broken sequences (a truncated or spliced
        # message): keep the UTF-8. Only isolated high bytes (Latin-1 text
        # under a UTF-8 or missing label) go on to windows-1252.
        text = data.decode("utf-8", "replace")
        bad = text.count("\ufffd")
        if sum(1 for ch in text if ch > "\x7f") - bad > bad:
            return text, f"{why or 'no charset'}, decoded as UTF-8 with replacement characters"
    elif not first.startswith(_SINGLE_BYTE_PREFIXES):
        # A declared multi-byte charset that loses at most 1 % (a truncated
        # Japanese mail keeps its Japanese instead of becoming mojibake).
        text = data.decode(candidates[0], "replace")
        if text.count("\ufffd") <= max(1, len(text) // 100):
            return text, f"invalid {label!r} sequences replaced"
    why = why or "8-bit text without charset"
    return data.decode("cp1252", "replace"), f"{why}, decoded as windows-1252"


# ---------------------------------------------------------------------------
# Headers


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
# An encoded-word cut off at the end of a value (a mailer's length limit).
_ENCODED_WORD_TAIL = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?\s]+)\Z")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_FOLD = re.compile(r"\r?\n[ \t]")
_STRAY_EOL = re.compile(r"[\r\n]+")


class _Defects:
    """Bounded list of defects with a location prefix."""

    __slots__ = ("items", "dropped")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, where: str, what: str) -> None:
        if len(self.items) >= _MAX_DEFECTS:
            self.dropped += 1
            return
        text = _scrub(f"{where}: {what}" if where else what)
        if text not in self.items:  # the same header is decoded more than once
            self.items.append(text)

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.items, f"{self.dropped} more defects not listed"]
        return list(self.items)


def _scrub(text: str) -> str:
    """Make ``text`` storable: no lone surrogates, no NUL (PostgreSQL text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text


def _raw_to_str(value: str, defects: _Defects, where: str) -> str:
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


def _one_line(text: str) -> str:
    """Storable text without CR/LF (decoded ``=0D=0A`` must not smuggle header lines)."""
    text = _scrub(text)
    return _STRAY_EOL.sub(" ", text) if "\r" in text or "\n" in text else text


def _unfold(value: str) -> str:
    if "\n" not in value and "\r" not in value:
        return value
    return _STRAY_EOL.sub(" ", _FOLD.sub(" ", value))


def _lenient_b64(raw: bytes) -> bytes:
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
    return _lenient_b64(raw), clean


def _q_decode(text: str) -> bytes:
    # Encoded text should be ASCII; stray 8-bit characters are kept as UTF-8.
    return binascii.a2b_qp(text.encode("utf-8", "surrogateescape"), header=True)


def _decode_words(value: str, defects: _Defects, where: str) -> str:
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
            text, defect = _decode_text(bytes(pending), pending_charset)
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

    for match in _ENCODED_WORD.finditer(value):
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


class _Header(msgspec.Struct):
    name: str  # as given
    key: str  # lowercased name
    text: str  # 8-bit decoded, unfolded, still RFC 2047 encoded, capped
    value: str  # fully decoded and cut to max_header_length


_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc"})


def _read_headers(items: list[tuple[str, str]], max_len: int, defects: _Defects) -> list[_Header]:
    headers: list[_Header] = []
    raw_cap = max_len * _RAW_HEADER_FACTOR
    for raw_name, raw_value in items:
        try:
            name = _scrub(_raw_to_str(str(raw_name), defects, "header name").strip())
            key = name.lower()
            where = f"header {name}"
            raw_value = str(raw_value)
            raw_length = len(raw_value)
            truncated = raw_length > raw_cap
            if truncated:
                raw_value = raw_value[:raw_cap]
            text = _unfold(_raw_to_str(raw_value, defects, where))
            value = _decode_words(text, defects, where)
            if "\x00" in value:
                defects.add(where, "NUL characters replaced by U+FFFD")
            value = _one_line(value).strip()
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
            headers.append(_Header(name=name, key=key, text=text, value=value))
        except Exception as exc:  # noqa: BLE001 - one bad header must not lose the message
            defects.add("header", f"unreadable header ({type(exc).__name__}: {exc})")
    return headers


def _first(headers: list[_Header], key: str, defects: _Defects | None = None) -> _Header | None:
    found = [h for h in headers if h.key == key]
    if not found:
        return None
    if defects is not None and len(found) > 1:
        defects.add(f"header {found[0].name}", f"{len(found)} occurrences, the first is used")
    return found[0]


# ---------------------------------------------------------------------------
# Addresses and ids


_ADDR_SPEC = re.compile(r'(?:"[^"\r\n]*"|[^\s<>()\[\],;:"@\\]+)@[^\s<>()\[\],;:"@\\]+')
_LOCAL_ONLY = re.compile(r'[^\s<>()\[\],;:"@\\]+')
_RESCUE = re.compile(r'<\s*(?P<angle>[^<>\s@]+@[^<>\s@]+?)\s*>|(?P<bare>[^\s<>,;:"()\[\]@]+@[^\s<>,;:"()\[\]@]+)')
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def _parse_addresses(header: _Header | None, defects: _Defects) -> list[Address]:
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

        text = _ENCODED_WORD.sub(protect, text)
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
            result.append(Address(_one_line(_decode_words(name, defects, where)), _one_line(addr)))
        elif addr and _LOCAL_ONLY.fullmatch(addr) and _only_mailbox(header.text, addr):
            defects.add(where, f"address without domain {addr!r}")
            result.append(Address(_one_line(_decode_words(name, defects, where)), _one_line(addr)))
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
            result.append(Address(_one_line(_decode_words(name, defects, where)), _one_line(addr)))
    return result


def _only_mailbox(text: str, local: str) -> bool:
    """True if ``text`` is just ``local``, ``local (comment)`` or ``Name <local>``.

    getaddresses() turns "not an address at all" into the mailbox "not";
    a domain-less mailbox is only believed when it is all there is.
    """
    text = " ".join(_COMMENT.sub(" ", text).split())
    return re.fullmatch(r"(?:[^<>]*<\s*)?" + re.escape(local) + r"\s*>?", text) is not None


_ANGLE_ID = re.compile(r"<([^<>]*)>")


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
    match = _ANGLE_ID.search(value)
    if match is not None:
        value = "".join(match.group(1).split())
    else:
        parts = value.split()
        value = parts[0].strip("<>") if parts else ""
    return value or None


def _id_list(value: str) -> list[str]:
    """All ids of a References header, in order, without duplicates."""
    found = _ANGLE_ID.findall(value)
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


def _in_reply_to(value: str) -> str | None:
    match = _ANGLE_ID.search(value)
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


def _fallback_thread_key(subject: str, from_: Address | None) -> str:
    base = " ".join(_REPLY_PREFIX.sub("", subject).split()).casefold()
    sender = from_.address.lower() if from_ is not None else ""
    return "sha256:" + hashlib.sha256(f"{base}\n{sender}".encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------------------
# Dates


# Zone names seen in real Date headers that the stdlib does not know (it would
# silently read them as +0000). IST is ambiguous (India/Ireland/Israel): left out.
_ZONES = {
    "CET": "+0100", "CEST": "+0200", "MET": "+0100", "MEST": "+0200", "MEZ": "+0100", "MESZ": "+0200",
    "WET": "+0000", "WEST": "+0100", "BST": "+0100", "EET": "+0200", "EEST": "+0300", "MSK": "+0300",
    "JST": "+0900", "KST": "+0900", "HKT": "+0800", "SGT": "+0800", "AWST": "+0800",
    "ACST": "+0930", "AEST": "+1000", "AEDT": "+1100", "NZST": "+1200", "NZDT": "+1300",
    "HST": "-1000", "AKST": "-0900", "AKDT": "-0800", "SAST": "+0200", "WAT": "+0100",
    "CAT": "+0200", "EAT": "+0300", "PKT": "+0500", "ICT": "+0700", "WIB": "+0700",
}
_ZONE_NAME = re.compile(r"(?<![A-Za-z])(" + "|".join(_ZONES) + r")(?![A-Za-z])")
_GMT_OFFSET = re.compile(r"\b(?:GMT|UTC)\s*([+-])(\d{1,2}):?(\d{2})?\b", re.IGNORECASE)
_COMMENT = re.compile(r"\([^()]*\)")
_STRPTIME_FORMATS = (
    "%d.%m.%Y %H:%M:%S %z", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%Y/%m/%d %H:%M:%S %z",
    "%Y/%m/%d %H:%M:%S", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S %z",
    "%Y%m%d%H%M%S",
)


def _parse_date(value: str, defects: _Defects) -> _dt.datetime | None:
    """RFC 5322 date with lenient fallbacks; always timezone-aware or None.

    Order: the stdlib RFC 5322 parser (after replacing zone names it does
    not know, like ``CET``, and ``GMT+0100`` forms, by numeric offsets), then
    ISO 8601, then a few formats seen from broken mailers. A date without a
    usable zone is taken as UTC (defect; ``-0000`` means exactly that and is
    not a defect). Impossible values (31 Feb, offset beyond ±24 h) fall
    through to the next method; if none works, None.
    """
    where = "header Date"
    original = value
    value = " ".join(_COMMENT.sub(" ", value).split())
    if not value:
        defects.add(where, "empty")
        return None
    value = _GMT_OFFSET.sub(lambda m: f"{m.group(1)}{int(m.group(2)):02d}{m.group(3) or '00'}", value)
    value = _ZONE_NAME.sub(lambda m: _ZONES[m.group(1)], value)
    result: _dt.datetime | None = None
    tuple_ = None
    try:
        tuple_ = _parsedate_tz(value)
    except Exception:  # noqa: BLE001 - stdlib parser on garbage
        tuple_ = None
    if tuple_ is not None:
        yy, mo, dd, hh, mi, ss = tuple_[:6]
        offset = tuple_[9]
        try:
            naive = _dt.datetime(yy, mo, dd, hh, mi, min(ss, 59))
        except (ValueError, OverflowError, TypeError):
            naive = None
        if naive is not None:
            if offset is not None and abs(offset) >= 86400:
                defects.add(where, f"impossible zone offset in {original!r}, assumed UTC")
                offset = None
            elif offset is None and not value.rstrip().endswith("-0000"):
                defects.add(where, f"no usable time zone in {original!r}, assumed UTC")
            result = naive.replace(tzinfo=_dt.timezone(_dt.timedelta(seconds=offset or 0)))
    if result is None:
        result = _lenient_date(value)
        if result is not None:
            defects.add(where, f"non-RFC 5322 date {original!r}")
            if result.tzinfo is None:
                result = result.replace(tzinfo=_dt.timezone.utc)
    if result is None:
        defects.add(where, f"unparseable date {original!r}")
    return result


def _lenient_date(value: str) -> _dt.datetime | None:
    candidates = (value, value.replace(" ", "T", 1))
    for candidate in candidates:
        try:
            return _dt.datetime.fromisoformat(candidate)
        except ValueError:
            continue
    for fmt in _STRPTIME_FORMATS:
        try:
            return _dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


# ---------------------------------------------------------------------------
# MIME tree


_CID_REF = re.compile(r"cid:([^\"'\s>)]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f/\\]+")
_BOUNCE_SENDERS = frozenset({"mailer-daemon", "postmaster"})


class _Walker:
    """Collects bodies and attachments from a parsed tree; one instance per message."""

    def __init__(self, defects: _Defects, max_header_length: int) -> None:
        self.defects = defects
        self.max_header_length = max_header_length
        self.text: list[str] = []
        self.html: list[str] = []
        self.text_parent: int | None = None
        self.html_parent: int | None = None
        self.attachments: list[tuple[Attachment, bool]] = []  # (attachment, in_related)
        self.leaves = 0
        self.has_calendar = False
        self.has_delivery_status = False

    # -- traversal --------------------------------------------------------

    def walk(self, part: _Compat32Message, path: str, depth: int, parents: tuple[str, ...], parent_id: int) -> None:
        if depth > _MAX_DEPTH:
            self.defects.add(f"part {path}", f"nested deeper than {_MAX_DEPTH} levels, not read")
            return
        for defect in getattr(part, "defects", ()):
            self.defects.add(f"part {path}" if path else "message", type(defect).__name__)
        ctype = self._content_type(part, path)
        if ctype.startswith("multipart/"):
            children = part.get_payload()
            if isinstance(children, list):
                for index, child in enumerate(children, 1):
                    child_path = f"{path}.{index}" if path else str(index)
                    try:
                        self.walk(child, child_path, depth + 1, (*parents, ctype), id(part))
                    except Exception as exc:  # noqa: BLE001 - one bad part must not lose the message
                        self.defects.add(f"part {child_path}", f"unreadable ({type(exc).__name__}: {exc})")
                return
            # No boundary, or boundary never found: the payload is plain text.
            self.defects.add(f"part {path or 'body'}", f"{ctype} without usable boundary, read as text/plain")
            ctype = "text/plain"
        self.leaves += 1
        if self.leaves > _MAX_PARTS:
            if self.leaves == _MAX_PARTS + 1:
                self.defects.add("", f"more than {_MAX_PARTS} parts, the rest is not read")
            return
        self.leaf(part, path or "1", ctype, parents, parent_id)

    def leaf(self, part: _Compat32Message, path: str, ctype: str, parents: tuple[str, ...], parent_id: int) -> None:
        where = f"part {path}"
        disposition = self._disposition(part, where)
        filename = self._filename(part, where)
        in_alternative = "multipart/alternative" in parents
        in_related = "multipart/related" in parents
        maintype = ctype.split("/", 1)[0]

        if ctype in ("text/plain", "text/html") and disposition != "attachment" and filename is None:
            text = self._text(part, where, html=ctype == "text/html")
            bucket, parent = (self.html, self.html_parent) if ctype == "text/html" else (self.text, self.text_parent)
            if not bucket:
                bucket.append(text)
                if ctype == "text/html":
                    self.html_parent = parent_id
                else:
                    self.text_parent = parent_id
                return
            if parent == parent_id and parents and parents[-1] == "multipart/mixed":
                bucket.append(text)  # Apple Mail: one body split around inline attachments
                return
            if in_alternative:
                return  # another rendering of content already taken
        elif (
            maintype == "text"
            and ctype != "text/calendar"
            and in_alternative
            and disposition != "attachment"
            and filename is None
        ):
            return  # text/enriched, text/watch-html …: alternative renderings

        if ctype == "text/calendar":
            self.has_calendar = True
            filename = filename or "invite.ics"
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            self.has_delivery_status = True
        if maintype == "message" or ctype == "message/rfc822":
            data, inner_subject = self._message_bytes(part, where, ctype)
            if filename is None and ctype in ("message/rfc822", "message/global"):
                filename = self._eml_name(inner_subject)
        else:
            data = self._payload(part, where)
        cid = self._content_id(part, where)
        attachment = Attachment(
            filename=filename,
            content_type=ctype,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_id=cid,
            inline=False,
            data=data,
        )
        self.attachments.append((attachment, in_related))

    # -- per-part readers (each one survives garbage) ----------------------

    def _content_type(self, part: _Compat32Message, path: str) -> str:
        try:
            ctype = part.get_content_type()
        except Exception as exc:  # noqa: BLE001
            self.defects.add(f"part {path or 'body'}", f"unreadable Content-Type ({type(exc).__name__})")
            return "application/octet-stream"
        ctype = str(ctype).strip().lower()
        if not _CONTENT_TYPE.fullmatch(ctype):
            self.defects.add(f"part {path or 'body'}", f"invalid content type {ctype!r}")
            return "application/octet-stream"
        return ctype

    def _disposition(self, part: _Compat32Message, where: str) -> str | None:
        try:
            value = part.get_content_disposition()
        except Exception as exc:  # noqa: BLE001
            self.defects.add(where, f"unreadable Content-Disposition ({type(exc).__name__})")
            return None
        return str(value).strip().lower() if value else None

    def _raw_header(self, part: _Compat32Message, name: str) -> str | None:
        for key, value in part.raw_items():
            if str(key).lower() == name:
                return _unfold(_raw_to_str(str(value), self.defects, f"header {name}"))[: self.max_header_length * 4]
        return None

    def _filename(self, part: _Compat32Message, where: str) -> str | None:
        """Filename from Content-Disposition ``filename`` else Content-Type ``name``.

        Read with the compat32 parameter parser on our own decoded header text,
        so the value is kept as given (backslashes and slashes included);
        RFC 2231 continuations/charsets and RFC 2047 words are decoded.
        """
        shadow = _Compat32Message()
        for name in ("content-disposition", "content-type"):
            raw = self._raw_header(part, name)
            if raw is not None:
                shadow[name] = raw
        if not len(shadow):
            return None
        value = None
        try:
            value = shadow.get_param("filename", None, header="content-disposition")
            if value is None:
                value = shadow.get_param("name", None, header="content-type")
        except Exception as exc:  # noqa: BLE001
            self.defects.add(where, f"unreadable filename ({type(exc).__name__})")
            return None
        if value is None:
            return None
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded bytes as latin-1 text)
            charset, _language, text = value
            try:
                octets = str(text).encode("latin-1")
            except UnicodeEncodeError:  # raw 8-bit text in the parameter, already decoded
                octets = str(text).encode("utf-8")
            text, defect = _decode_text(octets, charset or "us-ascii")
            if defect:
                self.defects.add(where, f"filename: {defect}")
        else:
            text = str(value)  # get_param already removed the quotes
        text = _one_line(_decode_words(text, self.defects, where)).strip()
        return text or None

    def _content_id(self, part: _Compat32Message, where: str) -> str | None:
        raw = self._raw_header(part, "content-id")
        if raw is None:
            return None
        return _scrub(normalize_message_id(raw) or "") or None

    def _payload(self, part: _Compat32Message, where: str) -> bytes:
        known = len(getattr(part, "defects", ()))
        try:
            data = part.get_payload(decode=True)
        except Exception as exc:  # noqa: BLE001
            self.defects.add(where, f"undecodable payload ({type(exc).__name__}: {exc})")
            data = None
        for defect in list(getattr(part, "defects", ()))[known:]:  # base64 problems found while decoding
            self.defects.add(where, type(defect).__name__)
        if data is None:
            payload = part.get_payload()
            if isinstance(payload, str):
                data = payload.encode("utf-8", "surrogateescape")
            else:
                data = b""
        return bytes(data)

    def _text(self, part: _Compat32Message, where: str, *, html: bool) -> str:
        data = self._payload(part, where)
        try:
            charset = part.get_content_charset()
        except Exception:  # noqa: BLE001
            charset = None
            self.defects.add(where, "unreadable charset parameter")
        if charset is None and html:
            meta = _META_CHARSET.search(data[:2048])
            if meta is not None:
                charset = meta.group(1).decode("ascii")
        text, defect = _decode_text(data, charset)
        if defect:
            self.defects.add(where, defect)
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        if "\x00" in text:
            self.defects.add(where, "NUL characters replaced by U+FFFD")
        return _scrub(text)

    def _message_bytes(self, part: _Compat32Message, where: str, ctype: str) -> tuple[bytes, str]:
        """Bytes of a message/* part's content, and the inner Subject (decoded, "" if none)."""
        payload = part.get_payload()
        subject = ""
        if isinstance(payload, list):
            if ctype in ("message/rfc822", "message/global") and payload:
                try:
                    for key, value in payload[0].raw_items():
                        if str(key).lower() == "subject":
                            text = _unfold(_raw_to_str(str(value), self.defects, where))
                            subject = _one_line(_decode_words(text, self.defects, where))
                            break
                except Exception:  # noqa: BLE001
                    pass
            try:
                buffer = io.BytesIO()
                generator = BytesGenerator(buffer, mangle_from_=False, policy=_GEN_POLICY)
                for index, inner in enumerate(payload):
                    if index:
                        buffer.write(b"\r\n")
                    generator.flatten(inner, linesep="\r\n")
                data = buffer.getvalue()
            except Exception as exc:  # noqa: BLE001 - generator on garbage
                self.defects.add(where, f"nested message not re-serializable ({type(exc).__name__})")
                return b"", subject.strip()
            # Some webmailers base64-encode a message/rfc822 part (RFC 2046 forbids
            # it); the parser then reads the base64 text as the message. Undo that.
            cte = str(part.get("content-transfer-encoding", "")).strip().lower()
            if cte in ("base64", "quoted-printable"):
                data = _lenient_b64(data) if cte == "base64" else binascii.a2b_qp(data)
                self.defects.add(where, f"{ctype} with Content-Transfer-Encoding {cte}")
                if not subject and ctype in ("message/rfc822", "message/global"):
                    inner = BytesParser(policy=_PARSE_POLICY).parsebytes(data, headersonly=True)
                    for key, value in inner.raw_items():
                        if str(key).lower() == "subject":
                            text = _unfold(_raw_to_str(str(value), self.defects, where))
                            subject = _one_line(_decode_words(text, self.defects, where))
                            break
            return data, subject.strip()
        return self._payload(part, where), ""

    @staticmethod
    def _eml_name(subject: str) -> str:
        # Only synthesized names are made path-safe; given names are kept as given.
        base = " ".join(_UNSAFE_NAME.sub(" ", subject).split())[:200].strip(". ")
        return f"{base or 'message'}.eml"


# ---------------------------------------------------------------------------
# Classification


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


def _classify(
    headers: list[_Header],
    top_type: str,
    report_type: str | None,
    walker: _Walker,
    from_: Address | None,
    return_path: str | None,
    subject: str,
) -> tuple[bool, bool, str | None]:
    bounce: list[str] = []
    auto: list[str] = []
    first = {h.key: h.value for h in reversed(headers)}  # first occurrence wins

    if top_type == "multipart/report" and (report_type == "delivery-status" or walker.has_delivery_status):
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
    if suppress & {"all", "oof", "autoreply"} and _AUTO_SUBJECT.match(subject) and not walker.has_calendar:
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


# ---------------------------------------------------------------------------
# Entry point


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
        message_id=None, in_reply_to=None, references=[], thread_key=_fallback_thread_key("", None),
        from_=None, to=[], cc=[], reply_to=[], sender=None, return_path=None, subject="", date=None,
        text_body=None, html_body=None, headers=[], attachments=[], size=len(data),
        is_auto_reply=False, is_bounce=False, auto_reason=None, defects=[_scrub(d) for d in defects],
    )


def _parse(data: bytes, max_len: int) -> Message:
    defects = _Defects()
    source = data
    if source.startswith(codecs.BOM_UTF8):
        # Windows tools save .eml files with a BOM; it would glue itself to the first header name.
        defects.add("", "byte-order mark before the headers removed")
        source = source[3:]
    try:
        msg = BytesParser(policy=_PARSE_POLICY).parsebytes(source)
    except Exception as exc:  # noqa: BLE001 - RecursionError on absurd nesting, parser bugs
        defects.add("", f"MIME structure unreadable ({type(exc).__name__}), body read as text")
        try:
            msg = BytesParser(policy=_PARSE_POLICY).parsebytes(source, headersonly=True)
        except Exception as exc2:  # noqa: BLE001
            return _empty(data, [*defects.result(), f"unparseable message ({type(exc2).__name__})"])
    headers = _read_headers(list(msg.raw_items()), max_len, defects)

    def value_of(key: str) -> str | None:
        header = _first(headers, key, defects)
        return header.value if header is not None else None

    message_id = None
    mid_raw = value_of("message-id")
    if mid_raw is None:
        defects.add("", "missing Message-ID")
    else:
        message_id = normalize_message_id(mid_raw)
        if message_id is None:
            defects.add("header Message-ID", f"unusable value {mid_raw!r}")
    references = _id_list(" ".join(h.value for h in headers if h.key == "references"))
    irt_raw = value_of("in-reply-to")
    in_reply_to = _in_reply_to(irt_raw) if irt_raw else None

    from_list = _parse_addresses(_first(headers, "from", defects), defects)
    from_ = from_list[0] if from_list else None
    to = _parse_addresses(_first(headers, "to"), defects)
    cc = _parse_addresses(_first(headers, "cc"), defects)
    reply_to = _parse_addresses(_first(headers, "reply-to"), defects)
    sender_list = _parse_addresses(_first(headers, "sender"), defects)
    sender = sender_list[0].address if sender_list else None
    return_path = None
    rp = _first(headers, "return-path")
    if rp is not None:
        rp_value = rp.value.strip()
        match = _ANGLE_ID.search(rp_value)
        return_path = "".join(match.group(1).split()) if match else (rp_value.split() or [""])[0]

    subject = value_of("subject") or ""
    date_raw = value_of("date")
    date = _parse_date(date_raw, defects) if date_raw is not None else None
    if date_raw is None:
        defects.add("", "missing Date")

    walker = _Walker(defects, max_len)
    try:
        walker.walk(msg, "", 0, (), 0)
    except Exception as exc:  # noqa: BLE001 - keep the headers even if the body is lost
        defects.add("body", f"unreadable ({type(exc).__name__}: {exc})")
    text_body = "\n".join(walker.text) if walker.text else None
    html_body = "".join(walker.html) if walker.html else None

    # cid: URLs are %-encoded (RFC 2392); most mailers do not bother.
    referenced = {_unquote(m.group(1).strip()) for m in _CID_REF.finditer(html_body)} if html_body else set()
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
    is_auto, is_bounce, reason = _classify(headers, top_type, report_type, walker, from_, return_path, subject)

    thread_key = (references[0] if references else None) or in_reply_to or message_id
    if thread_key is None:
        thread_key = _fallback_thread_key(subject, from_)

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
        return_path=_scrub(return_path) if return_path is not None else None,
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
