"""Gmail: Pub/Sub push in, history walked to one pointer per message, raw MIME at consume time.

The package follows the house split between decisions and I/O:

* pure (no I/O, table-tested): ``push`` (the push's bearer token and body),
  ``certs`` (when to fetch Google's signing certificates), ``gmail_proto``
  (history pages, resync bounds, watch timing, error classes, post-actions),
  ``oauth`` (credential files and scopes), ``config`` (the ``[[google]]`` section);
* I/O at the edges: ``tokens`` (google-auth in a worker thread over httpx),
  ``gmail_api`` (the Gmail REST calls on httpx), ``verify`` (certificates
  fetched and cached for the push checks), ``source`` (consume-time fetch and
  post-actions).
"""
