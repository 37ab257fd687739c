"""What a provider's HTTP route sees and answers, free of any web framework.

A route handler takes a frozen :class:`WebhookRequest` (method, path, query,
headers, body bytes, arrival time) and returns a :class:`WebhookReply`
(status, headers, body); ``web.py`` alone translates to and from the HTTP
server's objects. So the checks a provider makes on a webhook (signatures,
tokens, payload shapes, handshakes) are plain functions of a value, tested
table by table like ``providers/imap/proto.py``.

Pure module: no I/O.
"""

from __future__ import annotations

import msgspec

__all__ = ["Route", "WebhookReply", "WebhookRequest"]


class Route(msgspec.Struct, frozen=True):
    """One HTTP route a provider serves on the public server, e.g. ``Route("POST", "/webhooks/microsoft")``."""

    method: str
    path: str


class WebhookRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request as it arrived; header names are lower-case, every list keeps arrival order."""

    method: str
    path: str
    #: Decoded query parameters, repeated names kept.
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: Wall-clock seconds when the request arrived.
    received_at: float

    def header(self, name: str) -> str | None:
        """The first value of header *name* (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def param(self, name: str) -> str | None:
        """The first value of query parameter *name*, or None."""
        return next((value for key, value in self.query if key == name), None)


class WebhookReply(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a :class:`WebhookRequest`."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @classmethod
    def json(cls, status: int, document: object, *, headers: tuple[tuple[str, str], ...] = ()) -> "WebhookReply":
        """A JSON answer (``application/json``)."""
        return cls(status=status, headers=(("content-type", "application/json"), *headers),
                   body=msgspec.json.encode(document))

    @classmethod
    def text(cls, status: int, text: str, *, headers: tuple[tuple[str, str], ...] = ()) -> "WebhookReply":
        """A plain-text answer (``text/plain; charset=utf-8``), never interpreted as HTML."""
        return cls(status=status, headers=(("content-type", "text/plain; charset=utf-8"), *headers),
                   body=text.encode("utf-8"))
