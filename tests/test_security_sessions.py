"""Sessions: the cookie's attributes, a new id at every login, idle timeout and lifetime, and open
websockets closed (1008) within a second when their credential ends — also by a CLI command in
another process. No credential is taken from a query string."""

from __future__ import annotations

import asyncio
import time
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import (
    PASSWORDS,
    Bridge,
    BridgeFactory,
    PtyDevice,
    WsReader,
    user_hash,
    wait_for,
)
from tests.test_security_support import (
    FakeClock,
    acli,
    acli_totp,
    closed_within,
    cookie_of,
    logged_in,
    login,
    write_cli_config,
)


class _Latencies(dict[str, float]):
    """Measured close latencies; printed (pytest -s) for the report."""

    def __setitem__(self, key: str, value: float) -> None:
        print(f"\nwebsocket closed {value * 1000:.0f} ms after {key}")
        super().__setitem__(key, value)


LATENCIES = _Latencies()


async def test_session_cookie_is_host_prefixed_secure_httponly_strict(bridge: Bridge) -> None:
    async with bridge.session() as s:
        body = {"username": "viewer", "password": PASSWORDS["viewer"]}
        async with s.post(f"{bridge.base}/api/login", json=body) as resp:
            assert resp.status == 200
            headers = resp.headers.getall("Set-Cookie")
    assert len(headers) == 1
    raw = headers[0]
    morsel = SimpleCookie(raw)["__Host-sb_session"]
    assert morsel["secure"] and morsel["httponly"]
    assert morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["domain"] and "domain" not in raw.lower()
    assert len(morsel.value) >= 43  # 256 random bits, url-safe base64


async def test_login_issues_a_new_session_id_and_ends_the_old_one(bridge: Bridge) -> None:
    async with bridge.session() as s:
        assert (await login(bridge, s, "viewer"))[0] == 200
        first = cookie_of(s)
        assert (await login(bridge, s, "viewer"))[0] == 200  # presents `first` while logging in
        second = cookie_of(s)
    assert first != second
    for cookie, status in ((first, 401), (second, 200)):
        async with (
            bridge.session(cookies={"__Host-sb_session": cookie}) as c,
            c.get(f"{bridge.base}/api/whoami") as resp,
        ):
            assert resp.status == status


async def test_idle_timeout_and_absolute_lifetime(bridge: Bridge) -> None:
    clock = FakeClock()
    assert bridge.daemon.state is not None
    bridge.daemon.state.sessions.clock = clock
    s, _ = await logged_in(bridge, "viewer")
    async with s:

        async def whoami() -> int:
            async with s.get(f"{bridge.base}/api/whoami") as resp:
                return resp.status

        clock.advance(29 * 60)
        assert await whoami() == 200  # within the 30 min idle limit; this touches it
        while clock.now + 29 * 60 - 1000.0 <= 12 * 3600:  # active every 29 min: alive up to 12 h
            clock.advance(29 * 60)
            assert await whoami() == 200
        clock.advance(29 * 60)
        assert clock.now - 1000.0 > 12 * 3600
        assert await whoami() == 401  # active, but over the 12 h lifetime
    s2, _ = await logged_in(bridge, "viewer")
    async with s2:
        clock.advance(30 * 60 + 1)
        async with s2.get(f"{bridge.base}/api/whoami") as resp:
            assert resp.status == 401  # idle for more than 30 min


async def test_expiry_closes_the_websocket_and_keystrokes_count_as_activity(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    clock = FakeClock()
    assert bridge.daemon.state is not None
    state = bridge.daemon.state
    state.sessions.clock = clock
    s, _ = await logged_in(bridge, "operator")
    async with s:
        ws = await bridge.ws(s, "lab", mode="rw")
        r = WsReader(ws)
        await r.message("hello")
        session = next(iter(state.sessions._sessions.values()))
        clock.advance(20 * 60)
        await ws.send_bytes(b"x")
        await pty_device.read_until(lambda b: b"x" in b)
        await wait_for(lambda: session.last_seen == clock.now, timeout=3)  # watcher touched it
        clock.advance(20 * 60)  # 40 min after login, 20 after the keystroke: still alive
        await r.pump(0.8)
        assert not r.closed and len(state.consoles) == 1
        clock.advance(11 * 60)  # 31 min idle
        took, code = await closed_within(ws, 3.0)
        assert code == 1008
        LATENCIES["expiry"] = took


async def test_logout_closes_that_sessions_websocket_within_a_second(bridge: Bridge) -> None:
    s, csrf = await logged_in(bridge, "viewer")
    other, _ = await logged_in(bridge, "viewer")
    async with s, other:
        ws = await bridge.ws(s, "lab", mode="ro")
        await WsReader(ws).message("hello")
        ws_other = await bridge.ws(other, "lab", mode="ro")
        r_other = WsReader(ws_other)
        await r_other.message("hello")
        start = time.monotonic()
        async with s.post(f"{bridge.base}/api/logout", headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 200
        took, code = await closed_within(ws, 3.0)
        took = time.monotonic() - start
        assert code == 1008 and took < 3.0
        LATENCIES["logout"] = took
        await r_other.pump(0.3)
        assert not r_other.closed  # another login of the same user is not logged out
        async with s.get(f"{bridge.base}/api/whoami") as resp:
            assert resp.status == 401


async def _two_sockets(bridge: Bridge, user: str) -> tuple[aiohttp.ClientSession, ...]:
    s, _ = await logged_in(bridge, user)
    t = bridge.session(token_user=user)
    return s, t


async def test_password_change_by_cli_closes_session_websockets(
    bridge: Bridge, tmp_path: Path
) -> None:
    config = write_cli_config(bridge.state_dir, tmp_path / "cli.toml")
    s, _ = await logged_in(bridge, "operator")
    async with s:
        ws = await bridge.ws(s, "lab", mode="ro")
        await WsReader(ws).message("hello")
        done = await acli(
            "user", "passwd", "operator", "--password-stdin", "--config", str(config),
            stdin="a-new-password-2\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        start = time.monotonic()
        _, code = await closed_within(ws, 3.0)
        assert code == 1008
        LATENCIES["password change (CLI)"] = time.monotonic() - start
        async with s.get(f"{bridge.base}/api/whoami") as resp:
            assert resp.status == 401


async def test_user_deletion_by_cli_closes_every_websocket_of_the_user(
    bridge: Bridge, tmp_path: Path
) -> None:
    config = write_cli_config(bridge.state_dir, tmp_path / "cli.toml")
    s, t = await _two_sockets(bridge, "operator")
    v, _ = await logged_in(bridge, "viewer")
    async with s, t, v:
        sockets = [await bridge.ws(c, "lab", mode="ro") for c in (s, t)]
        bystander = WsReader(await bridge.ws(v, "lab", mode="ro"))
        for ws in sockets:
            await WsReader(ws).message("hello")
        await bystander.message("hello")
        done = await acli("user", "del", "operator", "--config", str(config))
        assert done.returncode == 0, done.stderr
        start = time.monotonic()
        for ws in sockets:
            _, code = await closed_within(ws, 3.0)
            assert code == 1008
        LATENCIES["user deletion (CLI)"] = time.monotonic() - start
        await bystander.pump(0.3)
        assert not bystander.closed


async def test_token_revocation_by_cli_closes_that_tokens_websocket(
    bridge: Bridge, tmp_path: Path
) -> None:
    config = write_cli_config(bridge.state_dir, tmp_path / "cli.toml")
    s, t = await _two_sockets(bridge, "operator")
    async with s, t:
        ws_token = await bridge.ws(t, "lab", mode="ro")
        await WsReader(ws_token).message("hello")
        session_reader = WsReader(await bridge.ws(s, "lab", mode="ro"))
        await session_reader.message("hello")
        done = await acli("token", "revoke", "operator-test", "--config", str(config))
        assert done.returncode == 0, done.stderr
        start = time.monotonic()
        _, code = await closed_within(ws_token, 3.0)
        assert code == 1008
        LATENCIES["token revocation (CLI)"] = time.monotonic() - start
        await session_reader.pump(0.3)
        assert not session_reader.closed
        async with t.get(f"{bridge.base}/api/whoami") as resp:
            assert resp.status == 401


async def test_no_credential_is_accepted_from_a_query_string(bridge: Bridge) -> None:
    token = bridge.tokens["admin"]
    s, _ = await logged_in(bridge, "admin")
    async with s:
        cookie = cookie_of(s)
    queries = [
        f"token={token}", f"access_token={token}", f"authorization=Bearer%20{token}",
        f"session={cookie}", f"__Host-sb_session={cookie}", f"sb_session={cookie}",
    ]  # fmt: skip
    async with bridge.session() as anon:
        for q in queries:
            async with anon.get(f"{bridge.base}/api/whoami?{q}") as resp:
                assert resp.status == 401, q
            async with anon.get(f"{bridge.base}/api/ports?{q}") as resp:
                assert resp.status == 401, q
            try:
                ws = await anon.ws_connect(f"{bridge.base}/api/ports/lab/console?mode=ro&{q}")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 401, q
            else:
                await ws.close()
                raise AssertionError(f"websocket opened with ?{q}")


async def test_role_or_port_list_change_closes_the_websocket(bridge: Bridge) -> None:
    """An open socket keeps the rights it was granted with; when they shrink, it is closed."""
    from bridge.access.store import UserStore

    async with bridge.session(token_user="operator") as t, bridge.session(token_user="admin") as a:
        ws = await bridge.ws(t, "lab", mode="rw")
        await WsReader(ws).message("hello")
        admin_ws = await bridge.ws(a, "lab", mode="ro")
        admin_reader = WsReader(admin_ws)
        await admin_reader.message("hello")
        store = UserStore(bridge.state_dir)  # as another process would
        user = store.get("operator")
        assert user is not None
        user.role = "viewer"
        store.put(user)
        _, code = await closed_within(ws, 3.0)
        assert code == 1008
        admin = store.get("admin")
        assert admin is not None
        admin.ports = ["elsewhere"]
        store.put(admin)
        _, code = await closed_within(admin_ws, 3.0)
        assert code == 1008


async def test_a_deleted_and_re_added_user_inherits_no_session(bridge: Bridge) -> None:
    """Delete and re-add (another process, faster than the socket watcher looks): the old
    user's session cookie and its open console are dead, even with the same role (#18.10)."""
    from bridge.access.store import UserStore
    from tests.conftest import user_hash

    s, _ = await logged_in(bridge, "operator")
    async with s:
        ws = await bridge.ws(s, "lab", mode="ro")
        await WsReader(ws).message("hello")
        store = UserStore(bridge.state_dir)
        store.delete("operator")
        store.add("operator", "operator", user_hash("viewer"), None)  # same name, new password
        _, code = await closed_within(ws, 3.0)
        assert code == 1008
        async with s.get(f"{bridge.base}/api/whoami") as resp:
            assert resp.status == 401


async def test_totp_enrolment_by_cli_ends_the_users_sessions(
    bridge: Bridge, tmp_path: Path
) -> None:
    config = write_cli_config(bridge.state_dir, tmp_path / "cli.toml")
    s, _ = await logged_in(bridge, "operator")
    async with s:
        ws = await bridge.ws(s, "lab", mode="ro")
        await WsReader(ws).message("hello")
        done, _ = await acli_totp(config, "operator")
        assert done.returncode == 0, done.stderr
        _, code = await closed_within(ws, 3.0)
        assert code == 1008
        async with s.get(f"{bridge.base}/api/whoami") as resp:
            assert resp.status == 401


async def test_user_set_changes_rights_and_keeps_sessions(bridge: Bridge, tmp_path: Path) -> None:
    """`user set NAME --role/--ports`: no delete-and-re-add needed. The session stays, judged
    with the new rights; a console the new rights do not cover is closed; `--ports ""` is an
    error (never "every port") and `--ports '*'` gives every port back."""
    config = write_cli_config(bridge.state_dir, tmp_path / "cli.toml")
    s, _ = await logged_in(bridge, "operator")
    async with s:
        ws = await bridge.ws(s, "lab", mode="rw")
        await WsReader(ws).message("hello")
        done = await acli("user", "set", "operator", "--role", "viewer", "--config", str(config))
        assert done.returncode == 0, done.stderr
        _, code = await closed_within(ws, 3.0)
        assert code == 1008
        async with s.get(f"{bridge.base}/api/whoami") as resp:
            assert resp.status == 200
            assert (await resp.json())["role"] == "viewer"
        for ports in ("", ","):
            done = await acli("user", "set", "operator", "--ports", ports, "--config", str(config))
            assert done.returncode == 1 and "names no port" in done.stderr
        done = await acli("user", "set", "operator", "--ports", "other", "--config", str(config))
        assert done.returncode == 0, done.stderr
        async with s.get(f"{bridge.base}/api/ports") as resp:
            assert [p["name"] for p in await resp.json()] == []
        from bridge.access.store import UserStore

        UserStore(bridge.state_dir).set_ports("operator", [])  # no port at all, not every port
        async with s.get(f"{bridge.base}/api/whoami") as resp:
            assert (await resp.json())["ports"] == []
        done = await acli("user", "set", "operator", "--ports", "*", "--config", str(config))
        assert done.returncode == 0, done.stderr
        async with s.get(f"{bridge.base}/api/ports") as resp:
            assert [p["name"] for p in await resp.json()] == ["lab"]
    listed = await acli("user", "list", "--config", str(config))
    assert "operator\tviewer\tports=*" in listed.stdout


async def _follow(bridge: Bridge, client: aiohttp.ClientSession) -> aiohttp.ClientResponse:
    """A `follow=1` log stream, once the bridge has registered it as an open console."""
    consoles = bridge.daemon.state.consoles
    before = len(consoles)
    resp = await client.get(f"{bridge.base}/api/ports/lab/log?format=raw&follow=1")
    assert resp.status == 200, await resp.text()
    await wait_for(lambda: len(consoles) > before)
    return resp


async def _ended_within(resp: aiohttp.ClientResponse, limit: float) -> float:
    """Seconds until the server ended the stream (end of body, or a cut connection)."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while await resp.content.read(65536):
                pass
    except TimeoutError:
        raise AssertionError(f"log stream still open after {limit} s") from None
    except aiohttp.ClientPayloadError:
        pass  # cut off: as ended
    finally:
        resp.close()
    return time.monotonic() - start


async def test_log_follow_streams_end_with_their_credential(bridge: Bridge) -> None:
    """`GET /log?follow=1` used to stream live output after logout, password change, token
    revocation and user deletion (#18.3); it ends within a second, like a websocket."""
    from bridge.access.store import UserStore

    store = UserStore(bridge.state_dir)  # as a `serial-bridge user|token` command would
    s, csrf = await logged_in(bridge, "operator")
    async with s:
        stream = await _follow(bridge, s)
        async with s.post(f"{bridge.base}/api/logout", headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 200
        LATENCIES["logout (log stream)"] = await _ended_within(stream, 3.0)
    s, _ = await logged_in(bridge, "operator")
    async with s:
        stream = await _follow(bridge, s)
        store.set_password("operator", user_hash("viewer"))
        LATENCIES["password change (log stream)"] = await _ended_within(stream, 3.0)
    async with bridge.session(token_user="viewer") as t:
        stream = await _follow(bridge, t)
        store.revoke_token("viewer-test")
        LATENCIES["token revocation (log stream)"] = await _ended_within(stream, 3.0)
    s, _ = await logged_in(bridge, "admin")
    async with s, bridge.session(token_user="admin") as t:
        streams = [await _follow(bridge, s), await _follow(bridge, t)]
        store.delete("admin")
        for stream in streams:
            LATENCIES["user deletion (log stream)"] = await _ended_within(stream, 3.0)
    assert len(bridge.daemon.state.consoles) == 0


async def test_log_follow_streams_count_toward_the_users_connections(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}}, server={"max_connections_per_user": 2}
    )
    async with b.session(token_user="viewer") as v:
        ws = await b.ws(v, "lab", mode="ro")
        await WsReader(ws).message("hello")
        stream = await _follow(b, v)
        async with v.get(f"{b.base}/api/ports/lab/log?format=raw&follow=1") as third:
            assert third.status == 429
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await b.ws(v, "lab", mode="ro")
        assert refused.value.status == 429
        async with v.get(f"{b.base}/api/ports/lab/log?format=raw") as plain:
            assert plain.status == 200  # a one-off read is not a connection that stays
        stream.close()
        await ws.close()
