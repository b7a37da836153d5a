"""The composition root: builds ports, users, sessions, audit, TLS and the web app from a Config,
starts the listeners, and runs until told to stop. The only place real or fake hardware is chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from bridge.access.consoles import OpenConsoles
from bridge.access.gate import Gate
from bridge.access.oidc import OidcClient
from bridge.access.sessions import SessionStore
from bridge.access.store import UserStore
from bridge.access.throttle import SERVER_LIMITS, LoginThrottle
from bridge.config import Config, ConfigError, PortConfig, load_config
from bridge.console.alerts import AlertWatch
from bridge.console.port import Port
from bridge.history.audit import AuditLog
from bridge.history.ringlog import RingLog
from bridge.history.shipping import sinks_for
from bridge.history.statedir import check_writable, private_dir
from bridge.history.webhook import Webhook
from bridge.hw.factory import make_lines, make_transport
from bridge.hw.interfaces import ConsoleTransport
from bridge.hw.lines import LineSetupError
from bridge.rfc2217.server import EndpointError, Rfc2217Server
from bridge.service import eventloop, sdnotify
from bridge.service.clockwatch import watch_clock
from bridge.service.listener import BoundedTLSSite, limit_tls_read_buffers
from bridge.service.startup import StartupError, bind_error, check_tls_files, describe, step
from bridge.service.tls import ensure_certificate, fingerprint, server_context
from bridge.web.app import create_app, log_safe
from bridge.web.state import AppState

if TYPE_CHECKING:  # imported when configured: asyncssh and zeroconf cost ~9 MiB of memory
    from bridge.service.advertise import Advertiser
    from bridge.ssh.server import SshListener

log = logging.getLogger(__name__)
TransportFactory = Callable[[PortConfig], ConsoleTransport]


class AccessLog(AbstractAccessLogger):
    """Method, path (never the query string, escaped: `log_safe`), status, size, time and peer;
    no headers."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.3fs',
            request.remote,
            log_safe(request.method),
            log_safe(request.path),
            response.status,
            response.body_length,
            time,
        )


def prepare_state_dir(state_dir: Path) -> None:
    """state_dir and its logs/ made private (0700, ours) and writable, or refused
    (bridge.history.statedir)."""
    private_dir(state_dir, top=True)
    check_writable(state_dir)
    private_dir(state_dir / "logs")


class Daemon:
    """One running bridge: its ports and listeners."""

    def __init__(
        self, config: Config, transport_factory: TransportFactory = make_transport
    ) -> None:
        self.config = config
        self.transport_factory = transport_factory
        self.state: AppState | None = None
        self.runner: web.AppRunner | None = None
        self.addresses: list[tuple[str, int]] = []
        self.ssl_context: ssl.SSLContext | None = None
        self.fingerprint = ""
        self.ssh: SshListener | None = None
        self.advertiser: Advertiser | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._clock_watch: asyncio.Task[None] | None = None
        self.rfc2217: Rfc2217Server | None = None

    async def _make_port(self, cfg: PortConfig, audit: AuditLog, config: Config) -> Port:
        """A port built from `config`'s [log] and [gpio] (the new ones during a reload)."""
        try:  # the port makes a transport at every (re)open; a malformed URL fails here, once
            self.transport_factory(cfg)
        except ValueError as exc:
            raise StartupError(f"ports.{cfg.name}.device", str(exc)) from exc
        ringlog = None
        if config.log.enabled:
            path = config.server.state_dir / "logs" / f"{cfg.name}.ring"
            # recovery scans the whole ring: in a thread, so a reload does not stall the loop
            with step(f"ports.{cfg.name}", f"console log {path}"):
                ringlog = await asyncio.to_thread(
                    RingLog.open, path, config.log.size, config.log.flush_interval
                )
            if ringlog.crash_gap is not None:  # kill -9 or a power cut: say so, once
                lost, resumed = ringlog.crash_gap
                log.warning(
                    "port %s: the console log was not closed cleanly (crash or power cut): "
                    "output received after offset %d may be lost; offsets continue at %d",
                    *(cfg.name, lost, resumed),
                )
                ringlog.add_marker({"event": "unclean-stop", "from": lost, "to": resumed})
                audit.record("unclean-stop", port=cfg.name, **{"from": lost, "to": resumed})

        def on_event(kind: str, fields: dict[str, Any]) -> None:
            audit.record(kind, **fields)

        try:
            lines = make_lines(cfg, config.gpio)
        except LineSetupError as exc:
            if ringlog is not None:
                with contextlib.suppress(OSError):
                    ringlog.close()
            raise StartupError(exc.key, exc.cause) from exc
        watch = AlertWatch(config.alerts.rules_for(cfg.name))
        return Port(cfg, self.transport_factory, lines, config.log, ringlog, on_event, watch)

    async def start(self) -> None:
        limit_tls_read_buffers()
        server = self.config.server
        with step("server.state_dir", server.state_dir):
            prepare_state_dir(server.state_dir)
        check_tls_files(server)
        if server.tls_cert and server.tls_key:
            cert, key = server.tls_cert, server.tls_key
        else:
            names = [h for h, _ in server.listen] + list(server.hostnames)
            with step("server.state_dir", server.state_dir / "tls"):
                cert, key, created = ensure_certificate(server.state_dir, names)
            if created:
                log.info("generated a self-signed certificate in %s", cert.parent)
        self.fingerprint = fingerprint(cert)
        log.info("certificate fingerprint %s", self.fingerprint)
        with step("server.tls_key" if server.tls_key else "server.state_dir", key):
            self.ssl_context = server_context(cert, key, server.client_ca)
        with step("server.state_dir", server.state_dir / "audit"):
            audit = AuditLog(server.state_dir / "audit")
        with step("audit.syslog_ca", self.config.audit.syslog_ca):  # a missing or bad CA file
            audit.sinks = tuple(sinks_for(self.config.audit))
        if (hook := self.config.alerts.webhook) is not None:  # posts alerts as they are audited
            with step("alerts.webhook", hook.headers_file or hook.ca_file or "the receiver"):
                audit.sinks += (Webhook.from_config(hook),)  # a bad headers_file: OSError
        for sink in audit.sinks:
            sink.start()
        ports: dict[str, Port] = {}
        try:
            for name, cfg in self.config.ports.items():
                ports[name] = await self._make_port(cfg, audit, self.config)
        except Exception:
            for port in ports.values():
                await port.close()
            raise
        users = UserStore(server.state_dir)
        sessions = SessionStore(server.session_idle, server.session_lifetime)
        gate = Gate(users, sessions, lambda: self.config, audit, LoginThrottle())
        if self.config.oidc is not None:  # the provider is asked when first needed, not now
            gate.oidc = OidcClient(self.config.oidc)
        consoles = OpenConsoles(gate)  # console clients of every door, closed when credentials end
        self.state = AppState(
            config=self.config,
            ports=ports,
            users=users,
            sessions=sessions,
            gate=gate,
            consoles=consoles,
            audit=audit,
            fingerprint=self.fingerprint,
            audit_sinks=audit.sinks,
        )
        for port in ports.values():
            port.start()
        self._watcher = asyncio.get_running_loop().create_task(consoles.watch())
        self._clock_watch = asyncio.get_running_loop().create_task(
            watch_clock(lambda: self.state.ports if self.state else {}, audit)
        )
        app = create_app(self.state)
        self.runner = web.AppRunner(
            app,
            access_log_class=AccessLog,
            handle_signals=False,
            shutdown_timeout=2.0,
            **SERVER_LIMITS,
        )
        await self.runner.setup()
        for host, port_number in server.listen:
            site = BoundedTLSSite(self.runner, host, port_number, self.ssl_context)
            try:
                await site.start()
            except OSError as exc:
                raise bind_error(_hostport((host, port_number)), exc) from exc
            self.addresses += [sock.getsockname()[:2] for sock in site.sockets]
        log.info("event loop: %s", eventloop.running())  # started: the listeners are bound
        log.info("listening on %s", ", ".join(f"https://{_hostport(a)}" for a in self.addresses))
        self.rfc2217 = Rfc2217Server(ports, audit)
        try:
            await self.rfc2217.start(self.config)
        except EndpointError as exc:
            raise bind_error(exc.address, exc.cause, exc.key) from exc
        if self.config.ssh is not None:
            from bridge.ssh.context import Door
            from bridge.ssh.server import SshListener

            door = Door(lambda: self.config, gate, ports, audit, consoles, self._rfc2217_endpoints)
            self.ssh = SshListener(door, server.state_dir)
            with step("server.state_dir", server.state_dir / "ssh"):
                self.ssh.prepare()
            for host, port_number in self.config.ssh.listen:
                try:
                    await self.ssh.listen(host, port_number)
                except OSError as exc:
                    raise bind_error(_hostport((host, port_number)), exc, "ssh.listen") from exc
        if server.advertise:
            from bridge.service.advertise import Advertiser

            ssh = self.ssh.addresses if self.ssh is not None else []
            self.advertiser = Advertiser(self.addresses, self.fingerprint, ssh)
            with step("server.advertise", "mDNS"):
                await self.advertiser.start()

    async def reload(self, new: Config) -> list[str]:
        """Apply a new, already validated config. Unchanged ports keep their clients and open
        device; changed ports are reopened in place (clients stay); removed ports close their
        clients with a reason; added ports start. Returns one line per change."""
        state = self.state
        assert state is not None
        old, changes = self.config, []
        for key in ("listen", "state_dir", "tls_cert", "tls_key", "client_ca", "advertise"):
            if getattr(old.server, key) != getattr(new.server, key):
                changes.append(f"server.{key} changed: takes effect after a restart")
        if (old.ssh is None) != (new.ssh is None):
            changes.append("[ssh] added or removed: takes effect after a restart")
        elif old.ssh and new.ssh:  # the rest of [ssh] applies to the next connection
            for key in ("listen", "login_grace"):
                if getattr(old.ssh, key) != getattr(new.ssh, key):
                    changes.append(f"ssh.{key} changed: takes effect after a restart")
        if old.oidc != new.oidc:  # signed-in sessions keep what they were granted
            if state.gate.oidc is not None:
                await state.gate.oidc.close()
            state.gate.oidc = OidcClient(new.oidc) if new.oidc is not None else None
            changes.append("[oidc] changed: applies to sign-ins and tokens from now on")
        if old.audit != new.audit:
            changes.append("[audit] changed: takes effect after a restart")
        if old.alerts != new.alerts:  # the rules at once; a new webhook after a restart
            changes.append("[alerts] changed: rules in force now, [alerts.webhook] after a restart")
            for name, port in state.ports.items():
                port.watch.set_rules(new.alerts.rules_for(name))
        if old.log != new.log:
            changes.append("[log] changed: applies to ports added from now on and after a restart")
        audit = cast(AuditLog, state.audit)
        for name in old.ports.keys() - new.ports.keys():
            port = state.ports.pop(name)
            reason = "port removed from the configuration"
            await port.close(reason)  # tells its clients why, in a status message
            await state.consoles.end(state.consoles.of(port=name), reason, going_away=True)
            changes.append(f"port {name}: removed")
        for name, cfg in new.ports.items():
            if name not in old.ports:
                state.ports[name] = await self._make_port(cfg, audit, new)
                state.ports[name].start()
                changes.append(f"port {name}: added")
            elif cfg != old.ports[name] or (cfg.lines.configured and old.gpio != new.gpio):
                port = state.ports[name]
                await port.reconfigure(cfg, make_lines(cfg, new.gpio))
                if cfg.enabled == old.ports[name].enabled:
                    what = "reopened with" if cfg.enabled else "disabled, keeps"
                    changes.append(f"port {name}: {what} its new settings")
                    continue
                event = "port-enabled" if cfg.enabled else "port-disabled"
                audit.record(event, port=name, by="config-reload")
                changes.append(f"port {name}: {event.removeprefix('port-')}")
                if not cfg.enabled:  # its clients were told why (a status message); now close
                    reason = f"port {name} is disabled by the administrator"
                    await state.consoles.end(state.consoles.of(port=name), reason, True)
        if self.rfc2217 is not None:
            changes += await self.rfc2217.reload(new)
        self.config = state.config = new
        audit.record("config-reload", changes=changes)
        return changes

    def _rfc2217_endpoints(self) -> dict[str, tuple[str, int]]:
        """Where each port's RFC 2217 endpoint listens now (for the SSH door's `-L`)."""
        if self.rfc2217 is None:
            return {}
        return {name: e.address for name, e in self.rfc2217.endpoints.items()}

    def urls(self) -> list[str]:
        return [f"https://{_hostport(a)}" for a in self.addresses]

    async def stop(self, reason: str = "the bridge is shutting down") -> None:
        if self.advertiser is not None:  # first: nobody should find a bridge that is going
            await self.advertiser.stop()
            self.advertiser = None
        for task in (self._watcher, self._clock_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._clock_watch = None
        if self.rfc2217 is not None:
            await self.rfc2217.stop()
        if self.state is not None:
            await self.state.consoles.close(reason)  # websockets and SSH consoles, told why
        if self.ssh is not None:
            await self.ssh.stop(reason)
            self.ssh = None
        if self.state is not None:
            for port in self.state.ports.values():
                await port.close(reason)
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.state is not None and self.state.gate.oidc is not None:
            await self.state.gate.oidc.close()
        if self.state is not None:
            for sink in cast(AuditLog, self.state.audit).sinks:
                await sink.stop()  # last: the shutdown's own events go out too


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def reload_from_disk(daemon: Daemon) -> bool:
    """SIGHUP: validate the whole new config first; reject it as a whole if anything is wrong."""
    path = daemon.config.path
    if path is None:
        log.warning("SIGHUP: no config file to re-read")
        return False
    sdnotify.reloading()
    try:
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, load_config, path)
        except ConfigError as exc:
            log.error(
                "reload rejected, the running config stays in force:\n  %s",
                "\n  ".join(exc.problems),
            )
            return False
        try:
            changes = await daemon.reload(new)
        except Exception as exc:
            log.error("reload failed part-way (%s); restart the service to be sure", exc)
            return False
        log.info("reloaded %s: %s", path, "; ".join(changes) or "no changes")
        return True
    finally:
        sdnotify.ready()


async def serve(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT (graceful; a second signal exits at once). A failure
    to start is a StartupError, raised after what had started is stopped again."""
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # at once, as asked: no further cleanup (the kernel releases the GPIO lines, which
            # the circuits in hw/ hold inactive; at most one flush_interval of log is lost)
            log.warning("second signal: exiting at once")
            logging.shutdown()
            os._exit(1)
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):  # before start: a TERM then still shuts down
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await daemon.start()
    except BaseException as exc:
        await daemon.stop("the bridge could not start")  # lines inactive, listeners closed
        if isinstance(exc, Exception) and not isinstance(exc, StartupError):
            raise StartupError("", describe(exc)) from exc
        raise
    reloading: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload_from_disk(daemon))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    sdnotify.ready()
    watchdog = loop.create_task(sdnotify.run_watchdog())
    try:
        await stop.wait()
    finally:
        sdnotify.stopping()
        watchdog.cancel()
        try:
            await asyncio.wait_for(daemon.stop(), timeout=5.0)
        except TimeoutError:
            log.error("shutdown took more than 5 s; exiting anyway")
    return 0
