"""Microsoft 365 mailboxes through Microsoft Graph: change notifications in, MIME fetched at consume time.

Pure decisions (no I/O, table-tested):

* ``webhook``  — validation handshake, notification batches, lifecycle events;
* ``renewal``  — subscription create / renew at half-life / recreate;
* ``delta``    — delta reconciliation: where a walk starts, pages, baselines;
* ``proto``    — Graph error classification, Retry-After, times, paths, post-actions.

I/O at the edges:

* ``token``    — msal client-credentials tokens (one app per account, in a worker thread);
* ``graph``    — the Graph REST calls on httpx (subscriptions, delta, ``$value``, post-actions).

``config`` holds the ``[[microsoft]]`` section; ``account`` an account at run time;
``book`` the subscriptions the webhook checks against; ``lifecycle`` the requests
its lifecycle events leave for the account's owner; ``renewer`` that owner's
subscriptions and delta; ``ingress`` the webhook routes; ``source`` the
consume-time fetch and post-actions; ``status`` how ``inboundctl status`` shows
them (pure); ``runtime`` all of it in one daemon.
"""

from __future__ import annotations

from ...ingress.webhook import Route
from ...provider import Provider
from .config import MicrosoftAccountConfig
from .runtime import MicrosoftRuntime, unsubscribe_account
from .status import VIEW

__all__ = ["PROVIDER", "ROUTES"]

#: Graph's change notifications and lifecycle notifications (both URLs are validated by Graph).
ROUTES = (Route("POST", "/webhooks/microsoft"), Route("POST", "/webhooks/microsoft/lifecycle"))

#: Microsoft 365 through Graph, as the registry lists it.
PROVIDER = Provider(name="microsoft", account_config=MicrosoftAccountConfig, build=MicrosoftRuntime, routes=ROUTES,
                    status_view=VIEW, unsubscribe=unsubscribe_account)
