"""IMAP: IDLE listeners that enqueue one pointer per new UID, and the consume-time fetcher.

* ``settings`` — the ``[[imap]]`` table;
* ``proto`` — the pure decisions (catch-up, IDLE responses, post-actions, fetch checks);
* ``conn`` — one IMAP connection driven from trio (imapclient in threads, IDLE on readability);
* ``listener`` — one listener task per (account, folder), and the group that owns them;
* ``fetch`` — the ``Source`` of IMAP jobs, and the post-actions after commit;
* ``status`` — how ``inboundctl status`` shows the listeners (pure);
* ``runtime`` — all of it in one daemon, behind the provider contract.
"""

from __future__ import annotations

from ...provider import Provider
from .runtime import ImapRuntime
from .settings import ImapAccountConfig
from .status import VIEW

__all__ = ["PROVIDER"]

#: IMAP, as the registry lists it.
PROVIDER = Provider(name="imap", account_config=ImapAccountConfig, build=ImapRuntime, status_view=VIEW)
