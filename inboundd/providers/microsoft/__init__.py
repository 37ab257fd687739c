"""Microsoft 365 mailboxes through Microsoft Graph: change notifications in, MIME fetched at consume time.

Pure decisions (no I/O, table-tested):

* ``webhook``  — validation handshake, notification batches, lifecycle events;
* ``renewal``  — subscription create / renew at half-life / recreate;
* ``delta``    — delta reconciliation: where a walk starts, pages, baselines;
* ``proto``    — Graph error classification, Retry-After, times, paths, post-actions.

I/O at the edges:

* ``token``    — msal client-credentials tokens (one app per account, in a worker thread);
* ``graph``    — the Graph REST calls on httpx (subscriptions, delta, ``$value``, post-actions).

``config`` holds the ``[[microsoft]]`` section.
"""
