"""TOTP (RFC 6238): enrolment through the CLI, a code working once and never twice, the +-1 step
window, long input refused before any work, and the global and per-port requirements."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from bridge.access import totp
from bridge.access.store import UserStore
from tests.conftest import Bridge, BridgeFactory, PtyDevice, wait_for
from tests.test_security_support import acli_totp, cli, cli_totp, login, write_cli_config

# RFC 6238 appendix B: the SHA-1 seed and two of its 8-digit vectors (we use 6 digits: the
# last six of each).
RFC_SEED = b"12345678901234567890"


def _now_away_from_a_step_edge() -> float:
    """A time at least 3 s from a step boundary, so "one step late" stays one step late."""
    now = time.time()
    into = now % totp.STEP
    if into < 3 or into > totp.STEP - 3:
        time.sleep(totp.STEP - into + 3 if into > 3 else 3 - into)
    return time.time()


def test_codes_match_rfc_6238_vectors() -> None:
    secret = base64.b32encode(RFC_SEED).decode().rstrip("=")
    assert totp.code_at(secret, 59) == "287082"  # 94287082
    assert totp.code_at(secret, 1111111109) == "081804"  # 07081804
    ref = TOTP(RFC_SEED, 6, SHA1(), 30)
    assert totp.code_at(secret, 1234567890).encode() == ref.generate(1234567890)


def test_secret_is_160_bits_and_uri_is_complete() -> None:
    secret = totp.new_secret()
    assert len(totp._key(secret)) == 20
    assert secret != totp.new_secret()
    uri = urlsplit(totp.provisioning_uri(secret, "alice"))
    assert (uri.scheme, uri.netloc, uri.path) == ("otpauth", "totp", "/serial-bridge:alice")
    q = parse_qs(uri.query)
    assert q["secret"] == [secret] and q["digits"] == ["6"] and q["period"] == ["30"]
    assert q["algorithm"] == ["SHA1"] and q["issuer"] == ["serial-bridge"]


def test_window_is_one_step_either_side_and_a_step_is_used_once() -> None:
    secret = totp.new_secret()
    now = 1_800_000_015.0  # 15 s into a step
    step = totp.step_of(now)
    for delta in (-1, 0, 1):
        code = totp.code_at(secret, now + delta * 30)
        assert totp.verify(secret, code, 0, now) == step + delta
        assert totp.verify(secret, code, step + delta, now) is None  # used already
    for delta in (-3, -2, 2, 3):
        assert totp.verify(secret, totp.code_at(secret, now + delta * 30), 0, now) is None
    wrong = "000000" if totp.code_at(secret, now) != "000000" else "111111"
    assert totp.verify(secret, wrong, 0, now) is None


@pytest.mark.parametrize(
    "code", ["1" * 11, "12345678901234567890" * 50, "12 456", "١٢٣٤٥٦", 123456, None]
)
def test_malformed_or_long_input_refused_before_any_work(
    code: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(secret: str) -> TOTP:
        raise AssertionError("TOTP computed for malformed input")

    monkeypatch.setattr(totp, "_totp", no_work)
    assert totp.verify(totp.new_secret(), code, 0) is None


def test_a_clock_stepped_back_locks_nobody_out_and_no_code_works_twice(tmp_path: Path) -> None:
    """A login under a clock that ran an hour ahead left a step an hour ahead: once the clock is
    stepped back, codes of the right time work at once (not an hour later), each once only."""
    store = UserStore(tmp_path)
    store.add("alice", "operator", "x", None)
    secret = totp.new_secret()
    store.set_totp("alice", secret)
    now = 1_790_000_000.0
    ahead = totp.step_of(now + 3600)
    assert store.use_totp_step("alice", ahead, now=now + 3600)
    user = store.get("alice")
    assert user is not None
    code = totp.code_at(secret, now)
    step = totp.verify(secret, code, user.totp_last_step, now, used=user.totp_used)
    assert step == totp.step_of(now)  # the clock is right again: today's code is fresh
    assert store.use_totp_step("alice", step, now=now)
    assert not store.use_totp_step("alice", step, now=now)  # once only
    assert not store.use_totp_step("alice", step - 1, now=now)  # older than the last: refused
    assert not store.use_totp_step("alice", ahead, now=now + 3600)  # and the early one too


def test_used_step_is_stored_atomically_across_writers(tmp_path: Path) -> None:
    store = UserStore(tmp_path)
    store.add("alice", "operator", "x", None)
    store.set_totp("alice", totp.new_secret())
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        mine = UserStore(tmp_path)  # a separate reader of the file, like another process
        barrier.wait()
        results.append(mine.use_totp_step("alice", 1234))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [False] * 7 + [True]
    assert store.get("alice").totp_last_step == 1234  # type: ignore[union-attr]
    assert not store.use_totp_step("alice", 1233)
    assert stat.S_IMODE(os.stat(tmp_path / "users.json").st_mode) == 0o600


def test_cli_enrolls_prints_uri_and_stores_secret_0600(tmp_path: Path) -> None:
    config = write_cli_config(tmp_path / "state", tmp_path / "c.toml")
    add = cli(
        "user", "add", "alice", "--password-stdin", "--config", str(config), stdin="pw-alice-123\n"
    )
    assert add.returncode == 0, add.stderr
    done, secret = cli_totp(config, "alice")
    assert done.returncode == 0, done.stderr
    uri = done.stdout.strip().splitlines()[-1]
    assert uri.startswith("otpauth://totp/serial-bridge:alice?")
    assert parse_qs(urlsplit(uri).query)["secret"] == [secret]
    user = UserStore(tmp_path / "state").get("alice")
    assert user is not None and user.totp_secret == secret
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "users.json").st_mode) == 0o600
    listed = cli("user", "list", "--config", str(config))
    assert "totp" in listed.stdout
    assert cli_totp(config, "nobody")[0].returncode == 1
    removed = cli("user", "totp", "alice", "--remove", "--config", str(config))
    assert removed.returncode == 0
    assert UserStore(tmp_path / "state").get("alice").totp_secret is None  # type: ignore[union-attr]


def test_enrolment_takes_effect_only_once_a_code_from_the_app_matches(tmp_path: Path) -> None:
    """A mis-scanned secret or a phone with a wrong clock must not lock the user out: `user
    totp` stores the new secret only after a code made from it, and keeps the old one until
    then."""
    config = write_cli_config(tmp_path / "state", tmp_path / "c.toml")
    add = cli(
        "user", "add", "alice", "--password-stdin", "--config", str(config), stdin="pw-alice-123\n"
    )
    assert add.returncode == 0, add.stderr
    store = UserStore(tmp_path / "state")
    first, old = cli_totp(config, "alice")
    assert first.returncode == 0 and store.get("alice").totp_secret == old  # type: ignore[union-attr]

    def wrong(secret: str) -> list[str]:
        right = totp.code_at(secret, time.time())
        return [str((int(right) + 1) % 1_000_000).zfill(6)] * 3  # three times an off-by-one code

    refused, new = cli_totp(config, "alice", wrong)
    assert refused.returncode == 1 and "3 codes did not match" in refused.stderr
    assert refused.stderr.count("that code does not match") == 3
    assert new != old and store.get("alice").totp_secret == old  # type: ignore[union-attr]

    no_code, _ = cli_totp(config, "alice", lambda secret: [])  # end of input, as with Ctrl-D
    assert no_code.returncode == 1 and "no code given" in no_code.stderr
    assert store.get("alice").totp_secret == old  # type: ignore[union-attr]

    def typo_then_right(secret: str) -> list[str]:
        return ["12345", totp.code_at(secret, time.time())]

    second_try, new = cli_totp(config, "alice", typo_then_right)
    assert second_try.returncode == 0, second_try.stderr
    assert store.get("alice").totp_secret == new != old  # type: ignore[union-attr]
    audit = (tmp_path / "state" / "audit" / "audit.jsonl").read_text()
    assert audit.count('"user-totp"') == 2  # the refused attempts changed nothing


async def _enroll(bridge: Bridge, tmp_path: Path, user: str) -> str:
    config = write_cli_config(bridge.state_dir, tmp_path / "cli.toml")
    done, secret = await acli_totp(config, user)
    assert done.returncode == 0, done.stderr
    return secret


async def test_login_needs_the_code_once_never_twice_never_two_steps_late(
    bridge: Bridge, tmp_path: Path
) -> None:
    secret = await _enroll(bridge, tmp_path, "operator")
    now = _now_away_from_a_step_edge()
    async with bridge.session() as s:
        assert (await login(bridge, s, "operator"))[0] == 401  # password alone
        late = totp.code_at(secret, now - 60)
        if late != totp.code_at(secret, now) and late != totp.code_at(secret, now - 30):
            assert (await login(bridge, s, "operator", totp=late))[0] == 401  # two steps late
        assert (await login(bridge, s, "operator", totp="12345678901"))[0] == 400  # > 10 chars
        assert (await login(bridge, s, "operator", totp=""))[0] == 401  # an empty form field
        assert (await login(bridge, s, "viewer", totp=""))[0] == 200  # no TOTP enrolled
        status, body = await login(bridge, s, "operator", totp=totp.code_at(secret, now - 30))
        assert status == 200, body  # one step late is fine
        current = totp.code_at(secret, now)
        assert (await login(bridge, s, "operator", totp=current))[0] == 200
        assert (await login(bridge, s, "operator", totp=current))[0] == 401  # replayed
        # an older step's code after a newer one was used: refused too
        assert (await login(bridge, s, "operator", totp=totp.code_at(secret, now - 30)))[0] == 401


async def test_global_require_totp(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}}, server={"require_totp": True}
    )
    secret = await _enroll(b, tmp_path, "admin")
    async with b.session() as s:
        status, body = await login(b, s, "viewer")  # right password, no TOTP enrolled
        assert status == 401, body
        status, _ = await login(b, s, "admin", totp=totp.code_at(secret, time.time()))
        assert status == 200
    for user, expected in (("viewer", 401), ("admin", 200)):
        async with b.session(token_user=user) as t, t.get(f"{b.base}/api/whoami") as resp:
            assert resp.status == expected, user


async def test_port_require_totp(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    other = PtyDevice(tmp_path / "ttyOTHER")
    try:
        b = await bridge_factory(
            ports={
                "secure": {"device": str(pty_device.path), "require_totp": True},
                "plain": {"device": str(other.path)},
            }
        )
        assert b.daemon.state is not None
        state = b.daemon.state
        await wait_for(lambda: all(p.online for p in state.ports.values()))
        async with b.session() as s:
            assert (await login(b, s, "admin"))[0] == 200  # admin without TOTP
            async with s.get(f"{b.base}/api/ports/secure/console?mode=ro") as resp:
                assert resp.status == 403
            ws = await b.ws(s, "plain", mode="ro")
            await ws.close()
        async with b.session(token_user="admin") as t:
            async with t.post(f"{b.base}/api/ports/secure/nmi") as resp:
                assert resp.status == 403
            async with t.post(f"{b.base}/api/ports/secure/break") as resp:
                assert resp.status == 403
        assert pty_device.drain_input() == b""
        secret = await _enroll(b, tmp_path, "admin")
        async with b.session() as s:
            assert (await login(b, s, "admin", totp=totp.code_at(secret, time.time())))[0] == 200
            ws = await b.ws(s, "secure", mode="ro")
            await ws.close()
    finally:
        other.close()
