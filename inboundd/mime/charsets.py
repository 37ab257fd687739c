"""Text from bytes in a declared charset, by one documented fallback chain.

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
"""

from __future__ import annotations

import codecs
import functools

__all__ = ["decode_text"]


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


def decode_text(data: bytes, label: str | None) -> tuple[str, str | None]:
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
