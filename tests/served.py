"""A real `serial-bridge serve` process for fault tests: started (optionally under a wrapper such as
`fiu-run` or `faketime`), its stderr collected line by line, stopped or killed with a signal."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.access.store import UserStore
from tests.conftest import user_hash

CLI = [sys.executable, "-m", "bridge"]


CRASH_SCRIPT = """
import os, sys
from bridge.history.ringlog import RingLog
ring = RingLog.open(sys.argv[1], int(sys.argv[2]))
ring.append(sys.stdin.buffer.read())
ring.flush()
assert ring.wait_idle(20)
os.kill(os.getpid(), 9)
"""


def crashed_ring(path: Path, size: int, data: bytes) -> None:
    """A ring log as a kill -9 leaves it: `data` written and flushed, then SIGKILL (no clean
    close); its directories are made private (0700) as the daemon wants them."""
    for d in (path.parent.parent, path.parent):
        d.mkdir(mode=0o700, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(path), str(size)], input=data, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL


def make_state(state: Path) -> str:
    """A state directory with user `admin`; returns an admin API token."""
    state.mkdir(mode=0o700, exist_ok=True)
    users = UserStore(state)
    users.add("admin", "admin", user_hash("admin"), None)
    return users.create_token("admin", "t")


class Served:
    """One `serve` process at a time on `config`; `start()` again after it stopped."""

    def __init__(self, config: Path, token: str) -> None:
        self.config = config
        self.token = token
        self.proc: asyncio.subprocess.Process | None = None
        self.base = ""
        self.fingerprint = ""
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._seen = asyncio.Event()

    async def start(
        self, wrapper: list[str] | None = None, env: dict[str, str] | None = None
    ) -> str:
        """Start serve and wait until it listens; returns its https:// base URL."""
        self.lines = []
        self.proc = await asyncio.create_subprocess_exec(
            *(wrapper or []),
            *CLI,
            "serve",
            "--config",
            str(self.config),
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self._reader = asyncio.create_task(self._read())
        line = await self.wait_line("listening on https://", 30)
        self.base = line.split("listening on ")[1].split(",")[0].strip()
        self.fingerprint = (await self.wait_line("certificate fingerprint ")).split()[-1]
        return self.base

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._seen.set()

    async def wait_line(self, needle: str, timeout: float = 20) -> str:
        """The first stderr line containing `needle` (waits for it; fails if serve exits)."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                assert self._reader is not None
                if self._reader.done():
                    raise AssertionError(f"serve exited without {needle!r}: {self.lines}")
                self._seen.clear()
                waiter = asyncio.ensure_future(self._seen.wait())
                await asyncio.wait({waiter, self._reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and wait for the exit status. One that does not exit within 20 s is killed
        and fails the test (left running, it would hang the session: uvloop's loop.close() waits
        for its children)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                f"serve ignored signal {sig} for 20 s: {self.lines[-5:]}"
            ) from None
        if self._reader is not None:
            await self._reader
        return code

    def session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self.token}", "Origin": self.base}
        return aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=False))

    async def get_json(self, path: str) -> Any:
        async with self.session() as s, s.get(f"{self.base}{path}") as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def wait_port(self, name: str, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        """Poll /api/ports until port `name` satisfies `predicate` (bounded)."""
        async with asyncio.timeout(timeout):
            while True:
                for port in await self.get_json("/api/ports"):
                    if port["name"] == name and predicate(port):
                        return port  # type: ignore[no-any-return]
                await asyncio.sleep(0.05)


def nofile_wrapper(limit: int) -> list[str]:
    """`prlimit` (util-linux): run with `ulimit -n` at `limit`."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) not installed")
    return ["prlimit", f"--nofile={limit}:{limit}", "--"]


def fiu_wrapper(prefix: Path) -> list[str]:
    """`fiu-run` (Debian fiu-utils) with its POSIX failure points and remote control at
    `prefix`-PID: faults are switched on and off while the process runs (`fiu_ctrl`)."""
    if shutil.which("fiu-run") is None:
        pytest.skip("fiu-run not installed (Debian fiu-utils; ./dev test installs it)")
    return ["fiu-run", "-x", "-f", str(prefix)]


async def fiu_ctrl(prefix: Path, pid: int, *commands: str) -> None:
    """Run libfiu remote-control commands (`enable name=posix/io/rw/pwrite,failinfo=5`, `disable
    name=...`) in process `pid` started under `fiu_wrapper(prefix)`. failinfo is the errno."""
    args = [x for c in commands for x in ("-c", c)]
    proc = await asyncio.create_subprocess_exec("fiu-ctrl", "-f", str(prefix), *args, str(pid))
    assert await asyncio.wait_for(proc.wait(), 20) == 0
