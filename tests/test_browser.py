"""The browser terminal in a real browser: Debian's Chromium driven by Playwright, against the real
daemon (TLS, sessions, CSRF, websocket) with a pty target or the virtual shell.

One Chromium process serves the whole module; every test gets a fresh Playwright connection and
fresh browser contexts (own cookies, own storage). Every page is watched: a console error or a
request to another origin fails the test.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from playwright.async_api import Browser, async_playwright

from bridge.access import totp
from bridge.hw.lines import mock_pin_factory
from bridge.web import pages
from tests.browser_helpers import (
    PageWatch,
    assert_accessible,
    chromium_process,
    login,
    new_page,
    open_console,
    screen_text,
    wait_for_screen,
)
from tests.conftest import PASSWORDS, Bridge, BridgeFactory, PtyDevice, wait_for
from tests.oidc_helpers import MockProvider, put_user
from tests.served import crashed_ring

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots for review (gitignored)
NMI_GPIO, RESET_GPIO, POWER_GPIO = 17, 27, 22


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium_process(tmp_path_factory.mktemp("chromium") / "profile") as endpoint:
        yield endpoint


class Browsing:
    """The per-test view of the module's Chromium: new watched pages in fresh contexts."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.watches: list[PageWatch] = []
        self.bridges: list[Bridge] = []

    async def page(self, bridge: Bridge) -> Any:
        self.bridges.append(bridge)
        context, page, watch = await new_page(self.browser, bridge.origin)
        self.contexts.append(context)
        self.watches.append(watch)
        return page

    def assert_clean(self) -> None:
        for watch in self.watches:
            watch.assert_clean()


@pytest.fixture
async def browsing(chromium: str) -> AsyncIterator[Browsing]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(chromium)
        b = Browsing(browser)
        try:
            yield b
        finally:
            for context in b.contexts:
                await context.close()
            # Chromium drops its connections soon after; let the daemon see them go before it
            # stops, or its TLS shutdowns would be cut off with the test's event loop
            for bridge in b.bridges:
                server = bridge.daemon.runner.server if bridge.daemon.runner else None
                if server is not None:
                    await wait_for(lambda s=server: not s.connections)


async def pty_bridge(bridge_factory: BridgeFactory, device: PtyDevice) -> Bridge:
    b = await bridge_factory(
        ports={"lab": {"device": str(device.path), "baud": 4_000_000, "description": "rack 4"}}
    )
    await wait_for(lambda: b.port is not None and b.port.online)
    return b


async def virtual_bridge(bridge_factory: BridgeFactory, **sections: Any) -> Bridge:
    mock_pin_factory().reset()
    b = await bridge_factory(
        ports={
            "demo": {
                "device": "virtual:shell",
                "description": "virtual target",
                "lines": {
                    "nmi": {"gpio": NMI_GPIO, "pulse": "50ms"},
                    "reset": {"gpio": RESET_GPIO, "pulse": "50ms"},
                    "power": {"gpio": POWER_GPIO, "pulse": "50ms", "long_pulse": "100ms"},
                },
            }
        },
        gpio={"pin_factory": "mock"},
        **sections,
    )
    await wait_for(lambda: b.port is not None and b.port.online)
    return b


async def test_login_type_echo_and_read_it_back(
    bridge_factory: BridgeFactory, browsing: Browsing
) -> None:
    bridge = await virtual_bridge(bridge_factory)
    page = await browsing.page(bridge)
    # the pages themselves: unauthenticated requests go to the sign-in page, strict CSP
    response = await page.goto(bridge.origin + "/login")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp

    await page.screenshot(path=str(ARTIFACTS / "login.png"))
    await open_console(page, bridge.origin, "demo", "admin", PASSWORDS["admin"])
    await wait_for_screen(page, "demo$")
    await page.click("#terminal")
    await page.keyboard.type("echo hi")
    await page.keyboard.press("Enter")
    await page.wait_for_function(
        """() => {
          const b = window.serialBridge.term.buffer.active;
          for (let i = 0; i < b.length; i++)
            if (b.getLine(i).translateToString(true) === "hi") return true;
          return false;
        }"""
    )
    assert "echo hi" in await screen_text(page)
    # Ctrl+F6 leaves the terminal for the command bar, and comes back
    await page.keyboard.press("Control+F6")
    assert await page.evaluate("() => document.activeElement.id") == "btn-release"
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.id") == "btn-sysrq"
    await page.keyboard.press("Control+F6")
    assert await page.evaluate("() => document.activeElement === window.serialBridge.term.textarea")
    assert await page.text_content("#st-link") == "connected"
    assert await page.text_content("#st-mode") == "writer"
    # admin on a port with lines sees every control
    for button in ("#btn-takeover", "#btn-sysrq", "#btn-break", "#btn-nmi", "#btn-reset"):
        assert await page.locator(button).count() == 1, button
    log_text = await page.get_attribute("#log-text", "href")
    assert log_text == "/api/ports/demo/log?format=text&strip=1"
    assert await page.get_attribute("#log-raw", "href") == "/api/ports/demo/log?format=raw"
    # "Send terminal size" tells the shell how wide the terminal is (the serial line cannot)
    await page.check("#opt-size")
    rows, cols = await page.evaluate(
        "() => [window.serialBridge.term.rows, window.serialBridge.term.cols]"
    )
    await wait_for_screen(page, f"stty rows {rows} cols {cols}")
    await page.click("#terminal")
    # a colourful line for the screenshot, then the screenshot for review
    # (24-bit colour makes xterm.js set a style attribute: the CSP shim must handle that too)
    await page.keyboard.type(
        "printf '\\033[1;32mgreen\\033[0m \\033[33myellow\\033[0m "
        "\\033[38;2;255;140;0mtruecolour\\033[0m plain\\n'"
    )
    await page.keyboard.press("Enter")
    await wait_for_screen(page, "green yellow truecolour plain")
    await page.screenshot(path=str(ARTIFACTS / "console.png"))
    # the terminal follows the window, and the new size is sent again
    await page.set_viewport_size({"width": 1000, "height": 600})
    await page.wait_for_function("(wide) => window.serialBridge.term.cols < wide", arg=cols)
    rows, cols = await page.evaluate(
        "() => [window.serialBridge.term.rows, window.serialBridge.term.cols]"
    )
    await wait_for_screen(page, f"stty rows {rows} cols {cols}")
    # no token or credential in any URL the page used
    watch = browsing.watches[0]
    assert all("token" not in url and "password" not in url for url in watch.requests)
    browsing.assert_clean()


async def test_second_user_takes_over_and_first_is_told(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    bridge = await pty_bridge(bridge_factory, pty_device)
    first = await browsing.page(bridge)
    await open_console(first, bridge.origin, "lab", "admin", PASSWORDS["admin"])
    assert await first.text_content("#st-mode") == "writer"
    second = await browsing.page(bridge)
    await open_console(second, bridge.origin, "lab", "operator", PASSWORDS["operator"])
    assert await second.text_content("#st-mode") == "read-only"
    assert await second.text_content("#st-writer") == "writer: admin"
    # an operator sees no NMI / reset / power
    assert await second.locator("#btn-nmi, #btn-reset, #btn-power").count() == 0

    await second.click("#btn-takeover")
    dialog = second.locator("dialog.confirm")
    assert "admin" in (await dialog.text_content() or "")
    await dialog.get_by_role("button", name="Take over").click()
    await second.wait_for_function("() => window.serialBridge.view.mode === 'rw'")
    await first.wait_for_function("() => window.serialBridge.view.mode === 'ro'")
    notice = await first.text_content("#notice") or ""
    assert "operator took over" in notice and "read-only" in notice
    assert await first.text_content("#st-mode") == "read-only"
    assert await first.evaluate("() => window.serialBridge.term.options.disableStdin") is True
    assert bridge.port.writer is not None and bridge.port.writer.user == "operator"

    # the new writer's keys reach the target; the old writer's terminal sends nothing
    pty_device.drain_input()
    await first.click("#terminal")
    await first.keyboard.type("nope")
    await second.click("#terminal")
    await second.keyboard.type("mine")
    got = await pty_device.read_until(lambda b: b"mine" in b)
    assert b"nope" not in got

    # the overview: one row per port with its state, writer and how many watch
    await first.goto(bridge.origin + "/")
    row = first.locator("tr[data-port=lab]")
    await row.locator("td.writer", has_text="operator").wait_for()
    cells = [c.strip() for c in await row.locator("th, td").all_text_contents()]
    assert cells == ["lab", "rack 4", "online", "", "operator", "1"]
    assert await row.locator("a").get_attribute("href") == "/ports/lab"
    await first.screenshot(path=str(ARTIFACTS / "ports.png"))
    browsing.assert_clean()


async def test_viewer_sees_the_console_and_cannot_type(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    bridge = await pty_bridge(bridge_factory, pty_device)
    secret = totp.new_secret()
    bridge.daemon.state.users.set_totp("viewer", secret)
    page = await browsing.page(bridge)
    await open_console(
        page,
        bridge.origin,
        "lab",
        "viewer",
        PASSWORDS["viewer"],
        totp=totp.code_at(secret, time.time()),
    )
    await pty_device.awrite(b"boot message for everyone\r\n")
    await wait_for_screen(page, "boot message for everyone")
    assert await page.text_content("#st-mode") == "read-only"
    for control in ("#btn-takeover", "#btn-sysrq", "#btn-break", "#btn-nmi", "#dlg-sysrq"):
        assert await page.locator(control).count() == 0, control
    assert await page.evaluate("() => window.serialBridge.term.options.disableStdin") is True

    pty_device.drain_input()
    await page.click("#terminal")
    await page.keyboard.type("reboot")
    await page.keyboard.press("Enter")
    # a round trip through the target proves the bridge is live; the keys never reached it
    await pty_device.awrite(b"still here\r\n")
    await wait_for_screen(page, "still here")
    assert pty_device.drain_input() == b""
    assert browsing.watches[0].binary_frames_sent() == []
    assert await page.text_content("#notice") == "Your role may only watch this port."
    assert await page.locator("#opt-size").count() == 0
    await page.screenshot(path=str(ARTIFACTS / "viewer.png"))
    wide = await page.evaluate("() => window.serialBridge.term.cols")
    await page.set_viewport_size({"width": 900, "height": 600})
    await page.wait_for_function("(wide) => window.serialBridge.term.cols < wide", arg=wide)
    # the log download links work for every role
    async with page.expect_download() as download_info:
        await page.click("#log-text")
    download = await download_info.value
    assert download.suggested_filename.startswith("lab")
    assert "boot message for everyone\nstill here\n" in Path(await download.path()).read_text()
    # screen-reader mode is a checkbox away, for every role
    assert await page.locator(".xterm-accessibility-tree").count() == 0
    await page.check("#opt-sr")
    assert await page.evaluate("() => window.serialBridge.term.options.screenReaderMode")
    await page.locator(".xterm-accessibility-tree").wait_for(state="attached")
    # signing out ends the session and its console
    await page.click("#logout")
    await page.wait_for_url("**/login")
    await wait_for(lambda: not bridge.port.attachments)
    await page.goto(bridge.origin + "/ports/lab")
    assert "/login?next=/ports/lab" in page.url
    browsing.assert_clean()


async def test_dropped_link_reconnects_and_shows_what_was_missed(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    bridge = await pty_bridge(bridge_factory, pty_device)
    page = await browsing.page(bridge)
    await open_console(page, bridge.origin, "lab", "operator", PASSWORDS["operator"])
    await pty_device.awrite(b"before the drop\r\n")
    await wait_for_screen(page, "before the drop")
    seen = await page.evaluate("() => window.serialBridge.link.next")
    assert seen == bridge.port.offset

    # hold reconnection (test hook), then the server cuts the websocket
    await page.evaluate("() => { window.serialBridge.link.hold = true; }")
    for session in bridge.daemon.state.consoles:
        await session.ws.close(code=1001, message=b"going away")  # type: ignore[attr-defined]
    await page.wait_for_function("() => window.serialBridge.link.state === 'reconnecting'")
    assert await page.text_content("#st-link") == "reconnecting…"
    missed = b"".join(b"printed while away %d\r\n" % i for i in range(50))
    await pty_device.awrite(missed)
    await wait_for(lambda: bridge.port.offset == seen + len(missed))

    await page.evaluate("() => window.serialBridge.link.resume()")
    await page.wait_for_function("() => window.serialBridge.link.state === 'connected'")
    hello = await page.evaluate("() => window.serialBridge.link.lastHello")
    assert hello["from"] == seen  # resumed exactly where it left off
    await wait_for_screen(page, "printed while away 49")
    text = await screen_text(page)
    for i in range(50):
        assert f"printed while away {i}" in text
    assert text.count("before the drop") == 1  # nothing shown twice
    assert await page.text_content("#st-mode") == "writer"
    assert "Reconnected" in (await page.text_content("#notice") or "")

    # the device going away is not the link going away: the page says which
    pty_device.unplug()
    await page.locator("#st-port", has_text="target offline").wait_for()
    assert await page.text_content("#st-link") == "connected"
    pty_device.replace()
    await page.locator("#st-port", has_text="target online").wait_for()
    browsing.assert_clean()


async def test_after_a_crash_the_page_shows_the_last_output(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, browsing: Browsing
) -> None:
    """#14: the page asks for the last 64 KiB (`from=-65536`); after a kill -9 they are the
    output from before it, across the offsets the restart skipped."""
    crashed_ring(tmp_path / "state0" / "logs" / "lab.ring", 65536, b"the panic before\r\n")
    bridge = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}}, log={"enabled": True, "size": "64KiB"}
    )
    await wait_for(lambda: bridge.port is not None and bridge.port.online)
    page = await browsing.page(bridge)
    await open_console(page, bridge.origin, "lab", "viewer", PASSWORDS["viewer"])
    await wait_for_screen(page, "the panic before")
    assert (await page.evaluate("() => window.serialBridge.link.lastHello"))["from"] == 0
    await pty_device.awrite(b"after the restart\r\n")
    await wait_for_screen(page, "after the restart")
    assert "output missing here" in await screen_text(page)
    browsing.assert_clean()


async def test_long_paste_asks_and_arrives_complete(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    bridge = await pty_bridge(bridge_factory, pty_device)
    page = await browsing.page(bridge)
    await open_console(page, bridge.origin, "lab", "operator", PASSWORDS["operator"])
    text = "".join(f"{i:05d}abcdefghijklmnopqrstuvwxyz" for i in range(10_000 // 31 + 1))[:10_000]
    pty_device.drain_input()
    paste = """(text) => {
      const data = new DataTransfer();
      data.setData("text/plain", text);
      const target = window.serialBridge.term.textarea;
      target.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true,
                                                        cancelable: true}));
    }"""
    await page.click("#terminal")
    await page.evaluate(paste, text)
    dialog = page.locator("dialog.confirm")
    assert "10,000 characters" in (await dialog.text_content() or "")
    assert "lab" in (await dialog.text_content() or "")
    await asyncio.sleep(0.2)
    assert pty_device.drain_input() == b""  # nothing goes out before the user agrees
    await dialog.get_by_role("button", name="Paste all").click()
    got = await pty_device.read_until(lambda b: len(b) >= len(text))
    assert got == text.encode()
    await page.locator("#notice", has_text="Pasted 10,000 characters").wait_for()
    # a short paste goes straight through, newlines as the Enter key sends them
    await page.evaluate(paste, "ls -l\nexit\n")
    got = await pty_device.read_until(lambda b: b.endswith(b"exit\r"))
    assert got == b"ls -l\rexit\r"
    # Ctrl+Shift+C copies the selection, Ctrl+Shift+V pastes (plain Ctrl+V is ^V for the target)
    await page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=bridge.origin
    )
    await pty_device.awrite(b"copy me please\r\n")
    await wait_for_screen(page, "copy me please")
    await page.evaluate(
        """() => {
          const t = window.serialBridge.term, b = t.buffer.active;
          for (let i = 0; i < b.length; i++)
            if (b.getLine(i).translateToString(true) === "copy me please") t.select(0, i, 7);
        }"""
    )
    await page.keyboard.press("Control+Shift+C")
    assert await page.evaluate("() => navigator.clipboard.readText()") == "copy me"
    await page.keyboard.press("Control+Shift+V")
    assert await pty_device.read_until(lambda b: len(b) >= 7) == b"copy me"
    await page.keyboard.press("Control+V")
    assert await pty_device.read_until(lambda b: len(b) >= 1) == b"\x16"
    # opt-in: the terminal's size typed for the target
    await page.check("#opt-size")
    got = await pty_device.read_until(lambda b: b.endswith(b"\r"))
    rows, cols = await page.evaluate(
        "() => [window.serialBridge.term.rows, window.serialBridge.term.cols]"
    )
    assert got == b"stty rows %d cols %d\r" % (rows, cols)
    assert rows > 10 and cols > 80  # the terminal fills the window
    browsing.assert_clean()


async def test_sysrq_menu_and_nmi_reach_the_port(
    bridge_factory: BridgeFactory, browsing: Browsing
) -> None:
    bridge = await virtual_bridge(bridge_factory)
    page = await browsing.page(bridge)
    await open_console(page, bridge.origin, "demo", "admin", PASSWORDS["admin"])
    transport = bridge.port.transport

    # a harmless key from the menu goes at once
    await page.click("#btn-sysrq")
    await page.click("#sysrq-keys [data-key=h]")
    await wait_for_screen(page, "sysrq: key 'h' received")
    assert ("sysrq", "h") in transport.events

    # a free sequence with a destructive key asks first, naming the port
    await page.click("#btn-sysrq")
    await page.fill("#sysrq-seq-keys", "sb")
    await page.select_option("#sysrq-interval", "0.1s")
    await page.screenshot(path=str(ARTIFACTS / "sysrq.png"))
    await page.click("#sysrq-seq-send")
    dialog = page.locator("dialog.confirm")
    question = await dialog.text_content() or ""
    assert "demo" in question and "b (reboot)" in question
    await dialog.get_by_role("button", name="Send SysRq sb").click()
    await wait_for_screen(page, "sysrq: key 'b' received")
    assert [e for e in transport.events if e[0] == "sysrq"] == [
        ("sysrq", "h"),
        ("sysrq", "s"),
        ("sysrq", "b"),
    ]

    # BREAK on its own
    breaks = sum(1 for e in transport.events if e[0] == "break")
    await page.click("#btn-break")
    await page.locator("#notice", has_text="BREAK done").wait_for()
    assert sum(1 for e in transport.events if e[0] == "break") == breaks + 1

    # NMI: cancelled does nothing; confirmed pulses the line
    nmi = mock_pin_factory().pin(NMI_GPIO)
    before = len(nmi.states)
    await page.click("#btn-nmi")
    dialog = page.locator("dialog.confirm")
    assert "demo" in (await dialog.text_content() or "")
    await page.screenshot(path=str(ARTIFACTS / "confirm-nmi.png"))
    await dialog.get_by_role("button", name="Cancel").click()
    await page.click("#btn-nmi")
    await page.locator("dialog.confirm").get_by_role("button", name="Send NMI").click()
    await page.wait_for_function(
        "() => document.getElementById('notice').textContent.startsWith('NMI done')"
    )
    assert [s.state for s in nmi.states[before:]] == [True, False]
    # power: pick the action in the power dialog, then confirm it
    power = mock_pin_factory().pin(POWER_GPIO)
    before = len(power.states)
    await page.click("#btn-power")
    await page.click("#dlg-power [data-power=off]")
    dialog = page.locator("dialog.confirm")
    assert "demo" in (await dialog.text_content() or "")
    await dialog.get_by_role("button", name="Power off").click()
    await page.wait_for_function(
        "() => document.getElementById('notice').textContent.startsWith('Power off done')"
    )
    assert [s.state for s in power.states[before:]] == [True, False]
    audit = (bridge.state_dir / "audit").glob("*")
    records = [json.loads(line) for f in audit for line in f.read_text().splitlines() if line]
    assert any(r.get("event") == "nmi" and r.get("result") == "ok" for r in records), records
    browsing.assert_clean()


async def test_every_page_and_dialog_passes_an_accessibility_audit(
    bridge_factory: BridgeFactory, browsing: Browsing
) -> None:
    """axe-core, as browsers' dev tools run it, on each page and each dialog in the state a user
    sees it: no serious or critical violation (contrast, names, roles, labels)."""
    bridge = await virtual_bridge(bridge_factory)
    page = await browsing.page(bridge)
    await page.goto(bridge.origin + "/login")
    await assert_accessible(page, "sign-in page")
    await page.fill("#username", "admin")
    await page.fill("#password", "wrong password")
    await page.click("#login-submit")
    await page.locator("#login-error").wait_for(state="visible")
    await assert_accessible(page, "sign-in page with an error")
    watch = browsing.watches[0]
    assert len(watch.errors) == 1 and "401" in watch.errors[0], watch.errors  # the wrong password
    watch.errors.clear()

    await open_console(page, bridge.origin, "demo", "admin", PASSWORDS["admin"])
    await assert_accessible(page, "console page (admin)")
    await page.click("#btn-sysrq")
    await page.hover("#sysrq-keys [data-key=b]")  # a hovered key's muted text too
    await assert_accessible(page, "SysRq dialog")
    # speech input: the name of each key button contains what the button shows
    reboot = page.locator("#sysrq-keys [data-key=b]")
    visible = " ".join(await reboot.locator("kbd, .name, .what").all_inner_texts())
    assert visible.startswith("b reboot ⚠ Reboot immediately")
    assert await page.get_by_role("button", name=visible).count() == 1
    await page.click("#sysrq-close")
    await page.click("#btn-power")
    await assert_accessible(page, "power dialog")
    await page.click("#dlg-power [data-power=off]")
    await page.locator("dialog.confirm").wait_for()
    await assert_accessible(page, "confirmation dialog")
    await page.locator("dialog.confirm").get_by_role("button", name="Cancel").click()
    await page.click("#btn-rescue")
    await page.locator("#rescue-params input").first.wait_for()
    await assert_accessible(page, "recovery dialog")
    await page.click("#rescue-close")
    await page.check("#opt-sr")
    await page.locator(".xterm-accessibility-tree").wait_for(state="attached")
    await assert_accessible(page, "console page in screen-reader mode")

    await page.goto(bridge.origin + "/")
    await page.locator("tr[data-port=demo]").wait_for()
    await assert_accessible(page, "ports overview")
    await page.goto(bridge.origin + "/ports/nosuchport")
    await assert_accessible(page, "unknown port page")
    assert len(watch.errors) == 1 and "404" in watch.errors[0], watch.errors
    watch.errors.clear()

    viewer = await browsing.page(bridge)
    await open_console(viewer, bridge.origin, "demo", "viewer", PASSWORDS["viewer"])
    await viewer.locator("#st-mode", has_text="read-only").wait_for()
    await assert_accessible(viewer, "console page (viewer)")
    browsing.assert_clean()


async def test_missing_terminal_assets_are_reported(
    bridge_factory: BridgeFactory,
    pty_device: PtyDevice,
    browsing: Browsing,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(pages, "VENDOR_DIR", tmp_path / "no-vendor")
    bridge = await pty_bridge(bridge_factory, pty_device)
    page = await browsing.page(bridge)
    await page.goto(bridge.origin + "/ports/lab")
    await page.fill("#username", "operator")
    await page.fill("#password", PASSWORDS["operator"])
    await page.click("#login-submit")
    banner = page.locator("#vendor-missing")
    await banner.wait_for(state="visible")
    assert "build-assets" in (await banner.text_content() or "")
    assert await page.text_content("#st-link") == "terminal unavailable"
    await assert_accessible(page, "console page without its terminal")


async def test_a_refused_console_says_why_and_stops_retrying(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    bridge = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path), "require_totp": True}}
    )
    page = await browsing.page(bridge)
    await login(page, bridge.origin, "operator", PASSWORDS["operator"], "/ports/lab")
    # (just navigated: the page's script may not have defined window.serialBridge yet)
    await page.wait_for_function("() => window.serialBridge?.link.state === 'closed'")
    notice = await page.text_content("#notice") or ""
    assert "refuses this console" in notice and "TOTP" in notice
    assert await page.text_content("#st-link") == "disconnected"
    assert not bridge.port.attachments


async def test_a_disabled_port_is_shown_disabled_and_its_console_says_why(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    bridge = await bridge_factory(ports={"lab": {"device": str(pty_device.path), "enabled": False}})
    page = await browsing.page(bridge)
    await login(page, bridge.origin, "operator", PASSWORDS["operator"], "/")
    pill = page.locator('tr[data-port="lab"] .pill')
    await pill.wait_for()
    assert await pill.text_content() == "disabled"
    await page.goto(f"{bridge.origin}/ports/lab")
    # (just navigated: the page's script may not have defined window.serialBridge yet)
    await page.wait_for_function("() => window.serialBridge?.link.state === 'closed'")
    notice = await page.text_content("#notice") or ""
    assert "refuses this console: port lab is disabled by the administrator" in notice
    assert bridge.port.opens == 0 and not bridge.port.attachments


async def test_sign_in_never_leads_off_site(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    """An off-site `next` (a tab makes "/\t/host" read as "//host") lands on this site's own
    page after a real sign-in, never elsewhere; the page's own check, in Chromium's URL parser,
    refuses every such form too (#18.9)."""
    bridge = await pty_bridge(bridge_factory, pty_device)
    page = await browsing.page(bridge)
    await page.goto(bridge.origin + "/login?next=/%09/127.0.0.1:1/stolen")
    verdicts = await page.evaluate(
        """(cases) => cases.map((c) => window.SB.localPath(c))""",
        [
            "/\t/127.0.0.1:1/",
            "/\n/127.0.0.1:1/",
            "/\r/127.0.0.1:1/",
            "//127.0.0.1:1/",
            "/\\127.0.0.1:1/",
            "\\\\127.0.0.1:1/",
            "https://127.0.0.1:1/",
            "javascript:alert(1)",
            " /ok",
            "127.0.0.1:1",
        ],
    )
    assert verdicts == [None] * 10
    assert await page.evaluate("() => window.SB.localPath('/ports/lab?a=1#b')") == (
        "/ports/lab?a=1#b"
    )
    await page.fill("#username", "operator")
    await page.fill("#password", PASSWORDS["operator"])
    await page.click("#login-submit")
    await page.wait_for_url(bridge.origin + "/")
    browsing.assert_clean()


async def test_pasted_text_cannot_end_bracketed_paste(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, browsing: Browsing
) -> None:
    """Clipboard text holding ESC[201~ used to end bracketed paste early, so what followed ran as
    typed commands (#18.14): ESC (and the 8-bit CSI) are removed from pasted text."""
    bridge = await pty_bridge(bridge_factory, pty_device)
    page = await browsing.page(bridge)
    await open_console(page, bridge.origin, "lab", "operator", PASSWORDS["operator"])
    await pty_device.awrite(b"\x1b[?2004h$ ")  # the shell turns bracketed paste on
    await page.wait_for_function("() => window.serialBridge.term.modes.bracketedPasteMode")
    pty_device.drain_input()
    hostile = "echo harmless\x1b[201~\x9b201~; touch /tmp/owned\n"
    await page.evaluate("(text) => window.serialBridge.paste(text)", hostile)
    got = await pty_device.read_until(lambda b: b.endswith(b"\x1b[201~"))
    assert got == b"\x1b[200~echo harmless[201~201~; touch /tmp/owned\r\x1b[201~"
    await page.locator("#notice", has_text="Removed 2 escape characters").wait_for()
    browsing.assert_clean()


async def test_single_sign_on_through_a_real_provider_lands_on_the_ports_page(
    bridge_factory: BridgeFactory, browsing: Browsing, tmp_path: Path
) -> None:
    """oidc-provider-mock (a real OpenID provider process, over TLS): the sign-in page offers it,
    its authorization page signs `alice` in, and the bridge's callback hands the browser on to
    the ports page with the role her group maps to (the SameSite=Strict cookie survives)."""
    ca = trustme.CA()
    provider = MockProvider(ca, tmp_path)
    try:
        provider.start()
        await put_user(provider, "alice", {"preferred_username": "alice", "groups": ["lab-ops"]})
        ca.cert_pem.write_to_path(str(tmp_path / "idp-ca.pem"))
        (tmp_path / "secret").write_text("any-secret\n")
        bridge = await bridge_factory(
            ports={"lab": {"device": "virtual:shell"}, "other": {"device": "virtual:shell"}},
            oidc={
                "issuer": provider.issuer,
                "client_id": "serial-bridge",
                "client_secret_file": str(tmp_path / "secret"),
                "ca_file": str(tmp_path / "idp-ca.pem"),
                "name": "the lab IdP",
                "groups": {"lab-ops": {"role": "operator", "ports": ["lab"]}},
            },
        )
        page = await browsing.page(bridge)
        # the mock's page links a stylesheet on a CDN: nothing leaves this machine
        await page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda r: r.abort())
        await page.goto(bridge.origin + "/")
        assert "/login?next=" in page.url
        link = page.locator("#sso-login")
        await link.wait_for()
        assert await link.text_content() == "Sign in with the lab IdP"
        await link.click()
        authorize = re.escape(f"{provider.issuer}/oauth2/authorize?")
        await page.wait_for_url(re.compile(authorize), wait_until="commit")
        await page.locator('input[name="sub"]').wait_for()
        await page.fill('input[name="sub"]', "alice")
        await page.click('button[type="submit"]:has-text("Authorize")')
        await page.wait_for_url(bridge.origin + "/")
        await page.locator('tr[data-port="lab"]').wait_for()
        assert await page.locator("tbody tr").count() == 1  # her group maps to `lab` only
        assert "alice" in (await page.text_content("#me") or "")
        assert "operator" in (await page.text_content("#me") or "")
    finally:
        provider.stop()


async def test_a_recovery_playbook_runs_from_the_keyboard_and_everyone_sees_its_step(
    bridge_factory: BridgeFactory, browsing: Browsing, tmp_path: Path
) -> None:
    site = tmp_path / "playbooks"
    site.mkdir()
    (site / "answer.toml").write_text(
        'description = "Asks the shell a sum"\n'
        '[params.n]\ndefault = "40"\npattern = \'[0-9]+\'\ndescription = "the first term"\n'
        '[[steps]]\ntitle = "ask"\nsend = "echo RESCUE$((${n}+2))<enter>"\n'
        '[[steps]]\ntitle = "hold on"\npause = "1s"\n'
        '[[steps]]\ntitle = "read the answer"\nexpect = "RESCUE44"\n'
    )
    bridge = await virtual_bridge(bridge_factory, playbooks={"dir": str(site)})
    page = await browsing.page(bridge)
    await open_console(page, bridge.origin, "demo", "admin", PASSWORDS["admin"])
    viewer = await browsing.page(bridge)
    await open_console(viewer, bridge.origin, "demo", "viewer", PASSWORDS["viewer"])
    assert await viewer.locator("#btn-rescue").count() == 0  # admins only

    await page.focus("#btn-rescue")  # the keyboard only, from here
    await page.keyboard.press("Enter")
    book = page.locator("#rescue-book")
    await book.wait_for()
    assert await page.evaluate("() => document.activeElement.id") == "rescue-book"
    await book.select_option("answer")
    assert "Asks the shell a sum" in await page.inner_text("#rescue-desc")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Control+A")
    await page.keyboard.type("42")
    await page.keyboard.press("Enter")  # submits the form
    confirm = page.locator("dialog.confirm")
    await confirm.wait_for()
    await confirm.get_by_role("button", name="Run answer").press("Enter")
    await viewer.locator("#st-playbook", has_text="playbook answer running, step 2/3").wait_for()
    await page.locator("#notice", has_text="Playbook answer done on demo").wait_for()
    await wait_for_screen(page, "RESCUE44")
    await viewer.locator("#st-playbook").wait_for(state="hidden")
    browsing.assert_clean()


async def test_the_timeline_shows_the_events_held_and_opens_the_log_at_one(
    bridge_factory: BridgeFactory, browsing: Browsing
) -> None:
    bridge = await virtual_bridge(bridge_factory, log={"enabled": True, "size": "256KiB"})
    page = await browsing.page(bridge)
    await open_console(page, bridge.origin, "demo", "admin", PASSWORDS["admin"])
    strip = page.locator("#timeline-list")
    await strip.locator("a", has_text="online").wait_for()
    await wait_for_screen(page, "demo$")
    await page.click("#terminal")
    await page.keyboard.type("printf 'Kernel pa%snic - not syncing: test\\n' ''")
    await page.keyboard.press("Enter")
    await strip.locator("a.ev-alert", has_text="alert kernel-panic").wait_for()
    await page.click("#btn-break")  # an action: live on the strip, with who did it
    await strip.locator("a", has_text="BREAK by admin").wait_for()
    await assert_accessible(page, "console page with its timeline")

    await page.reload()  # the same events, now read from the port's history
    await page.wait_for_function("() => window.serialBridge?.link.state === 'connected'")
    await strip.locator("a.ev-alert", has_text="alert kernel-panic").wait_for()
    labels = [t.split(" ", 1)[1] for t in await strip.locator("a").all_inner_texts()]
    assert labels == ["online", "alert kernel-panic", "BREAK by admin"]

    # the keyboard: one Tab stop (the newest), arrows move, Enter opens the log there
    newest = strip.locator("a[tabindex='0']")
    assert await newest.count() == 1 and "BREAK" in await newest.inner_text()
    await newest.focus()
    await page.keyboard.press("Home")
    assert "online" in await page.evaluate("() => document.activeElement.textContent")
    await page.keyboard.press("ArrowRight")
    async with page.context.expect_page() as opened:
        await page.keyboard.press("Enter")
    log = await opened.value
    await log.wait_for_load_state()
    assert (await log.inner_text("body")).startswith("Kernel panic - not syncing: test")
    assert "from=" in log.url
    await log.close()
    browsing.assert_clean()
