"""The outbound HTTP clients of the web-API providers (Graph, Gmail, their identity providers).

One ``httpx.AsyncClient`` (API calls under trio) and one blocking
``httpx.Client`` (msal's and google-auth's token requests, in worker threads)
per distinct ``ca_file``, each trusting the system's CAs plus that file,
owned by :class:`HttpClients` and closed with it. A CA is given per client,
never through the process environment, so a proxy's or a test's CA stays
with the accounts that name it.
"""

from __future__ import annotations

import ssl

import httpx
import trio

__all__ = ["HTTP_TIMEOUT", "HttpClients", "ssl_context"]

#: Connect quickly or report the API unreachable; a raw message download may take a while
#: (``processing.fetch_timeout`` bounds a whole fetch).
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def ssl_context(ca_file: str = "") -> ssl.SSLContext:
    """The system's trust store, plus *ca_file* when given."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class HttpClients:
    """HTTP clients by ``ca_file``, created on first use. Close with :meth:`aclose`."""

    def __init__(self) -> None:
        self._async: dict[str, httpx.AsyncClient] = {}
        self._sync: dict[str, httpx.Client] = {}
        #: Token requests run in threads; a few at once are plenty (tokens live an hour).
        self.token_limiter = trio.CapacityLimiter(4)

    def async_client(self, ca_file: str = "") -> httpx.AsyncClient:
        client = self._async.get(ca_file)
        if client is None:
            client = self._async[ca_file] = httpx.AsyncClient(
                verify=ssl_context(ca_file), timeout=HTTP_TIMEOUT, follow_redirects=False,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            )
        return client

    def sync_client(self, ca_file: str = "") -> httpx.Client:
        client = self._sync.get(ca_file)
        if client is None:
            client = self._sync[ca_file] = httpx.Client(verify=ssl_context(ca_file), timeout=HTTP_TIMEOUT)
        return client

    async def aclose(self) -> None:
        """Close every client (shielded: runs on the way out of cancelled scopes too)."""
        with trio.CancelScope(shield=True):
            for client in self._async.values():
                await client.aclose()
            for sync in self._sync.values():
                sync.close()
        self._async.clear()
        self._sync.clear()
