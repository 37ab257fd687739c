"""The one job codec: pointer jobs, their identity, encode and decode.

A job only *points* at a message (IMAP mailbox + UIDVALIDITY + UID, a Graph
message id, a Gmail message id or historyId). Every struct forbids unknown
fields, so a job carrying ``body``, ``raw``, ``mime`` or ``attachments`` can
neither be constructed (``TypeError``) nor decoded (:class:`JobDecodeError`).

Pure module: no I/O.
"""

from __future__ import annotations

import itertools
import os
from typing import Union

import msgspec

from . import clock

__all__ = [
    "SCHEMA_VERSION",
    "GooglePointer",
    "ImapPointer",
    "Job",
    "JobDecodeError",
    "MicrosoftPointer",
    "Pointer",
    "decode",
    "encode",
    "new_job",
    "new_job_id",
]

SCHEMA_VERSION = 1


class _Pointer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="provider"):
    #: The configured account id (``[[imap]] id`` …).
    account: str

    @property
    def names_message(self) -> bool:
        """True when the job points at one message (fetch, ledger, store); False for ingress work
        done at consume time (a Gmail history walk), which its source's ``ingest`` does."""
        return True


class ImapPointer(_Pointer, tag="imap"):
    folder: str
    uidvalidity: int
    uid: int
    #: Message-ID seen at ingress, if the listener fetched it (optional, informative).
    message_id: str | None = None

    def identity(self) -> str:
        return f"imap:{self.folder}:{self.uidvalidity}:{self.uid}"


class MicrosoftPointer(_Pointer, tag="microsoft"):
    #: Immutable Graph message id.
    message_id: str
    #: The configured folder (well-known name or folder id) the message was seen in.
    folder: str = ""
    #: The subscription that notified it; "" when a delta reconciliation found it.
    subscription_id: str = ""
    change_type: str = "created"

    def identity(self) -> str:
        return f"graph:{self.message_id}"


class GooglePointer(_Pointer, tag="google"):
    email: str
    history_id: int
    pubsub_message_id: str = ""
    #: Gmail message id once the history walk resolved it; None for a history-walk job
    #: (a push: this mailbox changed up to ``history_id``).
    message_id: str | None = None

    @property
    def names_message(self) -> bool:
        return self.message_id is not None

    def identity(self) -> str:
        return f"gmail:{self.message_id}" if self.message_id else f"gmail-history:{self.history_id}"


Pointer = Union[ImapPointer, MicrosoftPointer, GooglePointer]


class Job(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pointer plus its envelope. ``id`` is stable across retries and redrives."""

    id: str
    tenant: str
    pointer: Pointer
    enqueued_at: float
    attempt: int = 0
    #: Retries caused by transient infrastructure errors; they do not burn attempts.
    transient: int = 0
    v: int = SCHEMA_VERSION

    @property
    def account(self) -> str:
        return self.pointer.account

    @property
    def provider(self) -> str:
        return type(self.pointer).__struct_config__.tag  # type: ignore[return-value]

    def identity(self) -> str:
        """Provider-native, immutable identity of the message within its account."""
        return self.pointer.identity()

    def log_fields(self) -> dict[str, object]:
        """The context every log line about this job carries."""
        return {"job_id": self.id, "account": self.account, "provider": self.provider, "attempt": self.attempt}


class JobDecodeError(ValueError):
    """Bytes that are not a valid job of a known schema version."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Job)


class _JobIds:
    """32 hex digits: 64 random bits drawn once per process, then a counter.

    As unique as a random UUID across processes (the prefix is redrawn in a
    forked child) at a fraction of ``uuid4``'s cost, which the producer pays
    per job.
    """

    def __init__(self) -> None:
        self.reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_job_ids = _JobIds()


def new_job_id() -> str:
    """A fresh job id (32 lowercase hex digits, unique across processes)."""
    return _job_ids.next()


def new_job(pointer: Pointer, *, tenant: str, job_id: str | None = None) -> Job:
    """A fresh job for *pointer*, stamped with the wall clock."""
    return Job(id=job_id or _job_ids.next(), tenant=tenant, pointer=pointer, enqueued_at=clock.wall())


def encode(job: Job) -> bytes:
    """The wire form of *job* (compact JSON)."""
    return _encoder.encode(job)


def decode(data: bytes | str) -> Job:
    """Decode a job; raises :class:`JobDecodeError` naming what was wrong, and nothing else, whatever *data* is."""
    try:
        job = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise JobDecodeError(f"invalid job payload: {exc}") from None
    except UnicodeError as exc:
        # msgspec reports bytes that are not UTF-8 inside a string (and a str holding a lone
        # surrogate) as UnicodeDecodeError/UnicodeEncodeError, not as a DecodeError.
        raise JobDecodeError(f"invalid job payload: not UTF-8 text: {exc.reason} at position {exc.start}") from None
    except RecursionError:
        raise JobDecodeError("invalid job payload: JSON nested too deeply") from None
    if job.v != SCHEMA_VERSION:
        raise JobDecodeError(f"unsupported job schema version {job.v} (this build reads {SCHEMA_VERSION})")
    return job
