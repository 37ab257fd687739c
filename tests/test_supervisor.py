"""The keyed supervisor of long-lived ingress tasks (``inboundd.ingress.supervisor``), with toy tasks."""

from __future__ import annotations

import trio

from inboundd.ingress.supervisor import Supervisor


class Toy:
    """A long-lived task that records its life."""

    def __init__(self, key: str, spec: dict, log: list[str]) -> None:
        self.key, self.spec, self.log = key, spec, log
        self.state = "new"
        self.kicks = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.log.append(f"start {self.key}")
        self.state = "running"
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.state = "stopped"
            self.log.append(f"stop {self.key}")

    def kick(self) -> None:
        self.kicks += 1

    def close(self) -> None:
        self.state = "closed"
        self.log.append(f"close {self.key}")


def supervisor(wanted: dict, log: list[str]) -> Supervisor:
    return Supervisor(wanted, make=lambda key, spec: Toy(key, spec, log),
                      fingerprint=lambda spec: spec.get("setting"))


async def test_start_reload_drain_resume_and_stop() -> None:
    log: list[str] = []
    sup = supervisor({"a": {"setting": 1}, "b": {"setting": 1}}, log)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert sorted(log) == ["start a", "start b"]
        assert [(key, task.state) for key, task in sup.tasks()] == [("a", "running"), ("b", "running")]
        a = dict(sup.tasks())["a"]

        log.clear()
        stale = await sup.update({"a": {"setting": 1, "other": "ignored"}, "b": {"setting": 2}, "c": {}})
        assert stale == ["b"]                       # changed fingerprint: restarted; a is kept
        assert sorted(log) == ["close b", "start b", "start c", "stop b"]
        assert dict(sup.tasks())["a"] is a and a.kicks == 1

        log.clear()
        await sup.drain()
        assert sorted(log) == ["stop a", "stop b", "stop c"]
        assert {task.state for _, task in sup.tasks()} == {"stopped"}   # still listed
        assert await sup.update({"a": {"setting": 1}}) == ["b", "c"]    # a reload while drained starts nothing
        assert [key for key, _ in sup.tasks()] == ["a"] and a.state == "stopped"
        await sup.resume()
        assert a.state == "running" and len(sup) == 1

        log.clear()
        nursery.cancel_scope.cancel()
    assert log == ["stop a", "close a"] and list(sup.tasks()) == []
