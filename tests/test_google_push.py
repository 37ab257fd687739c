"""``POST /webhooks/google`` as a value in, a value out: token first, then body, then a durable job, then 204.

The route's handler (``webhook.PushIngress``) runs with the real verifier
(certificates from the fake Google) and the real queue on a private Redis;
nothing here goes through HTTP (the end-to-end test does).
"""

from __future__ import annotations

import time

import pytest
import redis

from google_fake import FakeGoogle, SigningKey, push_body, unsigned_token
from fakes import metric_value
from google_helpers import MAILBOX, QUEUE, granted_account
from inboundd import jobs, metrics
from inboundd.config import RedisConfig
from inboundd.ingress.webhook import WebhookRequest
from inboundd.providers.google.accounts import HttpClients
from inboundd.providers.google.verify import PushVerifier
from inboundd.providers.google.webhook import PushIngress
from inboundd.queue import Queue
from inboundd.redisio import RedisIO



class PushBed:
    def __init__(self, fake_google: FakeGoogle, google_clients: HttpClients, rio: RedisIO, redis_url: str) -> None:
        self.fake_google = fake_google
        self.redis_url = redis_url
        self.queue = Queue(rio, QUEUE, prefix="tp")
        self.accounts = [
            granted_account(fake_google, google_clients),
            granted_account(fake_google, google_clients, id="sales-gmail", email="sales@acme.com",
                            push_audience="https://inbound.example.com/webhooks/google?sales",
                            push_service_account="pubsub-sales@acme.iam.gserviceaccount.com"),
        ]
        self.ingress = PushIngress(PushVerifier(google_clients.async_client(), fake_google.certs_url, {}), self.queue,
                                   self.accounts)

    def request(self, body: bytes, authorization: str | None) -> WebhookRequest:
        headers = [("content-type", "application/json")]
        if authorization is not None:
            headers.append(("authorization", authorization))
        return WebhookRequest(method="POST", path="/webhooks/google", headers=tuple(headers), body=body,
                              received_at=time.time())

    async def post(self, body: bytes, authorization: str | None):
        return await self.ingress.handle(self.request(body, authorization))

    def queued(self) -> list[jobs.Job]:
        with redis.Redis.from_url(self.redis_url) as client:
            return [jobs.decode(fields[b"job"]) for _, fields in client.xrange(self.queue.keys.stream)]

    def gmail_calls(self) -> list:
        return [call for call in self.fake_google.calls if call[1].startswith("/gmail/")]


@pytest.fixture
async def bed(fake_google, google_clients, rio, redis_url):
    return PushBed(fake_google, google_clients, rio, redis_url)


def counter(outcome: str, reason: str) -> float:
    return metric_value(metrics.google_pushes, outcome, reason)


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_a_valid_push_is_queued_then_acknowledged(bed, fake_google):
    before = counter("enqueued", "")
    reply = await bed.post(push_body(MAILBOX, 4242), bearer(fake_google.push_keys[0].token()))
    assert (reply.status, reply.body) == (204, b"")
    (job,) = bed.queued()
    assert job.tenant == "acme" and job.pointer == jobs.GooglePointer(
        account="support-gmail", email=MAILBOX, history_id=4242, pubsub_message_id="2070443601311540")
    assert not job.pointer.names_message
    assert counter("enqueued", "") == before + 1
    assert bed.gmail_calls() == []  # the walk happens at consume time


async def test_mailbox_names_are_matched_without_case(bed, fake_google):
    reply = await bed.post(push_body("Support@ACME.com", "17"), bearer(fake_google.push_keys[0].token()))
    assert reply.status == 204 and bed.queued()[0].pointer.account == "support-gmail"


def _matrix(fake_google: FakeGoogle) -> list[tuple[str, str | None, int, str]]:
    key = fake_google.push_keys[0]
    now = int(time.time())
    forger = SigningKey(key.kid)
    return [
        ("no header", None, 401, "no_token"),
        ("not bearer", "Basic Zm9vOmJhcg==", 401, "not_bearer"),
        ("garbage token", "Bearer not-a-jwt", 401, "malformed_token"),
        ("alg none", bearer(unsigned_token(key.kid, **key.claims())), 401, "bad_alg"),
        ("unknown kid", bearer(key.token_with_kid("kid-nobody-published")), 401, "unknown_kid"),
        ("bad signature", bearer(forger.token()), 401, "bad_signature"),
        ("expired", bearer(key.token(iat=now - 7200, exp=now - 3600)), 401, "expired"),
        ("future iat", bearer(key.token(iat=now + 600, exp=now + 4200)), 401, "not_yet_valid"),
        ("wrong iss", bearer(key.token(iss="https://securetoken.google.com")), 403, "wrong_issuer"),
        ("wrong aud", bearer(key.token(aud="https://other.example.com/hook")), 403, "wrong_audience"),
        ("wrong email", bearer(key.token(email="someone@evil.iam.gserviceaccount.com")), 403, "wrong_email"),
        ("email not verified", bearer(key.token(email_verified=False)), 403, "email_unverified"),
    ]


MATRIX_IDS = ["no header", "not bearer", "garbage token", "alg none", "unknown kid", "bad signature", "expired",
              "future iat", "wrong iss", "wrong aud", "wrong email", "email not verified"]


@pytest.mark.parametrize("row", range(len(MATRIX_IDS)), ids=MATRIX_IDS)
async def test_a_bad_token_is_refused_and_nothing_else_happens(bed, fake_google, row):
    name, authorization, status, reason = _matrix(fake_google)[row]
    before = counter("rejected", reason)
    reply = await bed.post(push_body(MAILBOX, 4242), authorization)
    assert reply.status == status and reason.encode() in reply.body
    if status == 401:
        assert ("www-authenticate", f'Bearer error="invalid_token", error_description="{reason}"') in reply.headers
    assert bed.queued() == []
    assert bed.gmail_calls() == [] and fake_google.count("token") == 0
    assert counter("rejected", reason) == before + 1


async def test_an_unknown_kid_refetches_the_certificates_once(bed, fake_google):
    await bed.post(push_body(MAILBOX, 1), bearer(fake_google.push_keys[0].token()))
    assert fake_google.count("certs") == 1
    bed.ingress.verifier.cache.attempted_at -= 120  # a while later
    for kid in ("rotated-1", "rotated-2"):
        reply = await bed.post(push_body(MAILBOX, 2), bearer(fake_google.push_keys[0].token_with_kid(kid)))
        assert reply.status == 401
    assert fake_google.count("certs") == 2


async def test_a_token_for_another_mailboxs_subscription_is_ignored(bed, fake_google):
    sales_token = fake_google.push_keys[0].token(aud="https://inbound.example.com/webhooks/google?sales",
                                          email="pubsub-sales@acme.iam.gserviceaccount.com")
    assert (await bed.post(push_body("sales@acme.com", 9), bearer(sales_token))).status == 204
    before = counter("ignored", "not_this_mailbox")
    # Sales' subscription, signed by Google, naming support's mailbox: acknowledged, not walked.
    assert (await bed.post(push_body(MAILBOX, 9), bearer(sales_token))).status == 204
    assert [job.pointer.account for job in bed.queued()] == ["sales-gmail"]
    assert counter("ignored", "not_this_mailbox") == before + 1


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not_json"),
    (b'{"message": {"messageId": "1"}}', "no_data"),
    (b'{"message": {"data": "***"}}', "data_not_base64"),
    (push_body("nobody@acme.com", 5), "unknown_mailbox"),
    (push_body(MAILBOX, "soon"), "bad_history_id"),
], ids=["not json", "no data", "not base64", "unknown mailbox", "bad historyId"])
async def test_undecodable_or_unknown_after_a_valid_token_is_acknowledged_and_counted(bed, fake_google, body, reason):
    before = counter("ignored", reason)
    reply = await bed.post(body, bearer(fake_google.push_keys[0].token()))
    assert reply.status == 204  # Pub/Sub would redeliver anything else forever
    assert bed.queued() == [] and counter("ignored", reason) == before + 1


async def test_redis_down_answers_503_and_the_retry_is_accepted(fake_google, google_clients, make_redis):
    server = make_redis()
    rio = RedisIO.from_config(RedisConfig(url=server.url, socket_timeout=1.0, pool_size=8))
    try:
        bed = PushBed(fake_google, google_clients, rio, server.url)
        token = bearer(fake_google.push_keys[0].token())
        server.stop()
        before = counter("unavailable", "enqueue")
        reply = await bed.post(push_body(MAILBOX, 77), token)
        assert reply.status == 503 and ("retry-after", "10") in reply.headers
        assert counter("unavailable", "enqueue") == before + 1
        server.start()
        reply = await bed.post(push_body(MAILBOX, 77), token)  # Pub/Sub's redelivery
        assert reply.status == 204
        assert [job.pointer.history_id for job in bed.queued()] == [77]
    finally:
        await rio.close()


async def test_no_certificates_at_all_answers_503(bed, fake_google):
    fake_google.fail("GET", r"/certs$", 503, {"error": "unavailable"})
    reply = await bed.post(push_body(MAILBOX, 1), bearer(fake_google.push_keys[0].token()))
    assert reply.status == 503 and ("retry-after", "10") in reply.headers
    assert bed.queued() == []
