"""The virtual target: a shell on a pseudo-terminal, standing in for a machine's serial console.

Used by `serial-bridge demo` (device `virtual:shell`) and by tests. The shell runs on the pty's
slave side as its controlling terminal, like a serial getty, so `tty`, `stty` and line editing
behave as on a real console; the bridge reads and writes the master side. When the shell exits
the transport reports the device gone, and the hub's reopen starts a fresh one (a getty respawn).

A pty cannot carry a BREAK, so this target imitates the kernel's magic SysRq: a BREAK followed
within 5 s by a key makes it print `sysrq: ...` instead of passing the key to the shell. Every
BREAK and SysRq key is also kept in `events` for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import termios
import time

from bridge.hw.interfaces import (
    DeviceUnavailable,
    LineSettings,
    ModemState,
    TransportSink,
    UnsupportedAction,
)

SYSRQ_WINDOW = 5.0


def _shell_command() -> list[str]:
    bash = shutil.which("bash")
    if bash:
        return [bash, "--noprofile", "--norc", "-i"]
    return [shutil.which("sh") or "/bin/sh", "-i"]


def _become_console_owner() -> None:  # runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class VirtualShellTransport:
    """A shell on a pty; `events` records ("break", duration) and ("sysrq", key) tuples."""

    def __init__(self, name: str = "virtual") -> None:
        self.description = f"virtual shell ({name})"
        self.events: list[tuple[str, object]] = []
        self._master = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._sink: TransportSink | None = None
        self._break_stamp: float | None = None

    async def open(self, sink: TransportSink) -> None:
        master, slave = os.openpty()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "TERM": "vt220",
            "PS1": "demo$ ",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        try:
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - fork+exec returns at once
                _shell_command(),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                preexec_fn=_become_console_owner,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            os.close(master)
            raise DeviceUnavailable(f"virtual shell: {exc}") from exc
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master, self._sink = master, sink
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data and self._sink is not None:
            self._sink.data_received(data)
        elif not data:
            sink = self._sink
            self._release()
            if sink is not None:
                sink.connection_lost(None)

    def _emit(self, text: str) -> None:
        if self._sink is not None:
            self._sink.data_received(text.encode())

    async def write(self, data: bytes) -> None:
        if self._break_stamp is not None and data:
            stamp, self._break_stamp = self._break_stamp, None
            key, data = chr(data[0]), data[1:]
            if time.monotonic() - stamp <= SYSRQ_WINDOW:
                self.events.append(("sysrq", key))
                self._emit(f"\r\n[virtual target] sysrq: key '{key}' received\r\n")
            else:
                data = key.encode("latin-1") + data
        view = memoryview(data)
        while view:
            if self._master < 0:
                raise DeviceUnavailable("virtual shell: not running")
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                await asyncio.sleep(0.002)
                continue
            except OSError as exc:
                raise DeviceUnavailable(f"virtual shell: {exc}") from exc
            view = view[n:]

    async def drain(self) -> None:
        return None

    async def send_break(self, duration: float) -> None:
        self.events.append(("break", duration))
        await asyncio.sleep(duration)
        self._break_stamp = time.monotonic()

    def _release(self) -> None:
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = -1
        self._sink = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGHUP)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def break_unsupported(self) -> str | None:
        return None  # the demo shell takes a BREAK + key as SysRq, as a kernel would

    async def configure(
        self, settings: LineSettings | None = None, dtr: bool | None = None, rts: bool | None = None
    ) -> None:
        raise UnsupportedAction("the virtual target has no serial line")

    def modem_state(self) -> ModemState | None:
        return None

    def line_errors(self) -> dict[str, int] | None:
        return None  # no line, no line errors

    async def close(self) -> None:
        self._release()
