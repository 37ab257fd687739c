"""Microsoft Graph decisions without I/O (``inboundd.providers.microsoft``), table by table."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from inboundd.ingress.retry_after import RETRY_AFTER_CAP, parse_retry_after
from inboundd.ingress.start import StartFrom
from inboundd.providers.microsoft import delta, proto, renewal, webhook
from inboundd.providers.microsoft.delta import DeltaCursor, DeltaMessage, DeltaStart
from inboundd.providers.microsoft.proto import GraphFailure, PostAction
from inboundd.providers.microsoft.renewal import Desired, Plan, Stored
from inboundd.providers.microsoft.status import VIEW
from inboundd.providers.microsoft.token import graph_scope, token_tenant
from inboundd.providers.microsoft.webhook import (
    Accepted,
    BadRequest,
    Lifecycle,
    Refused,
    SubscriptionRef,
    check_batch,
    parse_batch,
    validation_token,
)

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc).timestamp()
HOUR, MINUTE = 3600.0, 60.0
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"


# --------------------------------------------------------------------------- validation handshake


@pytest.mark.parametrize("query, expected", [
    ("", None),
    ("acct=support", None),
    ("validationToken=abc", "abc"),
    # Graph URL-encodes the token; the answer must be the decoded text.
    ("validationToken=Validation%3A%20Testing%20client%20application%20reachability",
     "Validation: Testing client application reachability"),
    ("validationToken=a+b", "a b"),
    ("acct=x&validationToken=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "<script>alert(1)</script>"),
    (b"validationToken=bytes%21", "bytes!"),
    ({"validationToken": "from a mapping"}, "from a mapping"),
    ({"other": "x"}, None),
    ((("acct", "x"), ("validationToken", "first"), ("validationToken", "second")), "first"),
    ((), None),
])
def test_validation_token(query, expected):
    assert validation_token(query) == expected


@pytest.mark.parametrize("query, reason", [
    ("validationToken=", "empty"),
    ("validationToken=" + "a" * (webhook.TOKEN_LIMIT + 1), "longer than 2048"),
    ("validationToken=a%0D%0ASet-Cookie:%20x", "control characters"),
    ("validationToken=%00", "control characters"),
])
def test_validation_token_refused(query, reason):
    with pytest.raises(BadRequest, match=reason):
        validation_token(query)


def test_validation_token_at_the_limit_is_echoed():
    token = "t" * webhook.TOKEN_LIMIT
    assert validation_token(f"validationToken={token}") == token


# --------------------------------------------------------------------------- batches: body → items


def item(sub="sub-1", state="secret-1", tenant=TENANT, message="AAMkAD=1", **extra):
    body = {
        "id": "lsgTZMr9KwAAA",
        "subscriptionId": sub,
        "subscriptionExpirationDateTime": "2026-11-25T10:00:00.0000000Z",
        "clientState": state,
        "changeType": "created",
        "resource": f"Users/0a1b/Messages/{message}",
        "tenantId": tenant,
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "@odata.id": f"Users/0a1b/Messages/{message}",
                         "@odata.etag": 'W/"CQAAABYAAADk"', "id": message},
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def lifecycle_item(event, sub="sub-1", state="secret-1", tenant=TENANT):
    return {"subscriptionId": sub, "subscriptionExpirationDateTime": "2026-11-25T10:00:00.0000000Z",
            "tenantId": tenant, "clientState": state, "lifecycleEvent": event}


def encode(*items):
    return json.dumps({"value": list(items)}).encode()


@pytest.mark.parametrize("body, reason", [
    (b"", "empty body"),
    (b"   ", "empty body"),
    (b"not json", "not JSON"),
    (b"[1, 2]", "Expected `object`, got `array`"),
    (b'{"items": []}', "missing required field `value`"),
    (b'{"value": {}}', "Expected `array`, got `object`"),
    (b'{"value": [1]}', r"at `\$.value\[0\]`"),
    (json.dumps({"value": [{"clientState": "x", "tenantId": "t"}]}).encode(), "missing required field `subscriptionId`"),
    (json.dumps({"value": [{"subscriptionId": 7, "clientState": "x", "tenantId": "t"}]}).encode(),
     r"Expected `str`, got `int` - at `\$.value\[0\].subscriptionId`"),
    (json.dumps({"value": [{"subscriptionId": "s", "tenantId": "t"}]}).encode(), "`clientState`"),
    (b"x" * (webhook.BODY_LIMIT + 1), "exceeds the limit"),
])
def test_parse_batch_refuses_malformed_bodies(body, reason):
    with pytest.raises(BadRequest, match=reason):
        parse_batch(body)


def test_parse_batch_ignores_unknown_fields_and_reads_the_documented_shape():
    batch = parse_batch(encode(item(newField={"x": 1})))
    (only,) = batch.value
    assert (only.subscription_id, only.client_state, only.tenant_id, only.change_type) == \
        ("sub-1", "secret-1", TENANT, "created")
    assert only.message_id() == "AAMkAD=1"
    assert only.subscription_expiration_date_time == "2026-11-25T10:00:00.0000000Z"


def test_parse_batch_accepts_an_empty_collection():
    assert parse_batch(b'{"value": []}').value == []


@pytest.mark.parametrize("fields, expected", [
    ({"resourceData": {"id": "from-data"}, "resource": "Users/u/Messages/from-resource"}, "from-data"),
    ({"resourceData": None, "resource": "Users/u/Messages/from-resource"}, "from-resource"),
    ({"resourceData": {}, "resource": "users/u/mailFolders('Inbox')/messages/AAk="}, "AAk="),
    ({"resourceData": None, "resource": "Users/u/Messages"}, None),
    ({"resourceData": None, "resource": "users/u/mailFolders('Inbox')"}, None),
    ({"resourceData": None, "resource": None}, None),
])
def test_message_id_of_an_item(fields, expected):
    raw = item()
    raw.update(fields)
    raw = {k: v for k, v in raw.items() if v is not None}
    (parsed,) = parse_batch(encode(raw)).value
    assert parsed.message_id() == expected


# --------------------------------------------------------------------------- batches: items → verdicts

SUB1 = SubscriptionRef("sub-1", "support", "Inbox", "secret-1", frozenset({TENANT, "acme.onmicrosoft.com"}))
SUB2 = SubscriptionRef("sub-2", "sales", "Inbox", "secret-2", frozenset({TENANT}))
KNOWN = {"sub-1": SUB1, "sub-2": SUB2}

# (name, items, accepted (account, message id), lifecycle (account, action), refused (subscription, reason))
CHECK_TABLE = [
    ("one genuine notification",
     [item()], [("support", "AAMkAD=1")], [], []),
    ("two subscriptions in one POST",
     [item(message="m1"), item(sub="sub-2", state="secret-2", message="m2")],
     [("support", "m1"), ("sales", "m2")], [], []),
    ("wrong clientState is forged",
     [item(state="secret-2")], [], [], [("sub-1", "bad_client_state")]),
    ("clientState differing only in case is forged",
     [item(state="SECRET-1")], [], [], [("sub-1", "bad_client_state")]),
    ("empty clientState is forged",
     [item(state="")], [], [], [("sub-1", "bad_client_state")]),
    ("another subscription's secret is forged",
     [item(sub="sub-2", state="secret-1")], [], [], [("sub-2", "bad_client_state")]),
    ("unknown subscription",
     [item(sub="sub-9")], [], [], [("sub-9", "unknown_subscription")]),
    ("wrong tenant",
     [item(tenant="11111111-2222-3333-4444-555555555555")], [], [], [("sub-1", "wrong_tenant")]),
    ("tenant compared without case",
     [item(tenant=TENANT.upper())], [("support", "AAMkAD=1")], [], []),
    ("tenant given as the configured domain",
     [item(tenant="acme.onmicrosoft.com")], [("support", "AAMkAD=1")], [], []),
    ("forgeries beside genuine items: only the genuine are accepted",
     [item(message="ok"), item(state="nope", message="bad"), item(sub="zzz", message="bad2")],
     [("support", "ok")], [], [("sub-1", "bad_client_state"), ("zzz", "unknown_subscription")]),
    ("the same message twice in a batch is accepted once",
     [item(message="m"), item(message="m")], [("support", "m")], [], []),
    ("updated is not subscribed to",
     [item(changeType="updated")], [], [], [("sub-1", "ignored_change_type")]),
    ("no message id",
     [item(resourceData=None, resource=None)], [], [], [("sub-1", "no_message_id")]),
    ("reauthorizationRequired → renew",
     [lifecycle_item("reauthorizationRequired")], [], [("support", "renew")], []),
    ("subscriptionRemoved → recreate",
     [lifecycle_item("subscriptionRemoved")], [], [("support", "recreate")], []),
    ("missed → resync",
     [lifecycle_item("missed")], [], [("support", "resync")], []),
    ("unknown lifecycle event",
     [lifecycle_item("somethingNew")], [], [], [("sub-1", "unsupported_event")]),
    ("lifecycle events are checked like notifications",
     [lifecycle_item("missed", state="x"), lifecycle_item("missed", sub="s9"),
      lifecycle_item("missed", tenant="other")],
     [], [], [("sub-1", "bad_client_state"), ("s9", "unknown_subscription"), ("sub-1", "wrong_tenant")]),
    ("notifications and lifecycle events in one POST",
     [item(message="m"), lifecycle_item("missed", sub="sub-2", state="secret-2")],
     [("support", "m")], [("sales", "resync")], []),
]


@pytest.mark.parametrize("items, accepted, lifecycle, refused",
                         [row[1:] for row in CHECK_TABLE], ids=[row[0] for row in CHECK_TABLE])
def test_check_batch(items, accepted, lifecycle, refused):
    check = check_batch(parse_batch(encode(*items)).value, KNOWN)
    assert [(a.subscription.account, a.message_id) for a in check.accepted] == accepted
    assert [(event.subscription.account, event.action) for event in check.lifecycle] == lifecycle
    assert [(r.subscription_id, r.reason) for r in check.refused] == refused


def test_check_batch_keeps_what_a_pointer_needs():
    check = check_batch(parse_batch(encode(item(message="m1"))).value, KNOWN)
    assert check.accepted == (Accepted(SUB1, "m1", "created"),)
    lifecycle = check_batch(parse_batch(encode(lifecycle_item("missed"))).value, KNOWN).lifecycle
    assert lifecycle == (Lifecycle(SUB1, "missed", "resync"),)


def test_refusals_name_the_account_once_the_subscription_is_known():
    check = check_batch(parse_batch(encode(item(state="x"), item(sub="s9"))).value, KNOWN)
    assert check.refused == (Refused("sub-1", "bad_client_state", "support"), Refused("s9", "unknown_subscription"))


def test_a_subscription_without_a_secret_accepts_nothing():
    bare = {"sub-1": SubscriptionRef("sub-1", "support", "Inbox", "", frozenset({TENANT}))}
    check = check_batch(parse_batch(encode(item(state=""))).value, bare)
    assert check.refused == (Refused("sub-1", "bad_client_state", "support"),)


def test_subscription_ref_repr_hides_the_secret():
    assert "secret-1" not in repr(SUB1) and "secret-1" not in str(SUB1)


# --------------------------------------------------------------------------- subscriptions

DESIRED = Desired(resource="users/s@acme.com/mailFolders('Inbox')/messages",
                  notification_url="https://in.example.com/webhooks/microsoft",
                  lifecycle_url="https://in.example.com/webhooks/microsoft/lifecycle")


def stored(expires_at, renewed_at=T0, **changes):
    fields = dict(subscription_id="sub-1", resource=DESIRED.resource, notification_url=DESIRED.notification_url,
                  lifecycle_url=DESIRED.lifecycle_url, expires_at=expires_at, renewed_at=renewed_at)
    fields.update(changes)
    return Stored(**fields)


# (name, stored, now, plan)
PLAN_TABLE = [
    ("nothing stored: create", None, T0, Plan("create", "none", T0)),
    ("fresh: wait until half-life",
     stored(T0 + 70 * HOUR), T0 + HOUR, Plan("wait", "fresh", T0 + 35 * HOUR)),
    ("just before half-life: still wait",
     stored(T0 + 70 * HOUR), T0 + 35 * HOUR - 1, Plan("wait", "fresh", T0 + 35 * HOUR)),
    ("at half-life: renew",
     stored(T0 + 70 * HOUR), T0 + 35 * HOUR, Plan("renew", "half_life", T0 + 35 * HOUR)),
    ("past half-life (daemon was down): renew",
     stored(T0 + 70 * HOUR), T0 + 60 * HOUR, Plan("renew", "half_life", T0 + 60 * HOUR)),
    ("half-life of a short subscription",
     stored(T0 + 45 * MINUTE), T0, Plan("wait", "fresh", T0 + 22.5 * MINUTE)),
    ("within the clock margin of expiry: recreate and resync",
     stored(T0 + 70 * HOUR), T0 + 70 * HOUR - 60, Plan("recreate", "expired", T0 + 70 * HOUR - 60, resync=True)),
    ("expired while the daemon was down: recreate and resync",
     stored(T0 + 70 * HOUR), T0 + 100 * HOUR, Plan("recreate", "expired", T0 + 100 * HOUR, resync=True)),
    ("notification URL changed (new public_url): recreate",
     stored(T0 + 70 * HOUR, notification_url="https://old.example.com/webhooks/microsoft"), T0 + HOUR,
     Plan("recreate", "config_changed", T0 + HOUR)),
    ("lifecycle URL changed: recreate (PATCH cannot change it)",
     stored(T0 + 70 * HOUR, lifecycle_url="https://old.example.com/x"), T0 + HOUR,
     Plan("recreate", "config_changed", T0 + HOUR)),
    ("resource changed: recreate",
     stored(T0 + 70 * HOUR, resource="users/x/mailFolders('Inbox')/messages"), T0 + HOUR,
     Plan("recreate", "config_changed", T0 + HOUR)),
]


@pytest.mark.parametrize("state, now, plan", [row[1:] for row in PLAN_TABLE], ids=[row[0] for row in PLAN_TABLE])
def test_plan_subscription(state, now, plan):
    assert renewal.plan_subscription(state, DESIRED, now) == plan


def test_renewal_is_at_half_life_of_what_graph_granted():
    # Graph may grant less than asked (or raise a short request to 45 minutes): halve what it returned.
    granted = stored(T0 + 10 * HOUR, renewed_at=T0)
    assert renewal.renew_at(granted) == T0 + 5 * HOUR


@pytest.mark.parametrize("configured, requested", [
    (70 * HOUR, 70 * HOUR),
    (4230 * MINUTE, 4230 * MINUTE - renewal.CLOCK_MARGIN),   # the maximum itself: kept below it
    (100 * HOUR, 4230 * MINUTE - renewal.CLOCK_MARGIN),      # capped at the Outlook maximum
    (10 * MINUTE, 45 * MINUTE),                               # raised like Graph would
    (45 * MINUTE, 45 * MINUTE),
])
def test_requested_expiry_is_capped(configured, requested):
    assert renewal.requested_expiry(T0, configured) == T0 + requested


def test_requested_expiry_never_exceeds_the_outlook_maximum():
    for hours in (1, 24, 70, 70.5, 71, 1000):
        assert renewal.requested_expiry(T0, hours * HOUR) - T0 < 4230 * MINUTE


# --------------------------------------------------------------------------- delta: pages


def page(value, next_link=None, delta_link=None):
    body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(message)", "value": value}
    if next_link:
        body["@odata.nextLink"] = next_link
    if delta_link:
        body["@odata.deltaLink"] = delta_link
    return json.dumps(body).encode()


def test_parse_delta_page_with_next_link():
    parsed = delta.parse_delta_page(page(
        [{"@odata.type": "#microsoft.graph.message", "@odata.etag": "W/x", "id": "m1",
          "receivedDateTime": "2026-11-22T10:00:00Z"},
         {"id": "m2"},
         {"@odata.type": "#microsoft.graph.message", "id": "m3", "@removed": {"reason": "deleted"}},
         {"id": "m4", "@removed": {"reason": "changed"}}],
        next_link="https://graph.microsoft.com/v1.0/me/mailfolders/inbox/messages/delta?$skiptoken=abc",
    ))
    assert parsed.messages == (DeltaMessage("m1", T0), DeltaMessage("m2", None))
    assert parsed.removed == ("m3", "m4")
    assert parsed.next_link.endswith("$skiptoken=abc") and parsed.delta_link is None


def test_parse_delta_page_final():
    parsed = delta.parse_delta_page(page([], delta_link="https://g/v1.0/x/delta?$deltatoken=zz"))
    assert parsed.messages == () and parsed.delta_link.endswith("$deltatoken=zz") and parsed.next_link is None


def test_parse_delta_page_keeps_a_message_with_an_unreadable_date():
    parsed = delta.parse_delta_page(page([{"id": "m", "receivedDateTime": "yesterday"}], delta_link="d"))
    assert parsed.messages == (DeltaMessage("m", None),)


@pytest.mark.parametrize("body, reason", [
    (b"nope", "not a delta page"),
    (b'{"@odata.deltaLink": "d"}', "missing required field `value`"),
    (b'{"value": [{"subject": "no id"}], "@odata.deltaLink": "d"}', "`id`"),
    (page([]), "neither"),
    (page([], next_link="n", delta_link="d"), "both"),
])
def test_parse_delta_page_refuses(body, reason):
    with pytest.raises(delta.DeltaFormatError, match=reason):
        delta.parse_delta_page(body)


# --------------------------------------------------------------------------- delta: where a walk starts

NOW_, ALL_, LAST2 = StartFrom("now"), StartFrom("all"), StartFrom("last", 2)
CURSOR = DeltaCursor("https://graph/v1.0/users/s/mailFolders/Inbox/messages/delta?$deltatoken=t", T0 - HOUR)


@pytest.mark.parametrize("cursor, start_from, expected", [
    (None, NOW_, DeltaStart("first_start", "baseline", since=T0)),
    (None, ALL_, DeltaStart("first_start", "all")),
    (None, LAST2, DeltaStart("first_start", "last", keep_last=2)),
    (CURSOR, NOW_, DeltaStart("resume", "all", link=CURSOR.delta_link)),
    (CURSOR, ALL_, DeltaStart("resume", "all", link=CURSOR.delta_link)),  # start_from only counts once
])
def test_plan_delta(cursor, start_from, expected):
    assert delta.plan_delta(cursor, start_from, T0) == expected


@pytest.mark.parametrize("saved_at, since", [
    (T0 - 2 * HOUR, T0 - 3 * HOUR),                           # from the dead cursor, minus the margin
    (T0 - 60 * 86400, T0 - delta.RESYNC_WINDOW),              # never further back than the window
    (None, T0 - delta.RESYNC_WINDOW),
    (T0 + HOUR, T0),                                          # a cursor saved "in the future": from now
])
def test_plan_resync_is_bounded(saved_at, since):
    assert delta.plan_resync(saved_at, T0) == DeltaStart("sync_reset", "all", since=since)


def test_first_query():
    assert delta.first_query(None) == {"changeType": "created", "$select": "id,receivedDateTime"}
    assert delta.first_query(T0)["$filter"] == "receivedDateTime ge 2026-11-22T10:00:00.000Z"


MSGS = [DeltaMessage("a", T0 - 3), DeltaMessage("b", T0 - 1), DeltaMessage("c", None), DeltaMessage("d", T0 - 2),
        DeltaMessage("b", T0 - 1)]


@pytest.mark.parametrize("start, ids", [
    (DeltaStart("first_start", "baseline", since=T0), []),
    (DeltaStart("first_start", "all"), ["a", "b", "c", "d"]),
    (DeltaStart("first_start", "last", keep_last=2), ["d", "b"]),
    (DeltaStart("first_start", "last", keep_last=1), ["b"]),
    (DeltaStart("first_start", "last", keep_last=10), ["c", "a", "d", "b"]),
])
def test_select_baseline(start, ids):
    assert delta.select_baseline(start, MSGS) == ids


# --------------------------------------------------------------------------- Graph errors

ITEM_NOT_FOUND = b'{"error":{"code":"ErrorItemNotFound","message":"The specified object was not found in the store."}}'

# (name, status, headers, body, kind, code, retry_after)
FAILURE_TABLE = [
    ("$value of a deleted message", 404, {}, ITEM_NOT_FOUND, "not_found", "ErrorItemNotFound", None),
    ("404 without a body", 404, {}, b"", "not_found", "", None),
    ("throttled with Retry-After", 429, {"retry-after": "7"}, b'{"error":{"code":"TooManyRequests"}}',
     "throttled", "TooManyRequests", 7.0),
    ("throttled without Retry-After", 429, {}, b"", "throttled", "", None),
    ("throttled with an HTTP date", 429, {"retry-after": "Sun, 22 Nov 2026 10:00:30 GMT"}, b"",
     "throttled", "", 30.0),
    ("unavailable with Retry-After", 503, {"retry-after": "3"}, b"<html>busy</html>", "unavailable", "", 3.0),
    ("gateway timeout", 504, {}, b"", "unavailable", "", None),
    ("token refused", 401, {}, b'{"error":{"code":"InvalidAuthenticationToken","message":"expired"}}',
     "auth", "InvalidAuthenticationToken", None),
    ("permission missing", 403, {}, b'{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}',
     "forbidden", "ErrorAccessDenied", None),
    ("delta token gone", 410, {"location": "https://g/x"}, b"", "sync_reset", "", None),
    ("syncStateNotFound on a 400", 400, {}, b'{"error":{"code":"syncStateNotFound","message":"x"}}',
     "sync_reset", "syncStateNotFound", None),
    ("SyncStateNotFound, other case", 404, {}, b'{"error":{"code":"SyncStateNotFound"}}',
     "sync_reset", "SyncStateNotFound", None),
    ("resyncRequired", 400, {}, b'{"error":{"code":"resyncRequired"}}', "sync_reset", "resyncRequired", None),
    ("subscription validation failed", 400, {},
     b'{"error":{"code":"ValidationError","message":"Subscription validation request failed."}}',
     "bad_request", "ValidationError", None),
    ("conflict", 409, {}, b"", "error", "", None),
    ("error body of the wrong shape", 500, {}, b'{"error":"flat"}', "unavailable", "", None),
]


@pytest.mark.parametrize("status, headers, body, kind, code, retry_after",
                         [row[1:] for row in FAILURE_TABLE], ids=[row[0] for row in FAILURE_TABLE])
def test_classify_failure(status, headers, body, kind, code, retry_after):
    failure = proto.classify_failure(status, headers, body, T0)
    assert (failure.kind, failure.status, failure.code, failure.retry_after) == (kind, status, code, retry_after)


def test_failure_description():
    failure = proto.classify_failure(404, {}, ITEM_NOT_FOUND, T0)
    assert failure.describe() == "404 ErrorItemNotFound: The specified object was not found in the store."
    assert GraphFailure("unavailable", 503).describe() == "503"


@pytest.mark.parametrize("value, expected", [
    (None, None), ("0", 0.0), ("120", 120.0), ("1.5", 1.5), (" 9 ", 9.0),
    ("99999", RETRY_AFTER_CAP),
    ("Sun, 22 Nov 2026 09:59:00 GMT", 0.0),  # in the past
    ("soon", None), ("-5", None),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, T0) == expected


# --------------------------------------------------------------------------- times, paths, actions


@pytest.mark.parametrize("text", [
    "2026-11-22T10:00:00Z", "2026-11-22T10:00:00.0000000Z", "2026-11-22T10:00:00.000Z", "2026-11-22T11:00:00+01:00",
])
def test_parse_graph_time(text):
    assert proto.parse_graph_time(text) == T0


@pytest.mark.parametrize("text", ["2026-11-22T10:00:00", "tomorrow", ""])
def test_parse_graph_time_refuses(text):
    with pytest.raises(ValueError):
        proto.parse_graph_time(text)


def test_format_graph_time_round_trips():
    assert proto.format_graph_time(T0 + 0.25) == "2026-11-22T10:00:00.250Z"
    assert proto.parse_graph_time(proto.format_graph_time(T0 + 0.25)) == T0 + 0.25


@pytest.mark.parametrize("mailbox, folder, resource", [
    ("support@acme.com", "Inbox", "users/support@acme.com/mailFolders('Inbox')/messages"),
    ("0a1b-guid", "AAMkAGI2=", "users/0a1b-guid/mailFolders('AAMkAGI2=')/messages"),
    ("s@acme.com", "Bob's", "users/s@acme.com/mailFolders('Bob''s')/messages"),
])
def test_subscription_resource(mailbox, folder, resource):
    assert proto.subscription_resource(mailbox, folder) == resource


def test_paths_encode_ids_as_one_segment():
    assert proto.message_path("s@acme.com", "AA/b+c=", "$value") == "users/s@acme.com/messages/AA%2Fb%2Bc%3D/$value"
    assert proto.delta_path("s@acme.com", "Inbox") == "users/s@acme.com/mailFolders/Inbox/messages/delta"
    assert proto.delta_path("s@acme.com", "AA/B=") == "users/s@acme.com/mailFolders/AA%2FB%3D/messages/delta"


@pytest.mark.parametrize("text, expected", [
    ("none", PostAction("none")), ("mark_read", PostAction("mark_read")),
    ("move:Archive", PostAction("move", "Archive")), (" move: Done ", PostAction("move", "Done")),
])
def test_parse_post_action(text, expected):
    assert proto.parse_post_action(text) == expected


@pytest.mark.parametrize("text", ["", "seen", "delete", "move:", "MARK_READ"])
def test_parse_post_action_refuses(text):
    with pytest.raises(ValueError, match="post_action"):
        proto.parse_post_action(text)


# --------------------------------------------------------------------------- tokens


def jwt(claims):
    import base64

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


@pytest.mark.parametrize("token, tenant", [
    (jwt({"tid": TENANT.upper(), "aud": "https://graph.microsoft.com"}), TENANT),
    (jwt({"aud": "x"}), None),
    (jwt({"tid": 5}), None),
    ("opaque-token", None),
    ("a.!!!.c", None),
    (jwt(["not", "an", "object"]), None),
])
def test_token_tenant(token, tenant):
    assert token_tenant(token) == tenant


@pytest.mark.parametrize("graph_url, scope", [
    ("https://graph.microsoft.com/v1.0", "https://graph.microsoft.com/.default"),
    ("https://graph.microsoft.us/v1.0/", "https://graph.microsoft.us/.default"),
    ("http://127.0.0.1:8123/v1.0", "http://127.0.0.1:8123/.default"),
])
def test_graph_scope(graph_url, scope):
    assert graph_scope(graph_url) == scope


# --------------------------------------------------------------------------- status view


def folder_status(**changes):
    item = {"account": "support-m365", "folder": "Inbox", "tenant": "acme", "state": "active",
            "subscription_id": "sub-1", "expires_at": T0 + 40 * HOUR, "renewed_at": T0 - 2 * HOUR,
            "renew_failures": 0, "last_error": None, "last_delta_at": T0 - 60, "delta_enqueued": 3,
            "retry_at": None, "lease_token": 4}
    item.update(changes)
    return item


def test_status_view_normalizes_times_relative_to_now():
    (item,) = VIEW.normalize([folder_status()], T0)
    assert (item["expires_in"], item["renewed_age"], item["last_delta_age"], item["retry_in"], item["error"]) == \
        (40 * HOUR, 2 * HOUR, 60.0, None, None)
    assert "last_error" not in item and item["delta_enqueued"] == 3
    assert VIEW.normalize(None, T0) == []


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"state": "standby"}, None),
    ({"state": "auth_failed", "last_error": "invalid_client"}, "microsoft support-m365/Inbox is auth_failed: invalid_client"),
    ({"state": "backoff", "last_error": "503"}, "microsoft support-m365/Inbox is backoff: 503"),
    ({"subscription_id": None, "expires_at": None}, "microsoft support-m365/Inbox has no subscription"),
    ({"expires_at": T0 + 1800, "renew_failures": 9},
     "microsoft support-m365/Inbox: subscription expires in 30m (9 failed renewals)"),
    ({"expires_at": T0 - 10}, "microsoft support-m365/Inbox: subscription expires in 0s (0 failed renewals)"),
])
def test_status_view_problems(changes, problem):
    problems = VIEW.problems(VIEW.normalize([folder_status(**changes)], T0))
    assert problems == ([problem] if problem else [])


def test_status_view_renders_a_table():
    lines = VIEW.render(VIEW.normalize([folder_status(), folder_status(folder="Archive", expires_at=T0 - 5)], T0))
    assert lines[0] == "SUBSCRIPTIONS (Microsoft Graph)"
    assert lines[1].split() == ["account", "folder", "state", "expires", "in", "last", "delta", "failures", "error"]
    assert "expired" in lines[2] and "40.0h" in lines[3]
    assert VIEW.render([]) == []
