"""A real terminal for tests: a program running in a tmux pane, typed at with `send-keys`.

tmux is a full terminal emulator: it answers the queries in the program's output the way xterm
does (a cursor position report for `ESC [ 6 n`, device attributes, ...), which a bare pty does
not. Each `TmuxPane` runs its own tmux server on a socket in the test's directory, so nothing is
shared with other tests or with a tmux the user runs. What the program writes to the pane is
also copied raw to a file (`pipe-pane`), so a test can wait until tmux has read a query.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import pytest


def require_tmux() -> None:
    """Skip (outside CI) or fail (in CI) when tmux is missing."""
    if shutil.which("tmux") is not None:
        return
    reason = "tmux not installed (apt-get install tmux)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the terminal tests: {reason}")
    pytest.skip(reason)


class TmuxPane:
    def __init__(self, workdir: Path, width: int = 200, height: int = 50) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "tmux.sock"
        self.raw_path = workdir / "pane.raw"
        self.size = (width, height)

    async def _tmux(self, *args: str) -> str:
        # Output to files, not pipes: under uvloop the child keeps spare copies of its stdio
        # sockets, the tmux server that `new-session` forks inherits them, and a pipe read would
        # wait for that server to exit.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = await asyncio.create_subprocess_exec(
                "tmux", "-S", str(self.socket), *args, stdout=out, stderr=err
            )
            await asyncio.wait_for(proc.wait(), 30)
            out.seek(0)
            err.seek(0)
            assert proc.returncode == 0, f"tmux {args[0]}: {err.read().decode()}"
            return out.read().decode(errors="replace")

    async def start(self, argv: list[str], env: dict[str, str]) -> None:
        """Runs `argv` (with `env` added) in a new pane; the pane stays after it ends."""
        command = "exec env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        command += " " + shlex.join(argv)
        width, height = self.size
        await self._tmux(
            "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(width), "-y",
            str(height), "sh", "-c", command,
        )  # fmt: skip
        await self._tmux("set-option", "-t", "t", "remain-on-exit", "on")
        await self._tmux("pipe-pane", "-t", "t", "-o", f"cat >> {shlex.quote(str(self.raw_path))}")

    async def keys(self, *keys: str) -> None:
        """tmux key names: `Enter`, `C-c`, ..."""
        await self._tmux("send-keys", "-t", "t", *keys)

    async def type(self, text: str) -> None:
        """Literal text, as if typed."""
        await self._tmux("send-keys", "-t", "t", "-l", text)

    async def screen(self) -> str:
        """The pane as a person sees it, with its scrollback, wrapped lines joined."""
        return await self._tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", "t")

    def raw(self) -> bytes:
        """Everything the program wrote to the pane so far, as bytes."""
        try:
            return self.raw_path.read_bytes()
        except FileNotFoundError:
            return b""

    async def until_screen(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (shown := await self.screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on the tmux screen:\n{shown[-3000:]}")
            await asyncio.sleep(0.05)
        return shown

    async def until_raw(self, needle: bytes, count: int, timeout: float = 20.0) -> None:
        """Until `needle` has been written to the pane at least `count` times."""
        deadline = time.monotonic() + timeout
        while self.raw().count(needle) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} x{count} not written: {self.raw()[-500:]!r}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            "tmux", "-S", str(self.socket), "kill-server",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.wait_for(proc.wait(), 30)
