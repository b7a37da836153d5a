"""The RFC 2217 door with pyserial's own `rfc2217://` client (run in a thread, as a lab script
runs it) against a real daemon: a pty standing in for the UART, or the virtual target that
records BREAKs and SysRq keys. Raw sockets check what pyserial never sends."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import serial

from bridge.history.audit import AuditLog
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for

IAC, SB, SE, DO, WILL, WONT, BRK = 255, 250, 240, 253, 251, 252, 243
# pyserial 3.5's rfc2217 client names its reader thread the pre-3.10 way
pytestmark = [
    pytest.mark.filterwarnings("ignore:setDaemon\\(\\) is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:setName\\(\\) is deprecated:DeprecationWarning"),
]


def endpoint(bridge: Bridge, port: str = "lab") -> str:
    assert bridge.daemon.rfc2217 is not None
    host, number = bridge.daemon.rfc2217.endpoints[port].address
    return f"rfc2217://{host}:{number}"


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def open_serial(url: str, baud: int, **kwargs: Any) -> Any:
    return serial.serial_for_url(url, baudrate=baud, timeout=5, **kwargs)


def read_exactly(ser: Any, n: int) -> bytes:
    got = bytearray()
    for _ in range(100):
        got += ser.read(n - len(got))
        if len(got) >= n:
            break
    return bytes(got)


def slave_termios(dev: PtyDevice) -> list[Any]:
    fd = os.open(dev.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return termios.tcgetattr(fd)
    finally:
        os.close(fd)


async def door_bridge(
    factory: BridgeFactory, name: str, device: str, port: dict[str, Any] | None = None,
    **sections: Any,
) -> Bridge:  # fmt: skip
    """A bridge with port `name` on `device` (and the `port` settings), its RFC 2217 endpoint on
    a free loopback port, online."""
    ports = {name: {"device": device, "rfc2217": "127.0.0.1:0", **(port or {})}}
    b = await factory(ports=ports, **sections)
    await wait_for(lambda: b.port.online)
    return b


@pytest.fixture
async def lab(bridge_factory: BridgeFactory, pty_device: PtyDevice) -> Bridge:
    """Port `lab` on a pty at 115200 8N1, with an RFC 2217 endpoint on a free loopback port."""
    return await door_bridge(
        bridge_factory, "lab", str(pty_device.path), log={"enabled": True, "size": "64KiB"}
    )


def audit_events(bridge: Bridge) -> list[dict[str, Any]]:
    """Every audit record, attach/detach (kept in their own file) included, oldest first."""
    return AuditLog(bridge.state_dir / "audit").query()


async def test_pyserial_bytes_both_ways_are_8_bit_clean(lab: Bridge, pty_device: PtyDevice) -> None:
    url = endpoint(lab)
    ser = await in_thread(open_serial, url, 115200)
    try:
        everything = bytes(range(256)) * 4  # 0xFF included: doubled on the wire, once here
        await in_thread(ser.write, everything)
        got = await pty_device.read_until(lambda b: len(b) >= len(everything))
        assert got == everything
        await pty_device.awrite(everything)
        assert await in_thread(read_exactly, ser, len(everything)) == everything
        assert lab.port.writer is not None and lab.port.writer.user == "rfc2217"
    finally:
        await in_thread(ser.close)
    await wait_for(lambda: not lab.port.attachments)
    events = [e["event"] for e in audit_events(lab)]
    assert "attach" in events and "detach" in events


async def test_a_baud_change_applies_to_the_uart_and_is_restored_when_the_client_leaves(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    assert slave_termios(pty_device)[5] == termios.B115200
    async with lab.session("viewer") as http:
        watcher = WsReader(await lab.ws(http, "lab", mode="ro"))
        await watcher.message("hello")
        ser = await in_thread(open_serial, endpoint(lab), 115200)
        try:

            def change() -> None:
                ser.baudrate = 9600  # each waits for the answer carrying the value applied
                ser.stopbits = serial.STOPBITS_TWO

            await in_thread(change)
            attrs = slave_termios(pty_device)
            assert attrs[5] == termios.B9600 and attrs[4] == termios.B9600
            assert attrs[2] & termios.CSTOPB
            status = await watcher.message("status", event="line-settings", line="9600 8N2")
            assert status["actor"] == "rfc2217"
            assert lab.port.status()["line"] == "9600 8N2"
            # the pacing follows: bytes still arrive, at the new rate
            await in_thread(ser.write, b"slow")
            assert await pty_device.read_until(lambda b: b.endswith(b"slow")) == b"slow"
            # a value the device refuses (a pty takes 8 data bits only) is answered with the
            # value in force, never acknowledged: pyserial says the remote did not accept it
            with pytest.raises(ValueError, match="remote rejected value"):
                await in_thread(setattr, ser, "bytesize", serial.SEVENBITS)
            attrs = slave_termios(pty_device)
            assert attrs[5] == termios.B9600 and attrs[2] & termios.CSIZE == termios.CS8
        finally:
            await in_thread(ser.close)
        await watcher.message("status", event="line-restored", line="115200 8N1")
        attrs = slave_termios(pty_device)
        assert attrs[5] == termios.B115200 and not attrs[2] & termios.CSTOPB
    changes = [e for e in audit_events(lab) if e["event"].startswith("line-")]
    assert [(e["event"], e["line"]) for e in changes][-2:] == [
        ("line-settings", "9600 8N2"),
        ("line-restored", "115200 8N1"),
    ]


async def test_a_second_client_is_read_only_its_writes_dropped_and_audited(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    url = endpoint(lab)
    first = await in_thread(open_serial, url, 115200)
    second = await in_thread(open_serial, url, 115200)  # the settings in force: it may open
    try:
        modes = sorted(lab.port.mode_of(a) for a in lab.port.attachments.values())
        assert modes == ["ro", "rw"]
        await in_thread(second.write, b"IGNORED")
        await in_thread(first.write, b"typed")
        assert await pty_device.read_until(lambda b: b.endswith(b"typed")) == b"typed"
        await pty_device.awrite(b"both see this")
        assert await in_thread(read_exactly, first, 13) == b"both see this"
        assert await in_thread(read_exactly, second, 13) == b"both see this"
        # the read-only client can neither change the speed nor send a BREAK
        with pytest.raises(ValueError, match="remote rejected value"):
            await in_thread(setattr, second, "baudrate", 9600)
    finally:
        await in_thread(second.close)
        await in_thread(first.close)
    assert slave_termios(pty_device)[5] == termios.B115200
    dropped = [e for e in audit_events(lab) if e["event"] == "write-dropped"]
    assert dropped[0]["bytes"] == 7 and dropped[0]["reason"] == "read-only"
    assert dropped[-1]["total"] is True


async def test_viewers_filling_the_port_do_not_lock_the_rfc2217_client_out(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    """The door is a writer's: its client may use the slots `reserved_clients` keeps free."""
    port = {"max_clients": 2, "reserved_clients": 1}
    b = await door_bridge(bridge_factory, "lab", str(pty_device.path), port)
    async with b.session("viewer") as http:
        ws = await b.ws(http, "lab", mode="ro")
        await WsReader(ws).message("hello")  # the one slot a viewer may take
        ser = await in_thread(open_serial, endpoint(b), 115200)
        try:
            assert sorted(b.port.mode_of(a) for a in b.port.attachments.values()) == ["ro", "rw"]
            await in_thread(ser.write, b"typed")
            assert await pty_device.read_until(lambda d: d.endswith(b"typed")) == b"typed"
        finally:
            await in_thread(ser.close)
            await ws.close()


async def test_with_rfc2217_takeover_a_new_client_takes_the_lease(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await door_bridge(bridge_factory, "lab", str(pty_device.path), {"rfc2217_takeover": True})
    async with b.session("operator") as http:
        web = WsReader(await b.ws(http, "lab", mode="rw"))
        assert (await web.message("hello"))["mode"] == "rw"
        ser = await in_thread(open_serial, endpoint(b), 115200)
        try:
            await web.message("status", event="takeover", actor="rfc2217", mode="ro")
            await in_thread(ser.write, b"mine")
            assert await pty_device.read_until(lambda d: d.endswith(b"mine")) == b"mine"
        finally:
            await in_thread(ser.close)


async def test_break_and_sysrq_key_reach_the_target_in_order(
    bridge_factory: BridgeFactory,
) -> None:
    b = await door_bridge(bridge_factory, "vt", "virtual:shell")
    transport = b.port.transport
    ser = await in_thread(open_serial, endpoint(b, "vt"), 115200)
    try:

        def sysrq() -> None:
            ser.send_break(0.25)  # SET-CONTROL BREAK-ON, wait, BREAK-OFF
            ser.write(b"h")

        await in_thread(sysrq)
        await wait_for(lambda: ("sysrq", "h") in transport.events)
        assert [e[0] for e in transport.events][-2:] == ["break", "sysrq"]
    finally:
        await in_thread(ser.close)
    breaks = [e for e in audit_events(b) if e["event"] == "break"]
    assert breaks[-1]["via"] == "SET-CONTROL" and breaks[-1]["result"] == "ok"


async def test_purge_and_modem_state(lab: Bridge, pty_device: PtyDevice) -> None:
    ser = await in_thread(open_serial, endpoint(lab), 115200)
    try:
        await in_thread(ser.reset_input_buffer)  # PURGE-DATA 1, answered or pyserial raises
        await in_thread(ser.reset_output_buffer)  # PURGE-DATA 2
        # a pty has no modem inputs: CD, DSR and CTS say the port is online
        assert (ser.cd, ser.dsr, ser.cts, ser.ri) == (True, True, True, False)
        pty_device.unplug()
        await wait_for(lambda: not lab.port.online)
        await wait_for(lambda: not ser.cd)
        assert (ser.dsr, ser.cts) == (False, False)
    finally:
        await in_thread(ser.close)


def raw_connect(url: str) -> socket.socket:
    host, number = url.removeprefix("rfc2217://").rsplit(":", 1)
    return socket.create_connection((host, int(number)), timeout=5)


async def test_a_break_on_a_pty_is_audited_as_unsupported_like_the_other_doors(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    """A pty carries no BREAK: IAC BRK is refused, the key after it still reaches the target,
    and the audit says `unsupported`, as it does for the web and SSH doors (test_break_support)."""
    sock = await in_thread(raw_connect, endpoint(lab))
    try:
        await in_thread(sock.sendall, bytes((IAC, BRK)) + b"k")
        assert await pty_device.read_until(lambda b: b"k" in b) == b"k"
    finally:
        sock.close()
    breaks = [e for e in audit_events(lab) if e["event"] == "break"]
    assert [(e["user"], e["via"], e["result"]) for e in breaks] == [
        ("rfc2217", "IAC BRK", "unsupported")
    ]


def recv_until(sock: socket.socket, wanted: bytes) -> bytes:
    got = b""
    while wanted not in got:
        piece = sock.recv(4096)
        if not piece:
            raise AssertionError(f"closed before {wanted!r}; got {got!r}")
        got += piece
    return got


async def test_negotiation_answers_and_iac_brk(bridge_factory: BridgeFactory) -> None:
    b = await door_bridge(bridge_factory, "vt", "virtual:shell")
    sock = await in_thread(raw_connect, endpoint(b, "vt"))
    try:
        await in_thread(sock.sendall, bytes((IAC, DO, 1, IAC, WILL, 44, IAC, DO, 0, IAC, DO, 99)))
        got = await in_thread(recv_until, sock, bytes((IAC, WONT, 99)))
        for answer in ((IAC, WONT, 1), (IAC, DO, 44), (IAC, WILL, 0)):
            assert bytes(answer) in got
        assert bytes((IAC, SB, 44, 107)) in got  # NOTIFY-MODEMSTATE once COM-PORT is on
        # a signature query, then IAC BRK + key as microcom sends it
        await in_thread(sock.sendall, bytes((IAC, SB, 44, 0, IAC, SE)))
        assert b"serial-bridge vt" in await in_thread(recv_until, sock, b"bridge vt")
        await in_thread(sock.sendall, bytes((IAC, BRK)) + b"s")
        await wait_for(lambda: ("sysrq", "s") in b.port.transport.events)
    finally:
        sock.close()
    breaks = [e for e in audit_events(b) if e["event"] == "break"]
    assert breaks[-1]["via"] == "IAC BRK"


async def test_a_malformed_request_closes_that_client_only(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    url = endpoint(lab)
    ser = await in_thread(open_serial, url, 115200)
    bad = await in_thread(raw_connect, url)
    try:
        await in_thread(
            bad.sendall, bytes((IAC, SB, 44, 1, 0, 0)) + bytes((IAC, SE))
        )  # 2-byte baud
        assert await in_thread(bad.recv, 100) == b""  # closed by the bridge
        await pty_device.awrite(b"still here")
        assert await in_thread(read_exactly, ser, 10) == b"still here"
    finally:
        bad.close()
        await in_thread(ser.close)


async def test_endpoint_closes_with_its_port_on_reload(lab: Bridge, tmp_path: Path) -> None:
    url = endpoint(lab)
    sock = await in_thread(raw_connect, url)
    try:
        config = lab.daemon.config
        without = type(config)(config.path, config.server, config.log, config.gpio, {})
        changes = await lab.daemon.reload(without)
        assert "port lab: RFC 2217 endpoint closed" in changes
        assert await in_thread(sock.recv, 100) == b""
    finally:
        sock.close()
    with pytest.raises(OSError):
        await in_thread(raw_connect, url)


async def test_microcom_sends_iac_brk_and_types(bridge_factory: BridgeFactory) -> None:
    """`microcom -t` (what `labgrid-client console` runs): typing reaches the target, and its
    menu's `break` command sends telnet IAC BRK, which becomes the port's BREAK."""
    pexpect = pytest.importorskip("pexpect")
    if shutil.which("microcom") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the microcom test: apt-get install microcom")
        pytest.skip("microcom not installed (apt-get install microcom)")
    b = await door_bridge(bridge_factory, "vt", "virtual:shell")
    hostport = endpoint(b, "vt").removeprefix("rfc2217://")
    child = pexpect.spawn("microcom", ["-t", hostport], timeout=10)
    try:
        await in_thread(child.expect_exact, "connected to")
        await in_thread(child.send, "echo MC$((40+2))\r")
        await in_thread(child.expect_exact, "MC42")
        await in_thread(child.send, "\x1c")  # ctrl-\ opens microcom's menu
        await in_thread(child.expect_exact, "Enter command")
        await in_thread(child.send, "break\r")
        await wait_for(lambda: any(e[0] == "break" for e in b.port.transport.events))
        await in_thread(child.send, "h")  # the SysRq key, typed after the BREAK
        await wait_for(lambda: ("sysrq", "h") in b.port.transport.events)
    finally:
        child.close(force=True)
    breaks = [e for e in audit_events(b) if e["event"] == "break"]
    assert breaks[-1]["via"] == "IAC BRK" and breaks[-1]["result"] == "ok"
