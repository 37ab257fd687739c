"""What every provider's ingress shares, without I/O: the auth-failure policy and the lease clock."""

from __future__ import annotations

import pytest

from inboundd.backoff import Backoff
from inboundd.ingress.auth import AuthPolicy
from inboundd.ingress.lease_clock import LeaseClock


# --------------------------------------------------------------------------- auth failures


def _policy(limit=3, retry=900.0):
    return AuthPolicy(limit, retry, Backoff(1.0, 60.0, rng=lambda: 1.0))


def test_auth_failed_after_the_limit_with_the_servers_message():
    policy = _policy()
    msg = "[AUTHENTICATIONFAILED] Authentication failed."
    states = [policy.auth_failed(msg, t) for t in range(5)]
    assert [(r.state, r.delay) for r in states] == [
        ("backoff", 1), ("backoff", 2), ("auth_failed", 900), ("auth_failed", 900), ("auth_failed", 900),
    ]
    assert all(r.error == msg for r in states)


def test_login_success_resets_the_count():
    policy = _policy()
    policy.auth_failed("no", 0)
    policy.auth_failed("no", 1)
    policy.logged_in(2)
    assert policy.auth_failed("no", 3).state == "backoff"


def test_network_failures_do_not_reset_nor_speed_up_a_lockout():
    policy = _policy(limit=2)
    policy.auth_failed("no", 0)
    assert policy.failed("connection refused", 1).state == "backoff"
    assert policy.auth_failed("no", 2).state == "auth_failed"
    retry = policy.failed("connection refused", 3)
    assert (retry.state, retry.delay) == ("auth_failed", 900)


def test_limit_of_one():
    assert _policy(limit=1).auth_failed("no", 0).state == "auth_failed"


# --------------------------------------------------------------------------- lease clock


def test_lease_clock_trusts_from_the_send_time_minus_a_margin():
    lease = LeaseClock(3.0)
    assert not lease.valid(0)
    lease.confirmed(10.0)
    assert lease.renew_every == 1.0
    assert lease.valid(12.6) and not lease.valid(12.7)
    lease.confirmed(5.0)  # a late answer to an older request never shortens it
    assert lease.valid(12.6)
    with pytest.raises(ValueError):
        LeaseClock(0)


def test_account_pause_one_refusal_pauses_until_a_success_or_a_kick() -> None:
    from inboundd.ingress.auth import AccountPause

    pause = AccountPause(900.0)
    assert pause.paused_for(0.0) is None
    assert pause.refused("invalid_grant", 100.0) == 900.0
    assert (pause.error, pause.paused_for(100.0), pause.paused_for(999.0)) == ("invalid_grant", 900.0, 1.0)
    assert pause.paused_for(1000.0) is None  # the pause is over: the next call tries again
    pause.refused("invalid_grant", 1000.0)
    pause.kick()  # a reload: at once
    assert pause.paused_for(1000.0) is None and pause.error == "invalid_grant"
    pause.worked(1001.0)
    assert pause.error is None and pause.paused_for(1001.0) is None
