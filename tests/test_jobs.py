"""The job codec: a pointer job can carry no content, and bad bytes are refused with a reason."""

from __future__ import annotations

import msgspec
import pytest

from inboundd import jobs
from inboundd.jobs import GooglePointer, ImapPointer, Job, JobDecodeError, MicrosoftPointer

from fakes import imap_job


@pytest.mark.parametrize("pointer", [
    ImapPointer(account="a", folder="INBOX", uidvalidity=1, uid=2, message_id="<m@x>"),
    MicrosoftPointer(account="a", subscription_id="sub", message_id="AAMk=", change_type="created"),
    GooglePointer(account="a", email="a@example.com", history_id=99, pubsub_message_id="p1"),
])
def test_every_pointer_kind_round_trips(pointer: object) -> None:
    job = jobs.new_job(pointer, tenant="t")  # type: ignore[arg-type]
    again = jobs.decode(jobs.encode(job))
    assert again == job
    assert again.provider == {"ImapPointer": "imap", "MicrosoftPointer": "microsoft",
                              "GooglePointer": "google"}[type(pointer).__name__]


@pytest.mark.parametrize("field", ["body", "raw", "mime", "attachments", "subject"])
def test_a_job_with_content_cannot_be_built(field: str) -> None:
    with pytest.raises(TypeError):
        ImapPointer(account="a", folder="INBOX", uidvalidity=1, uid=2, **{field: "x"})  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Job(id="1", tenant="t", pointer=ImapPointer(account="a", folder="INBOX", uidvalidity=1, uid=2),
            enqueued_at=0.0, **{field: "x"})  # type: ignore[call-arg]


@pytest.mark.parametrize("where", ["job", "pointer"])
@pytest.mark.parametrize("field", ["body", "raw", "mime", "attachments"])
def test_a_payload_with_content_cannot_be_decoded(where: str, field: str) -> None:
    data = msgspec.json.decode(jobs.encode(imap_job(42, uidvalidity=7, tenant="t1")))
    (data if where == "job" else data["pointer"])[field] = "From: x\r\n\r\nhello"
    with pytest.raises(JobDecodeError, match=field):
        jobs.decode(msgspec.json.encode(data))


@pytest.mark.parametrize("payload, complaint", [
    (b"not json", "invalid job payload"),
    (b'{"id": "1"}', "missing required field"),
    (b'{"id":"1","tenant":"t","enqueued_at":0,"pointer":{"provider":"pop3","account":"a"}}', "pop3"),
    (b'{"id":"1","tenant":"t","enqueued_at":0,"pointer":{"provider":"imap","account":"a","folder":"I",'
     b'"uidvalidity":"x","uid":1}}', "uidvalidity"),
])
def test_garbage_is_refused_naming_what_is_wrong(payload: bytes, complaint: str) -> None:
    with pytest.raises(JobDecodeError, match=complaint):
        jobs.decode(payload)


def test_an_unknown_schema_version_is_refused() -> None:
    data = msgspec.json.decode(jobs.encode(imap_job(42, uidvalidity=7, tenant="t1")))
    data["v"] = 2
    with pytest.raises(JobDecodeError, match="schema version 2"):
        jobs.decode(msgspec.json.encode(data))


def test_counters_and_identity() -> None:
    job = imap_job(42, uidvalidity=7, tenant="t1", job_id="abc")
    assert (job.id, job.attempt, job.transient) == ("abc", 0, 0)
    assert job.identity() == "imap:INBOX:7:42"
    assert job.log_fields() == {"job_id": "abc", "account": "support", "provider": "imap", "attempt": 0}
    bumped = msgspec.structs.replace(job, attempt=3)
    assert jobs.decode(jobs.encode(bumped)).attempt == 3
