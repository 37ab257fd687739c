"""When to fetch Google's push-token certificates: cache by ``Cache-Control``, never per request.

Pure state and decisions; ``verify.CertsFetcher`` does the fetching and asks
:meth:`CertsCache.plan` first. The rules:

* certificates are kept for the response's ``max-age`` (less ``Age``),
  clamped to [:data:`MIN_LIFETIME`, :data:`MAX_LIFETIME`]; without one,
  :data:`DEFAULT_LIFETIME`;
* a token naming a ``kid`` the cache does not hold causes one refetch — at
  most one per :data:`UNKNOWN_KID_REFETCH` seconds, so tokens with made-up
  kids cannot make every request a fetch;
* a failed fetch keeps the old certificates (Google publishes new keys well
  before it signs with them) and is not retried for :data:`FAILED_RETRY`
  seconds; with no certificates at all the push cannot be verified
  (``"unavailable"``: answer 503, Pub/Sub retries).

Times are seconds on one monotonic clock (trio's, in the daemon).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

__all__ = [
    "DEFAULT_LIFETIME",
    "FAILED_RETRY",
    "MAX_LIFETIME",
    "MIN_LIFETIME",
    "UNKNOWN_KID_REFETCH",
    "CertsCache",
    "cache_lifetime",
]

DEFAULT_LIFETIME = 300.0
MIN_LIFETIME = 60.0
MAX_LIFETIME = 86400.0
UNKNOWN_KID_REFETCH = 60.0
FAILED_RETRY = 10.0

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(no-cache|no-store)(?:$|[,\s=])", re.IGNORECASE)


def cache_lifetime(cache_control: str | None, age: str | None = None) -> float:
    """How long certificates served with these ``Cache-Control`` and ``Age`` headers may be used."""
    if cache_control and _NO_CACHE.search(cache_control):
        return MIN_LIFETIME
    match = _MAX_AGE.search(cache_control or "")
    if not match:
        return DEFAULT_LIFETIME
    lifetime = float(match.group(1))
    if age and age.strip().isdigit():
        lifetime -= float(age.strip())
    return min(max(lifetime, MIN_LIFETIME), MAX_LIFETIME)


class CertsCache:
    """The certificates held, and whether a token's ``kid`` needs a fetch first."""

    def __init__(self) -> None:
        self.certs: dict[str, str] = {}
        self.expires_at = float("-inf")
        #: When the last fetch was tried (successful or not).
        self.attempted_at = float("-inf")
        self.retry_not_before = float("-inf")
        self.fetches = 0
        self.failures = 0

    def plan(self, kid: str, now: float) -> Literal["use", "fetch", "unknown_kid", "unavailable"]:
        """What to do for a token naming *kid* at *now*.

        ``use``: verify with :attr:`certs`. ``fetch``: fetch first, then plan
        again (the second plan never says ``fetch``: the attempt was recorded).
        ``unknown_kid``: reject the token. ``unavailable``: nothing to verify with.
        """
        may_fetch = now >= self.retry_not_before
        if not self.certs:
            return "fetch" if may_fetch else "unavailable"
        if now >= self.expires_at and may_fetch:
            return "fetch"
        if kid in self.certs:
            return "use"
        if may_fetch and now - self.attempted_at >= UNKNOWN_KID_REFETCH:
            return "fetch"
        return "unknown_kid"

    def fetching(self, now: float) -> None:
        """A fetch starts at *now*."""
        self.attempted_at = now
        self.fetches += 1

    def stored(self, certs: Mapping[str, str], lifetime: float, now: float) -> None:
        """The fetch started at or before *now* returned *certs*, valid for *lifetime* seconds."""
        self.certs = dict(certs)
        self.expires_at = now + lifetime
        self.retry_not_before = float("-inf")

    def failed(self, now: float) -> None:
        """The fetch failed at *now*: keep what is held, do not try again for a while."""
        self.failures += 1
        self.retry_not_before = now + FAILED_RETRY
