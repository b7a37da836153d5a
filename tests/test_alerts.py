"""Console alerts: rules matched on real output through a pty, marked in the ring log right after
the line, audited, counted (/api/ports, /metrics), shown on open consoles, and posted to a real
HTTPS receiver on 127.0.0.1 (a test CA, a secret header) with bounded retries and queue; boot
detection; the matcher on every chunking of a stream; config errors."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from bridge.config import ConfigError, parse_config
from bridge.config.alerts import AlertRule
from bridge.console import alerts
from bridge.console.alerts import MAX_LINE, AlertWatch
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, make_config, wait_for

PANIC = b"[   12.345678] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"
SECRET = "Bearer s3cret-webhook-token"
URL_SECRET = "hook-path-secret-42"


def bridge_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the bridge logged (not the test receiver's own access log)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bridge"))


def watch(*rules: AlertRule, defaults: bool = True) -> AlertWatch:
    config = parse_config({"ports": {"p": {"device": "/dev/null"}}}, "<test>")
    shipped = config.alerts.rules_for("p") if defaults else ()
    return AlertWatch((*rules, *shipped))


# ---- the matcher ----------------------------------------------------------------------------


STREAM = (
    b"SeaBIOS\r\n[    0.000000] Linux version 6.1.0-28-cloud-amd64\r\n"
    + b"x" * 300
    + b"\r\n[    3.1] BUG: soft lockup - CPU#0 stuck for 22s! [kworker:1]\r\n"
    + b"[    4.2] \x1b[31mOut of memory: Killed process 123 (java)\x1b[0m\r\n"
    + PANIC
    + b"\r\ndebian login: "
)


def alerts_of(w: AlertWatch, pieces: list[bytes]) -> list[tuple[str, int]]:
    found, offset = [], 1000
    for piece in pieces:
        found += [(a.rule, a.start) for a in w.feed(piece, offset)]
        offset += len(piece)
    return found


def test_the_same_alerts_whatever_the_chunking() -> None:
    whole = alerts_of(watch(), [STREAM])
    assert [rule for rule, _ in whole] == ["soft-lockup", "oom-kill", "kernel-panic", "booted"]
    assert whole[2][1] == 1000 + STREAM.index(PANIC)  # the offset of the line's first byte
    for size in (1, 2, 3, 7, 64, 100, 333):
        pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
        assert alerts_of(watch(), pieces) == whole, size


def test_an_alert_names_its_line_and_ends_after_it() -> None:
    w = watch()
    (alert,) = w.feed(b"ok\r\n" + PANIC + b"more", 0)
    assert alert.line == PANIC.decode().rstrip("\r\n")
    assert (alert.start, alert.end) == (4, 4 + len(PANIC))  # the marker goes right after "\n"
    assert alert.fields()["severity"] == "critical"


def test_first_rule_wins_and_one_alert_per_line() -> None:
    w = watch()
    hits = w.feed(b"BUG: soft lockup - CPU#1 stuck for 23s!\n", 0)
    assert [h.rule for h in hits] == ["soft-lockup"]  # not also "bug"
    site = AlertRule("mine", r"lockup", "warning")
    assert [h.rule for h in watch(site).feed(b"BUG: soft lockup - CPU#1 stuck\n", 0)] == ["mine"]


def test_rate_limit_counts_what_it_leaves_out() -> None:
    w = watch(AlertRule("panic", "panic", "critical", rate=(2, 3600.0)), defaults=False)
    hits = w.feed(b"panic 1\npanic 2\npanic 3\npanic 4\n", 0)
    assert [h.line for h in hits] == ["panic 1", "panic 2"]
    assert w.counts["panic", "critical"] == 4 and w.suppressed["panic"] == 2
    w.rules[0].recent.clear()  # the window has passed
    (later,) = w.feed(b"panic 5\n", 100)
    assert later.suppressed == 2  # says how many were left out meanwhile


def test_booted_only_after_a_boot_began() -> None:
    w = watch()
    assert w.feed(b"debian login: ", 0) == []  # a prompt again (a logout), not a boot
    assert w.feed(b"\r\n[ 0.0] Linux version 6.1\r\nWelcome\r\ndebian login: ", 14) != []
    assert w.boots == 1 and w.last_boot is not None
    w.boot_started()  # a reset
    (booted,) = w.feed(b"\r\ndebian login: ", 200)
    assert booted.rule == "booted" and booted.boot_seconds is not None
    assert w.summary()["boots"] == 2


def test_a_prompt_without_line_end_fires_once() -> None:
    w = watch()
    assert [a.rule for a in w.feed(b"grub rescue> ", 0)] == ["grub-rescue"]
    assert w.feed(b"l", 13) == [] and w.feed(b"s\r\n", 14) == []  # typed at it, then Enter
    assert [a.rule for a in w.feed(b"grub rescue> ", 17)] == ["grub-rescue"]


def test_a_line_without_end_is_bounded() -> None:
    w = watch()
    for i in range(64):
        w.feed(b"y" * 65536, i * 65536)
    assert len(w._tail) == MAX_LINE
    assert w.feed(b" Kernel panic - not syncing\n", 64 * 65536) == []  # past the bound
    assert [a.rule for a in w.feed(PANIC, 64 * 65536 + 28)] == ["kernel-panic"]


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        (r"Kernel panic - not syncing", (b"Kernel panic - not syncing",)),
        (
            r"Linux version \d|U-Boot \d|GNU GRUB +version",
            (b"Linux version ", b"U-Boot ", b"GNU GRUB "),
        ),
        (r"\[Hardware Error\]", (b"[Hardware Error]",)),
        (r"^foo bar", (b"foo bar",)),
        (r"abc+d", (b"abc",)),  # "c" once at least, then any number
        (r"ab*cdef", None),  # "b" may be absent: only "a" is certain
        (r"abc{2}", None),
        (r"(?i)panic", None),  # flags change what the letters match
        (r"x(abc)|yyy", None),
        (r"[]|a]bc|def", None),  # "|" in a class is no branch
        (r"panic|ab", None),  # one branch too short: that rule is searched in every chunk
        (r"ab\dcd", None),
        (r"caf\u00e9 au lait", (b"caf",)),  # an escape ends the literal
        ("café au lait", ("café au lait".encode(),)),
    ],
)
def test_the_literals_a_rule_is_screened_by(
    pattern: str, literals: tuple[bytes, ...] | None
) -> None:
    assert alerts.required_literals(pattern) == literals


def screened_and_not(
    monkeypatch: pytest.MonkeyPatch, rules: tuple[AlertRule, ...]
) -> list[AlertWatch]:
    """The same rules three ways: screened by RE2, by Python's re, and every rule searched."""
    with_re2 = watch(*rules)
    monkeypatch.setattr(alerts, "re2", None)
    with_re = watch(*rules)
    unscreened = watch(*rules)
    unscreened._screen, unscreened._unscreened = None, unscreened.rules
    assert type(with_re._screen) is not type(with_re2._screen)  # two engines really compared
    return [with_re2, with_re, unscreened]


def test_screening_finds_what_searching_every_rule_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(19)
    words = [
        b"Kernel panic - not syncing: x", b"Kernel pani", b"c - not syncing", b"BUG: ", b"BUG:",
        b"Oops: 0002", b"Oop", b" login: ", b"grub rescue> ", b"Linux version 6", b"U-Boot 2024",
        b"GNU GRUB  version 2.12", b"Out of memory: Kill", b"\x1b[31m", b"panic!", b"my-error 7",
        b"\r\n", b"\n", b"\r", b"ok ", b"\xff\xc3",
    ]  # fmt: skip
    site = (
        AlertRule("site-literal", r"my-error \d+", "warning"),
        AlertRule("site-any", r"\bpanic!", "error"),  # no leading literal: searched every chunk
    )
    for _ in range(40):
        stream = b"".join(
            rng.choice(words) if rng.random() < 0.5 else rng.randbytes(rng.randrange(1, 40))
            for _ in range(rng.randrange(50, 400))
        )
        cuts = sorted(rng.sample(range(1, len(stream)), min(30, len(stream) - 1)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        found = [alerts_of(w, pieces) for w in screened_and_not(monkeypatch, site)]
        monkeypatch.undo()
        assert found[0] == found[1] == found[2]
    assert found[2]  # the streams do raise alerts


def test_every_shipped_rule_is_screened() -> None:
    assert watch()._unscreened == []  # docs/alerts.md: the shipped rules cost one search a chunk


# ---- config ---------------------------------------------------------------------------------


def test_config_errors_name_the_key_and_never_echo_the_url() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "ports": {"p": {"device": "/dev/null"}},
                "alerts": {
                    "rules": [
                        {"name": "a", "pattern": "(", "rate": "5"},
                        {"name": "b", "pattern": ".*", "ports": ["nope"], "colour": "red"},
                    ],
                    "webhook": {"url": f"http://example.net/{URL_SECRET}"},
                },
            },
            "cfg.toml",
        )
    text = "\n".join(err.value.problems)
    assert "cfg.toml: alerts.rules[0].pattern: not a valid regular expression" in text
    assert 'cfg.toml: alerts.rules[0].rate: expected "COUNT/DURATION"' in text
    assert "alerts.rules[1].pattern: the pattern matches an empty line" in text
    assert "alerts.rules[1].ports: no port 'nope' in [ports]" in text
    assert "alerts.rules[1].colour: unknown key" in text
    assert "alerts.webhook.url: expected an https:// URL" in text
    assert URL_SECRET not in text


def test_a_shipped_rule_is_turned_off_or_changed_by_name() -> None:
    config = parse_config(
        {
            "ports": {"p": {"device": "/dev/null"}, "q": {"device": "/dev/zero"}},
            "alerts": {
                "rules": [
                    {"name": "booted", "enabled": False},
                    {"name": "oom-kill", "severity": "critical", "ports": ["q"]},
                ]
            },
        },
        "<test>",
    )
    names = [r.name for r in config.alerts.rules_for("p")]
    assert "booted" not in names and "oom-kill" not in names and "kernel-panic" in names
    (oom,) = [r for r in config.alerts.rules_for("q") if r.name == "oom-kill"]
    assert oom.severity == "critical" and "of memory" in oom.pattern


# ---- a real daemon, a real pty, a real HTTPS receiver -----------------------------------------


@dataclass
class Receiver:
    """An HTTPS server on 127.0.0.1 that records the posts it gets; `fail` answers 500 first."""

    posts: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    fail: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500)
        self.posts.append((dict(request.headers), await request.json()))
        self.arrived.set()
        return web.Response(status=204)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def receiver(ca: trustme.CA) -> AsyncIterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    got = Receiver()
    app = web.Application()
    app.router.add_post(f"/{URL_SECRET}", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got.url = f"https://127.0.0.1:{port}/{URL_SECRET}"
    yield got
    await runner.cleanup()


async def alert_bridge(
    bridge_factory: BridgeFactory,
    pty_device: PtyDevice,
    ca: trustme.CA,
    tmp_path: Path,
    url: str,
    **webhook: Any,
) -> Bridge:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    headers = tmp_path / "headers"
    headers.write_text(f"# the receiver's token\nAuthorization: {SECRET}\n")
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}},
        log={"enabled": True, "size": "256KiB", "flush_interval": "1s"},
        alerts={
            "rules": [{"name": "raid", "pattern": r"md/raid\S*: .*degraded", "rate": "1/1h"}],
            "webhook": {
                "url": url,
                "ca_file": str(ca_file),
                "headers": {"X-Team": "ops"},
                "headers_file": str(headers),
                **webhook,
            },
        },
    )
    await wait_for(lambda: b.daemon.state is not None and b.daemon.state.ports["lab"].online)
    return b


async def test_a_panic_is_marked_audited_counted_shown_and_posted(
    bridge_factory: BridgeFactory,
    pty_device: PtyDevice,
    ca: trustme.CA,
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.fail = 1  # the first post fails: it is tried again
    b = await alert_bridge(bridge_factory, pty_device, ca, tmp_path, receiver.url, retries=2)
    async with b.session("viewer") as viewer:
        reader = WsReader(await b.ws(viewer, "lab"))
        await reader.message("hello")
        before = b"boot ok\r\n"
        await pty_device.awrite(before + PANIC + b"[   12.4] ---[ end Kernel panic ]---\r\n")
        shown = await reader.message("event", event="alert")
        assert shown["rule"] == "kernel-panic" and shown["severity"] == "critical"
        assert "VFS: Unable to mount root fs" in shown["line"]
        assert bytes(reader.data).index(PANIC) < len(reader.data)  # the line came first

        async with asyncio.timeout(20):
            await receiver.arrived.wait()
        headers, post = receiver.posts[0]
        assert headers["Authorization"] == SECRET and headers["X-Team"] == "ops"
        assert headers["Content-Type"] == "application/json"
        line_start = b.port.oldest_offset  # the port's first byte
        assert post["port"] == "lab" and post["rule"] == "kernel-panic"
        assert post["offset"] == line_start + len(before)
        assert post["line"].endswith("VFS: Unable to mount root fs")
        assert post["time"].endswith("Z") and post["severity"] == "critical"

        # the log: the marker right after the line; /api/ports and /metrics count it
        async with viewer.get(f"{b.base}/api/ports/lab/log?format=jsonl") as resp:
            lines = [json.loads(x) for x in (await resp.text()).splitlines()]
        (marker,) = [x for x in lines if x.get("event") == "alert"]
        assert marker["offset"] == post["offset"] + len(PANIC)
        assert marker["at"] == post["offset"] and marker["rule"] == "kernel-panic"
        async with viewer.get(f"{b.base}/api/ports") as resp:
            (summary,) = await resp.json()
        assert summary["alerts"] == {"kernel-panic": 1}
        async with b.session("admin") as admin:
            async with admin.get(f"{b.base}/metrics") as resp:
                metrics = await resp.text()
            async with admin.get(f"{b.base}/api/audit?port=lab") as resp:
                audit = [e for e in await resp.json() if e["event"] == "alert"]
        series = (
            'serial_bridge_port_alerts_total{port="lab",rule="kernel-panic",severity="critical"}'
        )
        assert f"{series} 1.0" in metrics
        assert 'serial_bridge_audit_shipped_total{sink="webhook"} 1.0' in metrics
        assert webhook(b).failed == 1
        assert audit[0]["rule"] == "kernel-panic" and audit[0]["at"] == post["offset"]
    logged = bridge_log(caplog)
    assert "HTTP 500" in logged  # the failed attempt is logged, naming only the host
    assert "s3cret" not in logged and URL_SECRET not in logged


async def test_an_absent_receiver_never_holds_the_console_up(
    bridge_factory: BridgeFactory,
    pty_device: PtyDevice,
    ca: trustme.CA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"https://127.0.0.1:9/{URL_SECRET}"  # the discard port: nobody listens
    b = await alert_bridge(
        bridge_factory, pty_device, ca, tmp_path, url, queue=2, retries=1, timeout="2s"
    )
    async with b.session("viewer") as viewer:
        reader = WsReader(await b.ws(viewer, "lab"))
        await reader.message("hello")
        raid = b"md/raid1:md0: Disk failure on sdb1, disabling device. Operation degraded\r\n"
        burst = b"".join(b"[ %d.0] Oops: %04d [#1] SMP\r\n" % (i, i) for i in range(8))
        await pty_device.awrite(raid + raid + burst + b"still here\r\n")
        await reader.until(lambda r: b"still here" in r.data)  # at once, whatever the webhook
        await reader.until(lambda r: sum(m.get("event") == "alert" for m in r.messages) == 9)
    hook = webhook(b)
    await wait_for(lambda: not hook.queue, timeout=30)
    assert hook.sent == 0 and hook.dropped == 9  # 7 pushed out of the queue of 2, 2 given up
    assert b.port.watch.suppressed["raid"] == 1  # rate 1/1h: the second is only counted
    logged = bridge_log(caplog)
    assert URL_SECRET not in logged and "s3cret" not in logged


def webhook(b: Bridge) -> Any:
    """The webhook sink among the audit's sinks."""
    assert b.daemon.state is not None
    return next(s for s in b.daemon.state.audit_sinks if s.name == "webhook")


def booted(reader: WsReader) -> int:
    return sum(m.get("rule") == "booted" for m in reader.messages)


async def test_boot_count_and_duration_from_a_banner_to_the_login_prompt(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    async with bridge.session("viewer") as viewer:
        reader = WsReader(await bridge.ws(viewer, "lab"))
        await reader.message("hello")
        for boot in (1, 2):  # a prompt waits for its user: each is seen before what follows
            await pty_device.awrite(b"[    0.000000] Linux version 6.1.0 (gcc)\r\n")
            await pty_device.awrite(b"Debian GNU/Linux 12 debian ttyS0\r\n\r\ndebian login: ")
            await reader.until(lambda r, n=boot: booted(r) == n)
            await pty_device.awrite(b"root\r\nPassword: \r\n# exit\r\n\r\ndebian login: ")
            await reader.until(lambda r: r.data.endswith(b"# exit\r\n\r\ndebian login: "))
        assert booted(reader) == 2  # the prompt after a logout is no boot
        async with viewer.get(f"{bridge.base}/api/ports") as resp:
            (summary,) = await resp.json()
    assert summary["boots"] == 2 and summary["alerts"] == {"booted": 2}
    assert isinstance(summary["last_boot_seconds"], float)


def test_bad_headers_file_stops_start_up_without_its_value(tmp_path: Path) -> None:
    from bridge.service.daemon import Daemon
    from bridge.service.startup import StartupError

    headers = tmp_path / "headers"
    headers.write_text(f"{SECRET}\n")
    config = make_config(
        tmp_path / "state",
        {},
        alerts={"webhook": {"url": "https://127.0.0.1:9/", "headers_file": str(headers)}},
    )
    (tmp_path / "state").mkdir(mode=0o700)

    async def start() -> None:
        daemon = Daemon(config)
        try:
            await daemon.start()
        finally:
            await daemon.stop()

    with pytest.raises(StartupError) as err:
        asyncio.run(start())
    assert "alerts.webhook" in str(err.value) and "line 1" in str(err.value)
    assert "s3cret" not in str(err.value)


async def test_a_reset_through_the_bridge_starts_timing_a_boot(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, mock_pins: Any
) -> None:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path), "lines": {"reset": {"gpio": 27}}}},
        gpio={"pin_factory": "mock"},
    )
    await wait_for(lambda: b.port is not None and b.port.online)
    async with b.session("admin") as admin:
        reader = WsReader(await b.ws(admin, "lab"))
        await reader.message("hello")
        await pty_device.awrite(b"\r\nhost login: ")  # no boot seen: no alert
        await reader.until(lambda r: r.data.endswith(b"host login: "))
        async with admin.post(f"{b.base}/api/ports/lab/reset") as resp:
            assert resp.status == 200
        await pty_device.awrite(b"\r\nhost login: ")  # no banner: the reset started the clock
        alert = await reader.message("event", event="alert", rule="booted")
    assert alert["boot_seconds"] >= 0 and booted(reader) == 1
    assert b.port.watch.boots == 1
