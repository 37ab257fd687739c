"""The test suite's private, real servers: redis-server, PostgreSQL, Dovecot.

The servers are the product's own (:mod:`inboundd.trial.servers`, which
``inboundd trial`` runs too); this module is their test-facing layer. Each
server runs on loopback, on a free port, in a temporary directory of its
own, and is stopped by its fixture (conftest.py) so no process outlives the
test session. The machine's own Redis (6379) and PostgreSQL (5432) are never
used. A missing program fails the test with the Debian package to install.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from inboundd.trial import servers
from inboundd.trial.servers import free_port

__all__ = ["DovecotServer", "PostgresServer", "RedisServer", "free_port"]


@contextmanager
def _prerequisites() -> Iterator[None]:
    """A missing program or privilege fails the test with what to install, without a traceback."""
    try:
        yield
    except servers.MissingPrerequisite as exc:
        pytest.fail(f"{exc} (scripts/setup --test installs what the suite needs)", pytrace=False)


class _FailOnMissing:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with _prerequisites():
            super().__init__(*args, **kwargs)  # type: ignore[call-arg]


class RedisServer(_FailOnMissing, servers.RedisServer):
    """A private redis-server (:class:`inboundd.trial.servers.RedisServer`)."""


class PostgresServer(_FailOnMissing, servers.PostgresServer):
    """A private PostgreSQL cluster (:class:`inboundd.trial.servers.PostgresServer`)."""


class DovecotServer(_FailOnMissing, servers.DovecotServer):
    """A private Dovecot (:class:`inboundd.trial.servers.DovecotServer`)."""
