"""Graph webhook checks without I/O: the validation handshake, notification batches, lifecycle events.

The HTTP handler feeds this module the query string and the body bytes of a
POST, and gets back decisions: answer a handshake with this token; reject
the body with this reason (400); these items are genuine change
notifications, these are lifecycle events, these were refused and why.
Looking up subscriptions and enqueueing are the handler's business; nothing
here waits or touches the network. Tested table by table in
``tests/test_microsoft_pure.py``.

Wire formats (../shared/PROVIDERS-NOTES.md A1–A3):

* handshake: ``POST …?validationToken=<url-encoded opaque>`` → 200
  ``text/plain`` whose body is the *decoded* token, within 10 s, before any
  JSON parsing;
* change notifications: ``{"value": [{"subscriptionId", "clientState",
  "tenantId", "changeType", "resource", "resourceData": {"id"}}, …]}``,
  possibly several subscriptions per POST;
* lifecycle notifications: the same envelope, items carry
  ``lifecycleEvent`` instead of ``resource``.

A notification is genuine only if its ``subscriptionId`` is one inboundd
created, its ``clientState`` equals that subscription's own secret
(compared in constant time) and its ``tenantId`` is the account's Azure AD
tenant. Anything else is refused item by item, never enqueued, and never
makes Graph retry (the batch still gets 202); only a body that is not a
notification collection at all is a 400.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import parse_qsl

import msgspec

__all__ = [
    "BODY_LIMIT",
    "TOKEN_LIMIT",
    "Accepted",
    "BadRequest",
    "Batch",
    "BatchCheck",
    "Item",
    "Lifecycle",
    "LifecycleAction",
    "Refused",
    "SubscriptionRef",
    "check_batch",
    "lifecycle_action",
    "parse_batch",
    "validation_token",
]

#: A notification POST larger than this is refused (400) before parsing. Items are
#: ~1 KB each; Graph documents no batch maximum, and this leaves room for a thousand.
BODY_LIMIT = 1024 * 1024
#: Longest validation token echoed back. Graph's are ~200 characters.
TOKEN_LIMIT = 2048


class BadRequest(ValueError):
    """The request is not what Graph sends: answer 400 with ``str(exc)`` as the reason."""


# --------------------------------------------------------------------------- handshake


def validation_token(query: str | bytes | Mapping[str, str] | Iterable[tuple[str, str]]) -> str | None:
    """The decoded ``validationToken`` of a POST's query, or None when there is none.

    *query* is the raw query string (decoded here, ``+`` as space, as form
    encoding says), or already-decoded parameters: a mapping, or (name,
    value) pairs in arrival order (the first ``validationToken`` counts). A
    present but unusable token raises :class:`BadRequest`: empty, longer
    than :data:`TOKEN_LIMIT`, or containing control characters (the token is
    echoed as ``text/plain``; refusing control characters keeps it from
    splitting anything downstream).
    """
    if isinstance(query, Mapping):
        token = query.get("validationToken")
    else:
        if isinstance(query, (str, bytes)):
            text = query.decode("latin-1") if isinstance(query, bytes) else query
            query = parse_qsl(text, keep_blank_values=True)
        token = next((value for key, value in query if key == "validationToken"), None)
    if token is None:
        return None
    if not token:
        raise BadRequest("validationToken is empty")
    if len(token) > TOKEN_LIMIT:
        raise BadRequest(f"validationToken is longer than {TOKEN_LIMIT} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in token):  # C0, DEL and C1
        raise BadRequest("validationToken contains control characters")
    return token


# --------------------------------------------------------------------------- batches


class ResourceData(msgspec.Struct, frozen=True):
    id: str | None = None


class Item(msgspec.Struct, frozen=True, rename="camel"):
    """One notification of a batch, as Graph sends it (unknown fields ignored)."""

    subscription_id: str
    client_state: str
    tenant_id: str
    change_type: str | None = None
    resource: str | None = None
    resource_data: ResourceData | None = None
    lifecycle_event: str | None = None
    subscription_expiration_date_time: str | None = None

    def message_id(self) -> str | None:
        """The message's (immutable) id: ``resourceData.id``, else the last segment of ``resource``."""
        if self.resource_data is not None and self.resource_data.id:
            return self.resource_data.id
        if self.resource:
            head, sep, tail = self.resource.rpartition("/")
            if sep and tail and head.lower().endswith("/messages") and "(" not in tail:
                return tail
        return None


class Batch(msgspec.Struct, frozen=True):
    """A changeNotificationCollection."""

    value: list[Item]


_batch_decoder = msgspec.json.Decoder(Batch)


def parse_batch(body: bytes, limit: int = BODY_LIMIT) -> Batch:
    """Decode a notification POST body; :class:`BadRequest` naming what is wrong.

    Refused: more than *limit* bytes (checked before parsing), not JSON
    (or not UTF-8, or nested deeper than the decoder goes), not
    ``{"value": [...]}``, an item that is not an object or lacks a
    ``subscriptionId``/``clientState``/``tenantId`` string.
    """
    if len(body) > limit:
        raise BadRequest(f"body of {len(body)} bytes exceeds the limit of {limit}")
    if not body.strip():
        raise BadRequest("empty body: expected a JSON notification collection {\"value\": [...]}")
    try:
        return _batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"not a notification collection: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        # msgspec reports a string holding bytes that are not UTF-8 this way, not as a DecodeError.
        raise BadRequest(f"body is not UTF-8 JSON: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        # Unknown fields are skipped, but skipping recurses: "[[[[…" deeper than the stack allows.
        raise BadRequest("body is not a notification collection: JSON nested too deeply") from None


class SubscriptionRef(msgspec.Struct, frozen=True):
    """What inboundd knows about one of its subscriptions: whose it is and its secret."""

    subscription_id: str
    account: str
    folder: str
    #: The random clientState given at creation; never logged.
    client_state: str = msgspec.field(default="")
    #: Azure AD tenant ids a notification may carry: the configured ``directory_id`` and the
    #: tenant GUID learned from the app's token (a domain-named directory is a GUID on the wire).
    tenant_ids: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return f"SubscriptionRef({self.subscription_id!r}, account={self.account!r}, folder={self.folder!r})"


class Accepted(msgspec.Struct, frozen=True):
    """A genuine change notification: enqueue a pointer to this message."""

    subscription: SubscriptionRef
    message_id: str
    change_type: str


LifecycleAction = Literal["renew", "recreate", "resync"]


class Lifecycle(msgspec.Struct, frozen=True):
    """A genuine lifecycle event and what the renewer must do about it."""

    subscription: SubscriptionRef
    event: str
    action: LifecycleAction


RefusalReason = Literal[
    "unknown_subscription",  # not a subscription inboundd created (or one already deleted)
    "bad_client_state",      # the secret does not match: forged
    "wrong_tenant",          # tenantId is not the account's directory
    "no_message_id",         # a change notification that names no message
    "unsupported_event",     # a lifecycle event this build does not know
    "ignored_change_type",   # e.g. "updated": inboundd subscribes to "created" only
]


class Refused(msgspec.Struct, frozen=True):
    """An item that is not enqueued, and why. ``account`` is known once the subscription is."""

    subscription_id: str
    reason: RefusalReason
    account: str | None = None


class BatchCheck(msgspec.Struct, frozen=True):
    """The verdict on every item of a batch, in order within each list."""

    accepted: tuple[Accepted, ...] = ()
    lifecycle: tuple[Lifecycle, ...] = ()
    refused: tuple[Refused, ...] = ()


_LIFECYCLE_ACTIONS: dict[str, LifecycleAction] = {
    "reauthorizationRequired": "renew",
    "subscriptionRemoved": "recreate",
    "missed": "resync",
}


def lifecycle_action(event: str) -> LifecycleAction | None:
    """What a lifecycle event asks of the renewer, or None for an event this build does not know.

    ``reauthorizationRequired`` → renew now (a PATCH of the expiry also
    reauthorizes); ``subscriptionRemoved`` → create a new subscription and
    resync with delta; ``missed`` → resync with delta.
    """
    return _LIFECYCLE_ACTIONS.get(event)


def _same_secret(given: str, expected: str) -> bool:
    # hmac.compare_digest takes time independent of where the strings differ.
    return bool(expected) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_batch(items: Iterable[Item], known: Mapping[str, SubscriptionRef]) -> BatchCheck:
    """Sort every item into accepted, lifecycle or refused.

    *known* maps subscription ids to the subscriptions inboundd created
    (the caller looks them up first). Checks, in this order: the
    subscription is known; its clientState matches (constant time); the
    tenant is the account's. Only then is the content read. The same
    message notified twice within one batch is accepted once.
    """
    accepted: list[Accepted] = []
    lifecycle: list[Lifecycle] = []
    refused: list[Refused] = []
    seen: set[tuple[str, str]] = set()
    for item in items:
        ref = known.get(item.subscription_id)
        if ref is None:
            refused.append(Refused(item.subscription_id, "unknown_subscription"))
            continue
        if not _same_secret(item.client_state, ref.client_state):
            refused.append(Refused(item.subscription_id, "bad_client_state", ref.account))
            continue
        if item.tenant_id.lower() not in ref.tenant_ids:
            refused.append(Refused(item.subscription_id, "wrong_tenant", ref.account))
            continue
        if item.lifecycle_event is not None:
            action = lifecycle_action(item.lifecycle_event)
            if action is None:
                refused.append(Refused(item.subscription_id, "unsupported_event", ref.account))
            else:
                lifecycle.append(Lifecycle(ref, item.lifecycle_event, action))
            continue
        change_type = item.change_type or "created"
        if change_type != "created":
            refused.append(Refused(item.subscription_id, "ignored_change_type", ref.account))
            continue
        message_id = item.message_id()
        if message_id is None:
            refused.append(Refused(item.subscription_id, "no_message_id", ref.account))
            continue
        key = (ref.account, message_id)
        if key not in seen:
            seen.add(key)
            accepted.append(Accepted(ref, message_id, change_type))
    return BatchCheck(tuple(accepted), tuple(lifecycle), tuple(refused))
