"""IMAP decisions without I/O (``inboundd.providers.imap.proto``), table by table."""

from __future__ import annotations

import pytest

from inboundd.providers.imap.proto import (
    LISTENER_STATES,
    CatchUp,
    Cursor,
    IdleEvents,
    PostAction,
    SearchPlan,
    StartFrom,
    batches,
    check_fetch,
    classify_untagged,
    parse_post_action,
    parse_start_from,
    plan_catch_up,
    plan_search,
    uid_set,
)

NOW, ALL, LAST3 = StartFrom("now"), StartFrom("all"), StartFrom("last", 3)


# --------------------------------------------------------------------------- start_from


@pytest.mark.parametrize("text, expected", [
    ("now", StartFrom("now")),
    ("all", StartFrom("all")),
    ("last:1", StartFrom("last", 1)),
    ("last:250", StartFrom("last", 250)),
    (" now ", StartFrom("now")),
])
def test_parse_start_from(text, expected):
    assert parse_start_from(text) == expected


@pytest.mark.parametrize("text", ["", "later", "last:", "last:0", "last:-1", "last:x", "ALL", "last:1:2"])
def test_parse_start_from_rejects(text):
    with pytest.raises(ValueError, match="start_from"):
        parse_start_from(text)


# --------------------------------------------------------------------------- catch-up: (cursor, server) → search → enqueue


# (name, cursor, uidvalidity, uidnext, start_from, search criteria, search returns, uids enqueued, new cursor, reason)
CATCH_UP_TABLE = [
    ("resume, nothing new (n:* quirk returns the last UID)",
     Cursor(7, 10), 7, 11, NOW, ("UID", "11:*"), [10], (), Cursor(7, 10), "resume"),
    ("resume, empty folder answers nothing",
     Cursor(7, 10), 7, 11, NOW, ("UID", "11:*"), [], (), Cursor(7, 10), "resume"),
    ("resume, three new in UID order",
     Cursor(7, 10), 7, 14, NOW, ("UID", "11:*"), [13, 11, 12], (11, 12, 13), Cursor(7, 13), "resume"),
    ("resume, new mail with gaps (expunged in between)",
     Cursor(7, 10), 7, 20, NOW, ("UID", "11:*"), [12, 19], (12, 19), Cursor(7, 19), "resume"),
    ("resume, new UIDs already expunged: cursor moves to UIDNEXT-1",
     Cursor(7, 10), 7, 15, NOW, ("UID", "11:*"), [10], (), Cursor(7, 14), "resume"),
    ("resume, server without UIDNEXT",
     Cursor(7, 10), 7, None, NOW, ("UID", "11:*"), [11], (11,), Cursor(7, 11), "resume"),
    ("resume, duplicates in the answer are enqueued once",
     Cursor(7, 10), 7, 13, NOW, ("UID", "11:*"), [11, 11, 12], (11, 12), Cursor(7, 12), "resume"),
    ("resume ignores start_from",
     Cursor(7, 10), 7, 12, ALL, ("UID", "11:*"), [11], (11,), Cursor(7, 11), "resume"),
    ("first start now: nothing old, no search",
     None, 7, 51, NOW, None, [], (), Cursor(7, 50), "first_start"),
    ("first start now on an empty folder",
     None, 7, 1, NOW, None, [], (), Cursor(7, 0), "first_start"),
    ("first start now without UIDNEXT: learn the highest UID, enqueue nothing",
     None, 7, None, NOW, ("ALL",), [3, 9, 4], (), Cursor(7, 9), "first_start"),
    ("first start all",
     None, 7, 6, ALL, ("ALL",), [1, 2, 5], (1, 2, 5), Cursor(7, 5), "first_start"),
    ("first start all on an empty folder",
     None, 7, 1, ALL, ("ALL",), [], (), Cursor(7, 0), "first_start"),
    ("first start last:3 keeps the highest three",
     None, 7, 10, LAST3, ("ALL",), [1, 2, 4, 8, 9], (4, 8, 9), Cursor(7, 9), "first_start"),
    ("first start last:3 with fewer messages",
     None, 7, 3, LAST3, ("ALL",), [2], (2,), Cursor(7, 2), "first_start"),
    ("first start last:3 with two messages keeps both (found against Dovecot)",
     None, 7, 6, LAST3, ("ALL",), [2, 5], (2, 5), Cursor(7, 5), "first_start"),
    ("UIDVALIDITY changed: rescan the whole folder",
     Cursor(7, 500), 8, 4, NOW, ("ALL",), [1, 2, 3], (1, 2, 3), Cursor(8, 3), "uidvalidity_changed"),
    ("UIDVALIDITY changed to an empty folder",
     Cursor(7, 500), 8, 1, NOW, ("ALL",), [], (), Cursor(8, 0), "uidvalidity_changed"),
    ("UIDNEXT went back without a new UIDVALIDITY: rescan",
     Cursor(7, 500), 7, 12, NOW, ("ALL",), [3, 11], (3, 11), Cursor(7, 11), "uidnext_regressed"),
]


@pytest.mark.parametrize(
    "cursor, uidvalidity, uidnext, start_from, criteria, found, uids, new_cursor, reason",
    [row[1:] for row in CATCH_UP_TABLE], ids=[row[0] for row in CATCH_UP_TABLE],
)
def test_catch_up(cursor, uidvalidity, uidnext, start_from, criteria, found, uids, new_cursor, reason):
    plan = plan_search(cursor, uidvalidity, uidnext, start_from)
    assert plan.criteria == criteria
    assert plan.reason == reason
    assert plan_catch_up(plan, found) == CatchUp(uids, new_cursor)


def test_catch_up_never_goes_below_the_cursor():
    # A later in-session catch-up has no fresh UIDNEXT; the cursor must not move back.
    plan = plan_search(Cursor(7, 40), 7, None, NOW)
    assert plan_catch_up(plan, [40]).cursor == Cursor(7, 40)
    assert plan_catch_up(plan, [5, 6]).cursor == Cursor(7, 40)  # a broken server: ignore old UIDs


def test_search_plan_is_plain_data():
    plan = plan_search(Cursor(1, 2), 1, 5, NOW)
    assert plan == SearchPlan(1, ("UID", "3:*"), after=2, floor=4, reason="resume")


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("uids, size, expected", [
    ((), 500, [((), Cursor(7, 12))]),
    ((1, 2, 3), 500, [((1, 2, 3), Cursor(7, 12))]),
    ((1, 2, 3, 4, 5), 2, [((1, 2), Cursor(7, 2)), ((3, 4), Cursor(7, 4)), ((5,), Cursor(7, 12))]),
    ((1, 2, 3, 4), 2, [((1, 2), Cursor(7, 2)), ((3, 4), Cursor(7, 12))]),
])
def test_batches_advance_the_cursor_after_each(uids, size, expected):
    assert batches(CatchUp(uids, Cursor(7, 12)), size) == expected


def test_batches_reject_zero():
    with pytest.raises(ValueError):
        batches(CatchUp((1,), Cursor(1, 1)), 0)


# --------------------------------------------------------------------------- IDLE responses


@pytest.mark.parametrize("lines, expected", [
    ([], IdleEvents()),
    ([b"* OK Still here"], IdleEvents()),
    ([b"* 5 EXISTS"], IdleEvents(new_mail=True)),
    ([b"* 1 RECENT"], IdleEvents(new_mail=True)),
    ([b"* 3 EXPUNGE"], IdleEvents()),
    ([b"* 4 FETCH (FLAGS (\\Seen))"], IdleEvents()),
    ([b"* 3 EXPUNGE", b"* 4 EXISTS"], IdleEvents(new_mail=True)),
    ([b"* BYE Server shutting down."], IdleEvents(bye="Server shutting down.")),
    ([b"* bye"], IdleEvents(bye="BYE")),
    ([b"* 5 exists", b"* BYE gone"], IdleEvents(new_mail=True, bye="gone")),
    ([b"+ idling", b"garbage", b""], IdleEvents()),
    # Dovecot, when the selected folder is deleted during IDLE (seen against 2.3.19):
    ([b"* NO Internal error occurred. Refer to server log"],
     IdleEvents(trouble="NO Internal error occurred. Refer to server log")),
    ([b"* BAD [ALERT] odd"], IdleEvents(trouble="BAD [ALERT] odd")),
])
def test_classify_untagged(lines, expected):
    assert classify_untagged(lines) == expected


# --------------------------------------------------------------------------- post-actions and fetch checks


@pytest.mark.parametrize("text, expected", [
    ("none", PostAction("none")),
    ("seen", PostAction("seen")),
    ("delete", PostAction("delete")),
    ("move:Processed", PostAction("move", "Processed")),
    ("move:Archive/2026", PostAction("move", "Archive/2026")),
    ("move: Spaced Name ", PostAction("move", "Spaced Name")),
])
def test_parse_post_action(text, expected):
    assert parse_post_action(text) == expected


@pytest.mark.parametrize("text", ["", "move", "move:", "move:  ", "flag", "Seen", "copy:X"])
def test_parse_post_action_rejects(text):
    with pytest.raises(ValueError, match="post_action"):
        parse_post_action(text)


@pytest.mark.parametrize("pointer_v, selected_v, size, max_size, reason", [
    (7, 7, 1000, 10_000, None),
    (7, 7, 10_000, 10_000, None),
    (7, 7, 10_001, 10_000, "oversize"),
    (7, 7, 10**9, 0, None),  # 0: no limit
    (7, 8, 1000, 10_000, "uidvalidity_changed"),
    (7, 8, None, 10_000, "uidvalidity_changed"),  # the UID means another message now: not "deleted"
    (7, None, None, 10_000, "uidvalidity_changed"),
    (7, 7, None, 10_000, "source_deleted"),
])
def test_check_fetch(pointer_v, selected_v, size, max_size, reason):
    result = check_fetch(pointer_v, selected_v, size, max_size)
    assert (result[0] if result else None) == reason


@pytest.mark.parametrize("uids, expected", [
    ([], ""), ([5], "5"), ([1, 2, 3], "1:3"), ([1, 2, 3, 7], "1:3,7"), ([1, 3, 4, 5, 9, 10], "1,3:5,9:10"),
])
def test_uid_set(uids, expected):
    assert uid_set(uids) == expected


def test_states_are_the_documented_ones():
    assert LISTENER_STATES == ("connecting", "catching_up", "idle", "polling", "backoff", "auth_failed",
                               "standby", "stopped", "closed")


@pytest.mark.parametrize("listener, problem", [
    ({"state": "idle", "failures": 0}, None),
    ({"state": "standby"}, None),                                   # another daemon owns the mailbox
    ({"state": "connecting", "failures": 0}, None),                 # the first connect of a start
    ({"state": "stopped"}, None),                                   # drained: /readyz says "intake"
    ({"state": "backoff", "error": "refused", "failures": 1}, "listener a/INBOX is backoff: refused"),
    ({"state": "auth_failed", "error": "NO [AUTHENTICATIONFAILED]"},
     "listener a/INBOX is auth_failed: NO [AUTHENTICATIONFAILED]"),
    ({"state": "connecting", "error": "timed out", "failures": 3},
     "listener a/INBOX is reconnecting after 3 failure(s): timed out"),
    ({"state": "catching_up", "failures": 1}, "listener a/INBOX is reconnecting after 1 failure(s)"),
])
def test_which_listeners_are_a_problem(listener, problem):
    from inboundd.providers.imap.status import VIEW

    assert VIEW.problems([{"account": "a", "folder": "INBOX", **listener}]) == ([problem] if problem else [])
