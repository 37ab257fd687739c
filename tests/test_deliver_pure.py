"""The pure half of deliveries: signatures, payloads, requests, verdicts, retries, the gate, routing.

Signatures are checked with the reference ``standardwebhooks`` package (the
receiver's side), never with inboundd's own code.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from inboundd.config_schema import DeliverConfig, DeliverMatch
from inboundd.deliver import gate as gate_mod
from inboundd.deliver.gate import Gate
from inboundd.deliver.payload import webhook_body
from inboundd.deliver.signing import parse_secret, signature_headers
from inboundd.deliver.targets import Router, Target, load_handler, matches
from inboundd.deliver.wire import (
    Verdict, action_mailbox_request, judge_failure, judge_response, next_step, webhook_request,
)
from deliver_helpers import SECRET

# --------------------------------------------------------------------------- signing


def test_a_signed_request_verifies_with_the_reference_library() -> None:
    key = parse_secret(SECRET)
    body = json.dumps({"data": {"subject": "héllo"}}).encode()
    now = int(time.time())
    request = webhook_request("https://app/in", key, "msg_1", now, body, "inboundd/test")
    headers = dict(request.headers)
    assert Webhook(SECRET).verify(body, headers) == {"data": {"subject": "héllo"}}
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret"])
def test_the_reference_library_refuses_what_was_not_signed(tamper: str) -> None:
    key = parse_secret(SECRET)
    body, now = b'{"a":1}', int(time.time())
    headers = dict(signature_headers(key, "msg_1", now, body))
    secret = SECRET
    if tamper == "body":
        body = b'{"a":2}'
    elif tamper == "id":
        headers["webhook-id"] = "msg_2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


SECRETS = [
    (SECRET, None),
    ("whsec_" + base64.b64encode(b"k" * 24).decode().rstrip("="), None),  # unpadded base64 is accepted
    (base64.b64encode(b"k" * 32).decode(), "expected a Standard Webhooks secret"),
    ("whsec_not base64!", "is not base64"),
    ("whsec_" + base64.b64encode(b"short").decode(), "must be 24 to 64 bytes, this one is 5"),
    ("whsec_" + base64.b64encode(b"k" * 65).decode(), "this one is 65"),
]


@pytest.mark.parametrize(("text", "problem"), SECRETS)
def test_parse_secret(text: str, problem: str | None) -> None:
    if problem is None:
        assert len(parse_secret(text)) >= 24
    else:
        with pytest.raises(ValueError, match=problem):
            parse_secret(text)


# --------------------------------------------------------------------------- action mailbox


def test_the_relay_request_is_the_raw_message_with_basic_auth() -> None:
    raw = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    request = action_mailbox_request("https://app/rails/action_mailbox/relay/inbound_emails", "s3cret", raw,
                                     "msg_9", "inboundd/test")
    headers = dict(request.headers)
    assert request.method == "POST" and request.body is raw
    assert headers["content-type"] == "message/rfc822"
    assert base64.b64decode(headers["authorization"].removeprefix("Basic ")) == b"actionmailbox:s3cret"


# --------------------------------------------------------------------------- verdicts

NOW = 1_700_000_000.0

RESPONSES = [
    # status, headers, body, outcome, unavailable, retry_after
    (200, {}, b"", "delivered", False, None),
    (204, {}, b"", "delivered", False, None),
    (202, {}, b"queued", "delivered", False, None),
    (301, {"location": "https://elsewhere"}, b"", "dead", False, None),
    (400, {}, b"bad payload", "dead", False, None),
    (401, {}, b"", "dead", False, None),
    (404, {}, b"", "dead", False, None),
    (410, {}, b"gone", "dead", False, None),
    (415, {}, b"", "dead", False, None),
    (408, {}, b"", "retry", True, None),
    (429, {"retry-after": "120"}, b"slow down", "retry", True, 120.0),
    (500, {}, b"boom", "retry", False, None),
    (502, {}, b"", "retry", True, None),
    (503, {"retry-after": "Tue, 14 Nov 2023 22:14:20 GMT"}, b"", "retry", True, 7.0),
    (504, {}, b"", "retry", True, None),
]


@pytest.mark.parametrize(("status", "headers", "body", "outcome", "unavailable", "retry_after"), RESPONSES)
def test_judge_response(status, headers, body, outcome, unavailable, retry_after) -> None:
    verdict = judge_response(status, headers, body, NOW + 0.0 if status != 503 else
                             datetime(2023, 11, 14, 22, 14, 13, tzinfo=timezone.utc).timestamp())
    assert (verdict.outcome, verdict.http_status, verdict.unavailable, verdict.retry_after) == \
        (outcome, status, unavailable, retry_after)
    if outcome != "delivered":
        assert verdict.error.startswith(f"HTTP {status}") and (body.decode() in verdict.error)


def test_a_refusal_keeps_a_bounded_excerpt_of_the_body() -> None:
    verdict = judge_response(422, {}, b"line one\n   line two " + b"x" * 5000, NOW)
    assert verdict.error.startswith("HTTP 422: line one line two x") and len(verdict.error) < 320


@pytest.mark.parametrize("kind", ["timeout", "connect", "transport"])
def test_no_answer_is_a_retry_and_says_the_target_is_unavailable(kind) -> None:
    verdict = judge_failure(kind, "detail")
    assert (verdict.outcome, verdict.http_status, verdict.unavailable) == ("retry", None, True)
    assert verdict.error.endswith(": detail")


STEPS = [
    # verdict, attempts, max_attempts, outcome, delay bounds
    (Verdict("delivered", 204), 1, 12, "delivered", (0, 0)),
    (Verdict("dead", 400, "HTTP 400"), 1, 12, "dead", (0, 0)),
    (Verdict("retry", 503, "HTTP 503"), 1, 12, "retry", (2.5, 5.0)),
    (Verdict("retry", 503, "HTTP 503"), 3, 12, "retry", (10.0, 20.0)),
    (Verdict("retry", 503, "HTTP 503"), 20, 30, "retry", (1800.0, 3600.0)),  # capped
    (Verdict("retry", 429, "HTTP 429", retry_after=600.0), 1, 12, "retry", (600.0, 600.0)),  # a floor
    (Verdict("retry", None, "cannot connect"), 12, 12, "dead", (0, 0)),
]


@pytest.mark.parametrize(("verdict", "attempts", "max_attempts", "outcome", "bounds"), STEPS)
def test_next_step(verdict, attempts, max_attempts, outcome, bounds) -> None:
    for rand in (0.0, 0.5, 0.999):
        step = next_step(verdict, attempts, max_attempts=max_attempts, base=5.0, cap=3600.0, rand=lambda: rand)
        assert step.outcome == outcome and bounds[0] <= step.delay <= bounds[1]
    if outcome == "dead" and verdict.outcome == "retry":
        assert "gave up after 12 attempts" in step.error


# --------------------------------------------------------------------------- the gate


def test_the_gate_pauses_on_unavailability_probes_then_opens() -> None:
    gate = Gate(1.0, 8.0, rng=lambda: 1.0)  # equal jitter at its top: the ceiling
    assert (gate.state(0.0), gate.allowance(0.0, 8)) == ("open", 8)
    assert gate.unavailable(10.0, None, "cannot connect") == 1.0
    assert (gate.state(10.5), gate.allowance(10.5, 8), gate.wait(10.5)) == ("paused", 0, 0.5)
    # A request sent before the pause failing too does not lengthen it.
    assert gate.unavailable(10.6, None, "cannot connect") == pytest.approx(0.4)
    assert (gate.state(11.0), gate.allowance(11.0, 8)) == ("probing", 1)
    assert gate.unavailable(11.1, None, "cannot connect") == 2.0  # the probe failed: longer
    assert gate.unavailable(13.2, 30.0, "HTTP 429") == 30.0  # Retry-After is a floor
    assert gate.failures == 3 and gate.last_error == "HTTP 429"
    assert gate.delivered(43.3) == pytest.approx(33.3)  # the outage began at 10.0
    assert (gate.state(43.3), gate.failures, gate.last_error) == ("open", 0, None)
    assert gate.delivered(44.0) is None


def test_message_failures_pause_the_gate_only_as_a_streak() -> None:
    gate = Gate(1.0, 8.0, rng=lambda: 1.0)
    for _ in range(gate_mod.FAILURE_STREAK - 1):
        assert gate.failed(0.0, "HTTP 500") is None
    assert gate.delivered(0.1) is None  # a delivery in between ends the streak
    for _ in range(gate_mod.FAILURE_STREAK - 1):
        assert gate.failed(1.0, "HTTP 500") is None
    assert gate.failed(1.0, "HTTP 500") == 1.0
    assert gate.state(1.5) == "paused"


# --------------------------------------------------------------------------- payload


def message_row(**overrides):
    row = {
        "id": 7, "tenant": "t1", "account": "support", "provider": "imap", "identity": "imap:INBOX:7:1",
        "provider_message_id": "7:1", "folder": "INBOX", "labels": [], "job_id": "j1",
        "message_id": "m1@example.com", "in_reply_to": None, "references": [], "thread_key": "m1@example.com",
        "from_name": "Ann", "from_address": "ann@example.com",
        "to_addresses": [{"name": "", "address": "support@example.org"}], "cc_addresses": [],
        "reply_to_addresses": [], "sender": None, "return_path": "", "subject": "Hi",
        "sent_at": datetime(2023, 11, 8, 9, 0, tzinfo=timezone.utc), "internal_date": None,
        "received_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "text_body": "hello", "html_body": None,
        "headers": [["Subject", "Hi"]], "size": 321, "is_auto_reply": False, "is_bounce": True,
        "auto_reason": "dsn", "defects": [],
    }
    row.update(overrides)
    return row


def attachment_row(position: int, data: bytes | None, size: int = 3):
    return {"message_id": 7, "position": position, "filename": f"f{position}.pdf", "content_type": "application/pdf",
            "size": size, "sha256": "ab" * 32, "content_id": None, "inline": False, "data": data}


def test_the_payload_is_the_normalized_message_with_attachments_inline_or_omitted() -> None:
    body = json.loads(webhook_body(message_row(), [attachment_row(0, b"pdf"), attachment_row(1, None, 10**7)]))
    assert body["type"] == "message.received" and body["timestamp"] == "2026-01-02T03:04:05Z"
    data = body["data"]
    assert (data["id"], data["tenant"], data["account"], data["subject"]) == (7, "t1", "support", "Hi")
    assert data["from"] == {"name": "Ann", "address": "ann@example.com"}
    assert data["to"] == [{"name": "", "address": "support@example.org"}] and data["cc"] == []
    assert (data["is_bounce"], data["auto_reason"], data["sent_at"]) == (True, "dsn", "2023-11-08T09:00:00Z")
    assert data["headers"] == [["Subject", "Hi"]] and data["thread_key"] == "m1@example.com"
    first, second = data["attachments"]
    assert (base64.b64decode(first["content"]), first["content_omitted"], first["filename"]) == (b"pdf", False, "f0.pdf")
    assert (second["content"], second["content_omitted"], second["size"]) == (None, True, 10**7)
    assert "raw" not in data and "job_id" not in data


def test_a_message_without_from_has_from_null() -> None:
    data = json.loads(webhook_body(message_row(from_name=None, from_address=None), []))["data"]
    assert data["from"] is None and data["attachments"] == []


# --------------------------------------------------------------------------- routing

MATCHES = [
    # tenant, accounts, message tenant, message account, matches
    ("", [], "t1", "support", True),
    ("t1", [], "t1", "support", True),
    ("t1", [], "t2", "support", False),
    ("", ["support"], "t2", "support", True),
    ("", ["sales"], "t1", "support", False),
    ("t1", ["support", "sales"], "t1", "sales", True),
    ("t1", ["support"], "t2", "support", False),
]


@pytest.mark.parametrize(("tenant", "accounts", "m_tenant", "m_account", "expected"), MATCHES)
def test_matches(tenant, accounts, m_tenant, m_account, expected) -> None:
    cfg = DeliverConfig(id="x", kind="webhook", match=DeliverMatch(tenant=tenant, accounts=accounts))
    assert matches(cfg, m_tenant, m_account) is expected


def test_the_router_plans_outbox_rows_and_handlers_per_message() -> None:
    def handler(conn, inbound):
        pass

    router = Router([
        Target(DeliverConfig(id="hook", kind="webhook")),
        Target(DeliverConfig(id="rails", kind="action_mailbox", match=DeliverMatch(accounts=["sales"]))),
        Target(DeliverConfig(id="py", kind="python", match=DeliverMatch(tenant="t1")), handler=handler),
    ])
    assert router.plan("t1", "sales").outbox == (("hook", "webhook"), ("rails", "action_mailbox"))
    assert router.plan("t1", "sales").handlers == (("py", handler),)
    assert router.plan("t2", "support").outbox == (("hook", "webhook"),) and router.plan("t2", "support").handlers == ()
    rows = router.plan("t1", "sales").rows(5, b"RAW", keep_raw=False)
    assert [(r.message_row_id, r.target, r.raw) for r in rows] == [(5, "hook", None), (5, "rails", b"RAW")]
    assert [r.raw for r in router.plan("t1", "sales").rows(5, b"RAW", keep_raw=True)] == [None, None]
    router.update([])
    assert router.plan("t1", "sales").outbox == ()


@pytest.mark.parametrize(("spec", "problem"), [
    ("no_such_module_xyz:handle", "cannot import 'no_such_module_xyz' for handler 'no_such_module_xyz:handle':"
                                  " ModuleNotFoundError"),
    ("json:no_such_function", "module 'json' has no 'no_such_function'"),
    ("json.decoder:JSONArray.__name__", "is not callable (it is str)"),
])
def test_load_handler_names_what_failed(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_handler(spec)


def test_load_handler_finds_a_callable() -> None:
    assert load_handler("json:dumps") is json.dumps
