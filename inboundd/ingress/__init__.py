"""What every provider's ingress shares, in one home.

* :mod:`.auth` — the auth-failure policy (back off, then ``auth_failed`` with
  slow retries), pure;
* :mod:`.lease` — the single-owner Redis lease with a fencing token, and
  :mod:`.lease_clock` (pure) + :mod:`.ownership`, which run work only while
  the lease is held;
* :mod:`.cursors` — resume points over a provider-neutral cursor;
* :mod:`.supervisor` — the keyed supervisor of long-lived tasks (listeners,
  renewers): start, reload, drain, resume;
* :mod:`.webhook` — the framework-free request and reply values a provider's
  HTTP routes work on;
* :mod:`.httpclients` — the outbound HTTP clients of the web-API providers
  (Graph, Gmail, their identity providers), by ``ca_file``, and
  :mod:`.retry_after` (pure), the one reading of ``Retry-After``;
* :mod:`.start` — ``start_from``: what a mailbox without a cursor enqueues
  first (pure).

The backoff every one of them uses is :mod:`inboundd.backoff`.
"""
