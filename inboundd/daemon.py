"""The supervisor: one trio process that owns every task of inboundd.

Task tree (every task has an owner nursery and a way to stop)::

    Daemon.run
     └─ root nursery: signal handler
         └─ http nursery: public server, control server (stopped by trigger), listening from the start
             └─ Pipeline.open: the Redis and PostgreSQL pools; waits for PostgreSQL (state "starting")
                 └─ worker nursery: enqueue batcher, reclaim timer, consumers, every provider's tasks
                                    (IMAP listeners …), watchdog, the ready announcement

While it starts, ``/healthz`` answers, ``/readyz`` answers 503 naming what it
waits for (``"failed": ["intake", "postgres"]`` with PostgreSQL's last error)
and the control socket reports ``starting`` with the same detail. An address
it cannot listen on (``http.listen``, ``control.socket``) ends it at once
with one line naming the key and the address, and exit status 3.

Shutdown (SIGTERM/SIGINT) is a deadline, not a kill: intake stops first
(providers stop: listeners log out, webhooks answer 503), consumers finish in-flight jobs
until ``daemon.shutdown_grace``, then the worker nursery is cancelled and the
HTTP servers are stopped through their shutdown trigger. A second signal
cancels everything at once. SIGHUP reloads the configuration.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from functools import partial
from typing import Any

import msgspec
import trio

from . import __version__, clock, config as config_mod, log, systemd
from .control import SocketInUse, create_control_app, prepare_socket_path, secure_socket
from .deliver.targets import resolve as resolve_targets
from .ingress.webhook import Route, WebhookReply, WebhookRequest
from .provider import ReadinessCheck
from .providers import REGISTRY, Registry
from .outage import Unreachable
from .web import ListenError, create_app, readiness, serve_app

__all__ = ["Daemon", "main"]

_log = log.get_logger("daemon")

#: Keys whose change needs a restart: they shape pools, sockets or queue keys.
RESTART_SECTIONS = ("redis", "postgres", "queue", "processing", "store", "http", "control")
#: Extra time given to the HTTP servers beyond their graceful timeout before they are cancelled.
HTTP_STOP_MARGIN = 1.0
#: Exit status after a second signal forced an immediate stop.
EXIT_FORCED = 130
#: Exit status when an address in ``http.listen`` or ``control.socket`` cannot be listened on.
EXIT_CANNOT_LISTEN = 3
#: How often a running daemon that is not ready yet checks again before it logs ``daemon.ready``.
READY_POLL_INTERVAL = 1.0
#: How long the PostgreSQL readiness check waits for an answer before it reports the pool's last error.
POSTGRES_CHECK_TIMEOUT = 1.5


class CannotListen(Exception):
    """The daemon cannot listen on an address of its configuration: *key*, *address*, and why."""

    def __init__(self, key: str, address: str, reason: str) -> None:
        super().__init__(f"{key}: cannot listen on {address}: {reason}")
        self.key = key
        self.address = address
        self.reason = reason
#: ``--is-configured`` exit statuses, chosen for systemd's ExecCondition=: 1-254 skip the
#: start quietly (the unit is not failed), 255 fails the unit.
EXIT_NOT_CONFIGURED = 1
EXIT_CONDITION_INVALID = 255


class Daemon:
    """The running daemon: its configuration, shared pools, components and state.

    ``state`` is one of ``starting``, ``running``, ``draining``, ``drained``,
    ``stopping``.
    """

    def __init__(self, cfg: config_mod.Config, config_path: str, notifier: systemd.Notifier | None = None,
                 *, registry: Registry = REGISTRY) -> None:
        self.cfg = cfg
        self.registry = registry
        self.config_path = config_path
        self.notifier = notifier or systemd.Notifier()
        self.state = "starting"
        self.started_at = clock.wall()
        self.http_binds: list[str] = []
        self.exit_status = 0
        self.components: Any = None  # the pipeline (queue, consumers, provider runtimes), see pipeline.py
        #: While starting: what the daemon waits for (``waiting for postgres (last error: …)``).
        self.detail: str | None = None
        self._rio: Any = None  # the pools, from the moment they exist (before the pipeline)
        self._db: Any = None
        self._stop_requested = trio.Event()
        self._http_shutdown = trio.Event()
        self._root_scope: trio.CancelScope | None = None
        self._control_socket: str | None = None
        self._drain_watch_scope: trio.CancelScope | None = None
        self._worker_nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped by a signal or :meth:`request_stop`.

        The HTTP server and the control socket listen first, so ``/healthz``,
        ``/readyz`` and ``inboundctl status`` answer (``starting: …``) while
        the pools wait for PostgreSQL. A listening address that cannot be taken
        ends the run with one logged line and :data:`EXIT_CANNOT_LISTEN`.
        Reports started once every component is running and READY=1 was sent.
        Returns after every task ended, pools are closed and the control
        socket file is removed.
        """
        from .pipeline import Pipeline

        async with trio.open_nursery() as root:
            self._root_scope = root.cancel_scope
            await root.start(self._handle_signals)
            self.notifier.status("starting")
            try:
                async with trio.open_nursery() as http:
                    try:
                        await self._listen(http)
                    except CannotListen as exc:
                        self.exit_status = EXIT_CANNOT_LISTEN
                        log.event(_log, "daemon.cannot_listen", level=logging.ERROR, key=exc.key,
                                  address=exc.address, error=exc.reason, problem=str(exc))
                        http.cancel_scope.cancel()
                        return
                    try:
                        async with Pipeline.open(self, registry=self.registry) as pipeline:
                            self.components = pipeline
                            await self._work(pipeline, task_status)
                    finally:
                        self._http_shutdown.set()
                        http.cancel_scope.deadline = (trio.current_time() + self.cfg.http.graceful_timeout
                                                      + HTTP_STOP_MARGIN)
            finally:
                self._remove_control_socket()
                root.cancel_scope.cancel()
        log.event(_log, "daemon.stopped", exit_status=self.exit_status)

    async def _listen(self, nursery: trio.Nursery) -> None:
        """Start the public HTTP server and the control server in *nursery*; :class:`CannotListen` if one cannot."""
        cfg = self.cfg
        try:
            self.http_binds = await nursery.start(
                partial(
                    serve_app, create_app(self, self.registry), cfg.http.listen,
                    shutdown_trigger=self._http_shutdown.wait,
                    graceful_timeout=cfg.http.graceful_timeout, name="public",
                )
            )
        except ListenError as exc:
            raise CannotListen("http.listen", exc.address, exc.reason) from None
        log.event(_log, "http.listening", binds=",".join(self.http_binds))
        await self._start_control(nursery)

    async def _work(self, pipeline: Any, task_status: trio.TaskStatus[None]) -> None:
        """Run the pipeline's workers until a stop is requested, then shut them down within the grace."""
        async with trio.open_nursery() as workers:
            self._worker_nursery = workers
            await pipeline.start(workers)
            interval = systemd.watchdog_interval()
            if interval:
                await workers.start(systemd.run_watchdog, self.notifier, interval)
                log.event(_log, "systemd.watchdog", interval=interval)
            self.detail = None
            self._set_state("running")
            self.notifier.ready(self._status_line())
            workers.start_soon(self._announce_ready)
            task_status.started()
            await self._stop_requested.wait()
            await self._shutdown_workers(pipeline, workers)

    async def _announce_ready(self) -> None:
        """Log ``daemon.ready`` once ``/readyz`` would say ready; until then, once, what it is waiting for.

        Started when the daemon runs; a daemon whose Redis is down runs (it
        says so, and takes work once Redis is back) but is not ready, and
        the log never says otherwise.
        """
        waiting = False
        while True:
            ready, checks = await readiness(self)
            if ready:
                log.event(_log, "daemon.ready", pid=os.getpid(), version=__version__, config=self.config_path)
                return
            if not waiting:
                failed = {name: value for name, value in checks.items() if value != "ok"}
                log.event(_log, "daemon.not_ready", level=logging.WARNING, failed=",".join(failed),
                          checks="; ".join(f"{name}: {value}" for name, value in failed.items()),
                          note="running, but /readyz answers 503 until these pass")
                waiting = True
            await trio.sleep(READY_POLL_INTERVAL)

    async def _shutdown_workers(self, pipeline: Any, workers: trio.Nursery) -> None:
        grace = self.cfg.daemon.shutdown_grace
        self._set_state("stopping")
        self.notifier.stopping(f"stopping: finishing in-flight jobs (grace {grace:g}s)")
        log.event(_log, "daemon.stopping", grace=grace)
        pipeline.stop_intake()
        with trio.move_on_after(grace) as scope:
            await pipeline.wait_idle()
        if scope.cancelled_caught:
            log.event(_log, "daemon.grace_expired", level=logging.WARNING, grace=grace,
                      note="in-flight jobs stay leased and are reclaimed later; nothing is lost")
        workers.cancel_scope.cancel()

    async def _start_control(self, nursery: trio.Nursery) -> None:
        control = self.cfg.control
        if not control.socket:
            return
        try:
            prepare_socket_path(control.socket)
            await nursery.start(
                partial(
                    serve_app, create_control_app(self), [f"unix:{control.socket}"],
                    shutdown_trigger=self._http_shutdown.wait,
                    graceful_timeout=self.cfg.http.graceful_timeout, name="control",
                )
            )
        except SocketInUse as exc:
            raise CannotListen("control.socket", control.socket, str(exc)) from None
        except ListenError as exc:
            raise CannotListen("control.socket", control.socket, exc.reason) from None
        except OSError as exc:  # its directory cannot be made
            raise CannotListen("control.socket", control.socket, exc.strerror or str(exc)) from None
        self._control_socket = control.socket
        secure_socket(control.socket, control.mode, control.group)
        log.event(_log, "control.listening", socket=control.socket, mode=control.mode)

    def _remove_control_socket(self) -> None:
        if self._control_socket:
            try:
                os.unlink(self._control_socket)
            except FileNotFoundError:
                pass
            self._control_socket = None

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does).

        Before the daemon is running (still waiting for PostgreSQL, say) nothing
        has been accepted yet, so start-up is simply abandoned.
        """
        self._stop_requested.set()
        if self.state == "starting" and self._root_scope is not None:
            log.event(_log, "daemon.start_abandoned", note="stop requested before the daemon was ready")
            self._root_scope.cancel()

    def force_stop(self) -> None:
        """Cancel everything at once (what a second signal does)."""
        self.exit_status = EXIT_FORCED
        if self._root_scope is not None:
            self._root_scope.cancel()

    # ------------------------------------------------------------------ signals

    async def _handle_signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if self.state not in ("running", "draining", "drained"):
                        log.event(_log, "signal.received", signal=name, action=f"ignored while {self.state}")
                        continue
                    log.event(_log, "signal.received", signal=name, action="reload")
                    await self.reload()
                elif self._stop_requested.is_set():
                    log.event(_log, "signal.received", signal=name, action="exit now", level=logging.WARNING)
                    self.force_stop()
                else:
                    log.event(_log, "signal.received", signal=name, action="graceful stop")
                    self.request_stop()

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Reload the configuration file; apply what can change live.

        Returns False (and keeps running unchanged) when the new file is
        invalid, after logging every problem.
        """
        self.notifier.reloading()
        try:
            try:
                new = config_mod.load(self.config_path)
                # Python handlers are imported (their modules reloaded) now: an import error rejects the reload.
                targets = resolve_targets(new, reload_modules=True)
            except config_mod.ConfigError as exc:
                for problem in exc.problems:
                    log.event(_log, "config.reload_rejected", level=logging.ERROR, file=exc.source, problem=problem)
                log.event(_log, "config.reload_failed", level=logging.ERROR, problems=len(exc.problems),
                          note="keeping the running configuration")
                return False
            log_warnings(new)
            for key in restart_required(self.cfg, new):
                log.event(_log, "config.restart_required", level=logging.WARNING, key=key,
                          note="this change takes effect after a restart")
            log.configure(new.daemon.log_level, new.daemon.log_format)
            if self.components is not None:
                try:
                    await self.components.apply_config(new, targets=targets)
                except Exception as exc:  # a reload never takes the daemon down
                    log.event(_log, "config.apply_failed", level=logging.ERROR, error=f"{type(exc).__name__}: {exc}",
                              note="the previous configuration stays in effect where it was not applied")
                    return False
            # Keep what needs a restart as it runs, so status reports the truth.
            for section in RESTART_SECTIONS:
                setattr(new, section, getattr(self.cfg, section))
            new.daemon.instance_id = self.cfg.daemon.instance_id
            self.cfg = new
            log.event(_log, "config.reloaded", file=self.config_path, consumers=new.daemon.consumers,
                      **{f"{provider.name}_accounts": len(provider.accounts(new)) for provider in self.registry},
                      log_level=new.daemon.log_level)
            return True
        finally:
            self.notifier.ready(self._status_line())

    # ------------------------------------------------------------------ drain / resume

    def drain(self) -> None:
        """Stop intake and claiming; in-flight jobs finish; state becomes ``drained``."""
        if self.state not in ("running",) or self.components is None or self._worker_nursery is None:
            return
        self._set_state("draining")
        self.components.stop_intake()
        self._worker_nursery.start_soon(self._watch_drain)

    async def _watch_drain(self) -> None:
        with trio.CancelScope() as scope:
            self._drain_watch_scope = scope
            await self.components.wait_idle()
            if self.state == "draining":
                self._set_state("drained")

    def resume(self) -> None:
        """Return to service after :meth:`drain`."""
        if self.state not in ("draining", "drained") or self.components is None:
            return
        if self._drain_watch_scope is not None:
            self._drain_watch_scope.cancel()
        self.components.resume_intake()
        self._set_state("running")

    # ------------------------------------------------------------------ reporting

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.event(_log, "daemon.state", state=state, previous=self.state)
            self.state = state
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        parts = [self.state]
        if self.components is not None:
            parts.append(self.components.summary())
        return "; ".join(parts)

    @property
    def intake_open(self) -> bool:
        return self.state == "running"

    def attach_pools(self, rio: Any, db: Any) -> None:
        """The Redis and PostgreSQL pools, as soon as they exist: readiness checks them while starting."""
        self._rio, self._db = rio, db

    def starting(self, detail: str) -> None:
        """Say what the starting daemon waits for (status, ``/readyz``, systemd's STATUS line)."""
        self.detail = detail
        self.notifier.status(f"starting: {detail}")

    def _pools(self) -> tuple[Any, Any]:
        if self._rio is None or self._db is None:
            raise Unreachable("not connected yet")
        return self._rio, self._db

    async def check_redis(self) -> None:
        rio, _ = self._pools()
        await rio.ping()

    async def check_postgres(self) -> None:
        """Raise unless PostgreSQL answers; while the pool cannot connect, with the pool's last error."""
        _, db = self._pools()
        with trio.move_on_after(POSTGRES_CHECK_TIMEOUT):
            try:
                # Not waiting for a server-side cancel: through a connection that stopped answering that
                # wait (2 s) came on top of POSTGRES_CHECK_TIMEOUT, and /readyz overran its budget. A
                # SELECT 1 left behind ends when the server answers, and is rolled back.
                await db.ping(cancel_wait=0)
                return
            except Exception:
                if not db.outage.down:
                    raise
        if db.outage.down:
            raise Unreachable(db.outage.last_error or "cannot connect")
        raise Unreachable(f"no answer within {POSTGRES_CHECK_TIMEOUT:g}s")

    async def refresh_queue_gauges(self) -> None:
        await self.components.refresh_gauges()

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        return self.components.readiness_checks() if self.components is not None else {}

    async def handle_webhook(self, provider: str, route: Route, request: WebhookRequest) -> WebhookReply:
        return await self.components.handle_webhook(provider, route, request)

    async def status(self) -> dict[str, Any]:
        """The daemon's view for ``inboundctl status`` (queue and every provider's part included)."""
        daemon = {
            "state": self.state,
            **({"detail": self.detail} if self.detail else {}),
            "pid": os.getpid(),
            "version": __version__,
            "uptime": round(clock.wall() - self.started_at, 3),
            "config": self.config_path,
            "instance_id": self.cfg.daemon.instance_id,
            "http": self.http_binds,
        }
        body: dict[str, Any] = {"daemon": daemon}
        if self.components is not None:
            body.update(await self.components.status())
        return body


def log_warnings(cfg: config_mod.CoreConfig) -> None:
    """Log each deprecation the configuration file has (a renamed key used by its old name)."""
    for warning in cfg.warnings:
        log.event(_log, "config.deprecated", level=logging.WARNING, file=cfg.source, problem=warning)


def restart_required(old: config_mod.Config, new: config_mod.Config) -> list[str]:
    """Key paths whose change only takes effect after a restart."""
    changed: list[str] = []
    for section in RESTART_SECTIONS:
        before = msgspec.to_builtins(getattr(old, section))
        after = msgspec.to_builtins(getattr(new, section))
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changed.append(f"{section}.{key}")
    return changed


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inboundd",
        description=("Ingest inbound email into PostgreSQL, exactly once.\n"
                     "Providers: IMAP (IDLE), Microsoft 365 (Graph change notifications), Gmail (Pub/Sub push)."),
        usage="%(prog)s [-c FILE] [--check-config | --is-configured] [--print-trial-config] [--version]\n"
              "       %(prog)s trial [--state DIR] [--free-ports]",
        epilog=(
            "trial: 'inboundd trial' runs the daemon on the embedded trial configuration with a private\n"
            "  Redis, PostgreSQL and Dovecot under ./state (what scripts/run does; see inboundd trial --help).\n"
            "signals: SIGTERM/SIGINT drain and exit (a second one exits at once); SIGHUP reloads the configuration.\n"
            "exit status: 0 clean stop, 1 runtime failure, 2 invalid configuration, 3 cannot listen on an\n"
            "  address (http.listen, control.socket), 130 forced stop;\n"
            "  --is-configured: 0 configured, 1 no account, 255 invalid (for systemd's ExecCondition=).\n"
            "examples:\n"
            "  inboundd -c /etc/inboundd.toml\n"
            "  inboundd --check-config -c /etc/inboundd.toml\n"
            "  inboundd --is-configured -c /etc/inboundd.toml\n"
            "  inboundd --print-trial-config > trial.toml\n"
            "  inboundd trial"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="configuration file (default: $INBOUNDD_CONFIG or /etc/inboundd.toml)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit: 0 if valid, 2 with one line per problem")
    parser.add_argument("--is-configured", action="store_true",
                        help="exit 0 if the configuration names at least one account, 1 if it names none "
                             "(nothing to do: the unit's ExecCondition= then skips the start), 255 if invalid")
    parser.add_argument("--print-trial-config", action="store_true",
                        help="print the embedded trial configuration (used by inboundd trial) and exit")
    parser.add_argument("--version", action="version", version=f"inboundd {__version__}")
    return parser


def is_configured(cfg: config_mod.Config, path: str) -> int:
    """Say whether *cfg* gives the daemon anything to do; the exit status for ``--is-configured``.

    A daemon without accounts has no mailbox to watch and cannot fetch any
    job's message either, so the shipped example (no account) is "not
    configured": the unit's ExecCondition= keeps an installed but unedited
    service from starting, instead of letting it fail against servers that
    are not set up yet.
    """
    accounts = {name: len(tables) for name, tables in cfg.account_lists() if tables}
    if accounts:
        print(f"{path}: configured ({', '.join(f'{n} {kind}' for kind, n in accounts.items())} account(s))")
        return 0
    print(f"{path}: not configured: no account (add an [[imap]] table); the service stays stopped")
    return EXIT_NOT_CONFIGURED


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["trial"]:
        from inboundd.trial import runner

        return runner.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.print_trial_config:
        from inboundd.trial import config_text

        sys.stdout.write(config_text())
        return 0
    path = args.config or config_mod.default_config_path()
    try:
        cfg = config_mod.load(path)
        resolve_targets(cfg)  # secrets checked, Python handlers imported: a failure is a configuration error
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return EXIT_CONDITION_INVALID if args.is_configured else 2
    if args.is_configured:
        return is_configured(cfg, path)
    if args.check_config:
        for warning in cfg.warnings:
            print(f"{path}: warning: {warning}", file=sys.stderr)
        accounts = "".join(f"{len(provider.accounts(cfg))} {provider.name} account(s), " for provider in REGISTRY)
        print(f"{path}: configuration is valid ({accounts}{len(cfg.deliver)} deliver target(s), "
              f"{cfg.daemon.consumers} consumers)")
        return 0
    log.configure(cfg.daemon.log_level, cfg.daemon.log_format)
    log_warnings(cfg)
    daemon = Daemon(cfg, path)
    # Everything imported and loaded so far lives as long as the process: take it out of the
    # collector's reach, so a full collection under webhook load scans what requests allocate,
    # not the ~100k objects of the modules (each full collection otherwise took ~50 ms).
    gc.collect()
    gc.freeze()
    try:
        trio.run(daemon.run)
    except Exception:
        log.event(_log, "daemon.crashed", level=logging.ERROR, exc_info=True)
        return 1
    return daemon.exit_status


if __name__ == "__main__":
    sys.exit(main())
