"""Forwarding through the SSH door with the real OpenSSH client: `ssh -L` reaches a port's RFC
2217 endpoint (pyserial's rfc2217:// client through the tunnel) for a user who may write that
port, and nothing else is forwarded: other addresses, viewers, remote forwarding."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import BridgeFactory, PtyDevice, wait_for
from tests.ssh_helpers import SshTarget, ssh_bridge
from tests.test_rfc2217 import in_thread, open_serial, read_exactly

pytestmark = [
    pytest.mark.filterwarnings("ignore:setDaemon\\(\\) is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:setName\\(\\) is deprecated:DeprecationWarning"),
]


@pytest.fixture
async def door(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, keys: dict[str, Path]
) -> AsyncIterator[SshTarget]:
    ports = {"lab": {"device": str(pty_device.path), "rfc2217": "127.0.0.1:0"}}
    _bridge, target = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys=keys, ports=ports)
    yield target


STOP_GRACE = 1.0  # seconds ssh has to end on SIGTERM before it is killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoint_port(door: SshTarget) -> int:
    assert door.bridge.daemon.rfc2217 is not None
    return door.bridge.daemon.rfc2217.endpoints["lab"].address[1]


class Tunnel:
    """`ssh -N -L LOCAL:HOST:PORT` running; its local end accepts connections once ready."""

    def __init__(self, proc: asyncio.subprocess.Process, local: int) -> None:
        self.proc, self.local = proc, local

    async def ready(self) -> bool:
        """True once ssh listens on the local end (found by failing to bind it: a test
        connection would open a forward and attach an RFC 2217 client); False if ssh exited."""
        for _ in range(500):  # bounded: 10 s
            if self.proc.returncode is not None:
                return False
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", self.local))
                except OSError:
                    return self.proc.returncode is None
            await asyncio.sleep(0.02)
        raise AssertionError("the ssh tunnel never listened")

    async def stop(self) -> str:
        """End ssh and return what it wrote to stderr. SIGTERM, then SIGKILL after STOP_GRACE:
        OpenSSH 9.2's client, signalled just after a forward was refused, goes back to poll()
        without ending and waits for the next packet (here the bridge's keepalive, a minute)."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_GRACE)
            except TimeoutError:
                self.proc.kill()
        _out, err = await self.proc.communicate()
        return err.decode(errors="replace")


async def tunnel(door: SshTarget, key: Path, user: str, to: str) -> Tunnel:
    """A tunnel on a free local port (another, if something takes it first: ssh then exits,
    ExitOnForwardFailure)."""
    for _ in range(5):
        local = free_port()
        args = door.args(key, "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:{to}")
        proc = await asyncio.create_subprocess_exec(
            *args,
            f"{user}@127.0.0.1",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        t = Tunnel(proc, local)
        if await t.ready():
            return t
        await t.stop()
    raise AssertionError("no free local port for the tunnel")


def forwards(door: SshTarget) -> list[dict[str, object]]:
    path = door.bridge.state_dir / "audit" / "audit.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in entries if e["event"] == "forward"]


async def test_ssh_L_reaches_the_rfc2217_endpoint(
    door: SshTarget, keys: dict[str, Path], pty_device: PtyDevice
) -> None:
    t = await tunnel(door, keys["operator"], "operator", f"localhost:{endpoint_port(door)}")
    try:
        ser = await in_thread(open_serial, f"rfc2217://127.0.0.1:{t.local}", 115200)
        try:
            await in_thread(ser.write, b"through the tunnel\r")
            await pty_device.read_until(lambda b: b"through the tunnel\r" in b)
            await pty_device.awrite(b"and back\r\n")
            assert await in_thread(read_exactly, ser, 10) == b"and back\r\n"
        finally:
            await in_thread(ser.close)
    finally:
        await t.stop()
    assert forwards(door)[-1]["result"] == "ok" and forwards(door)[-1]["port"] == "lab"


async def closed_at_once(local: int) -> bool:
    """Connect to a tunnel's local end: True when ssh closes it (the bridge refused)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        return await asyncio.wait_for(reader.read(100), 10) == b""
    finally:
        writer.close()


@pytest.mark.parametrize("who, to", [("viewer", "endpoint"), ("admin", "127.0.0.1:22")])
async def test_other_forwards_are_refused(
    door: SshTarget, keys: dict[str, Path], who: str, to: str
) -> None:
    target = f"127.0.0.1:{endpoint_port(door)}" if to == "endpoint" else to
    t = await tunnel(door, keys[who], who, target)
    try:
        assert await closed_at_once(t.local)
    finally:
        err = await t.stop()
    assert "administratively prohibited" in err
    reason = forwards(door)[-1]["result"]
    assert reason == (
        "refused: your role (viewer) may not do this"
        if who == "viewer"
        else "refused: not an RFC 2217 endpoint"
    )


async def test_remote_forwarding_is_refused(door: SshTarget, keys: dict[str, Path]) -> None:
    args = door.args(keys["admin"], "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:80")
    proc = await asyncio.create_subprocess_exec(
        *args, "admin@127.0.0.1", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 255 and b"remote port forwarding failed" in err


async def test_an_ended_credential_drops_a_forwarding_connection(
    door: SshTarget, keys: dict[str, Path]
) -> None:
    from bridge.access.store import UserStore

    t = await tunnel(door, keys["operator"], "operator", f"127.0.0.1:{endpoint_port(door)}")
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", t.local)  # the forward
        consoles = door.bridge.daemon.state.consoles
        await wait_for(lambda: len(consoles.of(user="operator")) == 1)
        UserStore(door.bridge.state_dir).delete("operator")
        assert await asyncio.wait_for(t.proc.wait(), 10) == 255
        writer.close()
    finally:
        await t.stop()
