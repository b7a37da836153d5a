"""`GET /metrics` of a real daemon: the series move with what happens on the port and at the
login, a port-restricted viewer sees only its ports, and `promtool check metrics` (Debian's
prometheus package, fetched by ./scripts/fetch-promtool) accepts the exposition."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.access.store import UserStore
from bridge.hw.uart import TIOCGICOUNT, decode_icount
from tests.conftest import (
    PASSWORDS,
    Bridge,
    BridgeFactory,
    PtyDevice,
    WsReader,
    user_hash,
    wait_for,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def promtool() -> str:
    """promtool: $SERIAL_BRIDGE_PROMTOOL, PATH, or the cache ./scripts/fetch-promtool fills.
    Missing: skip outside CI, fail in CI (./dev test fetches it)."""
    cache = Path.home() / ".cache/serial-bridge/prometheus/promtool"
    found = (
        os.environ.get("SERIAL_BRIDGE_PROMTOOL")
        or shutil.which("promtool")
        or (str(cache) if cache.exists() else None)
    )
    if found is None:
        reason = "promtool missing (./scripts/fetch-promtool)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


async def scrape(bridge: Bridge, user: str) -> str:
    async with bridge.session(token_user=user) as s, s.get(f"{bridge.base}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        return await r.text()


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


def check_with_promtool(text: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_port_series_follow_console_traffic_actions_and_reopens(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    async with bridge.session(token_user="operator") as s:
        reader = WsReader(await bridge.ws(s, "lab", mode="rw"))
        await reader.message("hello")
        pty_device.write(b"hello from the target\r\n")
        await reader.until(lambda r: b"target" in r.data)
        await reader.ws.send_bytes(b"ls\r")
        await pty_device.read_until(lambda got: got.endswith(b"ls\r"))
        found = samples(await scrape(bridge, "admin"))
        assert value(found, "serial_bridge_port_online", port="lab") == 1
        assert value(found, "serial_bridge_port_clients", port="lab") == 1
        assert value(found, "serial_bridge_port_writer", port="lab") == 1
        assert value(found, "serial_bridge_port_bytes_in_total", port="lab") == 23
        assert value(found, "serial_bridge_port_bytes_out_total", port="lab") == 3
        async with s.post(f"{bridge.base}/api/ports/lab/break") as r:
            assert r.status == 501  # a pty cannot carry a BREAK: refused, counted, none sent
        async with s.post(f"{bridge.base}/api/ports/lab/nmi") as r:
            assert r.status == 403  # an operator may not: refused before the hub, not counted
        await reader.ws.close()
    async with (
        bridge.session(token_user="admin") as s,
        s.post(f"{bridge.base}/api/ports/lab/nmi") as r,
    ):
        assert r.status == 501  # no NMI line on this port
    pty_device.replace()  # a replug: the hub reopens the device
    await wait_for(lambda: bridge.port.opens == 2 and bridge.port.online)
    found = samples(await scrape(bridge, "admin"))
    assert value(
        found, "serial_bridge_port_actions_total", port="lab", action="break", result="unsupported"
    )
    assert (
        value(
            found,
            "serial_bridge_port_actions_total",
            port="lab",
            action="nmi",
            result="unsupported",
        )
        == 1
    )
    assert value(found, "serial_bridge_port_breaks_total", port="lab") == 0
    assert value(found, "serial_bridge_port_reopens_total", port="lab") == 1
    assert value(found, "serial_bridge_port_clients", port="lab") == 0
    # a pty's driver keeps no line error counters: no uart_errors series rather than zeros
    assert not [k for k in found if k[0] == "serial_bridge_port_uart_errors_total"]


async def test_auth_attempts_by_method_and_result(bridge: Bridge) -> None:
    async with bridge.session() as s:
        for password in ("wrong-1", "wrong-2", PASSWORDS["viewer"]):
            body = {"username": "viewer", "password": password}
            async with s.post(f"{bridge.base}/api/login", json=body):
                pass
        async with s.get(f"{bridge.base}/api/whoami") as r:
            assert r.status == 200  # by the session cookie
    async with (
        bridge.session() as s,
        s.get(f"{bridge.base}/api/whoami", headers={"Authorization": "Bearer nope"}) as r,
    ):
        assert r.status == 401
    found = samples(await scrape(bridge, "admin"))

    def attempts(method: str, result: str) -> float:
        return value(found, "serial_bridge_auth_attempts_total", method=method, result=result)

    assert attempts("password", "failure") == 2
    assert attempts("password", "success") == 1
    assert attempts("password", "throttled") == 0
    assert attempts("session", "success") == 1
    assert attempts("token", "failure") == 1
    assert attempts("token", "success") == 1  # this scrape's own token


async def test_throttled_logins_are_counted(bridge: Bridge) -> None:
    bridge.daemon.state.gate.throttle.clock = lambda: 1000.0  # frozen: a block never ends
    async with bridge.session() as s:
        statuses = []
        for _ in range(8):  # 5 free failures, the 6th blocks the account
            body = {"username": "viewer", "password": "wrong"}
            async with s.post(f"{bridge.base}/api/login", json=body) as r:
                statuses.append(r.status)
    assert statuses == [401] * 6 + [429] * 2
    found = samples(await scrape(bridge, "admin"))
    attempts = "serial_bridge_auth_attempts_total"
    assert value(found, attempts, method="password", result="throttled") == 2
    assert value(found, attempts, method="password", result="failure") == 6


async def test_viewer_restricted_to_ports_sees_only_their_series(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    b = await bridge_factory(
        ports={"lab": {"device": "virtual:shell"}, "secret": {"device": "virtual:shell"}}
    )
    users = UserStore(b.state_dir)
    users.add("limited", "viewer", user_hash("viewer"), ["lab"])
    b.tokens["limited"] = users.create_token("limited", "t")
    text = await scrape(b, "limited")
    found = samples(text)
    assert value(found, "serial_bridge_port_clients", port="lab") == 0
    assert "secret" not in text
    # bridge-wide series are for identities that may see every port
    assert not [k for k in found if not k[0].startswith("serial_bridge_port_")]
    everything = samples(await scrape(b, "viewer"))
    assert ("serial_bridge_port_clients", (("port", "secret"),)) in everything
    assert any(k[0] == "serial_bridge_auth_attempts_total" for k in everything)
    assert any(k[0].startswith("process_") for k in everything)


async def test_ring_log_series_and_promtool_accepts_the_exposition(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path), "baud": 4_000_000}},
        log={"enabled": True, "size": "1MiB", "flush_interval": "50ms"},
    )
    await wait_for(lambda: b.port.online)
    pty_device.write(b"boot log line\r\n" * 100)
    ring = b.port.ringlog
    await wait_for(lambda: ring.stats.syncs >= 1 and ring.stats.bytes_written >= 4096)
    text = await scrape(b, "admin")
    found = samples(text)
    assert value(found, "serial_bridge_ringlog_written_bytes_total", port="lab") >= 4096
    assert value(found, "serial_bridge_ringlog_errors_total", port="lab") == 0
    syncs = value(found, "serial_bridge_ringlog_sync_seconds_count", port="lab")
    assert syncs >= 1
    assert value(found, "serial_bridge_ringlog_sync_seconds_bucket", port="lab", le="+Inf") == syncs
    check_with_promtool(text)


def test_promtool_refuses_the_old_hand_written_exposition() -> None:
    """The check has teeth: the old endpoint's output (TYPE lines, no HELP) fails it."""
    old = '# TYPE serial_bridge_port_online gauge\nserial_bridge_port_online{port="lab"} 1\n'
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=old, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0


def test_line_error_counters_decode_tiocgicount() -> None:
    # cts dsr rng dcd rx tx frame overrun parity brk buf_overrun reserved[9]
    raw = struct.pack("20i", 1, 2, 3, 4, 500, 600, 7, 8, 9, 10, 11, *[0] * 9)
    assert decode_icount(raw) == {
        "framing": 7,
        "overrun": 8,
        "parity": 9,
        "break": 10,
        "buffer_overrun": 11,
    }
    assert TIOCGICOUNT == 0x545D  # asm-generic/ioctls.h


def test_docs_scrape_config_and_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """docs/metrics.md's two YAML blocks: the scrape config (its files made to exist here) and
    the alert rules."""
    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    scrape_config, rules = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    (tmp_path / "serial-bridge.token").write_text("sbt_x\n")
    (tmp_path / "serial-bridge-cert.pem").write_text("")
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config.replace("/etc/prometheus/", f"{tmp_path}/"))
    rules_file = tmp_path / "serial-bridge.rules.yml"
    rules_file.write_text(rules)
    for what, path in (("config", config), ("rules", rules_file)):
        result = subprocess.run(
            [promtool(), "check", what, str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout
