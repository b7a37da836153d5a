"""Driving Debian's Chromium from the browser tests: one Chromium process per test module (reached
over the DevTools protocol), a fresh Playwright connection and fresh browser contexts per test, a
log-in helper, a watch on every page for console errors and requests to other origins, and an
accessibility audit with axe-core (npm, pinned in package.json)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "node_modules/axe-core/axe.min.js"  # installed by `npm ci` (scripts/build-assets)
CHROMIUM = os.environ.get("SERIAL_BRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--window-size=1280,800",
]


def chromium_or_skip() -> str:
    """The Chromium binary; outside CI a missing one skips, in CI it fails (it must run there)."""
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (CI installs the Debian package chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return path


@contextlib.contextmanager
def chromium_process(profile: Path, timeout: float = 30.0) -> Iterator[str]:
    """Start headless Chromium with a DevTools port; yields its endpoint URL."""
    binary = chromium_or_skip()
    profile.mkdir(parents=True, exist_ok=True)
    log_path = profile.parent / "chromium.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        active = profile / "DevToolsActivePort"  # Chromium's readiness signal: "PORT\nPATH"
        deadline = time.monotonic() + timeout
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.05)
        port = active.read_text().splitlines()[0].strip()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class PageWatch:
    """What a page did that a clean session must not: console errors, uncaught exceptions,
    requests (and websockets) to anything but the bridge's own origin."""

    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    frames_sent: list[Any] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("request", self._request)
        page.on("websocket", self._websocket)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning", "assert"):
            self.errors.append(f"console.{message.type}: {message.text}")

    def _request(self, request: Any) -> None:
        self.requests.append(request.url)
        own = request.url.startswith(self.origin + "/") or request.url == self.origin
        if not own and not request.url.startswith(("data:", "blob:", "about:")):
            self.foreign.append(request.url)

    def _websocket(self, ws: Any) -> None:
        wss = "wss://" + self.origin.removeprefix("https://") + "/"
        if not ws.url.startswith(wss):
            self.foreign.append(ws.url)
        ws.on("framesent", self._frame_sent)

    def _frame_sent(self, payload: Any) -> None:
        self.frames_sent.append(payload)

    def binary_frames_sent(self) -> list[bytes]:
        return [f for f in self.frames_sent if isinstance(f, bytes | bytearray)]

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], self.foreign


BUFFER_TEXT = """() => {
  const b = window.serialBridge.term.buffer.active;
  const lines = [];
  for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
  return lines.join("\\n");
}"""


async def new_page(browser: Any, origin: str) -> tuple[Any, Any, PageWatch]:
    """A fresh context (its own cookies and storage) with one watched page."""
    context = await browser.new_context(
        ignore_https_errors=True, viewport={"width": 1280, "height": 760}
    )
    page = await context.new_page()
    watch = PageWatch(origin)
    watch.attach(page)
    return context, page, watch


async def login(
    page: Any, origin: str, user: str, password: str, path: str = "/", totp: str = ""
) -> None:
    """Open `path` (which redirects to the sign-in page) and sign in through the form."""
    await page.goto(origin + path)
    assert "/login?next=" in page.url, page.url
    await page.fill("#username", user)
    await page.fill("#password", password)
    if totp:
        await page.fill("#totp", totp)
    await page.click("#login-submit")
    await page.wait_for_url(origin + path)


async def open_console(
    page: Any, origin: str, port: str, user: str, password: str, totp: str = ""
) -> None:
    """Sign in on the console page of `port` and wait until its websocket said hello."""
    await login(page, origin, user, password, f"/ports/{port}", totp)
    await page.wait_for_function(
        "() => window.serialBridge && window.serialBridge.link.state === 'connected'"
    )


async def screen_text(page: Any) -> str:
    return str(await page.evaluate(BUFFER_TEXT))


async def wait_for_screen(page: Any, needle: str, timeout: float = 10_000) -> None:
    """Until the terminal buffer contains `needle` (a line of it, or part of one)."""
    await page.wait_for_function(
        f"(needle) => ({BUFFER_TEXT})().includes(needle)", arg=needle, timeout=timeout
    )


@functools.cache
def _axe_source() -> str:
    if not AXE.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{AXE} is missing (./dev runs scripts/build-assets, which runs npm ci)")
        pytest.skip(f"{AXE} is missing (run scripts/build-assets)")
    return AXE.read_text(encoding="utf-8")


AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                  nodes: v.nodes.map((n) => `${n.target.join(" ")}: ${n.failureSummary}`)}));
}"""


async def assert_accessible(page: Any, what: str) -> None:
    """axe-core on the page as it is now (an open modal dialog included): no serious or critical
    violation. axe is evaluated through DevTools, so the page's CSP needs no exception for it."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(_axe_source())
    violations = await page.evaluate(AXE_RUN)
    assert violations == [], f"{what}: " + "\n".join(
        f"{v['impact']} {v['id']} ({v['help']}):\n  " + "\n  ".join(v["nodes"]) for v in violations
    )
