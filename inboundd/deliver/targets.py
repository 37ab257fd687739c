"""``[[deliver]]`` tables made ready to use: secrets checked, Python handlers imported, messages routed.

:func:`resolve` turns the configuration's targets into :class:`Target`
values and fails as a configuration would (:class:`ConfigError`, one line
per problem naming the key): a webhook secret that is not ``whsec_…``, a
``ca_file`` that cannot be read, a ``handler`` that cannot be imported (the
import error shown) or is not callable. The daemon resolves at start, on
``--check-config`` and on SIGHUP — a handler's module already imported is
reloaded then, so changed code takes effect; a failed reload keeps the
running configuration.

:class:`Router` answers, for a message about to be stored, which targets
get it (:meth:`Router.plan`); the pipeline swaps its targets on reload.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..config_convert import ConfigError
from ..config_schema import CoreConfig, DeliverConfig
from ..store.outbox import NewDelivery
from .signing import parse_secret

__all__ = ["Plan", "Router", "Target", "matches", "resolve"]


@dataclass(frozen=True)
class Target:
    """One ``[[deliver]]`` table, ready: its settings plus its secret, key or handler."""

    cfg: DeliverConfig
    #: Webhook: the HMAC key of the ``whsec_`` secret.
    key: bytes = b""
    #: Action Mailbox: the ingress password.
    password: str = ""
    #: Python: the handler, ``handler(conn, inbound)``.
    handler: Callable[..., Any] | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def kind(self) -> str:
        return self.cfg.kind


def matches(cfg: DeliverConfig, tenant: str, account: str) -> bool:
    """Whether a message of *tenant*/*account* goes to the target *cfg* (pure)."""
    match = cfg.match
    if match.tenant and match.tenant != tenant:
        return False
    return not match.accounts or account in match.accounts


class Plan(NamedTuple):
    """What the store transaction owes a message: outbox rows, and Python handlers to run in it."""

    #: (target id, kind) of each target that gets an outbox row.
    outbox: tuple[tuple[str, str], ...] = ()
    #: (target id, handler) of each Python target.
    handlers: tuple[tuple[str, Callable[..., Any]], ...] = ()

    def rows(self, message_row_id: int, raw: bytes, *, keep_raw: bool) -> list[NewDelivery]:
        """The outbox rows of the message stored as *message_row_id*.

        An ``action_mailbox`` row keeps *raw* with it, unless ``keep_raw``
        already keeps it with the message.
        """
        return [NewDelivery(message_row_id, target, kind,
                            raw if kind == "action_mailbox" and not keep_raw else None)
                for target, kind in self.outbox]


#: A plan that owes nothing.
NOTHING = Plan()


class Router:
    """Which targets get which message; safe to swap while jobs run (a plan is taken whole)."""

    def __init__(self, targets: Sequence[Target] = ()) -> None:
        self._plans: dict[tuple[str, str], Plan] = {}
        self.targets: tuple[Target, ...] = ()
        self.update(targets)

    def update(self, targets: Sequence[Target]) -> None:
        self.targets = tuple(targets)
        self._plans = {}

    def plan(self, tenant: str, account: str) -> Plan:
        """The plan for a message of *tenant*/*account* (cached per pair until :meth:`update`)."""
        plans = self._plans
        found = plans.get((tenant, account))
        if found is None:
            chosen = [t for t in self.targets if matches(t.cfg, tenant, account)]
            found = Plan(
                tuple((t.id, t.kind) for t in chosen if t.kind != "python"),
                tuple((t.id, t.handler) for t in chosen if t.kind == "python" and t.handler is not None),
            )
            plans[(tenant, account)] = found
        return found


def resolve(cfg: CoreConfig, *, reload_modules: bool = False) -> list[Target]:
    """The targets of *cfg*, ready; :class:`ConfigError` listing every problem (see the module docstring)."""
    problems: list[str] = []
    targets: list[Target] = []
    for index, section in enumerate(cfg.deliver):
        path = f"deliver[{index}]"
        if section.kind == "webhook":
            secret = cfg.secret(f"{path}.secret")
            key = b""
            if secret is not None:
                try:
                    key = parse_secret(secret.reveal())
                except ValueError as exc:
                    where = "secret_file" if section.secret_file else "secret_credential"
                    problems.append(f"{path}.{where}: {exc}")
            targets.append(Target(section, key=key))
        elif section.kind == "action_mailbox":
            secret = cfg.secret(f"{path}.password")
            targets.append(Target(section, password=secret.reveal() if secret is not None else ""))
        else:
            try:
                handler = load_handler(section.handler, reload_module=reload_modules)
            except ValueError as exc:
                problems.append(f"{path}.handler: {exc}")
                continue
            targets.append(Target(section, handler=handler))
        if section.ca_file:
            try:
                with open(section.ca_file, "rb"):
                    pass
            except OSError as exc:
                problems.append(f"{path}.ca_file: cannot read {section.ca_file!r}: {exc.strerror or exc}")
    if problems:
        raise ConfigError(cfg.source, problems)
    return targets


def load_handler(spec: str, *, reload_module: bool = False) -> Callable[..., Any]:
    """The callable named ``"package.module:function"``; ``ValueError`` naming what failed.

    *reload_module*: a module imported before is reloaded (SIGHUP), so edited code is used.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        if reload_module and module_name in sys.modules:
            module = importlib.reload(sys.modules[module_name])
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure of application code is a config problem
        raise ValueError(f"cannot import {module_name!r} for handler {spec!r}: {type(exc).__name__}: {exc}") from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no {attribute!r} (handler {spec!r})") from None
    if not callable(found):
        raise ValueError(f"{spec!r} is not callable (it is {type(found).__name__})")
    return found
