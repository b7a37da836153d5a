"""QEMU Machine Protocol (QMP): a small asyncio client and `QmpLines`, a VM's "control lines".

Owns `QmpClient` (unix socket, one JSON object per line: greeting, `qmp_capabilities`, commands
with an `id`, asynchronous events skipped), `qmp_execute` (connect, run one command, disconnect)
and `QmpLines`, the `ControlLines` of a port whose target is a QEMU guest
(`[ports.X.lines] qmp = "/path/qmp.sock"`).

Mapping: nmi -> `inject-nmi`, reset -> `system_reset`, off -> `system_powerdown` (ACPI),
on -> `cont` when the VM is paused (or `system_wakeup` when suspended), status -> `query-status`.
`force-off` and `cycle` are refused: their only QMP equivalent, `quit`, ends QEMU and nothing
could power the VM on again. Each action opens its own connection (QEMU may have restarted).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from types import TracebackType
from typing import Any

from bridge.hw.interfaces import ActionResult, DeviceUnavailable, UnsupportedAction
from bridge.hw.lines import LinesBusy

DEFAULT_TIMEOUT = 5.0
_LINE_LIMIT = 4 * 1024 * 1024


class QmpError(Exception):
    """QEMU answered a command with an error (`class` and `desc` from the reply)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command, self.error_class, self.desc = command, error_class, desc
        super().__init__(f"QMP {command}: {error_class}: {desc}")


class QmpClient:
    """One QMP connection. Use `async with QmpClient(path) as qmp: await qmp.execute(...)`."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.greeting: dict[str, Any] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Connect, read the greeting and enter command mode. Raises DeviceUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.path, limit=_LINE_LIMIT
                )
                self.greeting = await self._read_greeting()
                await self._command("qmp_capabilities", None)
        except TimeoutError as exc:
            await self.close()
            raise DeviceUnavailable(
                f"QMP {self.path}: no answer within {self.timeout:g} s"
            ) from exc
        except DeviceUnavailable:
            await self.close()
            raise
        except (OSError, EOFError) as exc:
            await self.close()
            reason = getattr(exc, "strerror", None) or exc
            raise DeviceUnavailable(f"QMP {self.path}: {reason}") from exc

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command; returns its `return` value, raises QmpError on an error reply and
        DeviceUnavailable when QEMU does not answer within the timeout or goes away."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._command(command, arguments)
        except TimeoutError as exc:
            raise DeviceUnavailable(
                f"QMP {self.path}: {command}: no answer within {self.timeout:g} s"
            ) from exc
        except DeviceUnavailable:
            raise
        except (OSError, EOFError) as exc:
            raise DeviceUnavailable(f"QMP {self.path}: {command}: {exc}") from exc

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def __aenter__(self) -> QmpClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _command(self, command: str, arguments: dict[str, Any] | None) -> Any:
        if self._writer is None:
            raise ConnectionResetError("not connected")
        async with self._lock:
            ident = f"sb-{next(self._ids)}"
            message: dict[str, Any] = {"execute": command, "id": ident}
            if arguments:
                message["arguments"] = arguments
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()
            while True:
                reply = await self._read_message()
                if "event" in reply:
                    continue
                if reply.get("id") not in (ident, None):
                    continue
                if "error" in reply:
                    err = reply["error"]
                    raise QmpError(command, str(err.get("class")), str(err.get("desc")))
                if "return" in reply:
                    return reply["return"]

    async def _read_greeting(self) -> dict[str, Any]:
        """The greeting, after any late reply or event of the monitor's previous connection:
        QEMU's monitor outlives a connection, and what it answers a client that just left can
        reach the next one first (seen once in CI, polling power status right after a power-off)."""
        while True:
            message = await self._read_message()
            if "QMP" in message:
                return message
            if not {"return", "error", "event"} & message.keys():
                raise DeviceUnavailable(
                    f"QMP {self.path}: not a QMP greeting: {json.dumps(message)[:80]}"
                )

    async def _read_message(self) -> dict[str, Any]:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            raise EOFError("QEMU closed the QMP connection")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise DeviceUnavailable(f"QMP {self.path}: not JSON: {line[:80]!r}") from exc
        if not isinstance(message, dict):
            raise DeviceUnavailable(f"QMP {self.path}: unexpected message {line[:80]!r}")
        return message


async def qmp_execute(
    path: str,
    command: str,
    arguments: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT,
) -> Any:
    """Connect to QEMU, run one command, disconnect; each step waits at most `timeout_s`."""
    async with QmpClient(path, timeout_s) as qmp:
        return await qmp.execute(command, arguments)


async def chardev_send_break(
    path: str, chardev_id: str, timeout_s: float = DEFAULT_TIMEOUT
) -> None:
    """Raise a BREAK on a QEMU character device (works for every chardev backend)."""
    await qmp_execute(path, "chardev-send-break", {"id": chardev_id}, timeout_s)


_RUNNING = "running"
_WAKE = {"suspended": "system_wakeup"}
_RESUMABLE = {"paused", "prelaunch", "debug", "inmigrate", "postmigrate", "finish-migrate"}


class QmpLines:
    """A QEMU guest's NMI / reset / power, through its QMP socket. One action at a time."""

    def __init__(self, path: str, *, port: str = "", timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.port = port or path
        self.timeout = timeout
        self._running: str | None = None
        self._last_state = "unknown"

    def supported(self) -> frozenset[str]:
        return frozenset({"nmi", "reset", "on", "off", "status"})

    def power_state(self) -> str:
        """The state seen by the last action or status query ("unknown" before any)."""
        return self._last_state

    async def nmi(self) -> ActionResult:
        return await self._simple("nmi", "inject-nmi")

    async def reset(self) -> ActionResult:
        return await self._simple("reset", "system_reset")

    async def power(self, action: str) -> ActionResult:
        if action == "reset":
            return await self.reset()
        if action == "off":
            return await self._simple("off", "system_powerdown")
        if action == "status":
            status = await self._status()
            return {"action": "status", "power": self._last_state, "qemu_status": status}
        if action == "on":
            return await self._power_on()
        if action in ("force-off", "cycle"):
            raise UnsupportedAction(
                f"power {action} is not available for a QEMU guest (QMP can only end QEMU with"
                " 'quit', and nothing could power it on again); use reset or off"
            )
        raise UnsupportedAction(f"unknown power action {action!r}")

    async def chardev_send_break(self, chardev_id: str) -> None:
        """BREAK on one of the guest's character devices (for transports that want it)."""
        await chardev_send_break(self.path, chardev_id, self.timeout)

    async def close(self) -> None:
        return None

    async def _simple(self, action: str, command: str) -> ActionResult:
        self._claim(action)
        try:
            async with QmpClient(self.path, self.timeout) as qmp:
                try:
                    await qmp.execute(command)
                except QmpError as exc:
                    if exc.error_class == "CommandNotFound" or "support" in exc.desc.lower():
                        raise UnsupportedAction(
                            f"port {self.port}: this QEMU machine cannot {action}: {exc.desc}"
                        ) from exc
                    raise
                self._remember(await qmp.execute("query-status"))
        finally:
            self._running = None
        return {"action": action, "qmp": command, "power": self._last_state}

    async def _status(self) -> str:
        async with QmpClient(self.path, self.timeout) as qmp:
            return self._remember(await qmp.execute("query-status"))

    async def _power_on(self) -> ActionResult:
        self._claim("on")
        try:
            async with QmpClient(self.path, self.timeout) as qmp:
                before = self._remember(await qmp.execute("query-status"))
                command = ""
                if before in _WAKE:
                    command = _WAKE[before]
                elif before in _RESUMABLE:
                    command = "cont"
                elif before == "shutdown":
                    # The guest powered off and QEMU runs with -no-shutdown: reset and go.
                    await qmp.execute("system_reset")
                    command = "cont"
                if command:
                    await qmp.execute(command)
                after = self._remember(await qmp.execute("query-status"))
        finally:
            self._running = None
        result: ActionResult = {"action": "on", "qmp": command or None, "power": self._last_state}
        if not command:
            result["note"] = f"the VM is already {after}; nothing done"
        return result

    def _claim(self, action: str) -> None:
        if self._running is not None:
            raise LinesBusy(f"port {self.port}: {self._running} is in progress")
        self._running = action

    def _remember(self, status: Any) -> str:
        state = str(status.get("status", "unknown")) if isinstance(status, dict) else "unknown"
        self._last_state = "on" if state == _RUNNING else "off"
        return state
