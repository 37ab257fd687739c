"""``inboundd trial``: the daemon on private servers, for trying it out and for tests.

:mod:`inboundd.trial.servers` starts and stops private redis-server,
PostgreSQL and Dovecot instances (the test suite uses the same classes);
:mod:`inboundd.trial.runner` is the ``inboundd trial`` command (what
``scripts/run`` runs) that starts them under ``./state`` and runs the daemon
on the embedded trial configuration (:func:`config_text`).
"""

from __future__ import annotations

__all__ = ["config_text"]


def config_text() -> str:
    """The embedded trial configuration (``inboundd/trial/trial.toml``)."""
    from importlib.resources import files

    return files(__name__).joinpath("trial.toml").read_text(encoding="utf-8")
