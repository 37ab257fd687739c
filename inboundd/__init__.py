"""inboundd: inbound email ingestion daemon.

Ingress (IMAP IDLE, Gmail Pub/Sub pushes; Microsoft Graph webhooks are in
development) emits pointer jobs into a Redis Streams queue; consumers fetch the
real message at consume time, deduplicate it in PostgreSQL and store it exactly
once.
"""

__version__ = "0.1.0"
