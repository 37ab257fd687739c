"""``inboundctl``: operate inboundd (status, drain, resume, dlq, redrive, trace, messages, deliveries, redeliver,
migrate, unsubscribe).

Every command reads the daemon's configuration file (``-c``,
``$INBOUNDD_CONFIG``, ``/etc/inboundd.toml``) to find the control socket,
Redis and PostgreSQL. ``status``, ``dlq``, ``redrive``, ``trace``,
``messages``, ``deliveries``, ``redeliver``, ``migrate`` and ``unsubscribe``
talk to Redis and PostgreSQL (and the provider) directly, so they work with
the daemon stopped; ``drain`` and ``resume`` need the running daemon's
control socket.

Errors are one line on stderr naming what failed and where (which file,
socket, Redis URL or PostgreSQL host), and a non-zero exit status:

* 0 success (``status``: healthy)
* 1 the command did not succeed (``status``: degraded; ``drain --wait``: timed out;
  ``trace``: nothing found)
* 2 usage error or invalid configuration
* 3 the daemon is not running (``status``, ``drain``, ``resume``)
* 4 a service cannot be reached or access is denied (control socket, Redis, PostgreSQL)
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, NoReturn

import msgspec
import trio

from . import __version__, clock, config as config_mod, health, trace
from .providers import REGISTRY

__all__ = ["main", "build_parser", "CtlError"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNAVAILABLE = 4

#: How long one control-socket request may take.
CONTROL_TIMEOUT = 10.0
#: How often ``drain --wait`` asks the daemon whether it is drained.
DRAIN_POLL_INTERVAL = 0.2
#: ``drain --wait`` gives up after this long unless ``--timeout`` says otherwise.
DEFAULT_DRAIN_TIMEOUT = "5m"
#: Throughput windows of ``status`` (minutes).
THROUGHPUT_WINDOWS = (1, 5, 15)


class CtlError(Exception):
    """A command failed; ``str(exc)`` is the one line shown, ``exit_status`` the exit code."""

    def __init__(self, message: str, exit_status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class DaemonNotRunning(CtlError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NOT_RUNNING)


# --------------------------------------------------------------------------- pure helpers


def redact_url(url: str) -> str:
    """*url* without its password (``redis://:secret@host`` → ``redis://***@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    # redis-py also reads ?password=… from the query string.
    tail = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", tail)
    return f"{scheme}://{authority}{slash}{tail}"


def describe_dsn(dsn: str) -> str:
    """Where a libpq DSN points (host, port, database), never its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
    except Exception:  # an unparsable DSN: psycopg's own error will say more
        return "PostgreSQL (unparsable dsn)"
    host = str(info.get("host") or "local socket")
    port = f":{info['port']}" if info.get("port") else ""
    return f"PostgreSQL at {host}{port}/{info.get('dbname') or info.get('user') or ''}".rstrip("/")


def ledger_summary(rows: list[tuple[str, str | None, int]], window: str = "1h") -> dict[str, Any]:
    """Fold ``(status, reason, count)`` rows of the ledger into the status document's ``ledger`` part."""
    summary: dict[str, Any] = {"window": window, "processed": 0, "duplicate": 0, "skipped": {}, "failed": 0,
                               "processing": 0}
    for status, reason, count in rows:
        if status == "skipped":
            key = reason or "unspecified"
            summary["skipped"][key] = summary["skipped"].get(key, 0) + count
        elif status in summary:
            summary[status] += count
    return summary


def _oserror_in_chain(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def classify_control_error(path: str, exc: BaseException, group: str = "") -> CtlError:
    """The one-line error for a failed control-socket request."""
    os_error = _oserror_in_chain(exc)
    code = os_error.errno if os_error is not None else None
    if code in (errno.ENOENT, errno.ENOTDIR):
        return DaemonNotRunning(f"daemon is not running: no control socket at {path}")
    if code == errno.ECONNREFUSED:
        return DaemonNotRunning(f"daemon is not running: nothing listens on {path} (stale socket)")
    if code in (errno.EACCES, errno.EPERM):
        who = f"root or a member of group {group!r}" if group else "root or the daemon's user/group"
        return CtlError(f"permission denied on control socket {path} (run as {who})", EXIT_UNAVAILABLE)
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        # Not "not running" (exit 3): a hung daemon must not look like a stopped one.
        return CtlError(f"daemon is not answering on {path} (no reply within {CONTROL_TIMEOUT:g}s)",
                        EXIT_UNAVAILABLE)
    detail = os_error.strerror if os_error is not None else str(exc) or type(exc).__name__
    return CtlError(f"control socket {path}: {detail}", EXIT_UNAVAILABLE)


def _format_time(stamp: Any) -> str:
    if stamp is None:
        return "-"
    if isinstance(stamp, datetime):
        moment = stamp
    else:
        moment = datetime.fromtimestamp(float(stamp), timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(text: Any, width: int = 60) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --------------------------------------------------------------------------- services


class Services:
    """The configuration and lazily made clients to the control socket, Redis and PostgreSQL."""

    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self._rio: Any = None

    # ---------------------------------------------------------------- control socket

    def control(self, method: str, path: str, timeout: float | None = None) -> dict[str, Any]:
        """One request to the daemon's control socket (blocking); the decoded JSON reply."""
        import httpx

        control = self.cfg.control
        if not control.socket:
            raise DaemonNotRunning(f"{self.cfg.source}: control.socket is \"\" (the control socket is disabled)")
        transport = httpx.HTTPTransport(uds=control.socket)
        try:
            with httpx.Client(transport=transport, base_url="http://inboundd",
                              timeout=timeout if timeout is not None else CONTROL_TIMEOUT) as client:
                response = client.request(method, path)
        except httpx.HTTPError as exc:
            raise classify_control_error(control.socket, exc, control.group) from None
        if response.status_code != 200:
            raise CtlError(f"control socket {control.socket}: {method} {path} answered {response.status_code}: "
                           f"{_one_line(response.text, 200)}")
        try:
            return response.json()
        except ValueError:
            raise CtlError(f"control socket {control.socket}: {method} {path} answered with invalid JSON") from None

    # ---------------------------------------------------------------- Redis

    @property
    def redis_where(self) -> str:
        return f"Redis at {redact_url(self.cfg.redis.url)}"

    def rio(self) -> Any:
        if self._rio is None:
            from .redisio import RedisIO

            secret = self.cfg.secret("redis.password")
            self._rio = RedisIO.from_config(self.cfg.redis, secret.reveal() if secret else None)
        return self._rio

    def queue(self) -> Any:
        from .queue import Queue

        return Queue(self.rio(), self.cfg.queue, prefix=self.cfg.redis.key_prefix)

    async def redis_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Await ``fn(*args, **kwargs)``; a Redis failure becomes one line naming the server."""
        import redis

        try:
            return await fn(*args, **kwargs)
        except redis.AuthenticationError as exc:
            raise CtlError(f"{self.redis_where}: authentication failed ({exc})", EXIT_UNAVAILABLE) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CtlError(f"{self.redis_where} unreachable: {_one_line(exc, 200)}", EXIT_UNAVAILABLE) from None
        except redis.ResponseError as exc:
            raise CtlError(f"{self.redis_where}: {_one_line(exc, 200)}", EXIT_UNAVAILABLE) from None

    async def close(self) -> None:
        if self._rio is not None:
            with trio.CancelScope(shield=True):
                await self._rio.close()

    # ---------------------------------------------------------------- PostgreSQL

    @property
    def postgres_where(self) -> str:
        return describe_dsn(self.cfg.postgres.dsn)

    def pg_run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one transaction on a fresh connection (blocking).

        A one-shot command has no use for the daemon's pool; a direct
        connection reports libpq's own reason (refused, auth, no database).
        """
        import psycopg

        pg = self.cfg.postgres
        secret = self.cfg.secret("postgres.password")
        kwargs: dict[str, Any] = {"connect_timeout": max(1, int(pg.connect_timeout)),
                                  "application_name": "inboundctl"}
        if secret is not None:
            kwargs["password"] = secret.reveal()
        try:
            with psycopg.connect(pg.dsn, **kwargs) as conn:
                return fn(conn, *args)
        except psycopg.OperationalError as exc:
            raise CtlError(f"{self.postgres_where} unreachable: {_one_line(exc, 200)}", EXIT_UNAVAILABLE) from None
        except psycopg.Error as exc:
            raise CtlError(f"{self.postgres_where}: {_one_line(exc, 200)}", EXIT_UNAVAILABLE) from None

    async def pg(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(self.pg_run, fn, *args)


# --------------------------------------------------------------------------- status


def _ledger_rows(conn: Any) -> tuple[list[tuple[str, str | None, int]], dict[str, float], list[Any]] | None:
    from .store import ledger, outbox

    if not ledger.exists(conn):
        return None
    rows = ledger.recent_outcomes(conn, minutes=60)
    finished = ledger.finished_within(conn, THROUGHPUT_WINDOWS)
    throughput = {f"{m}m": round(n / m, 2) for m, n in zip(THROUGHPUT_WINDOWS, finished)}
    deliveries = outbox.counts(conn) if outbox.exists(conn) else []
    return rows, throughput, deliveries


async def gather_status(services: Services) -> dict[str, Any]:
    """The status document: daemon (control socket), queue (Redis) and ledger (PostgreSQL), fetched at once.

    Never raises for an unreachable part: the daemon part then says
    ``not_running`` and ``errors`` names Redis or PostgreSQL. A permission
    error on the control socket is raised (the operator must fix that first).
    """
    parts: dict[str, Any] = {}
    errors: dict[str, str] = {}
    fatal: list[CtlError] = []

    async def daemon_part() -> None:
        try:
            parts["daemon"] = await trio.to_thread.run_sync(services.control, "GET", "/status")
        except DaemonNotRunning as exc:
            parts["daemon_error"] = str(exc)
        except CtlError as exc:  # permission denied, no answer: raised below, outside the nursery
            fatal.append(exc)

    async def queue_part() -> None:
        try:
            stats = await services.redis_call(services.queue().stats)
        except CtlError as exc:
            errors["redis"] = str(exc)
            return
        parts["queue"] = msgspec.to_builtins(stats)

    async def ledger_part() -> None:
        try:
            result = await services.pg(_ledger_rows)
        except CtlError as exc:
            errors["postgres"] = str(exc)
            return
        if result is None:
            errors["postgres"] = (f"{services.postgres_where}: table inbound_ledger is missing "
                                  "(run `inboundctl migrate`)")
            return
        rows, throughput, deliveries = result
        parts["ledger"] = ledger_summary(rows)
        parts["throughput"] = throughput
        parts["deliveries"] = health.deliveries_part([tuple(row) for row in deliveries])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon_part)
        nursery.start_soon(queue_part)
        nursery.start_soon(ledger_part)
    if fatal:
        raise fatal[0]
    return health.build_status(
        parts.get("daemon"), parts.get("daemon_error"), parts.get("queue"), parts.get("ledger"),
        parts.get("throughput"), errors, now=clock.wall(), views=REGISTRY.status_views(),
        deliveries=parts.get("deliveries"),
    )


def cmd_status(services: Services, args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        try:
            return await gather_status(services)
        finally:
            await services.close()

    status = trio.run(run)
    views = REGISTRY.status_views()
    alerts = {target.id: target.pending_alert for target in services.cfg.deliver}
    code, problems = health.assess(status, services.cfg.queue.oldest_ready_alert, views, alerts)
    if args.json:
        status["health"] = {"status": {0: "healthy", 1: "degraded", 3: "not_running"}.get(code, "unknown"),
                            "exit_status": code, "problems": problems,
                            "summary": health.summary(status, code, problems)}
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        sys.stdout.write(health.render(status, problems, views, code))
    return code


# --------------------------------------------------------------------------- drain / resume


def cmd_drain(services: Services, args: argparse.Namespace) -> int:
    body = services.control("POST", "/drain")
    state = body.get("daemon", {}).get("state")
    wait = args.wait or args.timeout is not None
    if not wait:
        print(f"{state}: intake stopped; in-flight jobs are finishing (`inboundctl status` shows progress)"
              if state == "draining" else f"{state}")
        return EXIT_OK if state in ("draining", "drained") else EXIT_FAILED
    try:
        timeout = config_mod.parse_duration(args.timeout if args.timeout is not None else DEFAULT_DRAIN_TIMEOUT)
    except ValueError as exc:
        raise CtlError(f"--timeout: {exc}", EXIT_USAGE) from None
    deadline = clock.wall() + timeout
    while state != "drained":
        if state not in ("draining", "drained"):
            raise CtlError(f"daemon is {state}, not draining (was it resumed or stopped?)")
        if clock.wall() >= deadline:
            busy = (body.get("consumers") or {}).get("busy")
            detail = f" ({busy} job(s) still in flight)" if busy is not None else ""
            raise CtlError(f"still draining after {timeout:g}s{detail}; the daemon keeps draining")
        time.sleep(DRAIN_POLL_INTERVAL)
        body = services.control("GET", "/status")
        state = body.get("daemon", {}).get("state")
    print("drained: no job in flight, intake stopped; `systemctl stop inboundd` loses nothing now")
    return EXIT_OK


def cmd_resume(services: Services, args: argparse.Namespace) -> int:
    body = services.control("POST", "/resume")
    state = body.get("daemon", {}).get("state")
    print(f"{state}")
    return EXIT_OK if state == "running" else EXIT_FAILED


# --------------------------------------------------------------------------- dlq / redrive


def _dead_letter_dict(entry: Any) -> dict[str, Any]:
    data = msgspec.to_builtins(entry) if isinstance(entry, msgspec.Struct) else dict(entry)
    data.pop("raw", None)  # the encoded job again; ``job`` has it decoded
    return data


def render_dlq(entries: list[dict[str, Any]]) -> str:
    """The human table of dead-lettered jobs, oldest first as stored."""
    if not entries:
        return "no dead-lettered jobs\n"
    rows = [["JOB ID", "ACCOUNT", "PROVIDER", "ATTEMPTS", "DEAD AT", "REASON", "LAST ERROR"]]
    for item in entries:
        rows.append([
            str(item.get("job_id")), str(item.get("account")), str(item.get("provider")),
            str(item.get("attempts")), _format_time(item.get("dead_at")), str(item.get("reason")),
            _one_line(item.get("last_error")),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + f"\n{len(entries)} dead-lettered job(s) shown\n"


def cmd_dlq(services: Services, args: argparse.Namespace) -> int:
    async def run() -> list[Any]:
        try:
            queue = services.queue()
            return await services.redis_call(queue.dead_letters, account=args.account, limit=args.limit)
        finally:
            await services.close()

    entries = [_dead_letter_dict(entry) for entry in trio.run(run)]
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True, default=str))
    else:
        sys.stdout.write(render_dlq(entries))
    return EXIT_OK


def cmd_redrive(services: Services, args: argparse.Namespace) -> int:
    chosen = sum(bool(x) for x in (args.all, args.job_ids, args.account))
    if chosen != 1:
        raise CtlError("redrive: give exactly one of --all, JOB_ID..., or --account ID", EXIT_USAGE)

    async def run() -> int:
        try:
            queue = services.queue()
            return await services.redis_call(
                queue.redrive, job_ids=args.job_ids or None, account=args.account, all=args.all,
                dry_run=args.dry_run,
            )
        finally:
            await services.close()

    moved = trio.run(run)
    if args.dry_run:
        print(f"would move {moved} job(s) back to the queue (dry run: nothing changed)")
    else:
        print(f"moved {moved} job(s) back to the queue")
    if args.job_ids and moved < len(args.job_ids) and not args.dry_run:
        print(f"inboundctl: {len(args.job_ids) - moved} of the given job id(s) were not in the dead-letter queue",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- trace / messages


def _accounts(cfg: config_mod.Config, only: str | None = None) -> list[tuple[str, str]]:
    """(tenant, account id) of every configured account of every provider, or of account *only*."""
    found = [(account.tenant, account.id) for provider in REGISTRY for account in provider.accounts(cfg)
             if only is None or account.id == only]
    if only is not None and not found:
        known = ", ".join(sorted(account for _, account in _accounts(cfg))) or "none"
        raise CtlError(f"{cfg.source}: no account {only!r} is configured (accounts: {known})", EXIT_USAGE)
    return found


def _rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [row._asdict() for row in rows]


def gather_trace(services: Services, by: str, value: str, account: str | None) -> dict[str, Any]:
    """The trace document of *value* (a job id, identity or Message-ID, as *by* says).

    The store is asked first (which identities are involved), then the
    queue (jobs of the job id or of those identities), then the store again
    for identities only the queue knew. A source that cannot be reached is
    named in ``errors`` and the rest is still shown.
    """
    from .store import lookup
    from .store.ledger import Key

    accounts = _accounts(services.cfg, account)
    errors: dict[str, str] = {}

    def first_keys(conn: Any) -> list[Key]:
        if by == "job_id":
            return lookup.keys_for_job(conn, value)
        if by == "identity":
            return [Key(tenant, account_id, value) for tenant, account_id in accounts]
        return lookup.keys_for_message_id(conn, value, accounts)

    def rows_of(conn: Any, keys: list[Key]) -> tuple[list[Any], list[Any]]:
        ledger = lookup.ledger_rows(conn, keys)
        return ledger, lookup.stored(conn, keys, ids=[row.message_id for row in ledger if row.message_id])

    async def run() -> dict[str, Any]:
        keys: list[Key] = []
        try:
            keys = await services.pg(first_keys)
        except CtlError as exc:
            errors["postgres"] = str(exc)
        wanted = set(keys)
        allowed = {name for _, name in accounts}

        def want(job: Any) -> bool:
            if account is not None and job.account != account:
                return False
            if by == "job_id" and job.id == value:
                return True
            if by == "identity" and job.identity() == value and job.account in allowed:
                return True
            return Key(job.tenant, job.account, job.identity()) in wanted

        places: list[Any] = []
        try:
            queue = services.queue()
            places = await services.redis_call(queue.find_jobs, want, job_id=value if by == "job_id" else None)
        except CtlError as exc:
            errors["redis"] = str(exc)
        finally:
            await services.close()
        keys += [Key(p.job.tenant, p.job.account, p.identity) for p in places if p.job is not None]
        ledger: list[Any] = []
        stored: list[Any] = []
        if "postgres" not in errors:
            try:
                ledger, stored = await services.pg(rows_of, list(dict.fromkeys(keys)))
            except CtlError as exc:
                errors["postgres"] = str(exc)
        doc = trace.build(by, value, _rows(ledger), _rows(stored), [msgspec.to_builtins(p) for p in places],  # type: ignore[arg-type]
                          now=clock.wall())
        doc["errors"] = errors
        return doc

    return trio.run(run)


def cmd_trace(services: Services, args: argparse.Namespace) -> int:
    try:
        by, value = trace.classify_query(args.what)
    except ValueError as exc:
        raise CtlError(f"trace: {exc}", EXIT_USAGE) from None
    doc = gather_trace(services, by, value, args.account)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        sys.stdout.write(trace.render(doc, clock.wall()))
    if doc["errors"]:
        return EXIT_UNAVAILABLE
    return EXIT_OK if doc["found"] else EXIT_FAILED


def _flags(row: Any) -> str:
    flags = [name for name, on in (("auto-reply", row.is_auto_reply), ("bounce", row.is_bounce)) if on]
    if row.attachments:
        flags.append(f"attachments:{row.attachments}")
    if row.defects:
        flags.append(f"defects:{row.defects}")
    return ",".join(flags) or "-"


def render_messages(rows: list[Any], account: str, since: str) -> str:
    """The human table of ``inboundctl messages``, newest first."""
    if not rows:
        return f"no message stored by {account} in the last {since}\n"
    table = [["ID", "RECEIVED", "FROM", "SUBJECT", "FLAGS"]]
    for row in rows:
        sender = f"{row.from_name} <{row.from_address}>" if row.from_name else (row.from_address or "-")
        table.append([str(row.id), _format_time(row.received_at), _one_line(sender, 36), _one_line(row.subject, 50),
                      _flags(row)])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    return "\n".join(lines) + f"\n{len(rows)} message(s) stored by {account} in the last {since}\n"


def cmd_messages(services: Services, args: argparse.Namespace) -> int:
    from .store import lookup

    try:
        seconds = config_mod.parse_duration(args.since)
    except ValueError as exc:
        raise CtlError(f"--since: {exc}", EXIT_USAGE) from None
    [(tenant, account)] = _accounts(services.cfg, args.account)[:1]
    rows = services.pg_run(lookup.recent, tenant, account, seconds, args.limit)
    if args.json:
        print(json.dumps(_rows(rows), indent=2, sort_keys=True, default=str))
    else:
        sys.stdout.write(render_messages(rows, account, args.since))
    return EXIT_OK


# --------------------------------------------------------------------------- deliveries / redeliver


def render_deliveries(rows: list[dict[str, Any]], dead: bool) -> str:
    """The human table of pending (or dead) deliveries, oldest first."""
    if not rows:
        return f"no {'dead' if dead else 'pending'} deliveries\n"
    table = [["DELIVERY ID", "TARGET", "MESSAGE", "ATTEMPTS", "CREATED", "NEXT" if not dead else "LAST",
              "STATUS", "LAST ERROR"]]
    for row in rows:
        when = row["last_attempt_at"] if dead else ("in flight" if row["leased"] else _format_time(row["next_attempt_at"]))
        table.append([
            row["delivery_id"], row["target"], str(row["message_row_id"]), str(row["attempts"]),
            _format_time(row["created_at"]), when if isinstance(when, str) else _format_time(when),
            str(row["last_status"] or "-"), _one_line(row["last_error"]) or "-",
        ])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in table]
    return "\n".join(lines) + f"\n{len(rows)} {'dead' if dead else 'pending'} deliveries shown\n"


def _require_outbox(conn: Any) -> None:
    from .store import outbox

    if not outbox.exists(conn):
        raise CtlError("table inbound_deliveries is missing (run `inboundctl migrate`)")


def cmd_deliveries(services: Services, args: argparse.Namespace) -> int:
    from .store import outbox

    def work(conn: Any) -> list[Any]:
        _require_outbox(conn)
        return outbox.listing(conn, target=args.target, dead=args.dead, limit=args.limit)

    rows = [row._asdict() for row in services.pg_run(work)]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
    else:
        sys.stdout.write(render_deliveries(rows, args.dead))
    return EXIT_OK


def cmd_redeliver(services: Services, args: argparse.Namespace) -> int:
    from .store import outbox

    if bool(args.all) == bool(args.delivery_ids):
        raise CtlError("redeliver: give either --all or DELIVERY_ID...", EXIT_USAGE)

    def work(conn: Any) -> list[str]:
        _require_outbox(conn)
        return outbox.redeliver(conn, delivery_ids=args.delivery_ids or None, target=args.target,
                                dry_run=args.dry_run)

    moved = services.pg_run(work)
    if args.dry_run:
        print(f"would send {len(moved)} dead delivery(ies) again (dry run: nothing changed)")
    else:
        print(f"{len(moved)} dead delivery(ies) pending again, attempts reset; the deliverer sends them now")
    missing = sorted(set(args.delivery_ids) - set(moved))
    if missing and not args.dry_run:
        print(f"inboundctl: not dead (or unknown): {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- migrate


def cmd_migrate(services: Services, args: argparse.Namespace) -> int:
    from .store.migrate import SchemaTooNew, available, current_version, migrate

    def work(conn: Any) -> tuple[list[int], int]:
        return migrate(conn), current_version(conn)

    try:
        applied, version = services.pg_run(work)
    except SchemaTooNew as exc:
        raise CtlError(f"{services.postgres_where}: {exc}") from None
    latest = available()[-1].version if available() else 0
    if applied:
        print(f"applied migration(s) {', '.join(map(str, applied))}: schema is at version {version}")
    else:
        print(f"schema is up to date at version {version} (this build knows up to {latest})")
    return EXIT_OK


def cmd_unsubscribe(services: Services, args: argparse.Namespace) -> int:
    from .provider import AccountBusy

    cfg = services.cfg
    found = next((name for name, accounts in cfg.account_lists() for account in accounts
                  if account.id == args.account), None)
    if found is None:
        raise CtlError(f"{cfg.source}: no account {args.account!r} (unsubscribe uses the account's "
                       "credentials from the configuration)", EXIT_USAGE)
    provider = REGISTRY.get(found)
    if provider.unsubscribe is None:
        raise CtlError(f"account {args.account!r} is a [[{found}]] account: it registers nothing at its provider",
                       EXIT_USAGE)
    unsubscribe = provider.unsubscribe

    class Db:
        run = staticmethod(services.pg)

    async def run() -> list[tuple[str, str]]:
        return await services.redis_call(unsubscribe, cfg, args.account, services.rio(), Db())

    try:
        results = trio.run(run)
    except AccountBusy as exc:
        raise CtlError(str(exc)) from None
    for what, outcome in results:
        print(f"{what}: {outcome}")
    if not results:
        print(f"account {args.account!r}: nothing registered")
    return EXIT_OK if all(outcome in ("deleted", "gone") for _, outcome in results) else EXIT_FAILED


# --------------------------------------------------------------------------- command line

_EPILOG = """\
exit status: 0 success or healthy, 1 failed or degraded, 2 usage or configuration error,
3 daemon not running, 4 control socket, Redis or PostgreSQL unreachable, access denied, or the daemon not answering.

examples:
  inboundctl status
  inboundctl -c /etc/inboundd.toml status --json
  inboundctl drain --wait --timeout 2m && systemctl stop inboundd
  inboundctl resume
  inboundctl dlq --account support
  inboundctl redrive --all --dry-run
  inboundctl trace '<CAFx1=abc@mail.example.com>'
  inboundctl messages --account support --since 1h
  inboundctl deliveries --dead
  inboundctl redeliver --all --target helpdesk
  inboundctl migrate
"""

#: Per command: (help line, description, examples).
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    "status": (
        "show daemon, queue, listeners and ledger health",
        "Show the daemon (state, pid, version, uptime, config), the queue (ready, in flight per consumer,\n"
        "delayed, dead-lettered, oldest ready age, throughput), every listener and the ledger outcomes of\n"
        "the last hour; problems are listed first. Queue and ledger print even when the daemon is down.\n"
        "Exit status: 0 healthy, 1 degraded, 3 daemon not running.",
        ["inboundctl status", "inboundctl status --json | jq .queue.ready"],
    ),
    "drain": (
        "stop intake and finish in-flight jobs (before a stop)",
        "Stop intake on this instance (IMAP listeners log out, webhooks answer 503, consumers stop\n"
        "claiming) and let in-flight jobs finish. With --wait, return once drained, or exit 1 at the\n"
        "timeout (the daemon keeps draining).",
        ["inboundctl drain", "inboundctl drain --wait --timeout 2m && systemctl stop inboundd"],
    ),
    "resume": (
        "return a drained daemon to service",
        "Reopen intake after a drain: listeners reconnect, consumers claim again, webhooks accept.",
        ["inboundctl resume"],
    ),
    "dlq": (
        "list dead-lettered jobs",
        "List dead-lettered jobs with their reason, last error, attempts and time (works with the\n"
        "daemon stopped).",
        ["inboundctl dlq", "inboundctl dlq --account support --limit 20", "inboundctl dlq --json"],
    ),
    "redrive": (
        "move dead-lettered jobs back to the queue",
        "Move dead-lettered jobs back to the queue with their attempts reset, and print how many moved\n"
        "(works with the daemon stopped). Give exactly one of --all, JOB_ID..., or --account.",
        ["inboundctl redrive --all --dry-run", "inboundctl redrive 0f8e2c1b6a7d4e5f9a0b1c2d3e4f5a6b",
         "inboundctl redrive --account support"],
    ),
    "trace": (
        "what happened to this email? (by job id, identity or Message-ID)",
        "Follow one message: its ledger row (status, reason, attempts, last error, times), the stored\n"
        "row, and where its job is in the queue (ready, in flight with holder and lease, delayed until,\n"
        "dead with reason), with a one-line outcome. WHAT is a job id (from a log line), an identity\n"
        "(imap:INBOX:7:42) or a Message-ID (found once stored; duplicates of it are listed too).\n"
        "Exit status: 0 found, 1 nothing found, 4 Redis or PostgreSQL unreachable (the rest is shown).",
        ["inboundctl trace 0f8e2c1b6a7d4e5f9a0b1c2d3e4f5a6b", "inboundctl trace imap:INBOX:7:42 --account support",
         "inboundctl trace '<CAFx1=abc@mail.example.com>'", "inboundctl trace --json imap:INBOX:7:42"],
    ),
    "messages": (
        "list the messages an account stored recently",
        "List what one account stored within a time window, newest first: row id (inbound_messages.id),\n"
        "received time, sender, subject and flags (auto-reply, bounce, attachments, defects). Reads\n"
        "PostgreSQL only, so it works with the daemon stopped.",
        ["inboundctl messages --account support", "inboundctl messages --account support --since 1d --limit 200",
         "inboundctl messages --account support --json"],
    ),
    "deliveries": (
        "list pending or dead deliveries to [[deliver]] targets",
        "List the deliveries not yet made (or, with --dead, those that gave up), oldest first, with their\n"
        "attempts, next or last attempt, last HTTP status and error (works with the daemon stopped).",
        ["inboundctl deliveries", "inboundctl deliveries --target helpdesk --dead", "inboundctl deliveries --json"],
    ),
    "redeliver": (
        "send dead deliveries again",
        "Make dead deliveries pending again with their attempts reset; the deliverer sends them at once\n"
        "under the same delivery id (works with the daemon stopped: it sends them when it runs). Give\n"
        "either --all (every dead delivery, of --target only if given) or DELIVERY_ID....",
        ["inboundctl redeliver --all --dry-run", "inboundctl redeliver --all --target helpdesk",
         "inboundctl redeliver msg_0f8e2c1b6a7d4e5f9a0b1c2d3e4f5a6b"],
    ),
    "migrate": (
        "apply pending database migrations",
        "Apply pending PostgreSQL migrations (the daemon also applies them at start-up). Safe to run\n"
        "while daemons run: migrations are serialised by an advisory lock.",
        ["inboundctl migrate"],
    ),
    "unsubscribe": (
        "delete an account's subscriptions at its provider (Graph subscriptions, Gmail watch)",
        "Delete what the account keeps registered at its provider, with its credentials from the\n"
        "configuration: the Graph subscriptions of a [[microsoft]] account, so Graph stops calling; the\n"
        "Gmail watch of a [[google]] account (users.stop), so Gmail stops publishing. For an\n"
        "account being retired: run it with the daemon stopped (a running daemon that owns the account\n"
        "would renew them, so the command refuses; removing the account from the configuration and\n"
        "reloading deletes them too). Exit status 1 when a subscription could not be deleted.",
        ["inboundctl unsubscribe support-m365"],
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inboundctl",
        description="Operate the inboundd email ingestion daemon: status, drain, resume, dlq, redrive, trace, messages,\n"
                    "deliveries, redeliver, migrate, unsubscribe.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_help = "the daemon's configuration file (default: $INBOUNDD_CONFIG or /etc/inboundd.toml)"
    parser.add_argument("-c", "--config", metavar="FILE", help=config_help)
    # ``-c`` is also accepted after the command (``inboundctl status -c FILE``).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", help=config_help, default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"inboundctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    commands.required = True
    sub: dict[str, argparse.ArgumentParser] = {}
    for name, (help_line, description, examples) in COMMANDS.items():
        sub[name] = commands.add_parser(
            name, help=help_line, description=description, parents=[common],
            epilog="examples:\n" + "\n".join(f"  {line}" for line in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    sub["status"].add_argument("--json", action="store_true", help="print the stable JSON document for scripts")
    sub["drain"].add_argument("--wait", action="store_true", help="return only once drained (or exit 1 at the timeout)")
    sub["drain"].add_argument("--timeout", metavar="D",
                              help=f"give up waiting after D, e.g. 90s or 5m (implies --wait; default {DEFAULT_DRAIN_TIMEOUT})")
    sub["dlq"].add_argument("--account", metavar="ID", help="only jobs of this account")
    sub["dlq"].add_argument("--limit", metavar="N", type=int, default=100, help="show at most N jobs (default 100)")
    sub["dlq"].add_argument("--json", action="store_true", help="print a JSON array for scripts")
    sub["redrive"].add_argument("job_ids", nargs="*", metavar="JOB_ID", help="dead-lettered job ids to move back")
    sub["redrive"].add_argument("--all", action="store_true", help="move every dead-lettered job back")
    sub["redrive"].add_argument("--account", metavar="ID", help="move back every dead-lettered job of this account")
    sub["redrive"].add_argument("--dry-run", action="store_true", help="only count what would move; change nothing")
    sub["trace"].add_argument("what", metavar="WHAT", help="a job id, a message identity or a Message-ID")
    sub["trace"].add_argument("--account", metavar="ID", help="only this account")
    sub["trace"].add_argument("--json", action="store_true", help="print the trace as a JSON document for scripts")
    sub["messages"].add_argument("--account", metavar="ID", required=True, help="the account (its id in the configuration)")
    sub["messages"].add_argument("--since", metavar="D", default="1h", help="how far back, e.g. 30m, 1h, 2d (default 1h)")
    sub["messages"].add_argument("--limit", metavar="N", type=int, default=50, help="show at most N messages (default 50)")
    sub["messages"].add_argument("--json", action="store_true", help="print a JSON array for scripts")
    sub["deliveries"].add_argument("--target", metavar="ID", help="only deliveries to this [[deliver]] target")
    sub["deliveries"].add_argument("--dead", action="store_true", help="dead deliveries instead of pending ones")
    sub["deliveries"].add_argument("--limit", metavar="N", type=int, default=100,
                                   help="show at most N deliveries (default 100)")
    sub["deliveries"].add_argument("--json", action="store_true", help="print a JSON array for scripts")
    sub["redeliver"].add_argument("delivery_ids", nargs="*", metavar="DELIVERY_ID", help="dead deliveries to send again")
    sub["redeliver"].add_argument("--all", action="store_true", help="every dead delivery (of --target, if given)")
    sub["redeliver"].add_argument("--target", metavar="ID", help="only deliveries to this [[deliver]] target")
    sub["redeliver"].add_argument("--dry-run", action="store_true", help="only count what would be sent; change nothing")
    sub["unsubscribe"].add_argument("account", metavar="ACCOUNT", help="the account (its id in the configuration)")
    return parser


_HANDLERS: dict[str, Callable[[Services, argparse.Namespace], int]] = {
    "status": cmd_status,
    "drain": cmd_drain,
    "resume": cmd_resume,
    "dlq": cmd_dlq,
    "redrive": cmd_redrive,
    "trace": cmd_trace,
    "messages": cmd_messages,
    "deliveries": cmd_deliveries,
    "redeliver": cmd_redeliver,
    "migrate": cmd_migrate,
    "unsubscribe": cmd_unsubscribe,
}


def _fail(message: str, code: int) -> NoReturn:
    raise CtlError(message, code)


def load_config(path: str | None) -> config_mod.Config:
    """The configuration; an invalid or missing file is a :class:`CtlError` (exit 2) naming the file."""
    path = path or config_mod.default_config_path()
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        first = exc.problems[0] if exc.problems else "invalid configuration"
        more = f" (and {len(exc.problems) - 1} more problem(s): inboundd --check-config -c {path})" \
            if len(exc.problems) > 1 else ""
        _fail(f"{exc.source}: {first}{more}", EXIT_USAGE)


def _quiet_logs() -> None:
    """Keep the daemon's log events (``redis.down`` …) off inboundctl's terminal: it says what failed itself.

    Without any handler, Python would print each warning's bare event name
    on stderr beside inboundctl's own one-line error.
    """
    root = logging.getLogger()
    if not any(isinstance(handler, logging.NullHandler) for handler in root.handlers):
        root.addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    _quiet_logs()
    args = build_parser().parse_args(argv)
    if getattr(args, "limit", 1) is not None and getattr(args, "limit", 1) < 1:
        print("inboundctl: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = load_config(args.config)
        return _HANDLERS[args.command](Services(cfg), args)
    except CtlError as exc:
        print(f"inboundctl: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("inboundctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
