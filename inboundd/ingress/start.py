"""Where a mailbox's ingress starts when it has no cursor yet: ``start_from``, without I/O.

Every provider with a backlog (IMAP folders, Graph delta) reads
``start_from`` the same way: ``now`` (nothing old), ``all`` or ``last:N``.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

__all__ = ["StartFrom", "parse_start_from"]


class StartFrom(msgspec.Struct, frozen=True):
    """What a folder without a cursor enqueues first: nothing old, everything, or the last N."""

    kind: Literal["now", "all", "last"]
    count: int = 0


_START_FROM_RE = re.compile(r"now|all|last:([1-9]\d*)")


def parse_start_from(text: str) -> StartFrom:
    """Parse ``"now"``, ``"all"`` or ``"last:N"`` (N ≥ 1); raises ``ValueError`` naming the value."""
    match = _START_FROM_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f'start_from: expected "now", "all" or "last:N", got {text!r}')
    if match.group(1):
        return StartFrom("last", int(match.group(1)))
    return StartFrom(match.group(0))  # type: ignore[arg-type]
