"""The MIME tree: bodies and attachments collected from the parsed part tree.

Parsing is done by the stdlib (``email.parser.BytesParser`` with
``email.policy.default``, whose header factory is memoized for speed).
Attachment filenames are read with the compat32 parameter parser, which
keeps a filename "as given" (``policy.default`` drops the backslashes of
``..\\..\\evil.exe`` and cuts ``../x`` at the slash).

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
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import io
import re
from email import policy as _email_policy
from email import headerregistry as _headerregistry
from email.generator import BytesGenerator
from email.message import Message as _Compat32Message
from email.parser import BytesParser

from .addresses import normalize_message_id
from .charsets import decode_text
from .defects import Defects, scrub
from .headers import decode_words, lenient_b64, one_line, raw_to_str, unfold
from .model import Attachment

__all__ = ["CID_REF", "PARSE_POLICY", "Walker"]

# MIME nesting deeper than this is not walked (the stdlib parser itself fails
# with RecursionError a few hundred levels down; real mail is < 10 deep).
_MAX_DEPTH = 64
# Leaf parts processed per message; a message with 100 000 empty parts is an
# attack on CPU and storage, not correspondence.
_MAX_PARTS = 1000


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


PARSE_POLICY = _email_policy.default.clone(header_factory=_CachingHeaderRegistry())
# refold_source="none": emit parsed headers as received instead of refolding.
_GEN_POLICY = _email_policy.default.clone(refold_source="none", linesep="\r\n")


CID_REF = re.compile(r"cid:([^\"'\s>)]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f/\\]+")


class Walker:
    """Collects bodies and attachments from a parsed tree; one instance per message."""

    def __init__(self, defects: Defects, max_header_length: int) -> None:
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
                return unfold(raw_to_str(str(value), self.defects, f"header {name}"))[: self.max_header_length * 4]
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
            text, defect = decode_text(octets, charset or "us-ascii")
            if defect:
                self.defects.add(where, f"filename: {defect}")
        else:
            text = str(value)  # get_param already removed the quotes
        text = one_line(decode_words(text, self.defects, where)).strip()
        return text or None

    def _content_id(self, part: _Compat32Message, where: str) -> str | None:
        raw = self._raw_header(part, "content-id")
        if raw is None:
            return None
        return scrub(normalize_message_id(raw) or "") or None

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
        text, defect = decode_text(data, charset)
        if defect:
            self.defects.add(where, defect)
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        if "\x00" in text:
            self.defects.add(where, "NUL characters replaced by U+FFFD")
        return scrub(text)

    def _message_bytes(self, part: _Compat32Message, where: str, ctype: str) -> tuple[bytes, str]:
        """Bytes of a message/* part's content, and the inner Subject (decoded, "" if none)."""
        payload = part.get_payload()
        subject = ""
        if isinstance(payload, list):
            if ctype in ("message/rfc822", "message/global") and payload:
                try:
                    for key, value in payload[0].raw_items():
                        if str(key).lower() == "subject":
                            text = unfold(raw_to_str(str(value), self.defects, where))
                            subject = one_line(decode_words(text, self.defects, where))
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
                data = lenient_b64(data) if cte == "base64" else binascii.a2b_qp(data)
                self.defects.add(where, f"{ctype} with Content-Transfer-Encoding {cte}")
                if not subject and ctype in ("message/rfc822", "message/global"):
                    inner = BytesParser(policy=PARSE_POLICY).parsebytes(data, headersonly=True)
                    for key, value in inner.raw_items():
                        if str(key).lower() == "subject":
                            text = unfold(raw_to_str(str(value), self.defects, where))
                            subject = one_line(decode_words(text, self.defects, where))
                            break
            return data, subject.strip()
        return self._payload(part, where), ""

    @staticmethod
    def _eml_name(subject: str) -> str:
        # Only synthesized names are made path-safe; given names are kept as given.
        base = " ".join(_UNSAFE_NAME.sub(" ", subject).split())[:200].strip(". ")
        return f"{base or 'message'}.eml"
