"""Gmail decisions without I/O (``inboundd.providers.google``: push, certs, proto, oauth), table by table."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from google_fake import PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT, SigningKey, push_body, unsigned_token
from inboundd import config as config_mod
from inboundd.providers.google import certs as certs_mod
from inboundd.providers.google import proto
from inboundd.providers.google import oauth, push
from inboundd.providers.google.config import GoogleAccountConfig

KEY = SigningKey("kid-current")
OTHER_KEY = SigningKey("kid-current")  # same kid, different key: a forged signature
CERTS = {KEY.kid: KEY.cert_pem}
ALLOWED = {PUSH_AUDIENCE: frozenset({PUSH_SERVICE_ACCOUNT})}


# --------------------------------------------------------------------------- push token: the matrix


def _now() -> float:
    return time.time()


# (name, authorization header, status, reason)
TOKEN_MATRIX = [
    ("no header", lambda: None, 401, "no_token"),
    ("empty header", lambda: "", 401, "no_token"),
    ("basic auth", lambda: "Basic dXNlcjpwYXNz", 401, "not_bearer"),
    ("bearer without token", lambda: "Bearer ", 401, "not_bearer"),
    ("not a JWT", lambda: "Bearer abc.def", 401, "malformed_token"),
    ("garbage segments", lambda: "Bearer !!.??.**", 401, "malformed_token"),
    ("alg none", lambda: "Bearer " + unsigned_token(KEY.kid, **KEY.claims()), 401, "bad_alg"),
    ("unknown kid", lambda: "Bearer " + KEY.token_with_kid("kid-unknown"), 401, "unknown_kid"),
    ("bad signature", lambda: "Bearer " + OTHER_KEY.token(), 401, "bad_signature"),
    ("expired", lambda: "Bearer " + KEY.token(iat=int(_now()) - 4000, exp=int(_now()) - 400), 401, "expired"),
    ("future iat", lambda: "Bearer " + KEY.token(iat=int(_now()) + 300, exp=int(_now()) + 3900), 401,
     "not_yet_valid"),
    ("no exp", lambda: "Bearer " + KEY.token(exp=None), 401, "missing_claim"),
    ("wrong iss", lambda: "Bearer " + KEY.token(iss="https://evil.example.com"), 403, "wrong_issuer"),
    ("wrong aud", lambda: "Bearer " + KEY.token(aud="https://other.example.com/webhooks/google"), 403,
     "wrong_audience"),
    ("wrong email", lambda: "Bearer " + KEY.token(email="mallory@evil.iam.gserviceaccount.com"), 403,
     "wrong_email"),
    ("email_verified false", lambda: "Bearer " + KEY.token(email_verified=False), 403, "email_unverified"),
    ("email_verified missing", lambda: "Bearer " + KEY.token(email_verified=None), 403, "email_unverified"),
    ("email_verified a string", lambda: "Bearer " + KEY.token(email_verified="true"), 403, "email_unverified"),
]


@pytest.mark.parametrize("header, status, reason", [row[1:] for row in TOKEN_MATRIX],
                         ids=[row[0] for row in TOKEN_MATRIX])
def test_push_token_is_rejected(header, status, reason):
    value = header()
    with pytest.raises(push.PushRejected) as caught:
        token = push.bearer_token(value)
        push.check_token(token, CERTS, ALLOWED, _now())
    assert (caught.value.status, caught.value.reason) == (status, reason)
    secret = value.split(" ", 1)[1].strip() if value and " " in value else ""
    if secret:
        assert secret not in str(caught.value)  # the token never ends up in a log line


@pytest.mark.parametrize("overrides", [
    lambda now: {},
    lambda now: {"iss": "accounts.google.com"},
    lambda now: {"iat": now + 50, "exp": now + 3650},  # within the 60 s skew
    lambda now: {"iat": now - 3700, "exp": now - 50},
], ids=["pubsub token", "issuer without scheme", "iat 50s ahead", "expired 50s ago"])
def test_push_token_is_accepted(overrides):
    now = int(_now())
    token = KEY.token(**overrides(now))
    claims = push.check_token(push.bearer_token("Bearer " + token), CERTS, ALLOWED, now)
    assert (claims.audience, claims.email) == (PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT)


def test_push_token_time_is_checked_against_the_callers_clock():
    token = KEY.token()
    later = _now() + 3600 + 61
    with pytest.raises(push.PushRejected, match="expired"):
        push.check_token(token, CERTS, ALLOWED, later)
    assert push.check_token(token, CERTS, ALLOWED, later - 2).email == PUSH_SERVICE_ACCOUNT


def test_push_token_email_must_match_the_audience_it_came_with():
    allowed = {PUSH_AUDIENCE: frozenset({"a@x.iam.gserviceaccount.com"}),
               "https://b.example.com/webhooks/google": frozenset({PUSH_SERVICE_ACCOUNT})}
    with pytest.raises(push.PushRejected) as caught:
        push.check_token(KEY.token(), CERTS, allowed, _now())
    assert caught.value.reason == "wrong_email"


def test_token_header_names_kid_and_alg():
    assert push.token_header(KEY.token()) == push.TokenHeader(kid="kid-current", alg="RS256")
    with pytest.raises(push.PushRejected, match="no_kid"):
        header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256"}).encode()).rstrip(b"=").decode()
        push.token_header(f"{header}.e30.c2ln")


# --------------------------------------------------------------------------- push body


@pytest.mark.parametrize("body, expected", [
    (push_body("support@acme.com", 1710), ("support@acme.com", 1710)),
    (push_body("support@acme.com", "1234567890"), ("support@acme.com", 1234567890)),
    (push_body("support@acme.com", 99, urlsafe=True), ("support@acme.com", 99)),
    (push_body("support@acme.com", 99, urlsafe=True, padding=False), ("support@acme.com", 99)),
    (push_body("support@acme.com", 99, padding=False), ("support@acme.com", 99)),
    (push_body("Support@Acme.com ", 7), ("Support@Acme.com", 7)),
], ids=["number", "string", "base64url", "base64url unpadded", "base64 unpadded", "spaces"])
def test_decode_push(body, expected):
    notice = push.decode_push(body)
    assert (notice.email_address, notice.history_id) == expected
    assert notice.message_id == "2070443601311540"
    assert notice.subscription == "projects/acme/subscriptions/inboundd-gmail"


def _envelope(data: object) -> bytes:
    return json.dumps({"message": {"data": data, "messageId": "1"}}).encode()


def _data(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


# (name, body, reason)
PUSH_GARBAGE = [
    ("not json", b"{nope", "not_json"),
    ("json array", b"[]", "no_message"),
    ("no message", b'{"subscription": "s"}', "no_message"),
    ("message a string", b'{"message": "x"}', "no_message"),
    ("no data", b'{"message": {"messageId": "1"}}', "no_data"),
    ("empty data", _envelope(""), "no_data"),
    ("data not a string", _envelope(5), "no_data"),
    ("data not base64", _envelope("%%%not-base64%%%"), "data_not_base64"),
    ("data truncated", _envelope("eyJlbWFpbEFkZHJlc3Mi" + "Q"), "data_not_base64"),
    ("data not json", _envelope(base64.b64encode(b"hello").decode()), "data_not_json"),
    ("data a json list", _envelope(_data([1])), "data_not_json"),
    ("no emailAddress", _envelope(_data({"historyId": 5})), "no_email_address"),
    ("emailAddress not an address", _envelope(_data({"emailAddress": "x", "historyId": 5})), "no_email_address"),
    ("no historyId", _envelope(_data({"emailAddress": "a@b.c"})), "bad_history_id"),
    ("historyId negative", _envelope(_data({"emailAddress": "a@b.c", "historyId": -1})), "bad_history_id"),
    ("historyId zero", _envelope(_data({"emailAddress": "a@b.c", "historyId": 0})), "bad_history_id"),
    ("historyId float", _envelope(_data({"emailAddress": "a@b.c", "historyId": 1.5})), "bad_history_id"),
    ("historyId bool", _envelope(_data({"emailAddress": "a@b.c", "historyId": True})), "bad_history_id"),
    ("historyId words", _envelope(_data({"emailAddress": "a@b.c", "historyId": "12a"})), "bad_history_id"),
    ("historyId huge", _envelope(_data({"emailAddress": "a@b.c", "historyId": 2**64})), "bad_history_id"),
    ("too large", b"{" + b" " * push.MAX_BODY + b"}", "too_large"),
]


@pytest.mark.parametrize("body, reason", [row[1:] for row in PUSH_GARBAGE], ids=[row[0] for row in PUSH_GARBAGE])
def test_decode_push_names_what_is_wrong(body, reason):
    with pytest.raises(push.PushDataError) as caught:
        push.decode_push(body)
    assert caught.value.reason == reason


# --------------------------------------------------------------------------- certificate cache


@pytest.mark.parametrize("cache_control, age, lifetime", [
    ("public, max-age=21600, must-revalidate, no-transform", None, 21600),
    ("max-age=21600", "600", 21000),
    ("max-age=\"120\"", None, 120),
    ("max-age=5", None, certs_mod.MIN_LIFETIME),
    ("max-age=9999999", None, certs_mod.MAX_LIFETIME),
    ("no-cache", None, certs_mod.MIN_LIFETIME),
    ("private, no-store", None, certs_mod.MIN_LIFETIME),
    (None, None, certs_mod.DEFAULT_LIFETIME),
    ("public", None, certs_mod.DEFAULT_LIFETIME),
    ("s-maxage=100", None, certs_mod.DEFAULT_LIFETIME),
])
def test_cache_lifetime(cache_control, age, lifetime):
    assert certs_mod.cache_lifetime(cache_control, age) == lifetime


def test_certs_cache_fetches_once_then_serves_from_cache():
    cache = certs_mod.CertsCache()
    assert cache.plan("a", 0.0) == "fetch"
    cache.fetching(0.0)
    cache.stored({"a": "PEM"}, 3600, 0.0)
    assert [cache.plan("a", t) for t in (0.0, 1.0, 3599.0)] == ["use", "use", "use"]
    assert cache.plan("a", 3600.0) == "fetch"  # expired
    assert cache.fetches == 1


def test_certs_cache_unknown_kid_refetches_once_per_interval():
    cache = certs_mod.CertsCache()
    cache.fetching(0.0)
    cache.stored({"a": "PEM"}, 3600, 0.0)
    # Right after a fetch, a made-up kid is rejected without another fetch.
    assert cache.plan("b", 1.0) == "unknown_kid"
    step = certs_mod.UNKNOWN_KID_REFETCH
    assert cache.plan("b", step) == "fetch"
    cache.fetching(step)
    cache.stored({"a": "PEM"}, 3600, step)
    assert cache.plan("b", step) == "unknown_kid"       # once: the second plan never fetches
    assert cache.plan("c", step + 1) == "unknown_kid"   # nor does the next made-up kid
    assert cache.plan("a", step + 1) == "use"
    assert cache.plan("c", 2 * step) == "fetch"


def test_certs_cache_keeps_old_certs_when_a_fetch_fails():
    cache = certs_mod.CertsCache()
    cache.fetching(0.0)
    cache.stored({"a": "PEM"}, 100, 0.0)
    assert cache.plan("a", 100.0) == "fetch"
    cache.fetching(100.0)
    cache.failed(100.0)
    assert cache.plan("a", 101.0) == "use"           # stale, but Google's keys overlap
    assert cache.plan("b", 101.0) == "unknown_kid"
    assert cache.plan("a", 100.0 + certs_mod.FAILED_RETRY) == "fetch"


def test_certs_cache_without_certs_is_unavailable_after_a_failure():
    cache = certs_mod.CertsCache()
    cache.fetching(0.0)
    cache.failed(0.0)
    assert cache.plan("a", 1.0) == "unavailable"
    assert cache.plan("a", certs_mod.FAILED_RETRY) == "fetch"


# --------------------------------------------------------------------------- history pages


def _record(history_id: int, *messages: tuple[str, list[str]]) -> dict:
    added = [{"message": {"id": mid, "threadId": mid, "labelIds": labels}} for mid, labels in messages]
    return {"id": str(history_id), "messages": [a["message"] for a in added], "messagesAdded": added}


def test_parse_history_page():
    page = proto.parse_history_page({
        "history": [_record(11, ("m1", ["INBOX", "UNREAD"])), {"id": "12", "labelsAdded": []},
                    _record(13, ("m2", ["SENT"]), ("m3", []))],
        "nextPageToken": "tok", "historyId": "20",
    })
    assert page == proto.HistoryPage(
        (proto.AddedMessage("m1", ("INBOX", "UNREAD"), 11), proto.AddedMessage("m2", ("SENT",), 13),
         proto.AddedMessage("m3", (), 13)), "tok", 20)


def test_parse_history_page_without_history_is_the_last_page():
    assert proto.parse_history_page({"historyId": 42}) == proto.HistoryPage((), None, 42)
    assert proto.parse_history_page({"historyId": "42", "nextPageToken": ""}).next_page_token is None


@pytest.mark.parametrize("body, message", [
    ([], "expected a JSON object"),
    ({"history": [], "historyId": "x"}, "historyId"),
    ({"history": {}, "historyId": "1"}, "expected an array"),
    ({"history": [{"id": "1", "messagesAdded": [{"message": {"labelIds": []}}]}], "historyId": "1"}, "message.id"),
    ({"history": [{"id": "1", "messagesAdded": [{"message": {"id": "m", "labelIds": "INBOX"}}]}],
      "historyId": "1"}, "labelIds"),
    ({"history": [{"messagesAdded": []}], "historyId": "1"}, r"history\[0\].id"),
])
def test_parse_history_page_rejects(body, message):
    with pytest.raises(proto.GmailFormatError, match=message):
        proto.parse_history_page(body)


def test_history_params():
    assert proto.history_params(100, ["INBOX"]) == [
        ("startHistoryId", "100"), ("historyTypes", "messageAdded"), ("maxResults", "500"), ("labelId", "INBOX")]
    # history.list takes one labelId: with several watched labels, select_messages filters.
    assert ("labelId", "INBOX") not in proto.history_params(100, ["INBOX", "Label_7"], "p2")
    assert proto.history_params(100, [], "p2")[-1] == ("pageToken", "p2")


A = proto.AddedMessage
SKIP = ["SENT", "DRAFT", "SPAM", "TRASH"]

# (name, added, label_ids, kept ids, dropped)
SELECT_TABLE = [
    ("inbox mail kept", [A("m1", ("INBOX", "UNREAD"), 1)], ["INBOX"], ["m1"], []),
    ("sent mail dropped", [A("m1", ("SENT",), 1)], ["INBOX"], [], [("m1", "label:SENT")]),
    ("draft dropped even in the inbox", [A("m1", ("DRAFT", "INBOX"), 1)], ["INBOX"], [], [("m1", "label:DRAFT")]),
    ("sent to self: SENT wins", [A("m1", ("INBOX", "SENT"), 1)], ["INBOX"], [], [("m1", "label:SENT")]),
    ("not in a watched label", [A("m1", ("CATEGORY_PROMOTIONS",), 1)], ["INBOX"], [], [("m1", "not_watched")]),
    ("no watched labels: everything not skipped", [A("m1", ("Label_3",), 1), A("m2", ("TRASH",), 2)], [], ["m1"],
     [("m2", "label:TRASH")]),
    ("one message in several records, once", [A("m1", ("INBOX",), 1), A("m2", ("INBOX",), 2),
                                               A("m1", ("INBOX",), 3)], ["INBOX"], ["m1", "m2"], []),
    ("several watched labels", [A("m1", ("Label_1",), 1), A("m2", ("INBOX",), 2)], ["INBOX", "Label_1"],
     ["m1", "m2"], []),
]


@pytest.mark.parametrize("added, label_ids, kept, dropped", [row[1:] for row in SELECT_TABLE],
                         ids=[row[0] for row in SELECT_TABLE])
def test_select_messages(added, label_ids, kept, dropped):
    selection = proto.select_messages(added, label_ids, SKIP)
    assert [m.id for m in selection.keep] == kept
    assert list(selection.dropped) == dropped


def test_select_messages_remembers_ids_across_pages():
    seen: set[str] = set()
    first = proto.select_messages([A("m1", ("INBOX",), 1)], ["INBOX"], SKIP, seen)
    second = proto.select_messages([A("m1", ("INBOX",), 5), A("m2", ("INBOX",), 6)], ["INBOX"], SKIP, seen)
    assert [m.id for m in first.keep] == ["m1"] and [m.id for m in second.keep] == ["m2"]


@pytest.mark.parametrize("stored, walked, result", [
    (None, 5, 5), (4, 5, 5), (5, 5, None), (6, 5, None),
])
def test_cursor_never_moves_backwards(stored, walked, result):
    assert proto.advance(stored, walked) == result


# --------------------------------------------------------------------------- walk gate


def test_walk_gate_folds_pushes_into_the_walk_in_flight():
    gate = proto.WalkGate()
    assert gate.arrive(100) == "walk"
    assert [gate.arrive(h) for h in (101, 150, 120)] == ["joined"] * 3
    assert gate.finished(150) is False       # the walk reached every joined push
    assert gate.in_flight is False
    assert gate.arrive(160) == "walk"


def test_walk_gate_walks_again_for_a_push_beyond_what_was_reached():
    gate = proto.WalkGate()
    gate.arrive(100)
    gate.arrive(180)
    assert gate.finished(150) is True        # 180 may have changed after the walk read the history
    assert gate.in_flight is True
    assert gate.arrive(190) == "joined"
    assert gate.finished(200) is False


def test_walk_gate_periodic_tick_joining_forces_one_more_walk():
    gate = proto.WalkGate()
    gate.arrive(100)
    assert gate.arrive(0) == "joined"
    assert gate.finished(10**9) is True
    assert gate.finished(10**9) is False


def test_walk_gate_abandoned_walk_lets_the_next_push_walk():
    gate = proto.WalkGate()
    gate.arrive(100)
    gate.arrive(200)
    gate.abandoned()
    assert gate.arrive(150) == "walk"
    assert gate.finished(150) is False


# --------------------------------------------------------------------------- resync bounds


NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("last_stored, cursor_time, after, bound", [
    (NOW - timedelta(days=2), NOW - timedelta(hours=1), int((NOW - timedelta(days=2, hours=1)).timestamp()),
     "last_stored"),
    (None, NOW - timedelta(days=9), int((NOW - timedelta(days=9, hours=1)).timestamp()), "cursor_time"),
    (None, None, int((NOW - timedelta(hours=1)).timestamp()), "now"),
    (NOW + timedelta(days=1), None, int((NOW - timedelta(hours=1)).timestamp()), "last_stored"),  # clock ahead
])
def test_plan_resync(last_stored, cursor_time, after, bound):
    plan = proto.plan_resync(last_stored, cursor_time, NOW)
    assert plan == proto.ResyncPlan(after=after, query=f"after:{after}", bound=bound)


def test_list_params():
    assert proto.list_params("after:5", ["INBOX", "Label_1"], "p") == [
        ("q", "after:5"), ("maxResults", "500"), ("includeSpamTrash", "false"), ("labelIds", "INBOX"),
        ("labelIds", "Label_1"), ("pageToken", "p")]


def test_parse_message_list():
    assert proto.parse_message_list({"resultSizeEstimate": 0}) == proto.MessageList((), None)
    assert proto.parse_message_list({"messages": [{"id": "a", "threadId": "a"}, {"id": "b"}],
                                     "nextPageToken": "n"}) == proto.MessageList(("a", "b"), "n")
    with pytest.raises(proto.GmailFormatError, match=r"messages\[0\].id"):
        proto.parse_message_list({"messages": [{}]})


# --------------------------------------------------------------------------- watch


def test_watch_body_and_answer():
    assert proto.watch_body("projects/p/topics/t", ["INBOX"]) == {
        "topicName": "projects/p/topics/t", "labelIds": ["INBOX"], "labelFilterBehavior": "include"}
    assert proto.watch_body("projects/p/topics/t", []) == {"topicName": "projects/p/topics/t"}
    assert proto.parse_watch({"historyId": "1234567890", "expiration": "1431990098200"}) == proto.WatchResult(
        1234567890, 1431990098.2)
    with pytest.raises(proto.GmailFormatError, match="expiration"):
        proto.parse_watch({"historyId": "1", "expiration": "soon"})


DAY, HOUR = 86400.0, 3600.0

# (name, last success, expiration, now, seconds until renewal)
RENEWAL_TABLE = [
    ("never watched: now", None, None, 1000.0, 0.0),
    ("just renewed: a day", 1000.0, 1000.0 + 7 * DAY, 1000.0, DAY),
    ("half a day later", 1000.0, 1000.0 + 7 * DAY, 1000.0 + DAY / 2, DAY / 2),
    ("overdue: now", 1000.0, 1000.0 + 7 * DAY, 1000.0 + 2 * DAY, 0.0),
    ("expiry sooner than a day: an hour before it", 1000.0, 1000.0 + 5 * HOUR, 1000.0, 4 * HOUR),
]


@pytest.mark.parametrize("last, expiration, now, delay", [row[1:] for row in RENEWAL_TABLE],
                         ids=[row[0] for row in RENEWAL_TABLE])
def test_next_watch_renewal(last, expiration, now, delay):
    assert proto.next_watch_renewal(last, expiration, now) == delay


@pytest.mark.parametrize("last, expiration, now, health", [
    (None, None, 0.0, "never"),
    (0.0, 7 * DAY, DAY, "ok"),
    (0.0, 7 * DAY, 48 * HOUR, "ok"),
    (0.0, 7 * DAY, 48 * HOUR + 1, "stale"),
    (0.0, 7 * DAY, 7 * DAY, "expired"),
])
def test_watch_health(last, expiration, now, health):
    assert proto.watch_health(last, expiration, now) == health


# --------------------------------------------------------------------------- errors


def _google_error(code: int, reason: str, status: str = "") -> bytes:
    return json.dumps({"error": {"code": code, "message": f"msg {reason}", "status": status,
                                 "errors": [{"domain": "usageLimits", "reason": reason, "message": "m"}]}}).encode()


# (name, status, body, retry-after, kind, reason, retry_after)
ERROR_TABLE = [
    ("message gone", 404, _google_error(404, "notFound", "NOT_FOUND"), None, "not_found", "notFound", None),
    ("per-user rate", 403, _google_error(403, "userRateLimitExceeded"), None, "rate_limited",
     "userRateLimitExceeded", None),
    ("project rate", 403, _google_error(403, "rateLimitExceeded"), "7", "rate_limited", "rateLimitExceeded", 7.0),
    ("daily limit", 403, _google_error(403, "dailyLimitExceeded"), None, "rate_limited", "dailyLimitExceeded", None),
    ("too many concurrent", 429, _google_error(429, "rateLimitExceeded", "RESOURCE_EXHAUSTED"), "2",
     "rate_limited", "rateLimitExceeded", 2.0),
    ("429 without a body", 429, b"", None, "rate_limited", "http_429", None),
    ("scope missing", 403, _google_error(403, "insufficientPermissions", "PERMISSION_DENIED"), None, "auth",
     "insufficientPermissions", None),
    ("delegation denied", 403, _google_error(403, "forbidden"), None, "auth", "forbidden", None),
    ("bad token", 401, _google_error(401, "authError", "UNAUTHENTICATED"), None, "auth", "authError", None),
    ("refresh token revoked", 400, json.dumps({"error": "invalid_grant",
                                               "error_description": "Token has been expired or revoked."}).encode(),
     None, "auth", "invalid_grant", None),
    ("mail service off", 400, _google_error(400, "failedPrecondition", "FAILED_PRECONDITION"), None, "auth",
     "failedPrecondition", None),
    ("bad request", 400, _google_error(400, "invalidArgument", "INVALID_ARGUMENT"), None, "invalid",
     "invalidArgument", None),
    ("backend error", 500, _google_error(500, "backendError"), None, "unavailable", "backendError", None),
    ("unavailable html", 503, b"<html>Service Unavailable</html>", "30", "unavailable", "http_503", 30.0),
    ("teapot", 418, b"", None, "invalid", "http_418", None),
]


@pytest.mark.parametrize("status, body, retry_after, kind, reason, wait", [row[1:] for row in ERROR_TABLE],
                         ids=[row[0] for row in ERROR_TABLE])
def test_classify_error(status, body, retry_after, kind, reason, wait):
    failure = proto.classify_error(status, body, retry_after)
    assert (failure.kind, failure.reason, failure.retry_after) == (kind, reason, wait)


def test_retry_after_as_http_date():
    assert proto.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert proto.parse_retry_after("yesterday", 0.0) is None
    assert proto.parse_retry_after(None, 0.0) is None


# --------------------------------------------------------------------------- fetch checks and raw


@pytest.mark.parametrize("meta, max_size, verdict", [
    ({"labelIds": ["INBOX"], "sizeEstimate": 1000}, 2000, None),
    ({"labelIds": ["INBOX"], "sizeEstimate": 3000}, 2000, ("oversize", "sizeEstimate 3000 bytes exceeds the limit of 2000")),
    ({"labelIds": ["INBOX"], "sizeEstimate": 3000}, 0, None),
    ({"labelIds": ["DRAFT"], "sizeEstimate": 10}, 2000, ("label_skipped", "message carries label DRAFT")),
    ({"sizeEstimate": 10}, 2000, None),
])
def test_check_fetch(meta, max_size, verdict):
    assert proto.check_fetch(meta, SKIP, max_size) == verdict


@pytest.mark.parametrize("encoded", [
    base64.urlsafe_b64encode(b"Subject: \xff\xfe?>\r\n\r\nx").decode(),
    base64.urlsafe_b64encode(b"Subject: \xff\xfe?>\r\n\r\nx").decode().rstrip("="),
    base64.b64encode(b"Subject: \xff\xfe?>\r\n\r\nx").decode(),
])
def test_decode_raw(encoded):
    assert proto.decode_raw(encoded) == b"Subject: \xff\xfe?>\r\n\r\nx"


@pytest.mark.parametrize("value", [None, 5, "a", "ab!c"])
def test_decode_raw_rejects(value):
    with pytest.raises(proto.GmailFormatError, match="raw"):
        proto.decode_raw(value)


# --------------------------------------------------------------------------- post-actions


@pytest.mark.parametrize("text, action, body", [
    ("none", proto.PostAction("none"), None),
    ("mark_read", proto.PostAction("mark_read"), {"addLabelIds": [], "removeLabelIds": ["UNREAD"]}),
    ("archive", proto.PostAction("archive"), {"addLabelIds": [], "removeLabelIds": ["INBOX"]}),
    ("label:Processed/inboundd", proto.PostAction("label", "Processed/inboundd"),
     {"addLabelIds": ["Label_9"], "removeLabelIds": []}),
])
def test_post_actions(text, action, body):
    assert proto.parse_post_action(text) == action
    assert proto.modify_body(action, "Label_9") == body


@pytest.mark.parametrize("text", ["", "seen", "label:", "label: ", "move:X", "ARCHIVE"])
def test_post_action_rejects(text):
    with pytest.raises(ValueError, match="post_action"):
        proto.parse_post_action(text)


# --------------------------------------------------------------------------- credentials files


def test_parse_credentials_kinds():
    user = oauth.parse_credentials(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s",
                                               "refresh_token": "r", "token_uri": "http://127.0.0.1:1/token"}))
    assert (user.kind, user.token_uri, user.refresh_token) == ("authorized_user", "http://127.0.0.1:1/token", "r")
    default = oauth.parse_credentials(json.dumps({"type": "authorized_user", "client_id": "c",
                                                  "client_secret": "s", "refresh_token": "r"}))
    assert default.token_uri == oauth.DEFAULT_TOKEN_URI
    sa = oauth.parse_credentials(json.dumps({"type": "service_account", "client_email": "a@b", "private_key": "k",
                                             "token_uri": "https://t"}))
    assert (sa.kind, sa.refresh_token) == ("service_account", None)


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ("[]", "JSON object"),
    ('{"type": "external_account"}', "service_account"),
    ('{"type": "service_account", "client_email": "a@b"}', "lack private_key, token_uri"),
    ('{"type": "authorized_user", "client_id": "c", "client_secret": "", "refresh_token": "r"}',
     "lack client_secret"),
    ('{"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r", "token_uri": "ftp://x"}',
     "token_uri"),
])
def test_parse_credentials_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        oauth.parse_credentials(text)


def test_parse_credentials_never_shows_the_secret():
    with pytest.raises(ValueError) as caught:
        oauth.parse_credentials('{"type": "authorized_user", "client_id": "c", "client_secret": "hunter2"}')
    assert "hunter2" not in str(caught.value)


def test_scopes_follow_the_post_action():
    assert oauth.scopes_for(proto.PostAction("none")) == [oauth.SCOPE_READONLY]
    assert oauth.scopes_for(proto.PostAction("archive")) == [oauth.SCOPE_MODIFY]
    assert oauth.token_origin("r") == oauth.token_origin("r") != oauth.token_origin("r2")


# --------------------------------------------------------------------------- the [[google]] table


SECTION = {
    "id": "support-gmail", "tenant": "acme", "email": "support@acme.com",
    "credentials_file": "gmail.json", "topic": "projects/acme/topics/inboundd-gmail",
    "push_audience": "https://inbound.example.com/webhooks/google",
    "push_service_account": "pubsub-push@acme.iam.gserviceaccount.com",
    "label_ids": ["INBOX"], "skip_labels": ["SENT", "DRAFT", "SPAM", "TRASH"], "post_action": "none",
    "resync_interval": "30m", "gmail_url": "https://gmail.googleapis.com",
    "certs_url": "https://www.googleapis.com/oauth2/v1/certs", "ca_file": "",
}
CREDENTIALS = json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"})


def _toml(tables: list[dict]) -> str:
    def value(v):
        return json.dumps(v)  # TOML strings, arrays of strings and integers read like JSON
    return "\n".join("[[google]]\n" + "\n".join(f"{k} = {value(v)}" for k, v in t.items()) for t in tables)


def _load(tmp_path, *tables: dict, credentials: str = CREDENTIALS):
    (tmp_path / "gmail.json").write_text(credentials)
    return config_mod.load_text(_toml(list(tables)), base=tmp_path)


def _problems(tmp_path, *tables: dict, **kwargs) -> list[str]:
    with pytest.raises(config_mod.ConfigError) as caught:
        _load(tmp_path, *tables, **kwargs)
    return caught.value.problems


def test_google_table_as_in_the_issue(tmp_path):
    cfg = _load(tmp_path, SECTION)
    account = cfg.google[0]
    assert isinstance(account, GoogleAccountConfig)
    assert account.resync_interval == 1800.0 and account.label_ids == ["INBOX"] and account.tenant == "acme"
    assert cfg.secret("google[0].credentials").reveal() == CREDENTIALS


def test_google_table_defaults(tmp_path):
    required = {k: SECTION[k] for k in ("id", "email", "topic", "push_audience", "push_service_account",
                                        "credentials_file")}
    account = _load(tmp_path, required).google[0]
    assert (account.tenant, account.post_action, account.gmail_url, account.certs_url) == (
        "default", "none", "https://gmail.googleapis.com", "https://www.googleapis.com/oauth2/v1/certs")
    assert account.skip_labels == ["SENT", "DRAFT", "SPAM", "TRASH"] and account.resync_interval == 1800.0


@pytest.mark.parametrize("key, value, message", [
    ("email", "support", "google[0].email: expected a mailbox address"),
    ("topic", "inboundd-gmail", "google[0].topic: expected \"projects/<project>/topics/<topic>\""),
    ("push_audience", " ", "google[0].push_audience: must not be empty"),
    ("push_service_account", "pubsub", "google[0].push_service_account: expected"),
    ("post_action", "move:Done", "google[0].post_action: expected \"none\", \"mark_read\""),
    ("resync_interval", "10s", "google[0].resync_interval: must be at least 1m"),
    ("gmail_url", "gmail.googleapis.com", "google[0].gmail_url: expected an http"),
    ("certs_url", "", "google[0].certs_url: expected an http"),
    ("skip_labels", ["INBOX"], "google[0].skip_labels: INBOX is also in label_ids"),
    ("label_ids", [""], "google[0].label_ids[0]: must not be empty"),
    ("labels", ["INBOX"], "google[0].labels: unknown key (did you mean 'label_ids'?)"),
    ("ca_file", "/nonexistent/ca.pem", "google[0].ca_file: cannot read"),
])
def test_google_table_problems_name_the_key(tmp_path, key, value, message):
    problems = _problems(tmp_path, {**SECTION, key: value})
    assert any(p.startswith(message) for p in problems), problems


def test_google_credentials_are_required_and_checked(tmp_path):
    without = {k: v for k, v in SECTION.items() if k != "credentials_file"}
    assert _problems(tmp_path, without) == [
        "google[0].credentials_file: required (credentials_file or credentials_credential)"]
    assert _problems(tmp_path, SECTION, credentials='{"type": "authorized_user", "client_id": "c"}') == [
        "google[0].credentials_file: authorized_user credentials lack client_secret, refresh_token"]


def test_google_accounts_are_checked_together(tmp_path):
    second = {**SECTION, "id": "other", "email": "SUPPORT@acme.com", "certs_url": "https://127.0.0.1:1/certs"}
    problems = _problems(tmp_path, SECTION, second)
    assert any(p.startswith("google[1].email: mailbox 'SUPPORT@acme.com' is also google[0]'s") for p in problems)
    assert any(p.startswith("google[1].certs_url: every [[google]] account must use the same certs_url")
               for p in problems)


def test_google_account_ids_are_unique_across_providers(tmp_path):
    (tmp_path / "pw").write_text("pw")
    text = _toml([SECTION]) + '\n[[imap]]\nid = "support-gmail"\nhost = "h"\nusername = "u"\npassword_file = "pw"\n'
    (tmp_path / "gmail.json").write_text(CREDENTIALS)
    with pytest.raises(config_mod.ConfigError, match="duplicate account id 'support-gmail'"):
        config_mod.load_text(text, base=tmp_path)


# --------------------------------------------------------------------------- status view


from inboundd.providers.google.status import VIEW as GMAIL_VIEW  # noqa: E402


def _account(**fields):
    base = {"account": "support-gmail", "email": "support@acme.com", "tenant": "acme", "state": "watching",
            "since": 1000.0, "watch": "ok", "watch_expiration": 1000.0 + 7 * 86400, "last_renewal": 1000.0,
            "history_id": 4242, "last_walk_at": 1500.0, "error": None, "retry_at": None, "lease_token": 3}
    base.update(fields)
    return base


def test_gmail_status_is_normalized_with_ages():
    (item,) = GMAIL_VIEW.normalize([_account()], now=1000.0 + 3600)
    assert item["watch_expires_in"] == 7 * 86400 - 3600 and item["last_renewal_age"] == 3600
    assert item["retry_in"] is None and item["state_age"] == 3600
    assert GMAIL_VIEW.normalize(None, 0.0) == []
    assert [a["account"] for a in GMAIL_VIEW.normalize([_account(account="b"), _account(account="a")], 0.0)] == [
        "a", "b"]


@pytest.mark.parametrize("fields, problem", [
    ({}, None),
    ({"state": "standby", "watch": "standby"}, None),
    ({"state": "auth_failed", "error": "invalid_grant"}, "gmail account support-gmail is auth_failed: invalid_grant"),
    ({"state": "backoff", "error": "HTTP 500"}, "gmail account support-gmail is backoff: HTTP 500"),
    ({"watch": "stale", "last_renewal": 0.0}, "gmail account support-gmail: watch stale (last renewal 50.0h ago)"),
    ({"watch": "expired", "last_renewal": 0.0}, "gmail account support-gmail: watch expired"),
])
def test_gmail_status_problems(fields, problem):
    problems = GMAIL_VIEW.problems(GMAIL_VIEW.normalize([_account(**fields)], now=50 * 3600.0))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem)


def test_gmail_status_table():
    lines = GMAIL_VIEW.render(GMAIL_VIEW.normalize([_account()], now=1000.0 + 120))
    assert lines[0] == "GMAIL"
    assert lines[1].split() == ["account", "state", "watch", "expires", "in", "renewed", "history", "error"]
    assert lines[2].split() == ["support-gmail", "watching", "ok", "168.0h", "2m", "4242"]
    assert GMAIL_VIEW.render([]) == []
