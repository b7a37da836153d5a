"""Audit events shipped by a real daemon: to a unix datagram socket standing in for journald's
native socket (its protocol parsed here), and as RFC 5424 over TLS (RFC 5425 framing) to a
collector listening on 127.0.0.1 with a certificate from a test CA."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from bridge.config import ConfigError
from bridge.history.audit import AuditLog
from bridge.history.shipping import encode_journal
from tests.conftest import PASSWORDS, Bridge, BridgeFactory, make_config, wait_for

# ---- a journald stand-in ------------------------------------------------------------------------


def parse_journal(datagram: bytes) -> dict[str, str]:
    """journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL): NAME=value lines, or
    NAME, newline, 64-bit little-endian length, value, newline."""
    fields, i = {}, 0
    while i < len(datagram):
        end = datagram.index(b"\n", i)
        line = datagram[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", datagram[end + 1 : end + 9])
            value = datagram[end + 9 : end + 9 + size]
            assert datagram[end + 9 + size : end + 10 + size] == b"\n"
            i = end + 10 + size
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", name), name
        fields[name.decode()] = value.decode()
    return fields


@pytest.fixture
def journal_socket() -> Iterator[socket.socket]:
    with tempfile.TemporaryDirectory(prefix="jnl") as tmp:  # short: sun_path is 108 bytes
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(Path(tmp) / "socket"))
        sock.setblocking(False)
        try:
            yield sock
        finally:
            sock.close()


async def journal_entries(sock: socket.socket, event: str) -> list[dict[str, str]]:
    loop = asyncio.get_running_loop()
    found: list[dict[str, str]] = []
    while not found:
        fields = parse_journal(await asyncio.wait_for(loop.sock_recv(sock, 65536), 10))
        if fields.get("SERIAL_BRIDGE_EVENT") == event:
            found.append(fields)
    return found


async def failed_then_good_login(bridge: Bridge) -> None:
    async with bridge.session() as s:
        for password in ("wrong-password", PASSWORDS["viewer"]):
            body = {"username": "viewer", "password": password}
            async with s.post(f"{bridge.base}/api/login", json=body):
                pass


def audit_file(bridge: Bridge) -> list[dict[str, Any]]:
    return AuditLog(bridge.state_dir / "audit").query()


async def test_events_reach_the_journal_with_structured_fields(
    bridge_factory: BridgeFactory, journal_socket: socket.socket
) -> None:
    path = journal_socket.getsockname()
    bridge = await bridge_factory(ports={}, audit={"journal": True, "journal_socket": path})
    await failed_then_good_login(bridge)
    (failed,) = await journal_entries(journal_socket, "login")
    assert failed["SYSLOG_IDENTIFIER"] == "serial-bridge"
    assert failed["PRIORITY"] == "4"  # warning: a failed login
    assert failed["SERIAL_BRIDGE_OK"] == "false"
    assert failed["SERIAL_BRIDGE_PEER"] == "127.0.0.1"
    assert failed["SERIAL_BRIDGE_USER"] == "viewer"
    assert failed["MESSAGE"].startswith("audit: login user=viewer peer=127.0.0.1 ok=false")
    assert json.loads(failed["SERIAL_BRIDGE_JSON"]) == audit_file(bridge)[0]
    (good,) = await journal_entries(journal_socket, "login")
    assert good["PRIORITY"] == "6" and good["SERIAL_BRIDGE_OK"] == "true"
    sink = bridge.daemon.state.audit_sinks[0]
    assert (sink.name, sink.sent, sink.dropped) == ("journal", 2, 0)


def test_a_value_with_a_newline_uses_the_length_prefixed_form() -> None:
    fields = {"MESSAGE": "two\nlines", "SERIAL_BRIDGE_EVENT": "x"}
    data = encode_journal(fields)
    assert data.startswith(b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n")
    assert parse_journal(data) == fields


async def test_without_a_journal_events_are_kept_and_drops_counted(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    missing = tmp_path / "no-journal-here"
    bridge = await bridge_factory(
        ports={}, audit={"journal_socket": str(missing)} | {"journal": True}
    )
    await failed_then_good_login(bridge)
    assert [e["event"] for e in audit_file(bridge)] == ["login", "login"]
    async with bridge.session("admin") as s, s.get(f"{bridge.base}/metrics") as r:
        text = await r.text()
    assert 'serial_bridge_audit_dropped_total{sink="journal"} 2.0' in text
    assert 'serial_bridge_audit_shipped_total{sink="journal"} 0.0' in text


# ---- a TLS syslog collector ---------------------------------------------------------------------

SYSLOG = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<pid>\d+) (?P<msgid>\S+) "
    rb"\[(?P<sdid>[^ \]]+)(?P<params>(?: [^=\s]+=\"(?:[^\"\\]|\\.)*\")*)\] \xef\xbb\xbf(?P<msg>.*)",
    re.S,
)
PARAM = re.compile(rb' ([^=\s]+)="((?:[^"\\]|\\.)*)"')


class Collector:
    """A syslog-over-TLS receiver: octet-counted frames (RFC 5425), each parsed as RFC 5424."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = int((await reader.readuntil(b" "))[:-1])
                frame = await reader.readexactly(size)
                match = SYSLOG.fullmatch(frame)
                assert match is not None, frame
                params = {
                    k.decode(): re.sub(rb"\\(.)", rb"\1", v).decode()
                    for k, v in PARAM.findall(match["params"])
                }
                await self.messages.put(
                    {**{k: v.decode() for k, v in match.groupdict().items()}, "sd": params}
                )
        writer.close()

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), 30)

    async def start(self, context: ssl.SSLContext, port: int = 0) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port, ssl=context)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            await self.server.wait_closed()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = Collector()
    yield c
    await c.stop()


async def test_events_reach_a_tls_syslog_collector_as_rfc_5424(
    bridge_factory: BridgeFactory, collector: Collector, ca: trustme.CA, tmp_path: Path
) -> None:
    port = await collector.start(server_context(ca))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    audit = {"syslog": f"tls://127.0.0.1:{port}", "syslog_ca": str(tmp_path / "ca.pem")}
    bridge = await bridge_factory(ports={}, audit=audit)
    await failed_then_good_login(bridge)
    failed, good = await collector.next(), await collector.next()
    on_file = audit_file(bridge)
    assert failed["pri"] == "84"  # authpriv (10) * 8 + warning (4)
    assert good["pri"] == "86"  # ... + info (6)
    assert (failed["app"], failed["msgid"], failed["sdid"]) == (
        "serial-bridge",
        "login",
        "audit@32473",
    )
    assert failed["time"] == on_file[0]["time"]
    assert failed["sd"] == {
        "event": "login",
        "user": "viewer",
        "peer": "127.0.0.1",
        "ok": "false",
        "reason": on_file[0]["reason"],
    }
    assert json.loads(failed["msg"]) == on_file[0] and json.loads(good["msg"]) == on_file[1]
    sink = bridge.daemon.state.audit_sinks[0]
    await wait_for(lambda: sink.sent == 2)


async def test_while_the_collector_is_away_a_bounded_queue_drops_the_oldest_then_resumes(
    bridge_factory: BridgeFactory, collector: Collector, ca: trustme.CA, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a free port, nobody listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    audit = {
        "syslog": f"tls://127.0.0.1:{port}",
        "syslog_ca": str(tmp_path / "ca.pem"),
        "syslog_queue": 3,
    }
    bridge = await bridge_factory(ports={}, audit=audit)
    for n in range(5):  # returns at once: nothing waits for the network
        bridge.daemon.state.audit.record("config-reload", changes=[f"change {n}"])
    sink = bridge.daemon.state.audit_sinks[0]
    assert (sink.dropped, len(sink.queue)) == (2, 3)
    await collector.start(server_context(ca), port)
    got = [json.loads((await collector.next())["msg"])["changes"] for _ in range(3)]
    assert got == [["change 2"], ["change 3"], ["change 4"]]
    async with bridge.session("admin") as s, s.get(f"{bridge.base}/metrics") as r:
        text = await r.text()
    assert 'serial_bridge_audit_dropped_total{sink="syslog"} 2.0' in text


async def test_a_collector_with_an_untrusted_certificate_gets_nothing(
    bridge_factory: BridgeFactory,
    collector: Collector,
    ca: trustme.CA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = await collector.start(server_context(trustme.CA()))  # another CA
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    audit = {"syslog": f"tls://127.0.0.1:{port}", "syslog_ca": str(tmp_path / "ca.pem")}
    bridge = await bridge_factory(ports={}, audit=audit)
    bridge.daemon.state.audit.record("config-reload", changes=["x"])
    await wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text)
    assert collector.messages.empty() and bridge.daemon.state.audit_sinks[0].sent == 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [("udp://127.0.0.1:514", "tls://host:port"), ("tls://host:99999", "out of range")],
)
def test_syslog_must_be_tls_with_a_valid_port(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as bad:
        make_config(tmp_path, {}, audit={"syslog": value})
    assert any("audit.syslog" in p and problem in p for p in bad.value.problems)


def test_cli_user_commands_reach_the_journal_too(
    tmp_path: Path, journal_socket: socket.socket
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[audit]\njournal_socket = "{journal_socket.getsockname()}"\n'
    )
    add = ["user", "add", "bob", "--role", "viewer", "--password-stdin", "--config", str(config)]
    result = subprocess.run(
        [sys.executable, "-m", "bridge", *add],
        input="a-long-enough-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    journal_socket.settimeout(10)
    fields = parse_journal(journal_socket.recv(65536))
    assert fields["SERIAL_BRIDGE_EVENT"] == "user-add" and fields["SERIAL_BRIDGE_USER"] == "bob"
    assert "a-long-enough-password" not in json.dumps(fields)
