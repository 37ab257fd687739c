"""The JSON a ``kind = "webhook"`` target receives: the normalized stored message, pure.

Shape (Standard Webhooks' recommended envelope)::

    {"type": "message.received", "timestamp": "<received_at>", "data": {<message>}}

``data`` holds the message's ids (``id`` = ``inbound_messages.id``, tenant,
account, provider, identity, provider ids, RFC ``message_id``), threading
(``in_reply_to``, ``references``, ``thread_key``), addresses (``from`` as
``{"name", "address"}`` or null; ``to``, ``cc``, ``reply_to`` as lists of
them), ``subject``, dates (RFC 3339), ``text_body``/``html_body``, every
header in order as ``[name, value]`` pairs, ``size``, the auto-reply and
bounce classification, parser ``defects``, and ``attachments``: metadata
plus ``content`` in base64 while the message's running total of attachment
bytes stays within the target's ``inline_max``; past it ``content`` is null
and ``content_omitted`` true (the bytes stay in ``inbound_attachments``,
by message id and ``position``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import msgspec

__all__ = ["EVENT_TYPE", "webhook_body"]

EVENT_TYPE = "message.received"

#: Columns of ``inbound_messages`` copied into ``data`` under the same name.
_COPIED = (
    "id", "tenant", "account", "provider", "identity", "provider_message_id", "folder", "labels",
    "message_id", "in_reply_to", "references", "thread_key", "sender", "return_path", "subject",
    "sent_at", "internal_date", "received_at", "text_body", "html_body", "headers", "size",
    "is_auto_reply", "is_bounce", "auto_reason", "defects",
)


def _attachment(row: Mapping[str, Any]) -> dict[str, Any]:
    content = row.get("data")
    return {
        "position": row["position"],
        "filename": row["filename"],
        "content_type": row["content_type"],
        "size": row["size"],
        "sha256": row["sha256"],
        "content_id": row["content_id"],
        "inline": row["inline"],
        "content": content,  # bytes → base64 by msgspec
        "content_omitted": content is None,
    }


def message_data(message: Mapping[str, Any], attachments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``data`` object of a stored *message* row and its *attachments* rows (``data`` None: omitted)."""
    data = {name: message.get(name) for name in _COPIED}
    address = message.get("from_address")
    data["from"] = {"name": message.get("from_name"), "address": address} \
        if address is not None or message.get("from_name") is not None else None
    data["to"] = message.get("to_addresses") or []
    data["cc"] = message.get("cc_addresses") or []
    data["reply_to"] = message.get("reply_to_addresses") or []
    data["attachments"] = [_attachment(row) for row in attachments]
    return data


def webhook_body(message: Mapping[str, Any], attachments: Sequence[Mapping[str, Any]]) -> bytes:
    """The request body for one stored message: compact UTF-8 JSON."""
    return msgspec.json.encode({
        "type": EVENT_TYPE,
        "timestamp": message.get("received_at"),
        "data": message_data(message, attachments),
    })
