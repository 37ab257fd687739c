"""The provider registry: the providers this build has, and what each offers the daemon.

What a provider offers is the contract in :mod:`inboundd.provider`
(re-exported here): its ``[[name]]`` configuration section type, the
long-lived tasks it starts (listeners, renewers), its HTTP routes, its
consume-time source, its part of ``/readyz`` and of ``inboundctl status``.
The daemon's pipeline, HTTP app, status code and configuration iterate over
:data:`REGISTRY` and never name a provider.

Adding a provider is one package under ``providers/`` exporting a
:class:`Provider`, plus one line in :data:`REGISTRY` below. Account ids are
unique across every provider's accounts (the configuration checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from ..config_schema import AccountConfig
from ..provider import Context, Provider, Runtime, StatusView
from . import google, imap, microsoft

__all__ = ["REGISTRY", "Context", "Provider", "Registry", "Runtime", "StatusView"]


class Registry:
    """Providers by name, in registration order (the order of configuration sections and status parts).

    *planned* names providers that are designed but not in this build, with
    the one line the configuration shows when their section is used.
    """

    def __init__(self, providers: Iterable[Provider] = (), *, planned: Mapping[str, str] | None = None) -> None:
        self._providers: dict[str, Provider] = {}
        self.planned: dict[str, str] = dict(planned or {})
        for provider in providers:
            self.register(provider)

    def register(self, provider: Provider) -> Provider:
        """Add *provider*; ``ValueError`` if its name is taken, ``TypeError`` if its section has no account id.

        Returns it.
        """
        if provider.name in self._providers:
            raise ValueError(f"a provider named {provider.name!r} is already registered")
        if not (isinstance(provider.account_config, type) and issubclass(provider.account_config, AccountConfig)):
            # Account ids are unique across every provider: the configuration finds them through this base.
            raise TypeError(f"provider {provider.name!r}: account_config must extend config_schema.AccountConfig")
        self._providers[provider.name] = provider
        self.planned.pop(provider.name, None)
        return provider

    def unregister(self, name: str) -> None:
        """Remove the provider called *name* (a test's toy provider, say); ``KeyError`` if there is none."""
        del self._providers[name]

    def get(self, name: str) -> Provider:
        """The provider called *name*; ``KeyError`` naming it if there is none."""
        try:
            return self._providers[name]
        except KeyError:
            raise KeyError(f"no provider named {name!r}") from None

    def __iter__(self) -> Iterator[Provider]:
        return iter(list(self._providers.values()))

    def __len__(self) -> int:
        return len(self._providers)

    def status_views(self) -> list[StatusView]:
        """Every provider's status view, in registration order."""
        return [provider.status_view for provider in self if provider.status_view is not None]


#: The providers of this build: one line each.
REGISTRY = Registry(
    [
        imap.PROVIDER,
        microsoft.PROVIDER,
        google.PROVIDER,
    ],
)
