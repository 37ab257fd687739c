"""The parsed message: :class:`Message` with its :class:`Address` and :class:`Attachment` values."""

from __future__ import annotations

import datetime as _dt

import msgspec

__all__ = ["Address", "Attachment", "Message"]


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
