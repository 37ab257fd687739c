"""Standard Webhooks signatures (https://www.standardwebhooks.com), pure.

A secret is written ``whsec_<base64>``; the key is the decoded bytes. Each
request carries ``webhook-id`` (the delivery id, the same on every attempt),
``webhook-timestamp`` (integer seconds, the time of this attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``.
Receivers verify with any Standard Webhooks library and dedupe by
``webhook-id``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["SECRET_PREFIX", "parse_secret", "sign", "signature_headers"]

SECRET_PREFIX = "whsec_"
#: The specification's bounds for the decoded key.
KEY_MIN, KEY_MAX = 24, 64


def parse_secret(text: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret; ``ValueError`` saying what is wrong otherwise."""
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"expected a Standard Webhooks secret \"{SECRET_PREFIX}<base64>\", "
                         f"got one starting {text[:6]!r}")
    encoded = text[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after \"{SECRET_PREFIX}\" is not base64") from None
    if not KEY_MIN <= len(key) <= KEY_MAX:
        raise ValueError(f"the key must be {KEY_MIN} to {KEY_MAX} bytes, this one is {len(key)}"
                         " (make one with: printf 'whsec_%s\\n' \"$(head -c 32 /dev/urandom | base64)\")")
    return key


def sign(key: bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of *body* sent as *delivery_id* at *timestamp*."""
    signed = b"%s.%d.%s" % (delivery_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(key: bytes, delivery_id: str, timestamp: int, body: bytes) -> list[tuple[str, str]]:
    """The three Standard Webhooks headers of one attempt."""
    return [
        ("webhook-id", delivery_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", sign(key, delivery_id, timestamp, body)),
    ]
