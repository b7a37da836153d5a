"""A device that cannot carry a BREAK (#20.6): the transport says so, and BREAK and SysRq on it are
refused with the reason on every path (HTTP 501, a websocket `error`, the CLI's message), instead
of reporting success while the SysRq key reaches the target as a plain character. With a real pty,
which is such a device."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from bridge.config import PortConfig
from bridge.hw.uart import UartTransport, is_pty
from tests.conftest import Bridge, PtyDevice, WsReader
from tests.test_cli import cli
from tests.test_uart import Sink


async def test_the_uart_transport_knows_a_pty_cannot_carry_a_break(pty_device: PtyDevice) -> None:
    uart = UartTransport(PortConfig(name="t", device=str(pty_device.path)))
    await uart.open(Sink())
    try:
        assert uart._fd >= 0 and is_pty(uart._fd)
        reason = uart.break_unsupported()
        assert reason is not None
        assert f"{pty_device.path} is a pseudo-terminal, which cannot carry a BREAK" in reason
    finally:
        await uart.close()


async def test_a_socket_url_cannot_carry_a_break() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"socket://127.0.0.1:{server.getsockname()[1]}"
        uart = UartTransport(PortConfig(name="t", device=url))
        await uart.open(Sink())
        try:
            assert uart.break_unsupported() == "socket:// connections carry no BREAK"
        finally:
            await uart.close()


async def test_http_break_and_sysrq_on_a_pty_are_501_and_send_nothing(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    """Formerly 200 "sent", and the target received a literal `h`."""
    async with bridge.session(token_user="operator") as s:
        for path, body in (("break", None), ("sysrq", {"keys": "h"}), ("sysrq", {"keys": "sub"})):
            async with s.post(f"{bridge.base}/api/ports/lab/{path}", json=body) as r:
                assert r.status == 501
                error = (await r.json())["error"]
                assert "is a pseudo-terminal, which cannot carry a BREAK" in error
        async with bridge.session(token_user="admin") as a, a.get(f"{bridge.base}/api/audit") as r:
            audited = [e for e in await r.json() if e["event"] in ("break", "sysrq")]
    assert [e["result"] for e in audited] == ["unsupported"] * 3
    assert pty_device.drain_input() == b""


async def test_websocket_break_on_a_pty_is_an_error_message(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    async with bridge.session(token_user="operator") as s:
        ws = await bridge.ws(s, "lab", mode="rw")
        reader = WsReader(ws)
        await reader.message("hello")
        for message in ({"type": "break"}, {"type": "sysrq", "keys": "h"}):
            await ws.send_str(json.dumps(message))
            error = await reader.message("error")
            assert "pseudo-terminal, which cannot carry a BREAK" in error["message"]
            reader.messages.clear()
        await ws.send_bytes(b"still typing\r")  # the console itself is fine
        await pty_device.read_until(lambda b: b == b"still typing\r")
        await ws.close()


async def test_the_cli_says_why(bridge: Bridge, pty_device: PtyDevice, tmp_path: Path) -> None:
    env = {"SERIAL_BRIDGE_TOKEN": bridge.tokens["operator"], "XDG_CONFIG_HOME": str(tmp_path)}
    pin = ["--fingerprint", bridge.daemon.fingerprint]
    code, out, err = await cli("sysrq", f"{bridge.base}/lab", "h", *pin, env=env)
    assert (code, out) == (1, b"")
    assert b"HTTP 501" in err and b"is a pseudo-terminal, which cannot carry a BREAK" in err
    assert pty_device.drain_input() == b""
