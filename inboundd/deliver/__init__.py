"""Getting stored mail into the application: ``[[deliver]]`` targets, the outbox and the deliverer.

Delivery is not a provider: providers bring mail in, this package takes
stored mail out. The store transaction owes each matching target a row in
the outbox (``store/outbox.py``) or, for ``kind = "python"``, runs its
handler in that same transaction (:mod:`.python`); the deliverer sends the
rows.

* :mod:`.targets` — ``[[deliver]]`` tables made ready (secrets, handlers) and the router;
* :mod:`.payload`, :mod:`.signing`, :mod:`.wire`, :mod:`.gate` — pure: the webhook
  JSON, Standard Webhooks signatures, requests and verdicts, target availability;
* :mod:`.worker` — one HTTP target's claim → send → record loop;
* :mod:`.deliverer` — every target's worker and the ``NOTIFY`` listener, on the supervisor;
* :mod:`.python` — Python handlers inside the store transaction.
"""
