"""A provider defined only here, registered through the public registry, served by the real daemon.

Proof that adding a provider is one package plus one registry line: the toy
below is a ``[[toy]]`` configuration section, a long-lived task, a webhook
route, a readiness check and a status part, and nothing else in inboundd
knows about it. The daemon runs in this process (``Daemon.run``) against
the suite's real Redis and PostgreSQL; ``inboundctl status --json`` is the
real command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from inboundd import cli, config
from inboundd.config_schema import AccountConfig
from inboundd.daemon import Daemon
from inboundd.ingress.webhook import Route, WebhookReply, WebhookRequest
from inboundd.providers import REGISTRY, Context, Provider, Runtime
from inboundd.systemd import Notifier

PING = Route("POST", "/webhooks/toy")


class ToyAccount(AccountConfig, kw_only=True):
    greeting: str = "hello"


class ToyRuntime(Runtime):
    """Records its life in ``EVENTS``; answers pings with each account's greeting."""

    def __init__(self, ctx: Context) -> None:
        self.accounts: list[ToyAccount] = TOY.accounts(ctx.cfg)
        self.pings: list[bytes] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        EVENTS.append("started")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            EVENTS.append("stopped")

    async def handle(self, route: Route, request: WebhookRequest) -> WebhookReply:
        self.pings.append(request.body)
        return WebhookReply.json(200, {"route": route.path, "greetings": [a.greeting for a in self.accounts],
                                       "echo": request.body.decode(), "token": request.param("token")})

    def readiness(self) -> dict[str, Any]:
        async def upstream() -> None:
            pass

        return {"toy_upstream": upstream}

    async def status(self) -> dict[str, Any]:
        return {"toy": {"accounts": [a.id for a in self.accounts], "pings": len(self.pings)}}

    def summary(self) -> str:
        return f"toy: {len(self.accounts)} account(s)"


class ToyView:
    key = "toy"

    def normalize(self, part: Any, now: float) -> Any:
        return part or {"accounts": [], "pings": 0}

    def problems(self, part: Any) -> list[str]:
        return []

    def render(self, part: Any) -> list[str]:
        return ["TOY", f"  accounts  {', '.join(part['accounts'])}", f"  pings     {part['pings']}"]


TOY = Provider(name="toy", account_config=ToyAccount, build=ToyRuntime, routes=(PING,), status_view=ToyView())
EVENTS: list[str] = []


@pytest.fixture
def toy_registered():
    EVENTS.clear()
    REGISTRY.register(TOY)
    try:
        yield TOY
    finally:
        REGISTRY.unregister("toy")


def write_config(tmp_path: Path, redis_url: str, pg_dsn: str) -> Path:
    path = tmp_path / "inboundd.toml"
    path.write_text(f"""
[daemon]
consumers = 1
shutdown_grace = "5s"
[redis]
url = "{redis_url}"
[postgres]
dsn = "{pg_dsn}"
[http]
listen = ["127.0.0.1:0"]
[control]
socket = "{tmp_path / 'control.sock'}"
[[toy]]
id = "t1"
greeting = "hi"
[[toy]]
id = "t2"
""")
    return path


async def test_a_toy_provider_is_configured_served_started_stopped_and_shown(
        toy_registered, tmp_path, redis_url, pg_dsn, capsys):
    path = write_config(tmp_path, redis_url, pg_dsn)
    cfg = config.load(path)
    assert [account.id for account in TOY.accounts(cfg)] == ["t1", "t2"]
    daemon = Daemon(cfg, str(path), Notifier(""))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert EVENTS == ["started"]
        base = f"http://{daemon.http_binds[0].removeprefix('http://')}"

        def http(method: str, url: str, **kw: Any) -> httpx.Response:
            return httpx.request(method, base + url, timeout=10, **kw)

        ping = await trio.to_thread.run_sync(lambda: http("POST", "/webhooks/toy?token=x", content=b"ping"))
        assert ping.status_code == 200
        assert ping.json() == {"route": "/webhooks/toy", "greetings": ["hi", "hello"], "echo": "ping", "token": "x"}
        ready = await trio.to_thread.run_sync(lambda: http("GET", "/readyz"))
        assert ready.status_code == 200 and ready.json()["checks"]["toy_upstream"] == "ok"

        code = await trio.to_thread.run_sync(cli.main, ["-c", str(path), "status", "--json"])
        status = json.loads(capsys.readouterr().out)
        assert code == cli.EXIT_OK, status["health"]
        assert status["toy"] == {"accounts": ["t1", "t2"], "pings": 1}
        assert status["listeners"] == []            # the other providers' parts are there, empty
        code = await trio.to_thread.run_sync(cli.main, ["-c", str(path), "status"])
        text = capsys.readouterr().out
        assert "TOY\n  accounts  t1, t2\n  pings     1\n" in text

        daemon.drain()
        closed = await trio.to_thread.run_sync(lambda: http("POST", "/webhooks/toy", content=b"ping"))
        assert closed.status_code == 503            # intake stopped: the daemon answers for the provider
        daemon.request_stop()
    assert EVENTS == ["started", "stopped"]


def test_a_toy_section_is_refused_once_the_toy_is_gone(tmp_path) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load_text('[[toy]]\nid = "t1"\n')
    assert caught.value.problems == ["toy: unknown key"]
