"""When a lease holder must renew, and until when it may trust its lease (pure: time comes in).

Used by :mod:`.ownership` for every single-owner lease (an IMAP mailbox, a
Graph subscription's renewer, a Gmail watch).
"""

from __future__ import annotations

__all__ = ["LeaseClock"]


class LeaseClock:
    """When a lease holder must renew, and until when it may trust its lease.

    A renewal is sent every ``ttl / 3``. The lease is trusted until ``ttl``
    after the *send* time of the last successful acquire or renewal, minus a
    margin for clock-rate differences — measured from before the request, so
    a slow reply never extends it. Past that deadline the holder must stop
    acting as the owner even if Redis is unreachable: another daemon may own
    the lease by then.
    """

    MARGIN = 0.1

    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.ttl = ttl
        self.renew_every = ttl / 3
        self.valid_until = float("-inf")

    def confirmed(self, sent_at: float) -> None:
        """The acquire or renewal sent at *sent_at* succeeded."""
        self.valid_until = max(self.valid_until, sent_at + self.ttl * (1 - self.MARGIN))

    def valid(self, now: float) -> bool:
        """Whether the lease may still be trusted at *now*."""
        return now < self.valid_until
