"""Gmail's I/O shells against the loopback fake Google: tokens, the consume-time source, push verification.

The product code is the real client code (google-auth, httpx); only the
servers are fakes, following the documented formats (tests/google_fake.py).
"""

from __future__ import annotations

import json
import time
import logging
from datetime import datetime, timezone

import psycopg
import pytest
import trio

from google_fake import PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT, SigningKey, authorized_user_file
from google_fake import service_account_file
from google_helpers import MAILBOX, account_config, granted_account
from inboundd.config import PostgresConfig
from inboundd.jobs import GooglePointer, new_job
from inboundd.outcomes import Outcome, TransientError
from inboundd.source import FetchedMessage, SourceUnavailable
from inboundd.providers.google import push
from inboundd.providers.google.accounts import AUTH_RETRY_INTERVAL, build_account
from inboundd.providers.google.source import GmailSource
from inboundd.providers.google.tokens import AuthFailure
from inboundd.providers.google.verify import CertsUnavailable, PushVerifier
from inboundd.store.db import Database
from inboundd.store.migrate import migrate
from inboundd.store.oauth_tokens import DbRotatedTokens



@pytest.fixture
async def db(pg_dsn: str):
    database = Database(PostgresConfig(dsn=pg_dsn, pool_min=1, pool_max=4))
    await database.open()
    await database.run(migrate)
    yield database
    await database.close()


def pointer_job(message_id: str, account: str = "support-gmail"):
    return new_job(GooglePointer(account=account, email=MAILBOX, history_id=1, message_id=message_id), tenant="acme")


# --------------------------------------------------------------------------- tokens


async def test_authorized_user_token_uri_inside_the_file_is_honoured(fake_google, google_clients):
    account = granted_account(fake_google, google_clients)
    assert await account.api.profile_history_id() == 1000
    # google-auth alone would have gone to oauth2.googleapis.com; the fake saw the refresh.
    assert [r["grant_type"] for r in fake_google.token_requests] == ["refresh_token"]
    assert "scope" not in fake_google.token_requests[0]  # a user's token keeps the scopes it was granted
    await account.api.profile_history_id()
    assert fake_google.count("token") == 1  # cached until it expires


async def test_service_account_acts_for_the_mailbox_by_delegation(fake_google, google_clients):
    fake_google.grant(MAILBOX)
    key = SigningKey()
    account = build_account(account_config(fake_google, post_action="archive"), service_account_file(fake_google, key),
                            google_clients, None)
    assert await account.api.profile_history_id() == 1000
    request = fake_google.token_requests[0]
    assert request["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    from google.auth import jwt as google_jwt
    claims = google_jwt.decode(request["assertion"], verify=False)
    assert claims["sub"] == MAILBOX
    assert claims["scope"] == "https://www.googleapis.com/auth/gmail.modify"  # archive needs modify


async def test_service_account_without_delegation_is_an_auth_failure(fake_google, google_clients):
    key = SigningKey()
    account = build_account(account_config(fake_google, email="other@acme.com"), service_account_file(fake_google, key),
                            google_clients, None)
    with pytest.raises(AuthFailure) as caught:
        await account.tokens.get()
    assert caught.value.reason == "unauthorized_client"


async def test_revoked_refresh_token_is_an_auth_failure(fake_google, google_clients):
    account = granted_account(fake_google, google_clients, grant=False)
    with pytest.raises(AuthFailure) as caught:
        await account.tokens.get()
    assert caught.value.reason == "invalid_grant"


async def test_token_endpoint_unreachable_is_transient(fake_google, google_clients):
    info = json.loads(authorized_user_file(fake_google, fake_google.grant(MAILBOX)))
    info["token_uri"] = "http://127.0.0.1:9/token"  # discard port: connection refused
    account = build_account(account_config(fake_google), json.dumps(info), google_clients, None)
    with pytest.raises(TransientError, match="unreachable"):
        await account.tokens.get()


async def test_rotated_refresh_token_is_persisted_and_used_after_a_restart(fake_google, google_clients, db, pg_dsn):
    fake_google.rotate_refresh_tokens = True
    original = fake_google.grant(MAILBOX)
    text = authorized_user_file(fake_google, original)
    first = build_account(account_config(fake_google), text, google_clients, DbRotatedTokens(db))
    await first.tokens.get()
    rotated = first.tokens.refresh_token
    assert rotated != original and rotated in fake_google.refresh_tokens and original not in fake_google.refresh_tokens
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT refresh_token FROM inbound_oauth_tokens WHERE account = %s",
                            ("support-gmail",)).fetchone() == (rotated,)

    # A restart reads the same file, whose token is revoked now: it must use the saved one.
    restarted = build_account(account_config(fake_google), text, google_clients, DbRotatedTokens(db))
    assert await restarted.api.profile_history_id() == 1000
    assert fake_google.token_requests[-1]["refresh_token"] == rotated

    # Without the table's row the file's revoked token is all it has.
    forgetful = build_account(account_config(fake_google), text, google_clients, None)
    with pytest.raises(AuthFailure, match="invalid_grant"):
        await forgetful.tokens.get()


async def test_a_new_token_in_the_file_wins_over_an_old_rotation(fake_google, google_clients, db):
    fake_google.rotate_refresh_tokens = True
    first = granted_account(fake_google, google_clients, DbRotatedTokens(db))
    await first.tokens.get()
    fresh = fake_google.grant(MAILBOX)  # the operator re-consented and replaced the file
    second = granted_account(fake_google, google_clients, DbRotatedTokens(db), token=fresh)
    await second.tokens.get()
    assert fake_google.token_requests[-1]["refresh_token"] == fresh


async def test_rotation_by_another_daemon_is_adopted_after_a_refusal(fake_google, google_clients, db):
    fake_google.rotate_refresh_tokens = True
    text = authorized_user_file(fake_google, fake_google.grant(MAILBOX))
    one = build_account(account_config(fake_google), text, google_clients, DbRotatedTokens(db))
    two = build_account(account_config(fake_google), text, google_clients, DbRotatedTokens(db))
    await two.tokens._load_rotation()  # noqa: SLF001 - two started before one's first rotation
    await one.tokens.get()
    two.tokens.invalidate()
    # two presents the file's token, revoked by one's rotation: refused, then it adopts one's.
    token = await two.tokens.get()
    assert token in fake_google.access_tokens
    saved = await DbRotatedTokens(db).load("support-gmail", two.tokens.origin)
    assert saved == two.tokens.refresh_token and saved in fake_google.refresh_tokens


async def test_rotation_that_cannot_be_saved_is_saved_on_the_next_call(fake_google, google_clients, db, pg_dsn, caplog):
    fake_google.rotate_refresh_tokens = True
    account = granted_account(fake_google, google_clients, DbRotatedTokens(db))
    await account.tokens._load_rotation()  # noqa: SLF001 - read the (empty) table before it disappears
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("ALTER TABLE inbound_oauth_tokens RENAME TO parked")
    with caplog.at_level(logging.ERROR):
        await account.tokens.get()
    assert "google.token.rotation_unsaved" in caplog.text
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("ALTER TABLE parked RENAME TO inbound_oauth_tokens")
    await account.tokens.get()  # no refresh needed; the pending rotation is written first
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT refresh_token FROM inbound_oauth_tokens").fetchone() == (
            account.tokens.refresh_token,)


# --------------------------------------------------------------------------- consume-time fetch


async def source_for(fake_google, google_clients, **overrides):
    account = granted_account(fake_google, google_clients, **overrides)
    return GmailSource([account]), account


async def test_fetch_returns_the_raw_message(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients)
    raw = b"From: a@example.org\r\nSubject: caf\xc3\xa9\r\n\r\nbody \xff\r\n"
    message_id = fake_google.add_message(MAILBOX, raw, internal_ms=1700000000123)
    fetched = await source.fetch(pointer_job(message_id), 10_000)
    assert isinstance(fetched, FetchedMessage)
    assert fetched.raw == raw and fetched.provider_message_id == message_id
    assert fetched.labels == ["INBOX", "UNREAD"] and fetched.size == len(raw)
    assert fetched.internal_date == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc)


async def test_oversize_by_size_estimate_is_skipped_without_download(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients)
    message_id = fake_google.add_message(MAILBOX, b"Subject: big\r\n\r\n" + b"x" * 5000)
    result = await source.fetch(pointer_job(message_id), 1000)
    assert isinstance(result, SourceUnavailable) and result.reason == "oversize"
    assert fake_google.count("get_raw") == 0


async def test_oversize_despite_a_small_estimate_stops_reading(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients)
    message_id = fake_google.add_message(MAILBOX, b"Subject: big\r\n\r\n" + b"x" * 400_000)
    fake_google.mailbox(MAILBOX).messages[message_id].size_estimate = 10
    result = await source.fetch(pointer_job(message_id), 100_000)
    assert isinstance(result, SourceUnavailable) and result.reason == "oversize"
    assert fake_google.count("get_raw") == 1


async def test_deleted_message_is_skipped_source_deleted(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients)
    result = await source.fetch(pointer_job("18c0000000000dead"), 1000)
    assert result == SourceUnavailable("source_deleted", "Gmail message 18c0000000000dead no longer exists")


async def test_draft_is_skipped_at_fetch(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients)
    message_id = fake_google.add_message(MAILBOX, labels=("DRAFT",))
    result = await source.fetch(pointer_job(message_id), 10_000)
    assert isinstance(result, SourceUnavailable) and result.reason == "label_skipped"


@pytest.mark.parametrize("status, reason, retry_after, expected_wait", [
    (429, "rateLimitExceeded", "3", 3.0),
    (403, "userRateLimitExceeded", None, None),
    (403, "rateLimitExceeded", None, None),
    (503, "backendError", "12", 12.0),
])
async def test_rate_limits_are_transient(fake_google, google_clients, status, reason, retry_after, expected_wait):
    source, _ = await source_for(fake_google, google_clients)
    message_id = fake_google.add_message(MAILBOX)
    fake_google.fail("GET", r"/messages/", status,
              {"error": {"code": status, "message": "Too many concurrent requests for user",
                         "errors": [{"domain": "usageLimits", "reason": reason}]}},
              headers={"Retry-After": retry_after} if retry_after else None)
    with pytest.raises(TransientError) as caught:
        await source.fetch(pointer_job(message_id), 10_000)
    assert caught.value.retry_after == expected_wait
    assert isinstance(await source.fetch(pointer_job(message_id), 10_000), FetchedMessage)


async def test_insufficient_permissions_pauses_the_account(fake_google, google_clients):
    source, account = await source_for(fake_google, google_clients)
    message_id = fake_google.add_message(MAILBOX)
    fake_google.fail("GET", r"/messages/", 403, {"error": {"code": 403, "message": "Insufficient Permission",
                                                    "errors": [{"reason": "insufficientPermissions"}],
                                                    "status": "PERMISSION_DENIED"}})
    with pytest.raises(TransientError) as caught:
        await source.fetch(pointer_job(message_id), 10_000)
    assert caught.value.retry_after == AUTH_RETRY_INTERVAL
    assert account.auth.error == "insufficientPermissions"
    calls = len(fake_google.calls)
    # Paused: the next job waits out the pause without calling Google.
    with pytest.raises(TransientError, match="paused") as again:
        await source.fetch(pointer_job(message_id), 10_000)
    assert 0 < again.value.retry_after <= AUTH_RETRY_INTERVAL and len(fake_google.calls) == calls
    account.auth.kick()  # a reload: try again at once; this time Google agrees
    assert isinstance(await source.fetch(pointer_job(message_id), 10_000), FetchedMessage)
    assert account.auth.error is None and account.auth.paused_for(0) is None


async def test_revoked_credentials_pause_only_that_account(fake_google, google_clients):
    source, good = await source_for(fake_google, google_clients)
    bad = granted_account(fake_google, google_clients, grant=False, id="other", email="other@acme.com")
    source.update([good, bad])
    with pytest.raises(TransientError, match="refused its credentials"):
        await source.fetch(pointer_job("x", account="other"), 10_000)
    assert bad.auth.error == "invalid_grant"
    assert isinstance(await source.fetch(pointer_job(fake_google.add_message(MAILBOX)), 10_000), FetchedMessage)


async def test_a_401_refreshes_the_token_once_and_repeats_the_call(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients)
    message_id = fake_google.add_message(MAILBOX)
    await source.fetch(pointer_job(message_id), 10_000)
    fake_google.fail("GET", r"/messages/", 401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
    assert isinstance(await source.fetch(pointer_job(message_id), 10_000), FetchedMessage)
    assert fake_google.count("token") == 2


async def test_unknown_account_is_not_a_skip(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients)
    with pytest.raises(LookupError, match="not configured"):
        await source.fetch(pointer_job("x", account="gone"), 10_000)


# --------------------------------------------------------------------------- post-actions


@pytest.mark.parametrize("action, labels_after", [
    ("none", ["INBOX", "UNREAD"]),
    ("mark_read", ["INBOX"]),
    ("archive", ["UNREAD"]),
    ("label:inboundd/done", ["INBOX", "UNREAD", "Label_1"]),
])
async def test_post_action_after_commit(fake_google, google_clients, action, labels_after):
    source, _ = await source_for(fake_google, google_clients, post_action=action)
    message_id = fake_google.add_message(MAILBOX)
    await source.after_commit(pointer_job(message_id), Outcome("processed", None, 1))
    assert fake_google.mailbox(MAILBOX).messages[message_id].labels == labels_after
    if action.startswith("label:"):
        assert fake_google.mailbox(MAILBOX).labels == {"inboundd/done": "Label_1"}
        other = fake_google.add_message(MAILBOX)
        await source.after_commit(pointer_job(other), Outcome("processed", None, 2))
        assert fake_google.mailbox(MAILBOX).labels == {"inboundd/done": "Label_1"}  # looked up once, not re-created


async def test_no_post_action_for_a_message_this_job_did_not_store(fake_google, google_clients):
    source, _ = await source_for(fake_google, google_clients, post_action="archive")
    message_id = fake_google.add_message(MAILBOX)
    await source.after_commit(pointer_job(message_id), Outcome("duplicate", "message_id", 1))
    assert fake_google.mailbox(MAILBOX).messages[message_id].labels == ["INBOX", "UNREAD"]
    assert fake_google.count("modify") == 0


async def test_post_action_failure_is_logged_not_raised(fake_google, google_clients, caplog):
    source, _ = await source_for(fake_google, google_clients, post_action="mark_read")
    message_id = fake_google.add_message(MAILBOX)
    fake_google.fail("POST", r"/modify$", 500, {"error": {"code": 500, "errors": [{"reason": "backendError"}]}})
    with caplog.at_level(logging.WARNING):
        await source.after_commit(pointer_job(message_id), Outcome("processed", None, 1))
    assert "google.post_action.failed" in caplog.text


# --------------------------------------------------------------------------- push verification


ALLOWED = {PUSH_AUDIENCE: frozenset({PUSH_SERVICE_ACCOUNT})}


async def test_certs_are_fetched_once_and_cached(fake_google, google_clients, mock_clock):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    key = fake_google.push_keys[0]
    tokens = (f"Bearer {key.token(jti=str(n))}" for n in range(100))  # each one new: verified with the certs
    for _ in range(20):
        claims = await verifier.verify(next(tokens))
        assert claims.email == PUSH_SERVICE_ACCOUNT
    assert fake_google.count("certs") == 1
    mock_clock.jump(fake_google.certs_max_age - 1)
    await verifier.verify(next(tokens))
    assert fake_google.count("certs") == 1
    mock_clock.jump(1)  # max-age reached
    await verifier.verify(next(tokens))
    assert fake_google.count("certs") == 2


async def test_unknown_kid_refetches_once(fake_google, google_clients, mock_clock):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    key = fake_google.push_keys[0]
    await verifier.verify("Bearer " + key.token())
    mock_clock.jump(120)
    for kid in ("made-up-1", "made-up-2", "made-up-3"):
        with pytest.raises(push.PushRejected, match="unknown_kid"):
            await verifier.verify("Bearer " + key.token_with_kid(kid))
    assert fake_google.count("certs") == 2  # one refetch for the first unknown kid, none for the others


async def test_rotated_signing_key_is_picked_up_by_the_refetch(fake_google, google_clients, mock_clock):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    await verifier.verify("Bearer " + fake_google.push_keys[0].token())
    new_key = SigningKey()
    fake_google.push_keys.append(new_key)
    mock_clock.jump(120)
    assert (await verifier.verify("Bearer " + new_key.token())).audience == PUSH_AUDIENCE
    assert fake_google.count("certs") == 2


async def test_certs_endpoint_down_without_certs_is_unavailable(fake_google, google_clients, mock_clock):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    fake_google.fail("GET", r"/certs$", 503, {"error": "down"})
    with pytest.raises(CertsUnavailable):
        await verifier.verify("Bearer " + fake_google.push_keys[0].token())
    with pytest.raises(CertsUnavailable):  # not retried per request
        await verifier.verify("Bearer " + fake_google.push_keys[0].token())
    assert fake_google.count("certs") == 0 and len(fake_google.calls_to("GET", r"/certs$")) == 1
    mock_clock.jump(30)
    assert (await verifier.verify("Bearer " + fake_google.push_keys[0].token())).email == PUSH_SERVICE_ACCOUNT


async def test_certs_endpoint_down_after_expiry_keeps_the_old_certs(fake_google, google_clients, mock_clock):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    await verifier.verify("Bearer " + fake_google.push_keys[0].token())
    mock_clock.jump(fake_google.certs_max_age + 1)
    fake_google.fail("GET", r"/certs$", 500, {"error": "down"})
    assert (await verifier.verify("Bearer " + fake_google.push_keys[0].token())).email == PUSH_SERVICE_ACCOUNT


async def test_burst_after_expiry_costs_one_fetch(fake_google, google_clients, mock_clock):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    key = fake_google.push_keys[0]
    results = []

    async def one():
        results.append(await verifier.verify("Bearer " + key.token()))

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(one)
    assert len(results) == 30 and fake_google.count("certs") == 1


async def test_a_verified_token_is_checked_again_only_for_time_and_configuration(fake_google, google_clients,
                                                                                 monkeypatch):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    token = "Bearer " + fake_google.push_keys[0].token()
    await verifier.verify(token)
    decoded = []
    original = push.check_token
    monkeypatch.setattr(push, "check_token", lambda *args, **kw: decoded.append(1) or original(*args, **kw))
    for _ in range(5):
        assert (await verifier.verify(token)).email == PUSH_SERVICE_ACCOUNT
    assert decoded == []  # no second RSA verification for the same token
    verifier.allowed = {PUSH_AUDIENCE: frozenset({"someone-else@acme.iam.gserviceaccount.com"})}  # a reload
    with pytest.raises(push.PushRejected, match="wrong_email"):
        await verifier.verify(token)
    verifier.allowed = ALLOWED
    import inboundd.providers.google.verify as verify_module
    monkeypatch.setattr(verify_module.clock, "wall", lambda: time.time() + 3600 + 61)
    with pytest.raises(push.PushRejected, match="expired"):
        await verifier.verify(token)


async def test_readiness_needs_certificates(fake_google, google_clients, mock_clock):
    verifier = PushVerifier(google_clients.async_client(), fake_google.certs_url, ALLOWED)
    fake_google.fail("GET", r"/certs$", 503, {"error": "down"})
    with pytest.raises(CertsUnavailable):
        await verifier.ready()
    mock_clock.jump(30)
    await verifier.ready()  # fetched now
    await verifier.ready()  # and held: no second fetch
    assert fake_google.count("certs") == 1
