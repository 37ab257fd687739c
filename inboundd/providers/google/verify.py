"""Push tokens verified with Google's certificates, fetched with httpx and cached (``certs`` decides).

:class:`PushVerifier` is the I/O shell around ``push.check_token``: it finds
the certificate of the token's ``kid`` — from the cache, or by one fetch of
``certs_url`` when :class:`~.certs.CertsCache` says so — then verifies. Only
one fetch runs at a time; requests arriving meanwhile wait for it and use its
result, so a burst of pushes after expiry costs one fetch.

Pub/Sub signs a token once and sends it with every push until it expires
(an hour). A token whose signature, issuer and ``email_verified`` were
verified is remembered (at most :data:`VERIFIED_TOKENS` of them, until they
expire); its next uses check only what changes — time, audience and sender
against the current configuration (``push.still_valid``) — so the RSA
verification runs once per token, not once per push.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import httpx
import trio

from ... import clock, log
from . import push
from .certs import CertsCache, cache_lifetime

__all__ = ["CertsUnavailable", "PushVerifier"]

_log = log.get_logger("google.push")

#: One fetch of the certificates; a push waits for it, and Pub/Sub's deadline is 10 s by default.
CERTS_TIMEOUT = 5.0
#: Verified tokens remembered (Pub/Sub reuses one per subscription for an hour; a few dozen are plenty).
VERIFIED_TOKENS = 256


class CertsUnavailable(Exception):
    """No certificate could be had to verify with: answer 503 so Pub/Sub redelivers."""


class PushVerifier:
    """Verifies push tokens for the audiences and service accounts in *allowed*.

    ``allowed`` maps each ``push_audience`` to the ``push_service_account``\\ s
    that may use it; replace it (``verifier.allowed = …``) after a reload.
    """

    def __init__(self, http: httpx.AsyncClient, certs_url: str, allowed: Mapping[str, frozenset[str]]) -> None:
        self.http = http
        self.certs_url = certs_url
        self.allowed = allowed
        self.cache = CertsCache()
        self._fetch_lock = trio.Lock()
        self._verified: dict[str, push.PushClaims] = {}

    async def verify(self, authorization: str | None) -> push.PushClaims:
        """The claims of a valid token; raises :class:`push.PushRejected` or :class:`CertsUnavailable`.

        Cancellation: safe at any point; a fetch cancelled half-way is recorded
        as failed and the cache keeps what it had.
        """
        token = push.bearer_token(authorization)
        now = clock.wall()
        known = self._verified.get(token)
        if known is not None:
            return push.still_valid(known, self.allowed, now)
        kid = push.token_header(token).kid
        certs = await self._certs_for(kid)
        claims = push.check_token(token, certs, self.allowed, now)
        self._remember(token, claims, now)
        return claims

    def _remember(self, token: str, claims: push.PushClaims, now: float) -> None:
        if len(self._verified) >= VERIFIED_TOKENS:
            for old, seen in list(self._verified.items()):
                if seen.expires_at + push.CLOCK_SKEW < now:
                    del self._verified[old]
            while len(self._verified) >= VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]  # the oldest remembered
        self._verified[token] = claims

    async def ready(self) -> None:
        """Return once certificates are held (fetching them if none are, within the retry limits).

        Raises :class:`CertsUnavailable` when there are none to verify pushes with: ``/readyz``.
        """
        if not self.cache.certs:
            await self._certs_for("")
        if not self.cache.certs:
            raise CertsUnavailable(f"no Google certificates (fetching {self.certs_url} failed)")

    async def _certs_for(self, kid: str) -> Mapping[str, str]:
        decision = self.cache.plan(kid, trio.current_time())
        if decision == "fetch":
            async with self._fetch_lock:
                # Another request may have fetched while this one waited.
                if self.cache.plan(kid, trio.current_time()) == "fetch":
                    await self._fetch()
            decision = self.cache.plan(kid, trio.current_time())
        if decision == "unavailable":
            raise CertsUnavailable(f"no Google certificates (fetching {self.certs_url} failed)")
        # "unknown_kid" falls through: check_token rejects it with its reason.
        return self.cache.certs

    async def _fetch(self) -> None:
        started = trio.current_time()
        self.cache.fetching(started)
        try:
            with trio.fail_after(CERTS_TIMEOUT):
                response = await self.http.get(self.certs_url)
            response.raise_for_status()
            certs = response.json()
            if not isinstance(certs, dict) or not certs or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in certs.items()):
                raise ValueError("expected a non-empty JSON object {kid: PEM certificate}")
        except (httpx.HTTPError, ValueError, trio.TooSlowError) as exc:
            self.cache.failed(trio.current_time())
            log.event(_log, "google.certs.fetch_failed", level=logging.WARNING, url=self.certs_url,
                      error=f"{type(exc).__name__}: {exc}", holding=len(self.cache.certs))
            return
        except BaseException:
            self.cache.failed(trio.current_time())
            raise
        lifetime = cache_lifetime(response.headers.get("cache-control"), response.headers.get("age"))
        self.cache.stored(certs, lifetime, started)
        log.event(_log, "google.certs.fetched", url=self.certs_url, kids=",".join(sorted(certs)),
                  lifetime=round(lifetime))
