"""SSH authentication with the real OpenSSH client: certificates signed with `ssh-keygen -s`
(accepted only when trusted, current, naming the user, from an allowed address, not SHA-1),
passwords through keyboard-interactive (off by default; TOTP as a second prompt or inside the
session), the web's throttle shared with SSH passwords and keys, and the per-connection limits."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from bridge.access.sshkeys import parse_key
from bridge.access.store import UserStore
from bridge.access.totp import code_at, new_secret
from tests.conftest import PASSWORDS, Bridge, BridgeFactory, PtyDevice, wait_for
from tests.ssh_helpers import (
    PASSWORD_ONLY,
    SshTarget,
    askpass,
    keygen,
    sign,
    ssh_bridge,
)
from tests.test_metrics import samples, scrape, value
from tests.test_security_support import FakeClock, login


def audit(target: SshTarget) -> list[dict[str, object]]:
    path = target.bridge.state_dir / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def logins(target: SshTarget) -> list[dict[str, object]]:
    return [e for e in audit(target) if e["event"] == "login"]


# ---- certificates -------------------------------------------------------------------------------


@pytest.fixture
async def cert_door(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> tuple[SshTarget, Path]:
    ca = keygen(tmp_path / "ca", comment="test CA")
    trusted = tmp_path / "trusted_cas"
    trusted.write_text(f"# our CA\n{Path(f'{ca}.pub').read_text()}")
    _bridge, door = await ssh_bridge(
        bridge_factory, pty_device, tmp_path, ssh={"trusted_user_ca_keys": str(trusted)}
    )
    return door, ca


async def test_a_valid_certificate_logs_in_and_its_id_and_serial_are_audited(
    cert_door: tuple[SshTarget, Path], tmp_path: Path
) -> None:
    door, ca = cert_door
    key = keygen(tmp_path / "id_op")  # a key the bridge has never seen
    sign(ca, key, ["operator", "someone-else"], serial=4242, key_id="op@vault")
    status, out, err = await door.run(key, "operator:lab", "who")
    assert status == 0, err
    assert out.startswith("lab: online")
    entry = logins(door)[-1]
    assert (entry["user"], entry["method"], entry["cert_id"], entry["cert_serial"]) == (
        "operator",
        "certificate",
        "op@vault",
        4242,
    )


@pytest.mark.parametrize(
    "case",
    ["wrong principal", "expired", "not yet valid", "no principals", "untrusted CA",
     "other address", "SHA-1 signature by the CA"],
)  # fmt: skip
async def test_certificates_that_must_be_refused(
    cert_door: tuple[SshTarget, Path], tmp_path: Path, case: str
) -> None:
    door, ca = cert_door
    key = keygen(tmp_path / "id_x")
    principals: list[str] | None = ["operator"]
    validity, options, algorithm = "+1h", [], None
    if case == "wrong principal":
        principals = ["admin"]  # a valid certificate, but for another user
    elif case == "expired":
        validity = "-2h:-1h"
    elif case == "not yet valid":
        validity = "+1h:+2h"
    elif case == "no principals":
        principals = None  # asyncssh would accept it for any user; OpenSSH refuses it
    elif case == "untrusted CA":
        ca = keygen(tmp_path / "other_ca")
    elif case == "other address":
        options = ["source-address=192.0.2.0/24"]
    else:
        ca = keygen(tmp_path / "rsa_ca", "rsa", 3072)
        (tmp_path / "trusted_cas").write_text(Path(f"{ca}.pub").read_text())
        algorithm = "ssh-rsa"
    sign(ca, key, principals, validity=validity, options=options, algorithm=algorithm)
    status, _out, err = await door.run(key, "operator:lab", "who")
    assert status == 255 and "Permission denied (publickey)" in err, (case, err)
    assert not [e for e in logins(door) if e.get("ok")]


async def test_a_ca_no_longer_trusted_ends_its_certificate_sessions(
    cert_door: tuple[SshTarget, Path], tmp_path: Path
) -> None:
    door, ca = cert_door
    key = keygen(tmp_path / "id_op")
    sign(ca, key, ["operator"])
    async with door.terminal(key, "operator:lab") as term:
        await term.until(b"lab: read-write")
        (tmp_path / "trusted_cas").write_text("# nobody any more\n")
        await term.until(b"disconnected: session ended or credentials changed")
        assert await term.wait() != 0


# ---- passwords ----------------------------------------------------------------------------------


async def test_passwords_are_off_by_default(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    _bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path)
    env = askpass(tmp_path, PASSWORDS["operator"])
    status, _out, err = await door.run(None, "operator:lab", "who", extra=PASSWORD_ONLY, env=env)
    assert status == 255 and "Permission denied (publickey)" in err
    assert not (tmp_path / "askpass.log").exists()  # never asked


async def test_password_then_code_by_keyboard_interactive(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    bridge, door = await ssh_bridge(
        bridge_factory, pty_device, tmp_path, ssh={"password_auth": True}
    )
    status, out, err = await door.run(
        None,
        "operator:lab",
        "who",
        extra=PASSWORD_ONLY,
        env=askpass(tmp_path, PASSWORDS["operator"]),
    )
    assert status == 0 and out.startswith("lab: online"), err
    secret = new_secret()
    UserStore(bridge.state_dir).set_totp("admin", secret)
    (tmp_path / "askpass.log").unlink()
    env = askpass(tmp_path, PASSWORDS["admin"], code_at(secret, time.time()))
    status, out, err = await door.run(None, "admin:lab", "who", extra=PASSWORD_ONLY, env=env)
    assert status == 0, err
    prompts = (tmp_path / "askpass.log").read_text()
    assert "Password:" in prompts and "One-time code:" in prompts
    assert logins(door)[-1]["mfa"] is True
    # a wrong code: refused, counted like a wrong password
    env = askpass(tmp_path, PASSWORDS["admin"], "000000")
    extra = (*PASSWORD_ONLY, "-o", "NumberOfPasswordPrompts=1")
    status, _out, err = await door.run(None, "admin:lab", "who", extra=extra, env=env)
    assert status == 255 and "Permission denied" in err
    assert logins(door)[-1]["reason"] == "wrong, reused or missing TOTP code"


async def test_a_key_login_with_totp_asks_for_the_code_in_the_session(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    key = keygen(tmp_path / "id_op")
    bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys={"operator": key})
    secret = new_secret()
    UserStore(bridge.state_dir).set_totp("operator", secret)
    async with door.terminal(key, "operator:lab") as term:
        at = await term.until(b"One-time code: ")
        term.type(b"123456\r")  # wrong (and not echoed)
        at = await term.until(b"wrong user name, password or code", at)
        at = await term.until(b"One-time code: ", at)
        term.type(code_at(secret, time.time()).encode() + b"\r")
        await term.until(b"lab: read-write", at)
        assert b"123456" not in term.seen
        term.type(b"~.")
        await term.wait()
    assert logins(door)[-1]["method"] == "totp"
    found = samples(await scrape(bridge, "admin"))
    codes = [
        value(found, "serial_bridge_auth_attempts_total", method="totp", result=result)
        for result in ("success", "failure", "throttled")
    ]
    assert codes == [1, 1, 0]  # the code's tries, apart from the key's login
    assert (
        value(found, "serial_bridge_auth_attempts_total", method="ssh-key", result="success") == 1
    )


async def test_failures_share_the_webs_throttle_both_ways(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    """Ten failures from one address within a minute block it, whichever door they came by:
    here four over SSH and six on the web; then both doors refuse even the right password."""
    bridge, door = await ssh_bridge(
        bridge_factory, pty_device, tmp_path, ssh={"password_auth": True}
    )
    wrong = askpass(tmp_path, "not-the-password")
    extra = (*PASSWORD_ONLY, "-o", "NumberOfPasswordPrompts=4")
    status, _out, _err = await door.run(None, "operator:lab", "who", extra=extra, env=wrong)
    assert status == 255
    assert (tmp_path / "askpass.log").read_text().count("Password:") == 4
    async with bridge.session() as http:
        for _ in range(6):
            assert (await login(bridge, http, "viewer", password="wrong"))[0] == 401
        status, _body = await login(bridge, http, "admin")  # the right password
        assert status == 429
    right = askpass(tmp_path, PASSWORDS["admin"])
    status, _out, err = await door.run(None, "admin:lab", "who", extra=PASSWORD_ONLY, env=right)
    assert status == 255 and "too many failed logins; try again in" in err
    assert logins(door)[-1]["reason"] == "throttled"


# ---- limits -------------------------------------------------------------------------------------


async def test_failed_attempts_per_connection_are_capped(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    _bridge, door = await ssh_bridge(
        bridge_factory, pty_device, tmp_path, ssh={"password_auth": True, "max_auth_tries": 2}
    )
    extra = (*PASSWORD_ONLY, "-o", "NumberOfPasswordPrompts=5")
    status, _out, err = await door.run(
        None, "viewer:lab", "who", extra=extra, env=askpass(tmp_path, "wrong-password")
    )
    assert status == 255 and "too many authentication failures" in err
    assert (tmp_path / "askpass.log").read_text().count("Password:") == 2
    assert logins(door)[-1]["reason"] == "too many authentication failures"


def key_failures(target: SshTarget) -> list[dict[str, object]]:
    return [e for e in logins(target) if "keys" in e]


def fingerprints(keys: list[Path]) -> set[str]:
    return {parse_key(Path(f"{key}.pub").read_text()).fingerprint for key in keys}


async def key_logins(bridge: Bridge) -> tuple[float, float, float]:
    """`serial_bridge_auth_attempts_total{method="ssh-key"}` as scraped: success, failure,
    throttled."""
    found = samples(await scrape(bridge, "admin"))
    return tuple(  # type: ignore[return-value]
        value(found, "serial_bridge_auth_attempts_total", method="ssh-key", result=result)
        for result in ("success", "failure", "throttled")
    )


async def test_connections_offering_only_refused_keys_lock_the_address_out(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """Keys share the throttle of every door by address: a connection whose keys are all refused
    is one failed login, so ten of them in a minute (three keys each) block the address for SSH
    and the web, the right key included, before any key is checked, until the oldest leaves the
    window. Other addresses are not blocked, nor is the account: a key cannot be guessed. Each
    connection is audited once, with fingerprints and never the keys themselves."""
    bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys=keys)
    gate = bridge.daemon.state.gate
    clock = FakeClock()
    gate.throttle.clock = clock
    strangers = [keygen(tmp_path / f"id_stranger{i}") for i in range(3)]
    more = ("-i", str(strangers[1]), "-i", str(strangers[2]))
    for _ in range(10):
        status, _out, err = await door.run(strangers[0], "operator:lab", "who", extra=more)
        assert status == 255 and "Permission denied (publickey)" in err, err
    await wait_for(lambda: len(key_failures(door)) == 10)  # the connections have ended
    assert await key_logins(bridge) == (0, 10, 0)  # a failure per connection, as throttled
    status, _out, err = await door.run(keys["operator"], "operator:lab", "who")
    assert status == 255 and "too many failed logins; try again in 60 s" in err, err
    assert await key_logins(bridge) == (0, 10, 1)  # refused before the key was looked at
    async with bridge.session() as http:
        assert (await login(bridge, http, "operator"))[0] == 429
    elsewhere = ("-o", "BindAddress=127.0.0.2")
    status, out, err = await door.run(keys["operator"], "operator:lab", "who", extra=elsewhere)
    assert status == 0 and out.startswith("lab: online"), err
    assert await key_logins(bridge) == (1, 10, 1)
    for entry in key_failures(door):
        assert (entry["user"], entry["peer"], entry["via"]) == ("operator", "127.0.0.1", "ssh")
        assert entry["reason"] == "key refused"
        assert set(entry["keys"]) == fingerprints(strangers)
    throttled = [e for e in logins(door) if e.get("reason") == "throttled"]
    assert throttled[0]["via"] == "ssh" and throttled[0]["peer"] == "127.0.0.1"
    trail = (bridge.state_dir / "audit" / "audit.jsonl").read_text()
    assert not any(Path(f"{key}.pub").read_text().split()[1] in trail for key in strangers)
    clock.advance(60)  # the oldest failure leaves the window
    status, out, err = await door.run(keys["operator"], "operator:lab", "who")
    assert status == 0 and out.startswith("lab: online"), err


async def test_a_user_with_several_keys_the_last_authorised_is_never_locked_out(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """OpenSSH offers each key it has in turn: with the authorised key third, two are refused at
    every login. Only connections that end without logging in count, so six such logins (twelve
    refused keys: per offer, more than the address's ten a minute) leave the address all its
    failures; a connection offering only the other two is one failure, like a wrong password.
    The metrics count the same: six successes, then one failure, never a refused offer."""
    bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys=keys)
    gate = bridge.daemon.state.gate
    gate.throttle.clock = FakeClock()
    old = [keygen(tmp_path / f"id_old{i}") for i in range(2)]
    for _ in range(6):
        identities = ("-i", str(old[1]), "-i", str(keys["operator"]))
        status, out, err = await door.run(old[0], "operator:lab", "who", extra=identities)
        assert status == 0 and out.startswith("lab: online"), err
    assert await key_logins(bridge) == (6, 0, 0)  # not 12 failures: one per refused offer
    assert key_failures(door) == []
    async with bridge.session() as http:
        for i in range(9):  # one short of the address's limit
            assert (await login(bridge, http, f"nobody{i}"))[0] == 401
        status, _out, err = await door.run(old[0], "operator:lab", "who", extra=("-i", str(old[1])))
        assert status == 255 and "Permission denied (publickey)" in err, err
        assert (await login(bridge, http, "operator"))[0] == 429  # the tenth failure
    await wait_for(lambda: len(key_failures(door)) == 1)
    assert set(key_failures(door)[0]["keys"]) == fingerprints(old)
    assert await key_logins(bridge) == (6, 1, 0)


async def _banner(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 256), 10)


async def test_connections_still_logging_in_are_capped_and_given_a_grace_time(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    bridge, door = await ssh_bridge(
        bridge_factory,
        pty_device,
        tmp_path,
        ssh={"max_unauthenticated": 2, "login_grace": "500ms"},
    )
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for _ in range(3):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", door.port))
            socks.append(sock)
        assert (await _banner(socks[0])).startswith(b"SSH-2.0-serial-bridge")
        assert (await _banner(socks[1])).startswith(b"SSH-2.0-serial-bridge")
        assert await _banner(socks[2]) == b""  # the third is closed at once
        # the grace time ends the two silent ones; then a new connection is served again
        for sock in socks[:2]:
            while await _banner(sock):
                pass
        assert door.bridge.daemon.ssh is not None
        await wait_for(lambda: door.bridge.daemon.ssh.door.pending == 0)
        fresh = socket.socket()
        fresh.setblocking(False)
        await loop.sock_connect(fresh, ("127.0.0.1", door.port))
        socks.append(fresh)
        assert (await _banner(fresh)).startswith(b"SSH-2.0-serial-bridge")
    finally:
        for sock in socks:
            sock.close()
    assert bridge.daemon.ssh is not None


async def test_sha1_signatures_are_refused_from_any_client(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    """OpenSSH never signs with ssh-rsa here (the bridge does not offer it); a client that
    does anyway (asyncssh forced to) is refused, though asyncssh's server would verify it."""
    import asyncssh

    key = keygen(tmp_path / "id_rsa", "rsa", 3072)
    _bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys={"operator": key})

    async def attempt(algorithm: bytes) -> str:
        pair = asyncssh.load_keypairs([str(key)])[0]
        pair.set_sig_algorithm(algorithm)
        try:
            async with asyncssh.connect(
                "127.0.0.1", door.port, username="operator:lab", client_keys=[pair],
                known_hosts=None, signature_algs=[algorithm.decode()],
                preferred_auth="publickey", agent_path=None, config=None,
            ) as conn:  # fmt: skip
                return (await conn.run("who")).stdout or ""
        except asyncssh.PermissionDenied:
            return "refused"

    assert (await attempt(b"rsa-sha2-256")).startswith("lab: online")
    assert await attempt(b"ssh-rsa") == "refused"
    status, _out, err = await door.run(key, "operator:lab", "who")  # OpenSSH: rsa-sha2-512
    assert status == 0, err
