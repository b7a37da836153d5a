"""docs/protocol.md is enough to write a client: its example client (docs/examples/) run against a
real daemon on 127.0.0.1, and the document's less obvious claims checked one by one."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import sys
from pathlib import Path

import aiohttp

from bridge.access.store import UserStore
from tests.conftest import PASSWORDS, Bridge, PtyDevice, WsReader

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "console_client.py"


async def run_example(
    bridge: Bridge, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        f"{bridge.base}/lab",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def answer(pty: PtyDevice, typed: bytes, reply: bytes) -> bytes:
    """Be the target: wait for `typed`, then print `reply`. Returns what was typed."""
    got = await pty.read_until(lambda b: typed in b, timeout=30)
    await pty.awrite(reply)
    return got


async def test_example_client_with_a_password_session(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    """127.0.0.1 is an IP literal: the session cookie survives only in a jar that keeps cookies
    of IP hosts; the websocket carries the Origin; logout carries the CSRF token."""
    args = ("--fingerprint", bridge.daemon.fingerprint, "--user", "operator")
    (code, out, err), typed = await asyncio.gather(
        run_example(bridge, *args, "--send", "echo hi", "--expect", "hi-from-target",
                    stdin=PASSWORDS["operator"] + "\n"),
        answer(pty_device, b"echo hi\r", b"hi-from-target\r\n"),
    )  # fmt: skip
    assert code == 0, err
    assert typed == b"echo hi\r"  # Enter is CR
    assert "hi-from-target" in out
    assert "port lab: online, 0 viewer(s)" in err  # /api/ports: a count
    hello = json.loads(next(line for line in err.splitlines() if line.startswith("[hello]"))[8:])
    assert hello["viewers"] == ["operator"] and hello["mode"] == "rw"  # hello: a list
    audit = (bridge.state_dir / "audit" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in audit]
    assert [e["event"] for e in events if e.get("user") == "operator"][-1] == "logout"


async def test_example_client_with_a_token(bridge: Bridge, pty_device: PtyDevice) -> None:
    token = {"SERIAL_BRIDGE_TOKEN": bridge.tokens["operator"]}
    (code, out, err), typed = await asyncio.gather(
        run_example(bridge, "--fingerprint", bridge.daemon.fingerprint, "--send", "id",
                    "--expect", "uid=0", env=token),
        answer(pty_device, b"id\r", b"uid=0(root)\r\n"),
    )  # fmt: skip
    assert code == 0, err
    assert typed == b"id\r" and "uid=0(root)" in out


async def test_example_client_refuses_another_certificate(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    wrong = "SHA256:" + "00" * 32
    code, _, err = await run_example(bridge, "--fingerprint", wrong, "--user", "operator",
                                     stdin=PASSWORDS["operator"] + "\n")  # fmt: skip
    assert code == 2 and "is not the pinned one" in err
    assert pty_device.drain_input() == b""


def served_certificate_der(base: str) -> bytes:
    host, port = base.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


async def test_the_documents_claims_hold(bridge: Bridge) -> None:
    # The pin is the SHA-256 of the DER certificate, as `cert show` prints it.
    der = await asyncio.to_thread(served_certificate_der, bridge.base)
    assert bridge.daemon.fingerprint == "SHA256:" + hashlib.sha256(der).hexdigest()

    login = {"username": "viewer", "password": PASSWORDS["viewer"]}
    connector = aiohttp.TCPConnector(ssl=bridge.ssl_pin())
    headers = {"Origin": bridge.origin}
    # A default (safe) aiohttp jar drops the cookie of an IP-literal host: logged in, yet 401.
    async with aiohttp.ClientSession(connector=connector, headers=headers) as safe_jar:
        async with safe_jar.post(f"{bridge.base}/api/login", json=login) as resp:
            assert resp.status == 200
        async with safe_jar.get(f"{bridge.base}/api/ports") as resp:
            assert resp.status == 401

    jar = aiohttp.CookieJar(unsafe=True)  # keeps the cookie of an IP-literal host
    connector = aiohttp.TCPConnector(ssl=bridge.ssl_pin())
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as s:  # no Origin
        async with s.post(f"{bridge.base}/api/login", json=login) as resp:
            assert resp.status == 200
        # A cookie session's websocket without Origin is refused; with it, it opens.
        url = f"{bridge.base}/api/ports/lab/console"
        try:
            await s.ws_connect(url)
            raise AssertionError("websocket without Origin accepted for a session")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
        async with s.ws_connect(url, headers={"Origin": bridge.origin}) as ws:
            await WsReader(ws).message("hello")
        async with s.get(f"{bridge.base}/metrics") as resp:
            assert resp.status == 200 and "serial_bridge_port_online" in await resp.text()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=bridge.ssl_pin())) as anon:
        async with anon.get(f"{bridge.base}/metrics") as resp:  # /metrics needs credentials
            assert resp.status == 401
        async with anon.get(f"{bridge.base}/healthz") as resp:  # /healthz does not
            assert resp.status == 200


async def test_metrics_show_only_the_ports_the_caller_may_see(bridge: Bridge) -> None:
    UserStore(bridge.state_dir).set_ports("viewer", ["elsewhere"])
    async with bridge.session("viewer") as s, s.get(f"{bridge.base}/metrics") as resp:
        assert resp.status == 200 and 'port="lab"' not in await resp.text()
    async with bridge.session("operator") as s, s.get(f"{bridge.base}/metrics") as resp:
        assert resp.status == 200
        assert 'serial_bridge_port_online{port="lab"} 1.0' in await resp.text()
