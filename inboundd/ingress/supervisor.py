"""The keyed supervisor of long-lived ingress tasks: one task per key, started, reloaded, drained, resumed.

A provider describes what should run as a mapping *key → spec* (IMAP:
``(account, folder) → account``; a renewer: ``account → account``); the
supervisor keeps exactly one task per wanted key running in its own nursery:

* :meth:`Supervisor.run` starts every wanted task and reports started once
  each of them reported started (``task_status.started()``);
* :meth:`Supervisor.update` applies a new mapping (SIGHUP): tasks of removed
  keys and tasks whose spec changed (by the provider's fingerprint) stop and
  are forgotten, new ones start, the unchanged ones are kicked;
* :meth:`Supervisor.drain` stops every task but keeps them listed (their
  state shows ``stopped``); :meth:`Supervisor.resume` starts them again.

Each task is cancelled through its own cancel scope, so one key's trouble
never touches another's; a task's own ``run`` is responsible for a clean,
bounded exit on cancellation (logout, lease release).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import trio

__all__ = ["Supervised", "Supervisor", "run_reporting_started"]

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")
T = TypeVar("T", bound="Supervised")


class Supervised(Protocol):
    """A long-lived task the supervisor can run."""

    @property
    def state(self) -> str: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Work until cancelled; report started once useful (or known not to be)."""
        ...

    def kick(self) -> None:
        """Retry now (end a backoff wait): after a reload, or on an operator's request."""
        ...

    def close(self) -> None:
        """Forget this task (metrics) after its last run ended; it is never run again."""
        ...


async def run_reporting_started(work: Callable[[], Awaitable[Any]], ready: trio.Event, *, report_after: float,
                                task_status: trio.TaskStatus[None]) -> None:
    """Run *work* until it returns or is cancelled; report started once *ready* is set, or after *report_after*.

    For a supervised task's ``run``: start-up never waits on one broken
    account longer than *report_after* (seconds, trio's clock).
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        with trio.move_on_after(report_after):
            await ready.wait()
        task_status.started()


class _Slot(Generic[S, T]):
    def __init__(self, task: T, spec: S) -> None:
        self.task = task
        self.spec = spec
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.running = False


class Supervisor(Generic[K, S, T]):
    """One task per wanted key; see the module docstring.

    *make* builds the task of a key from its spec; *fingerprint* of a spec
    decides whether a reload restarts the key's task (equal: kept).
    """

    def __init__(self, wanted: Mapping[K, S], *, make: Callable[[K, S], T],
                 fingerprint: Callable[[S], Any]) -> None:
        self._wanted: dict[K, S] = dict(wanted)
        self._make = make
        self._fingerprint = fingerprint
        self._slots: dict[K, _Slot[S, T]] = {}
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._lock = trio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every wanted task until cancelled.

        Reports started once every task reported started. On cancellation
        every task ends (each bounded by its own ``run``) before this returns,
        and is closed.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with self._lock:
                    await self._start()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for slot in self._slots.values():
                slot.task.close()
            self._slots.clear()

    def tasks(self) -> Iterator[tuple[K, T]]:
        """Every task with its key, in key order."""
        for key in sorted(self._slots):  # type: ignore[type-var]
            yield key, self._slots[key].task

    def kick(self) -> None:
        """Kick every task (retry now)."""
        for slot in self._slots.values():
            slot.task.kick()

    async def drain(self) -> None:
        """Stop every task; returns once all ended. They stay listed until :meth:`resume`."""
        async with self._lock:
            self._draining = True
            await self._stop([key for key, slot in self._slots.items() if slot.running])

    async def resume(self) -> None:
        """Start every wanted task again after :meth:`drain`; returns once all reported started."""
        async with self._lock:
            self._draining = False
            await self._start()

    async def update(self, wanted: Mapping[K, S]) -> list[K]:
        """Apply a new *wanted* mapping; returns the keys whose task stopped (removed or restarting).

        Returns once new tasks reported started (none start while draining).
        Tasks that were kept are kicked.
        """
        async with self._lock:
            self._wanted = dict(wanted)
            stale = [key for key, slot in self._slots.items() if key not in self._wanted
                     or self._fingerprint(slot.spec) != self._fingerprint(self._wanted[key])]
            await self._stop(stale, forget=True)
            if not self._draining:
                await self._start()
            for key, slot in self._slots.items():
                if key not in stale:
                    slot.task.kick()
            return stale

    def __len__(self) -> int:
        return len(self._slots)

    # ------------------------------------------------------------------ internals

    async def _start(self) -> None:
        """Start every wanted task not running, concurrently; return once all reported started."""
        assert self._nursery is not None, "Supervisor.run is not running"
        to_start = []
        for key, spec in self._wanted.items():
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(self._make(key, spec), spec)
            if not slot.running:
                to_start.append(slot)
        async with trio.open_nursery() as starter:
            for slot in to_start:
                starter.start_soon(self._start_slot, slot)

    async def _start_slot(self, slot: _Slot[S, T]) -> None:
        assert self._nursery is not None
        slot.scope = trio.CancelScope()
        slot.done = trio.Event()
        slot.running = True
        await self._nursery.start(self._run_slot, slot)

    async def _run_slot(self, slot: _Slot[S, T], *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with slot.scope:
                await slot.task.run(task_status=task_status)
        finally:
            slot.running = False
            slot.done.set()

    async def _stop(self, keys: Sequence[K], *, forget: bool = False) -> None:
        slots = [self._slots[key] for key in keys if key in self._slots]
        for slot in slots:
            slot.scope.cancel()
        for slot in slots:
            if slot.running:
                await slot.done.wait()
        if forget:
            for key in keys:
                slot = self._slots.pop(key, None)
                if slot is not None:
                    slot.task.close()
