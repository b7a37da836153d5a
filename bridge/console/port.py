"""The port hub: the only reader of a target's console, and the single place its actions go through.

One `Port` per configured target. It opens the transport (retrying while the device is missing),
numbers every output byte with a monotonically increasing offset (a stream's small reads gathered
by bridge.console.coalesce), keeps its history (the ring log, or without one the in-memory
scrollback: bridge.console.replay), and fans chunks out to
subscribers (bridge.console.fanout). It composes the writer lease (bridge.console.lease) and the
actions (bridge.console.actions) and is the one object front doors call: attach/detach, write,
take over, release, BREAK, SysRq, NMI/reset/power, cancel, status and history. It never touches
hardware itself (bridge.hw does)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from bridge.config import LogConfig, PortConfig
from bridge.console.actions import Actions
from bridge.console.alerts import AlertWatch
from bridge.console.coalesce import Coalescer
from bridge.console.errors import PortDisabled, PortError, PortOffline
from bridge.console.events import EventSink, PortEvents
from bridge.console.fanout import Budget, Chunk, Subscriber
from bridge.console.lease import Attachment, Lease, Viewer
from bridge.console.linesettings import LineControl
from bridge.console.replay import History
from bridge.console.rescue import Rescue
from bridge.console.scrollback import Scrollback
from bridge.history.ringlog import RingLog
from bridge.hw.interfaces import ConsoleTransport, ControlLines

# what front doors take from here (the other refusals: bridge.console.errors, .actions)
__all__ = ["Attachment", "EventSink", "Port", "PortError", "Viewer"]

log = logging.getLogger(__name__)
REOPEN_INTERVAL = 1.0
DISABLED = "disabled by the administrator"


class Port:
    """The hub of one target machine."""

    def __init__(
        self,
        cfg: PortConfig,
        transport_factory: Callable[[PortConfig], ConsoleTransport],
        lines: ControlLines,
        log_cfg: LogConfig | None = None,
        ringlog: RingLog | None = None,
        on_event: EventSink | None = None,
        watch: AlertWatch | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._make_transport = transport_factory
        self.lines = lines
        self.ringlog = ringlog
        self._flush_interval = log_cfg.flush_interval if log_cfg else 5.0
        self._flush_handle: asyncio.TimerHandle | None = None
        self.watch = watch or AlertWatch()  # console alerts (bridge.console.alerts)
        self.events = PortEvents(self, on_event)
        self.rescue = Rescue(self)  # recovery playbooks (bridge.console.rescue)
        start = ringlog.next_offset if ringlog is not None else 0
        # history in one place: the ring log (its newest `scrollback` bytes stay in memory), or
        # without one, the in-memory scrollback
        self.scrollback = Scrollback(cfg.scrollback, start) if ringlog is None else None
        if ringlog is not None:
            ringlog.keep(cfg.scrollback)
        self.offset = start
        self.online = False
        self.error: str | None = None
        self.transport: ConsoleTransport | None = None
        self.attachments: dict[int, Attachment] = {}
        self.budget = Budget(cfg.client_buffer)  # what each may queue (bridge.console.fanout)
        self._ids = itertools.count(1)
        self._lost = asyncio.Event()
        self.actions = Actions(self, lambda kind, fields: self._event(kind, fields, audit=False))
        self.lease = Lease(self._write_on_release)
        self.lease.on_release = cfg.on_release
        # the actions, as front doors call them (documented in bridge.console.actions)
        self.send_break = self.actions.send_break
        self.sysrq = self.actions.sysrq  # (keys, interval, user, valid=None)
        self.cancel_action = self.actions.cancel  # (user, any_user)
        self.line_action = self.actions.line_action  # nmi | reset | power:on|off|...|status
        self._task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        # counters the metrics read (bridge.web.metrics; actions count their own)
        self.bytes_in = 0
        self.bytes_out = 0
        self.opens = 0  # times the device was opened
        self._gaps_of_gone = 0  # gaps sent to clients no longer attached
        self._waiters: list[asyncio.Future[None]] = []
        self._coalescer = Coalescer(self._publish)
        self.line = LineControl(self, self.actions.exclusive, self._announce_line)

    # ---- device lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Open the device and keep it open (retrying); a disabled port stays closed."""
        if not self.cfg.enabled:
            self.error = DISABLED
            log.info("port %s: disabled in the configuration; the device stays closed", self.name)
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"port-{self.name}")
        if self.cfg.writer_idle_timeout > 0:
            self._idle_task = asyncio.get_running_loop().create_task(
                self.lease.expire_idle(self.cfg.writer_idle_timeout, self._writer_expired)
            )

    async def _run(self) -> None:
        announced_missing = False
        while True:
            transport = self._make_transport(self.cfg)
            self._lost.clear()
            try:
                await transport.open(self)
            except Exception as exc:  # missing, busy, refused, or a transport bug: retry anyway
                self.error = str(exc) or type(exc).__name__
                if not announced_missing:
                    unexpected = not isinstance(exc, OSError)  # DeviceUnavailable is an OSError
                    log.warning(
                        "port %s: device unavailable: %s (retrying every %.0f s)",
                        self.name,
                        self.error,
                        REOPEN_INTERVAL,
                        exc_info=unexpected,
                    )
                    announced_missing = True
                with contextlib.suppress(Exception):
                    await transport.close()
                await asyncio.sleep(REOPEN_INTERVAL)
                continue
            announced_missing = False
            await self.line.reopened(transport)
            self.transport, self.online, self.error = transport, True, None
            self.opens += 1
            log.info("port %s: online (%s)", self.name, transport.description)
            self._event("online", {})
            self._broadcast_status("online")
            try:
                await self._lost.wait()
            finally:
                self.transport, self.online = None, False
                with contextlib.suppress(Exception):
                    await transport.close()
            log.warning("port %s: device gone: %s", self.name, self.error or "closed")
            self._event("offline", {"reason": self.error or "device closed"})
            self._broadcast_status("offline")
            await asyncio.sleep(REOPEN_INTERVAL)

    def connection_lost(self, exc: Exception | None) -> None:
        self._coalescer.flush()
        self.error = str(exc) if exc else "device closed"
        self._lost.set()

    async def _stop_tasks(self) -> None:
        self._coalescer.flush()
        tasks, self._task, self._idle_task = (self._task, self._idle_task), None, None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def reconfigure(self, cfg: PortConfig, lines: ControlLines) -> None:
        """Apply a changed config: reopen the device and lines; clients and offsets stay."""
        await self._stop_tasks()
        self.online = False
        await self.lines.close()
        self.cfg, self.lines = cfg, lines
        self.lease.on_release = cfg.on_release
        self.line.reconfigured(cfg)
        if self.ringlog is not None:
            self.ringlog.keep(cfg.scrollback)
        elif self.scrollback is not None and cfg.scrollback != self.scrollback.capacity:
            kept = self.scrollback.read(self.offset - cfg.scrollback, cfg.scrollback)
            self.scrollback = Scrollback(cfg.scrollback, kept[0])
            self.scrollback.append(kept[1])
        self.budget.per_client = cfg.client_buffer
        if cfg.enabled:
            self._broadcast_status("reconfigured")
        else:
            await self._drop_clients(f"port {self.name} is {DISABLED}")
        self.start()

    def check_enabled(self) -> None:
        """Refuse (PortDisabled) on a port the administrator disabled: attach and actions ask."""
        if not self.cfg.enabled:
            raise PortDisabled(f"port {self.name} is {DISABLED}")

    async def close(self, reason: str = "port closed") -> None:
        await self.rescue.stop(reason)  # a running playbook ends first (cancelled, with why)
        await self._stop_tasks()
        await self._drop_clients(reason)
        await self.lines.close()
        self._flush_log()
        if self.ringlog is not None:
            await asyncio.to_thread(self.ringlog.close)  # drains queued pages, then syncs

    async def _drop_clients(self, reason: str) -> None:
        """Tell every client why (a `closed` status) and detach them all."""
        for att in list(self.attachments.values()):
            att.viewer.send_message({"type": "status", "event": "closed", "reason": reason})
            await att.subscriber.close()
            self._gaps_of_gone += att.subscriber.gaps
        self.attachments.clear()
        self.lease.clear()

    # ---- output: the hot path ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """From the transport: a stream's small reads are gathered (bridge.console.coalesce)."""
        self._coalescer.feed(data)

    def _publish(self, data: bytes) -> None:
        """Number the bytes, keep them (scrollback, ring log) and fan them out: the hot path."""
        chunk = Chunk(data, self.offset)
        hits = self.watch.feed(data, self.offset) if self.watch.rules else None
        self.offset += len(data)
        self.bytes_in += len(data)
        if self.scrollback is not None:
            self.scrollback.append(data)
        if self.ringlog is not None:
            if hits:
                self.events.log(data, chunk.offset, hits)
            else:
                self.ringlog.append(data)
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_later(
                    self._flush_interval, self._flush_log
                )
        for att in self.attachments.values():
            sub = att.subscriber
            if sub.live:
                sub.on_chunk(chunk)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        for hit in hits or ():  # marked in the log already: audited and announced after the line
            self._event("alert", hit.fields(), mark=False)

    async def wait_for_output(self, offset: int, within: float) -> bool:
        """Wait until output beyond `offset` exists (for `follow` readers); False on timeout."""
        if self.offset > offset:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, within)
        except TimeoutError:
            return False
        return True

    def _flush_log(self) -> None:
        self._flush_handle = None
        if self.ringlog is not None:
            try:
                self.ringlog.flush()
            except OSError as exc:
                log.error("port %s: ring log write failed: %s", self.name, exc)

    def _history(self) -> History:
        store = self.ringlog if self.ringlog is not None else self.scrollback
        assert store is not None
        return History(store, self.offset)

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        """History from `offset` (the ring log's newest pages and the scrollback: memory)."""
        return self._history().read(offset, max_bytes)

    @property
    def oldest_offset(self) -> int:
        return self._history().oldest

    def resolve_from(self, value: int | None) -> int:
        """A `from` parameter -> the first offset to send (bridge.console.replay)."""
        return self._history().resolve_from(value)

    def replay_start(self, nbytes: int) -> int:
        """Where a replay of "the last `nbytes`" starts: at a line start (bridge.console.replay)."""
        return self._history().replay_start(nbytes)

    # ---- clients and the writer lease (bridge.console.lease) -----------------------------------

    @property
    def writer(self) -> Attachment | None:
        """The attachment holding the write lease, if any."""
        return self.lease.writer

    def attach(
        self,
        viewer: Viewer,
        user: str,
        peer: str,
        mode: str,
        takeover: bool,
        start: int,
        privileged: bool = False,
    ) -> Attachment:
        """A new client; `privileged` (may write: operators, admins) may use the connections
        `reserved_clients` keeps free of read-only clients."""
        self.lease.admit(len(self.attachments), self.cfg, privileged)
        self.check_enabled()
        sub = Subscriber(viewer, self, self.budget, start)
        att = Attachment(next(self._ids), user, peer, viewer, sub, wants_write=mode == "rw")
        self.attachments[att.id] = att
        event = "join"
        if att.wants_write and (self.writer is None or takeover) and self.lease.pinned is None:
            event = self._give_lease(att)
        self._event("attach", {"user": user, "peer": peer, "mode": self.mode_of(att)})
        self._broadcast_status(event, actor=user, skip=att)  # the newcomer gets a hello instead
        return att

    async def detach(self, att: Attachment) -> None:
        if self.attachments.pop(att.id, None) is None:
            return
        await att.subscriber.close()
        self._gaps_of_gone += att.subscriber.gaps
        self.lease.release(att)
        await self.line.left(att)
        self._event("detach", {"user": att.user, "peer": att.peer})
        self._broadcast_status("leave", actor=att.user)

    def mode_of(self, att: Attachment) -> str:
        return self.lease.mode_of(att)

    def _give_lease(self, att: Attachment) -> str:
        old = self.lease.grant(att)
        if old is not None:
            self._event("takeover", {"user": att.user, "from": old.user})
            return "takeover"
        return "lease"

    def take_over(self, att: Attachment) -> None:
        try:  # refused while a playbook pins the lease: this client is told why
            self._broadcast_status(self._give_lease(att), actor=att.user)
        except PortError as exc:
            att.viewer.send_message({"type": "error", "message": f"takeover refused: {exc}"})

    async def release(self, att: Attachment) -> None:
        if self.lease.release(att):
            self._broadcast_status("release", actor=att.user)

    def _writer_expired(self, att: Attachment) -> None:
        self._event("lease-expired", {"user": att.user})
        self._broadcast_status("idle-release", actor=att.user)

    async def _write_on_release(self, data: bytes) -> None:
        async with self.actions.between_steps():
            if self.transport is not None:
                with contextlib.suppress(OSError):
                    await self.transport.write(data)

    @property
    def gaps_sent(self) -> int:
        """Gaps sent to clients that fell further behind than the history held."""
        return self._gaps_of_gone + sum(a.subscriber.gaps for a in self.attachments.values())

    def status(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "writer": self.writer.user if self.writer else None,
            "viewers": sorted(a.user for a in self.attachments.values()),
            "offset": self.offset,
            "line": str(self.line.settings),
            "playbook": self.rescue.status(),  # None, or the running one's name, step, user
        }

    def _broadcast_status(
        self, event: str, actor: str | None = None, skip: Attachment | None = None
    ) -> None:
        status = self.status()
        status["event"] = event
        if actor is not None:
            status["actor"] = actor
        if self.error and not self.online:
            status["reason"] = self.error
        for att in self.attachments.values():
            if att is not skip:
                att.viewer.send_message({"type": "status", "mode": self.mode_of(att), **status})

    announce = _broadcast_status  # a playbook's progress (bridge.console.rescue)

    # ---- input and actions (bridge.console.actions) -------------------------------------------

    async def write(self, att: Attachment, data: bytes) -> None:
        """Keystrokes from the lease holder; wait for a pending `on_release` and while a
        BREAK+key is on the line; the first after a plain BREAK is checked against sysrq_deny."""
        self.lease.check(att)
        att.last_input = time.monotonic()
        self._coalescer.typed(att.last_input)  # while someone types, output goes out at once
        await self.lease.wait_released()
        await self.actions.quiet()
        transport = self.transport
        if transport is None:
            raise PortOffline(f"port {self.name} is offline")
        self.actions.check_typed(data)  # nothing awaited between the check and the write
        try:
            await transport.write(data)
        except OSError as exc:  # the device went away mid-write
            raise PortOffline(f"port {self.name}: write failed: {exc}") from exc
        self.bytes_out += len(data)

    def _announce_line(self, kind: str, fields: dict[str, Any]) -> None:
        """A line-settings change (bridge.console.linesettings): marked, audited, announced."""
        self._event(kind, fields)
        self._broadcast_status(kind, actor=fields.get("user") or None)

    def _event(
        self, kind: str, fields: dict[str, Any], audit: bool = True, mark: bool = True
    ) -> None:
        """Marked, announced and audited: bridge.console.events."""
        self.events.record(kind, fields, audit, mark)
