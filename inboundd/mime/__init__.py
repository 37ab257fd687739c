"""MIME → Message: one raw RFC 5322 message in, one normalized :class:`Message` out.

Pure package: no I/O, no logging; the only module state is a bounded memo of
parsed MIME header objects (results do not depend on it). The entry point is
:func:`parse_message`; it never raises on bad input.
Everything that was wrong with the message is reported as a human-readable
string in :attr:`Message.defects` and the result is the best effort.

Parsing is done by the stdlib (``email.parser.BytesParser`` with
``email.policy.default``, whose header factory is memoized for speed).
Everything the stdlib is *strict* or *lossy* about is done here instead, on
the raw header values the parser keeps. Each decision is documented in the
module that implements it:

* :mod:`.charsets` — the charset fallback chain (bodies, encoded-words,
  RFC 2231 values);
* :mod:`.headers` — header values: 8-bit bytes (RFC 6532 UTF-8, or legacy
  bytes) and RFC 2047 encoded-words decoded leniently, unfolded, capped;
* :mod:`.addresses` — address lists (``email.utils.getaddresses`` plus a
  rescue pass for garbage), message ids and the thread key;
* :mod:`.dates` — the Date header, with lenient fallbacks;
* :mod:`.tree` — the MIME tree: bodies, attachments, nested messages;
* :mod:`.classify` — auto-reply and bounce classification;
* :mod:`.parse` — the entry point that puts them together;
* :mod:`.model` — the result types; :mod:`.defects` — the defect list.
"""

from __future__ import annotations

from .addresses import normalize_message_id
from .model import Address, Attachment, Message
from .parse import DEFAULT_MAX_HEADER_LENGTH, parse_message

__all__ = [
    "DEFAULT_MAX_HEADER_LENGTH",
    "Address",
    "Attachment",
    "Message",
    "normalize_message_id",
    "parse_message",
]
