"""The SSH door's console, driven by the real OpenSSH client in a pseudo-terminal: key login to
`user:port` with bytes both ways, the menu, refusals, read-only viewers, the escape prompt,
BREAK, and the same bytes as a websocket client gets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.common.screen import ScreenFilter
from tests.conftest import BridgeFactory, PtyDevice, WsReader, wait_for
from tests.ssh_helpers import SshTarget, ssh_bridge

ESC = b"\x1d"  # Ctrl-], the default escape key


@pytest.fixture
async def door(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, keys: dict[str, Path]
) -> AsyncIterator[SshTarget]:
    _bridge, target = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys=keys)
    yield target


async def test_key_login_to_user_port_carries_bytes_both_ways(
    door: SshTarget, keys: dict[str, Path], pty_device: PtyDevice
) -> None:
    history = b"earlier output\r\nlogin: "
    pty_device.write(history)
    await wait_for(lambda: door.bridge.port.offset == len(history))
    async with door.terminal(keys["operator"], "operator:lab") as term:
        at = await term.until(b"lab: read-write")
        at = await term.until(b"earlier output\r\nlogin: ", at)  # the replayed history
        term.type(b"root\r")
        assert b"root\r" in await pty_device.read_until(lambda b: b"root\r" in b)
        pty_device.write(b"\r\nPassword: \xff\x00binary\r\n")
        await term.until(b"Password: \xff\x00binary\r\n", at)
        term.type(b"~.")  # OpenSSH's own escape: disconnect
        await term.wait()
    await wait_for(lambda: not door.bridge.port.attachments)
    audit = (door.bridge.state_dir / "audit" / "audit.jsonl").read_text().splitlines()
    logins = [json.loads(line) for line in audit if '"login"' in line]
    assert logins[-1]["user"] == "operator" and logins[-1]["method"] == "publickey"
    assert logins[-1]["key"].startswith("SHA256:") and logins[-1]["via"] == "ssh"


async def test_a_hostile_targets_clipboard_writes_and_type_back_requests_are_filtered(
    door: SshTarget, keys: dict[str, Path], pty_device: PtyDevice
) -> None:
    """The same screen filter as `connect`'s (bridge.common.screen): OSC 52 and a title report
    never reach the operator's terminal over SSH; colours and cursor movement do, unchanged."""
    async with door.terminal(keys["operator"], "operator:lab") as term:
        at = await term.until(b"lab: read-write")
        pty_device.write(
            b"A\x1b]52;c;ZWNobyBwd25lZA==\x07B\x1b[21tC\x1b[31mred\x1b[0m\x1b[2;5HD\r\n"
        )
        at = await term.until(b"D\r\n", at)
        shown = bytes(term.seen)
        assert b"AB" in shown and b"C\x1b[31mred\x1b[0m\x1b[2;5HD" in shown
        assert b"]52;" not in shown and b"\x1b[21t" not in shown


async def test_the_menu_lists_the_ports_and_attaches_the_chosen_one(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, keys: dict[str, Path]
) -> None:
    ports = {
        "lab": {"device": str(pty_device.path), "description": "rack 4 node 2"},
        "spare": {"device": "virtual:shell", "description": "the spare"},
    }
    _bridge, door = await ssh_bridge(
        bridge_factory, pty_device, tmp_path, keys=keys, ports=ports, gpio={"pin_factory": "mock"}
    )
    async with door.terminal(keys["operator"], "operator") as term:
        at = await term.until(b"port (number or name, q to quit): ")
        menu = bytes(term.seen[:at])
        assert b"1  lab" in menu and b"rack 4 node 2" in menu and b"2  spare" in menu
        term.type(b"7\r")
        at = await term.until(b"no port '7' here", at)
        term.type(b"1\r")
        at = await term.until(b"lab: read-write", at)
        pty_device.write(b"hello from lab\r\n")
        await term.until(b"hello from lab", at)
        term.type(ESC + b"quit\r")
        assert await term.wait() == 0


async def test_unknown_and_forbidden_ports_get_one_line_and_a_close(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, keys: dict[str, Path]
) -> None:
    from bridge.access.store import UserStore

    bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys=keys)
    store = UserStore(bridge.state_dir)
    user = store.get("viewer")
    assert user is not None
    user.ports = ["elsewhere"]
    store.put(user)
    for who, port in (("operator", "nosuch"), ("viewer", "lab")):
        async with door.terminal(keys[who], f"{who}:{port}") as term:
            await term.until(f"no port '{port}'".encode())
            assert await term.wait() == 1
            assert b"read-only" not in term.seen and b"read-write" not in term.seen


async def test_a_viewer_is_read_only_and_told_so_when_typing(
    door: SshTarget, keys: dict[str, Path], pty_device: PtyDevice
) -> None:
    async with door.terminal(keys["viewer"], "viewer:lab") as term:
        at = await term.until(b"read-only (your role is viewer)")
        term.type(b"reboot\r")
        await term.until(b"read-only: your role (viewer) may only read", at)
        pty_device.write(b"still watching\r\n")
        await term.until(b"still watching", at)
        assert pty_device.drain_input() == b""
        term.type(b"~.")
        await term.wait()


async def test_takeover_through_the_escape_prompt(
    door: SshTarget, keys: dict[str, Path], pty_device: PtyDevice
) -> None:
    async with door.terminal(keys["admin"], "admin:lab") as first:
        await first.until(b"lab: read-write")
        async with door.terminal(keys["operator"], "operator:lab") as second:
            at = await second.until(b"read-only: admin is writing")
            second.type(b"x")
            at = await second.until(b"takeover to type", at)
            second.type(ESC)
            at = await second.until(b"command (^] again sends it): ", at)
            second.type(b"takeover\r")
            at = await second.until(b"admin is writing on lab; take over? [y/N] ", at)
            second.type(b"y\r")
            at = await second.until(b"you have the write lease", at)
            await first.until(b"operator has the write lease; you are read-only")
            second.type(b"typed by operator\r")
            await pty_device.read_until(lambda b: b"typed by operator\r" in b)
            # the escape key twice sends it to the target
            second.type(ESC + ESC)
            await pty_device.read_until(lambda b: ESC in b)
            for term in (first, second):
                term.type(b"\r~.")  # OpenSSH's escapes work after a newline
                await term.wait()


async def test_a_second_login_gets_the_same_bytes_as_a_websocket_client(
    door: SshTarget, keys: dict[str, Path], pty_device: PtyDevice
) -> None:
    """Every byte value, UTF-8 and colours: both SSH sessions see the same, which is what the
    websocket client sees put through the screen filter."""
    bridge = door.bridge
    payload = bytes(range(256)) * 4 + "ünïcode ✓\r\n".encode() + b"\x1b[31mred\x1b[0m"
    got = []
    async with bridge.session("viewer") as http:
        ws = await bridge.ws(http, "lab", mode="ro")  # closed by the factory if the test fails
        reader = WsReader(ws)
        await reader.message("hello")
        async with door.terminal(keys["operator"], "operator:lab") as first:
            await first.until(b"lab: read-write")
            async with door.terminal(keys["viewer"], "viewer:lab") as second:
                await second.until(b"read-only")
                starts = [t.end for t in (first, second)]
                pty_device.write(payload + b"<END>")
                await reader.until(lambda r: b"<END>" in r.data)
                for term, start in ((first, starts[0]), (second, starts[1])):
                    end = await term.until(b"<END>", start)
                    got.append(bytes(term.seen[start : end - len(b"<END>")]))
        await ws.close()
    assert bytes(reader.data).split(b"<END>")[0] == payload  # the websocket: raw bytes
    # ssh sessions: the same bytes through the screen filter (ENQ, C1 and the bytes that could
    # form one dropped), identical for both
    assert got[0] == got[1] == ScreenFilter().feed(payload)


async def test_a_takeover_between_two_sessions_of_one_user_is_told_to_both(
    door: SshTarget, keys: dict[str, Path]
) -> None:
    async with door.terminal(keys["operator"], "operator:lab") as first:
        await first.until(b"lab: read-write")
        async with door.terminal(keys["operator"], "operator:lab") as second:
            at = await second.until(b"read-only: operator is writing")
            second.type(ESC + b"takeover\r")
            at = await second.until(b"[y/N] ", at)
            second.type(b"y\r")
            await second.until(b"you have the write lease", at)
            await first.until(b"operator has the write lease; you are read-only")
            for term in (first, second):
                term.type(b"\r~.")
                await term.wait()


async def test_the_window_size_is_typed_only_on_request(
    door: SshTarget, keys: dict[str, Path], pty_device: PtyDevice
) -> None:
    import fcntl
    import signal
    import struct
    import termios

    async with door.terminal(keys["operator"], "operator:lab") as term:

        def resize(rows: int, cols: int) -> None:
            fcntl.ioctl(term.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            assert term.proc is not None
            term.proc.send_signal(signal.SIGWINCH)

        resize(30, 100)
        at = await term.until(b"lab: read-write")
        term.type(ESC + b"stty\r")
        await pty_device.read_until(lambda b: b"stty rows 30 cols 100\r" in b)
        resize(50, 132)  # a window-change request: remembered, nothing typed
        term.type(ESC + b"who\r")
        at = await term.until(b"operator", at)
        term.type(ESC + b"stty\r")
        got = await pty_device.read_until(lambda b: b"stty rows 50 cols 132\r" in b)
        assert got.count(b"stty") == 1
        term.type(b"\r~.")
        await term.wait()


async def test_sftp_and_scp_are_refused(
    door: SshTarget, keys: dict[str, Path], tmp_path: Path
) -> None:
    import asyncio

    status, _out, err = await door.run(keys["admin"], "admin:lab", "sftp", extra=("-s",))
    assert status != 0 and "subsystem request failed" in err
    payload = tmp_path / "payload"
    payload.write_text("not for the bridge\n")
    ssh_args = door.args(keys["admin"])
    assert ssh_args[3] == "-p"
    opts = ssh_args[1:3] + ssh_args[5:]  # scp takes ssh's -F, -o and -i, and -P for the port
    copied = tmp_path / "copied"
    target = f"127.0.0.1:{copied}"  # the user name goes in -o User: scp splits at its colon
    opts += ["-o", "User=admin:lab"]
    # the SFTP protocol (scp's default), then the old scp protocol (an exec of `scp -t`)
    for legacy, said in (([], b"subsystem request failed"), (["-O"], b"unknown command 'scp'")):
        proc = await asyncio.create_subprocess_exec(
            "scp", *legacy, "-P", str(door.port), *opts, str(payload), target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _out, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0 and said in err_bytes, (legacy, err_bytes)
    assert not copied.exists()
