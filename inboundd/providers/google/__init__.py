"""Gmail: Pub/Sub push in, history walked to one pointer per message, raw MIME at consume time.

The package follows the house split between decisions and I/O:

* pure (no I/O, table-tested): ``push`` (the push's bearer token and body),
  ``certs`` (when to fetch Google's signing certificates), ``proto``
  (history pages, resync bounds, watch timing, error classes, post-actions),
  ``oauth`` (credential files and scopes), ``config`` (the ``[[google]]`` section);
* I/O at the edges: ``tokens`` (google-auth in a worker thread over httpx),
  ``gmail_api`` (the Gmail REST calls on httpx), ``verify`` (certificates
  fetched and cached for the push checks), ``source`` (consume-time fetch and
  post-actions), ``walk`` (pushes into message jobs), ``webhook`` (the push
  route), ``renewer`` (watch and scheduled walks), ``runtime`` (all of it in
  one daemon, behind the provider contract); ``status`` shows it in
  ``inboundctl status`` (pure).
"""

from __future__ import annotations

from ...provider import Provider
from .config import GoogleAccountConfig, check_accounts
from .runtime import ROUTE, GoogleRuntime, unsubscribe_account
from .status import VIEW

__all__ = ["PROVIDER"]

#: Gmail, as the registry lists it.
PROVIDER = Provider(name="google", account_config=GoogleAccountConfig, build=GoogleRuntime, routes=(ROUTE,),
                    status_view=VIEW, check=check_accounts, unsubscribe=unsubscribe_account)
