"""No real-time clock (#14, faults 3): a real `serve` whose wall clock libfaketime (Debian
`faketime`) sets wrong, then steps while it runs, as NTP does on a Raspberry Pi that booted with a
stale clock; the monotonic clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC), as a step leaves
it. Offsets stay monotonic, `since=` finds what the clock dated, sessions, throttling and TOTP
survive steps either way, and a certificate made under the wrong clock outlives it."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from bridge.access import totp
from bridge.access.store import UserStore
from bridge.service import clockwatch
from tests.conftest import PASSWORDS, PtyDevice
from tests.served import Served, make_state

DAY = 86400


class FakeClock:
    """The wall clock of processes started with `env()`: `set("-9000d")`, `set("+0")` (libfaketime
    re-reads the file at every call)."""

    def __init__(self, path: Path) -> None:
        found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
        if not found:
            pytest.skip("libfaketime not installed (Debian faketime; ./dev test installs it)")
        self.library, self.path = found[0], path
        self.set("+0")

    def set(self, spec: str) -> None:
        self.path.write_text(spec + "\n")

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def iso(when: float) -> str:
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def setup(tmp_path: Path, device: Path) -> tuple[Served, Path]:
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n'
        f'[log]\nflush_interval = "100ms"\n[ports.lab]\ndevice = "{device}"\n'
    )
    return Served(config, make_state(state)), state


async def log(served: Served, query: str) -> bytes:
    async with served.session() as s, s.get(f"{served.base}/api/ports/lab/log?{query}") as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def test_a_wrong_clock_then_the_right_one(tmp_path: Path, pty_device: PtyDevice) -> None:
    """Booted 9000 days behind (2002), stepped to the right time while running, then restarted
    at the right time: offsets only grow, records carry the clock they were received under,
    `since=` finds them by that date, and the step is in the history and the log."""
    clock = FakeClock(tmp_path / "faketime")
    clock.set("-9000d")
    served, state = setup(tmp_path, pty_device.path)
    await served.start(env=clock.env())
    try:
        cert = x509.load_pem_x509_certificate((state / "tls" / "cert.pem").read_bytes())
        assert cert.not_valid_before_utc.year < 2005  # made under the wrong clock...
        assert cert.not_valid_after_utc.timestamp() > time.time() + 365 * DAY  # ...still valid
        await served.wait_port("lab", lambda p: p["online"])
        pty_device.write(b"A under the wrong clock\r\n")
        await served.wait_port("lab", lambda p: p["offset"] == 25)
        clock.set("+0")  # NTP steps the clock forward by 9000 days
        line = await served.wait_line("wall clock stepped")
        assert "+777600" in line  # 9000 days, in seconds
        pty_device.write(b"B after the step\r\n")
        await served.wait_port("lab", lambda p: p["offset"] == 43)
        lines = [json.loads(x) for x in (await log(served, "format=jsonl")).splitlines()]
        dated = {x["text"][:1]: x["time"][:4] for x in lines if "text" in x}
        assert int(dated["A"]) < 2005 and int(dated["B"]) == time.gmtime().tm_year
        step = next(x for x in lines if x.get("event") == "clock-step")
        assert step["offset"] == 25 and step["by"] > 9000 * DAY - 60
    finally:
        assert await served.stop() == 0

    await served.start()  # restarted at the right time
    try:
        await served.wait_port("lab", lambda p: p["online"])
        pty_device.write(b"C after the restart\r\n")
        port = await served.wait_port("lab", lambda p: p["offset"] >= 43 + 20)
        assert port["offset"] == 64  # a clean stop: offsets go on where they were
        recent = await log(served, f"since={iso(time.time() - 600)}&format=raw")
        assert recent == b"B after the step\r\nC after the restart\r\n"
        everything = await log(served, "since=2000-01-01T00:00:00Z&format=raw")
        assert everything == b"A under the wrong clock\r\n" + recent
    finally:
        assert await served.stop() == 0


async def login(
    s: aiohttp.ClientSession, base: str, user: str, password: str, code: str | None = None
) -> int:
    body: dict[str, Any] = {"username": user, "password": password}
    if code is not None:
        body["totp"] = code
    async with s.post(f"{base}/api/login", json=body) as r:
        return r.status


async def test_clock_steps_expire_nobody_and_lock_nobody_out(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    clock = FakeClock(tmp_path / "faketime")
    served, state = setup(tmp_path, pty_device.path)
    secret = totp.new_secret()
    UserStore(state).set_totp("admin", secret)
    await served.start(env=clock.env())
    password = PASSWORDS["admin"]

    def browser() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False),
            headers={"Origin": served.base},
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )

    async def whoami(s: aiohttp.ClientSession) -> int:
        async with s.get(f"{served.base}/api/whoami") as r:
            return r.status

    try:
        async with browser() as s:
            clock.set("+1h")  # the clock runs an hour ahead; a login under it
            await served.wait_line("wall clock stepped by +3600")
            ahead = totp.code_at(secret, time.time() + 3600)
            assert await login(s, served.base, "admin", password, ahead) == 200
            clock.set("+1d")  # a day forward: a 30 min idle limit must not end the session
            await served.wait_line("wall clock stepped by +82800")
            assert await whoami(s) == 200
            clock.set("+0")  # back to the right time: the codes of now work again, once each
            await served.wait_line("wall clock stepped by -86400")
            assert await whoami(s) == 200
        async with browser() as s:
            now = totp.code_at(secret, time.time())
            assert await login(s, served.base, "admin", password, now) == 200
            assert await login(s, served.base, "admin", password, now) == 401  # used
            assert await login(s, served.base, "admin", password, ahead) == 401  # out of window

            # The source's cap (10 failures in 60 s, timed by the monotonic clock): a name each
            # time, so no account's own short block (1 s after its 6th failure) is what refuses
            # and a slow machine cannot outlast it before the step below.
            for i in range(12):
                status = await login(s, served.base, f"mallory{i}", "wrong")
            assert status == 429
            clock.set("+1d")
            await served.wait_line("wall clock stepped by +86400")
            assert await login(s, served.base, "mallory", "wrong") == 429  # a step lifts nothing
    finally:
        assert await served.stop() == 0


async def test_a_step_before_the_watch_first_runs_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch's first look is taken when the daemon creates it, not when its task first runs
    (on uvloop the daemon says "listening" in between: a step then went unseen)."""
    monkeypatch.setattr(clockwatch, "CHECK", 0.01)
    now = [1_000_000.0]
    steps: list[dict[str, Any]] = []

    class Audit:
        def record(self, event: str, **fields: Any) -> None:
            steps.append({"event": event, **fields})

    watch = asyncio.create_task(clockwatch.watch_clock(dict, Audit(), lambda: now[0], lambda: 0.0))
    now[0] += 3600  # before the task's first turn
    try:
        async with asyncio.timeout(20):
            while not steps:
                await asyncio.sleep(0.01)
    finally:
        watch.cancel()
    assert steps[0]["event"] == "clock-step" and steps[0]["by"] == 3600
