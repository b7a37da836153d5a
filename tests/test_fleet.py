"""Many bridges from one client: bridges.toml, `serial-bridge ports` across them, a port name
instead of a URL (`connect node3`, `log rack-b/shared`), and DNS-SD: a bridge with
`advertise = true` found by `serial-bridge discover`. mDNS stays on 127.0.0.1 (zeroconf bound
to the loopback interface on both sides), so nothing is multicast beyond this machine."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import sys
from pathlib import Path

import pytest

from bridge.client.discover import discover
from bridge.client.fleet import find_port, load_bridges
from bridge.client.http import ClientError
from tests.conftest import Bridge, BridgeFactory, PtyDevice, wait_for
from tests.test_cli import PtyScreen, own_terminal

CLI = [sys.executable, "-m", "bridge"]


def entry(name: str, bridge: Bridge, home: Path) -> str:
    token_file = home / f"{name}.token"
    token_file.write_text(bridge.tokens["operator"] + "\n")
    return (
        f'[bridges.{name}]\nurl = "{bridge.base}"\nfingerprint = "{bridge.daemon.fingerprint}"\n'
        f'token_file = "{token_file}"\n'
    )


@pytest.fixture
async def fleet(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> tuple[Bridge, Bridge, Path]:
    """rack-a: node1 (a pty), shared; rack-b: node3, shared (virtual shells); a bridges.toml
    naming both and a third bridge that is down."""
    a = await bridge_factory(
        ports={
            "node1": {"device": str(pty_device.path), "description": "rack A, node 1"},
            "shared": {"device": "virtual:shell"},
        }
    )
    b = await bridge_factory(
        ports={"node3": {"device": "virtual:shell"}, "shared": {"device": "virtual:shell"}}
    )
    await wait_for(lambda: all(p.online for x in (a, b) for p in x.daemon.state.ports.values()))
    home = tmp_path / "xdg"
    (home / "serial-bridge").mkdir(parents=True)
    with socket.socket() as probe:  # a port nobody listens on: a bridge that is down
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]
    toml = entry("rack-a", a, home) + entry("rack-b", b, home)
    toml += (
        f'[bridges.rack-z]\nurl = "https://127.0.0.1:{down}"\nfingerprint = "SHA256:{"ab" * 32}"\n'
    )
    (home / "serial-bridge" / "bridges.toml").write_text(toml)
    return a, b, home


async def cli(home: Path, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
    env.pop("SERIAL_BRIDGE_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ports_lists_every_port_of_every_bridge(
    fleet: tuple[Bridge, Bridge, Path],
) -> None:
    _a, _b, home = fleet
    code, out, err = await cli(home, "ports")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["BRIDGE", "PORT", "STATE", "WRITER", "POWER", "DESCRIPTION"]
    assert [r[:3] for r in rows[1:]] == [
        ["rack-a", "node1", "online"],
        ["rack-a", "shared", "online"],
        ["rack-b", "node3", "online"],
        ["rack-b", "shared", "online"],
    ]
    assert "rack A, node 1" in out
    assert code == 1 and "rack-z:" in err  # the bridge that is down is named, the rest listed


async def test_a_port_name_finds_its_bridge(fleet: tuple[Bridge, Bridge, Path]) -> None:
    _a, b, home = fleet
    bridges = load_bridges(home / "serial-bridge" / "bridges.toml")
    found, port = await find_port("node3", bridges)
    assert (found.name, found.url, port) == ("rack-b", b.base, "node3")
    with pytest.raises(ClientError, match="shared is on rack-a, rack-b: say which"):
        await find_port("shared", bridges)
    with pytest.raises(ClientError, match="no bridge has a port 'nowhere'; not asked: rack-z"):
        await find_port("nowhere", bridges)
    found, port = await find_port("rack-b/shared", bridges)
    assert (found.name, port) == ("rack-b", "shared")
    code, _out, err = await cli(home, "power", "shared", "status")
    assert code == 1 and "say which, as rack-a/shared" in err
    code, out, err = await cli(home, "power", "rack-b/shared", "status", "--json")
    assert code == 0 and '"port": "shared"' in out, err


async def test_connect_by_port_name(
    fleet: tuple[Bridge, Bridge, Path], pty_device: PtyDevice
) -> None:
    a, _b, home = fleet
    screen = PtyScreen()
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
    env.pop("SERIAL_BRIDGE_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "connect",
        "node1",
        stdin=screen.slave,
        stdout=screen.slave,
        stderr=screen.slave,
        env=env,
        start_new_session=True,
        preexec_fn=functools.partial(own_terminal, screen.slave),
    )
    await screen.until(b"connected to node1 (rw)")
    screen.type(b"uptime\r")
    await pty_device.read_until(lambda got: b"uptime\r" in got)
    pty_device.write(b"up 3 days\r\n")
    await screen.until(b"up 3 days")
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert a.daemon.state.ports["node1"].bytes_out >= len(b"uptime\r")
    screen.close()


async def test_an_advertised_bridge_is_discovered(bridge_factory: BridgeFactory) -> None:
    b = await bridge_factory(ports={"lab": {"device": "virtual:shell"}}, server={"advertise": True})
    quiet = await bridge_factory(ports={"lab": {"device": "virtual:shell"}})  # the default: off
    found = await discover(3.0, ["127.0.0.1"])
    mine = [f for f in found if f.url == b.base]
    assert len(mine) == 1
    assert mine[0].fingerprint == b.daemon.fingerprint
    assert mine[0].name.startswith("serial-bridge ")
    assert not [f for f in found if f.url == quiet.base]
    code, out, _err = await cli(Path("/nonexistent"), "discover", "--interface", "127.0.0.1")
    assert code == 0 and b.base in out and b.daemon.fingerprint in out


async def test_an_unpinned_bridge_is_not_asked(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """Listing many bridges asks nobody about certificates: a bridge with neither a fingerprint
    in bridges.toml nor a known_hosts line is refused before its token is sent."""
    b = await bridge_factory(ports={"lab": {"device": "virtual:shell"}})
    home = tmp_path / "xdg"
    (home / "serial-bridge").mkdir(parents=True)
    token_file = home / "t"
    token_file.write_text(b.tokens["admin"])
    (home / "serial-bridge" / "bridges.toml").write_text(
        f'[bridges.new]\nurl = "{b.base}"\ntoken_file = "{token_file}"\n'
    )
    code, out, err = await cli(home, "ports")
    assert code == 1 and "not a known bridge" in err and "lab" not in out
    assert not [k for k, n in b.daemon.state.gate.auth_counts.items() if k[0] == "token" and n]


def test_the_readme_bridges_toml_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```toml bridges.toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "bridges.toml").write_text(block)
    (rack4,) = load_bridges(tmp_path / "bridges.toml").values()
    assert rack4.url == "https://rack4-bridge.example.net:8443"
    assert rack4.token_file == Path.home() / ".config/serial-bridge/rack4.token"
