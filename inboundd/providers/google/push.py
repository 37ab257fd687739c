"""Pub/Sub push to ``POST /webhooks/google``, checked without I/O: who sent it, and what it says.

The order is the contract: the ``Authorization: Bearer`` OIDC token is
checked completely before the body is looked at.

1. :func:`bearer_token` and :func:`token_header`: a Bearer token whose header
   says ``alg`` RS256 and names a ``kid`` (401 otherwise). The caller then
   finds the certificate of that ``kid`` (``certs`` decides when to fetch).
2. :func:`check_token`: the RS256 signature, verified by
   ``google.auth.jwt.decode`` against that certificate; then what google-auth
   does not check (PROVIDERS-NOTES B2, E): ``iat``/``exp`` within
   :data:`CLOCK_SKEW`, ``iss`` one of :data:`ISSUERS`, ``aud`` a configured
   ``push_audience``, ``email`` that audience's ``push_service_account``,
   ``email_verified`` exactly ``true``. A bad or stale token is 401, a
   well-signed token for someone else is 403.
3. :func:`decode_push`: ``message.data`` (base64 or base64url, padding
   optional) → ``{"emailAddress", "historyId"}``, historyId a string or a
   number. Failures carry a precise reason; after a valid token they are
   acknowledged (204) and counted, because Pub/Sub would redeliver them forever.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from google.auth import exceptions as google_exceptions
from google.auth import jwt as google_jwt

from .proto import GmailFormatError, parse_history_id

__all__ = [
    "CLOCK_SKEW",
    "ISSUERS",
    "MAX_BODY",
    "PushClaims",
    "PushDataError",
    "PushNotice",
    "PushRejected",
    "TokenHeader",
    "bearer_token",
    "check_token",
    "decode_push",
    "still_valid",
    "token_header",
]

#: Google's ID tokens name either form of the issuer.
ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
#: Tolerance, in seconds, between Google's clock and ours for ``iat`` and ``exp``.
CLOCK_SKEW = 60
#: A push is a few hundred bytes; anything much larger is not one.
MAX_BODY = 64 * 1024
#: google-auth compares iat/exp with its own clock; a skew this large leaves that check to
#: :func:`check_token`, which takes the time as an argument and says which claim failed.
_SIGNATURE_ONLY_SKEW = 10**12


class PushRejected(Exception):
    """The push's token is refused: answer ``status`` (401 or 403) and do nothing else.

    ``reason`` is a fixed word for logs and metrics; ``detail`` explains it
    (it never contains the token).
    """

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


class TokenHeader(msgspec.Struct, frozen=True):
    kid: str
    alg: str


class PushClaims(msgspec.Struct, frozen=True):
    """The verified claims of a push token."""

    audience: str
    email: str
    issuer: str
    subject: str
    issued_at: float
    expires_at: float


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if authorization is None or not authorization.strip():
        raise PushRejected(401, "no_token", "no Authorization header (the push subscription needs an OIDC token)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise PushRejected(401, "not_bearer", f"Authorization scheme {scheme[:20]!r}, expected Bearer")
    return token.strip()


def token_header(token: str) -> TokenHeader:
    """The unverified header of *token*: ``alg`` must be RS256 and ``kid`` present."""
    try:
        header = google_jwt.decode_header(token)
    except (ValueError, TypeError) as exc:
        raise PushRejected(401, "malformed_token", f"not a JWT: {type(exc).__name__}") from None
    except RecursionError:
        # google-auth parses the header and claims with json.loads: "[[[[…" recurses past the stack.
        raise PushRejected(401, "malformed_token", "not a JWT: JSON nested too deeply") from None
    if not isinstance(header, Mapping):
        raise PushRejected(401, "malformed_token", "JWT header is not an object")
    alg = header.get("alg")
    if alg != "RS256":
        raise PushRejected(401, "bad_alg", f"alg {str(alg)[:20]!r}, expected RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise PushRejected(401, "no_kid", "JWT header names no kid")
    return TokenHeader(kid=kid, alg=alg)


def _number(payload: Mapping[str, Any], claim: str) -> float:
    value = payload.get(claim)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PushRejected(401, "missing_claim", f"claim {claim!r} missing or not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        # NaN compares false with everything: it would pass every time check.
        raise PushRejected(401, "missing_claim", f"claim {claim!r} is not a finite number")
    return number


def check_token(
    token: str,
    certs: Mapping[str, str],
    allowed: Mapping[str, frozenset[str]],
    now: float,
    skew: float = CLOCK_SKEW,
) -> PushClaims:
    """Verify *token* against the PEM certificates *certs* (``{kid: pem}``) at epoch time *now*.

    *allowed* maps each configured ``push_audience`` to the service accounts
    that may send to it. Returns the claims, or raises :class:`PushRejected`.
    """
    header = token_header(token)
    if header.kid not in certs:
        raise PushRejected(401, "unknown_kid", f"no Google certificate with kid {header.kid[:64]!r}")
    try:
        payload = google_jwt.decode(token, certs={header.kid: certs[header.kid]}, verify=True, audience=None,
                                    clock_skew_in_seconds=_SIGNATURE_ONLY_SKEW)
    except RecursionError:
        raise PushRejected(401, "malformed_token", "not a JWT: JSON nested too deeply") from None
    except (google_exceptions.GoogleAuthError, ValueError, TypeError) as exc:
        text = str(exc)
        if "required claim" in text:
            raise PushRejected(401, "missing_claim", text[:120]) from None
        raise PushRejected(401, "bad_signature", "RS256 signature does not verify with the certificate") from None
    issued_at, expires_at = _number(payload, "iat"), _number(payload, "exp")
    issuer = payload.get("iss")
    audience = payload.get("aud")
    email = payload.get("email")
    if not isinstance(issuer, str) or issuer not in ISSUERS:  # a list or an object is not hashable
        raise PushRejected(403, "wrong_issuer", f"iss {str(issuer)[:80]!r} is not Google's")
    if payload.get("email_verified") is not True:
        raise PushRejected(403, "email_unverified", "email_verified is not true")
    if not isinstance(audience, str) or not isinstance(email, str):
        raise PushRejected(403, "wrong_audience" if not isinstance(audience, str) else "wrong_email",
                           "aud and email must be strings")
    claims = PushClaims(audience=audience, email=email, issuer=str(issuer), subject=str(payload.get("sub", "")),
                        issued_at=issued_at, expires_at=expires_at)
    return still_valid(claims, allowed, now, skew)


def still_valid(claims: PushClaims, allowed: Mapping[str, frozenset[str]], now: float,
                skew: float = CLOCK_SKEW) -> PushClaims:
    """Check the parts of verified *claims* that change with time and configuration; returns *claims*.

    ``iat``/``exp`` within *skew* of *now*, ``aud`` one of *allowed*, ``email``
    one of that audience's senders. A token verified once (signature, issuer,
    ``email_verified``) is checked again with this on every later use.
    """
    if claims.issued_at - skew > now:
        raise PushRejected(401, "not_yet_valid", f"iat is {claims.issued_at - now:.0f}s in the future (skew {skew:g}s)")
    if claims.expires_at + skew < now:
        raise PushRejected(401, "expired", f"exp was {now - claims.expires_at:.0f}s ago (skew {skew:g}s)")
    if claims.audience not in allowed:
        raise PushRejected(403, "wrong_audience", f"aud {claims.audience[:200]!r} is no account's push_audience")
    if claims.email not in allowed[claims.audience]:
        raise PushRejected(403, "wrong_email",
                           f"email {claims.email[:200]!r} is not the push_service_account of this audience")
    return claims


# --------------------------------------------------------------------------- body


class PushDataError(ValueError):
    """A push body that is not a Gmail notification; ``reason`` is a fixed word for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PushNotice(msgspec.Struct, frozen=True):
    """What a Gmail push says: this mailbox changed up to this historyId."""

    email_address: str
    history_id: int
    #: Pub/Sub's message id (for tracing; redeliveries repeat it).
    message_id: str = ""
    subscription: str = ""


_B64 = re.compile(rb"[A-Za-z0-9+/_-]*={0,2}")


def _b64decode(data: str) -> bytes:
    raw = data.strip().encode("ascii", "replace")
    if not _B64.fullmatch(raw):
        raise PushDataError("data_not_base64", "message.data has characters outside base64 and base64url")
    raw = raw.rstrip(b"=").replace(b"-", b"+").replace(b"_", b"/")
    if len(raw) % 4 == 1:
        raise PushDataError("data_not_base64", "message.data is truncated (length leaves one character over)")
    try:
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PushDataError("data_not_base64", f"message.data: {exc}") from None


def _json(data: bytes, reason: str, detail: str) -> Any:
    """*data* as JSON, or :class:`PushDataError` (*reason*, *detail*).

    msgspec, not ``json.loads``: it refuses lone surrogates (``"\\ud800"``),
    which would pass here and then fail to encode in the job or a log line,
    and bytes that are not UTF-8; nesting deeper than the stack allows ends
    in RecursionError, turned into the same refusal.
    """
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise PushDataError(reason, detail) from None
    except RecursionError:
        raise PushDataError(reason, f"{detail} (nested too deeply)") from None


def decode_push(body: bytes) -> PushNotice:
    """Decode a Pub/Sub push body; raises :class:`PushDataError` naming what was wrong."""
    if len(body) > MAX_BODY:
        raise PushDataError("too_large", f"{len(body)} bytes, a push is at most {MAX_BODY}")
    envelope = _json(body, "not_json", "body is not JSON")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), dict):
        raise PushDataError("no_message", "body has no \"message\" object")
    message = envelope["message"]
    data = message.get("data")
    if not isinstance(data, str) or not data.strip():
        raise PushDataError("no_data", "message.data is missing or empty")
    notice = _json(_b64decode(data), "data_not_json", "message.data does not decode to JSON")
    if not isinstance(notice, dict):
        raise PushDataError("data_not_json", "message.data is not a JSON object")
    address = notice.get("emailAddress")
    if not isinstance(address, str) or "@" not in address:
        raise PushDataError("no_email_address", "message.data has no emailAddress")
    try:
        history_id = parse_history_id(notice.get("historyId"))
    except GmailFormatError as exc:
        raise PushDataError("bad_history_id", str(exc)) from None
    message_id = message.get("messageId") or message.get("message_id") or ""
    subscription = envelope.get("subscription") or ""
    return PushNotice(
        email_address=address.strip(),
        history_id=history_id,
        message_id=message_id if isinstance(message_id, str) else str(message_id),
        subscription=subscription if isinstance(subscription, str) else "",
    )
