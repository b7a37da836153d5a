"""Issue 14's measurements (not CI): memory under stalled clients, and a soak.

    python -m bench.faults stalled [--clients 256] [--mib 64]
    python -m bench.faults soak [--minutes 3] [--full]

`stalled`: a real `serial-bridge serve` with one pty port; N websocket clients connect and never
read (4 KiB receive buffers), one live client reads everything, and MIB MiB stream through the
port as fast as the pty takes them. Prints RSS at rest, at the peak and after the stalled clients
left, the memory per stalled client, and the documented bound (client_buffer + a frame each).

`soak` (issue 14 item 6): output paced at 3 Mbaud (300 000 bytes/s), a client connecting and
leaving every second (`from=-4096`), a SIGHUP reload every minute (the port's description
toggled, so the port is reconfigured) and a replug every 5 minutes; one watcher stays connected
throughout. Prints RSS, open descriptors, threads and asyncio tasks at the start (after a warm-up)
and the end, and the byte accounting: every offset the port reached is either delivered to the
watcher or reported to it as a gap. The default is a 3-minute run with the reload and replug
intervals scaled down (reload every 30 s, replug every 60 s); `--full` is the issue's 30 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pty
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

import aiohttp

from bench.clients import Endpoint, client_ssl_context, open_stalled
from bench.common import MIB, RATE_3M, free_port, payload, sample
from bridge.access.passwords import hash_password
from bridge.access.store import UserStore
from bridge.console.fanout import PORT_BUFFER


class Target:
    """The console of a target: a pty behind `path`, written at `rate` bytes/s (0: as fast as it
    takes them) by a thread; `replug()` puts a fresh pty behind the same path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master = -1
        self.lock = threading.Lock()
        self.written = 0
        self._plug()

    def _plug(self) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.symlink_to(name)
        self.master = master

    def replug(self) -> None:
        with self.lock:
            os.close(self.master)
            self._plug()

    def stream(self, data: bytes, rate: float, stop: threading.Event) -> None:
        """Write `data` once as fast as the pty takes it (`rate` 0), or over and over paced at
        `rate` (100 writes a second), until `stop`."""
        piece = max(1, int(rate / 100)) if rate else 65536
        at, tick = 0, time.monotonic()
        while not stop.is_set():
            if not rate and at >= len(data):
                return  # as fast as it goes: once
            chunk = data[at : at + piece] if not rate else (data[at : at + piece] or data[:piece])
            at = at + len(chunk) if not rate else (at + len(chunk)) % len(data)
            with self.lock:
                os.set_blocking(self.master, not rate)  # paced: a full line drops, as a UART
                try:
                    self.written += os.write(self.master, chunk)
                except (BlockingIOError, OSError):
                    pass  # full (nobody reads, or a replug under way): the line drops it
            if rate:
                tick += 0.01
                time.sleep(max(0.0, tick - time.monotonic()))


class Serve:
    """`serial-bridge serve` in a temporary directory, with an admin token."""

    def __init__(self, work: Path, device: Path, **port: Any) -> None:
        self.state, self.config, self.port_cfg = work / "state", work / "config.toml", port
        self.device, self.listen = device, free_port()
        self.state.mkdir(mode=0o700)
        users = UserStore(self.state)
        users.add("admin", "admin", hash_password("bench-admin-1"), None)
        self.token = users.create_token("admin", "bench")
        self.description = "a"
        self.write_config()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        listening = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    listening.set()

        threading.Thread(target=drain, daemon=True).start()
        if not listening.wait(60):
            raise RuntimeError("serve did not start: " + "".join(self.lines[-5:]))
        self.base = f"https://127.0.0.1:{self.listen}"

    def write_config(self) -> None:
        extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in self.port_cfg.items())
        self.config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{self.listen}"]\nstate_dir = "{self.state}"\n'
            "max_connections_per_user = 1000\n"
            f'[ports.lab]\ndevice = "{self.device}"\ndescription = "{self.description}"\n{extra}'
        )

    def reload(self) -> None:
        self.description = "b" if self.description == "a" else "a"
        self.write_config()
        self.proc.send_signal(signal.SIGHUP)

    def figures(self) -> dict[str, float]:
        s = sample(self.proc.pid)
        fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        threads = int(
            next(
                x
                for x in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                if x.startswith("Threads:")
            ).split()[1]
        )
        return {
            "rss_mib": s.rss_kib / 1024,
            "hwm_mib": s.hwm_kib / 1024,
            "fds": fds,
            "threads": threads,
        }

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}", "Origin": self.base},
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(), limit=0),
        )

    async def get(self, s: aiohttp.ClientSession, path: str) -> Any:
        async with s.get(self.base + path) as r:
            return await (r.json() if path.startswith("/api") else r.text())

    async def tasks(self, s: aiohttp.ClientSession) -> int:
        for line in (await self.get(s, "/metrics")).splitlines():
            if line.startswith("serial_bridge_tasks "):
                return int(float(line.split()[1]))
        return -1

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


class Watcher:
    """One websocket client from offset 0 that counts what it gets: bytes and gaps."""

    def __init__(self) -> None:
        self.start = -1
        self.received = 0
        self.gaps = 0
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def run(self, s: aiohttp.ClientSession, url: str) -> None:
        async with s.ws_connect(url, max_msg_size=0) as ws:
            self.ws = ws
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.received += len(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = msg.json()
                    if m.get("type") == "hello":
                        self.start = m["offset"]
                    elif m.get("type") == "gap":
                        self.gaps += m["to"] - m["from"]


async def soak(args: argparse.Namespace) -> None:
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        target = Target(work / "tty")
        serve = Serve(work, target.path, baud=3_000_000)
        stop = threading.Event()
        writer = threading.Thread(
            target=target.stream, args=(payload(4 * MIB), args.rate, stop), daemon=True
        )
        watcher, churned, churn_errors, reloads, replugs = Watcher(), 0, 0, 0, 0
        url = f"{serve.base.replace('https', 'wss')}/api/ports/lab/console?mode=ro"
        async with serve.session() as s:
            watching = asyncio.create_task(watcher.run(s, url + "&from=0"))
            writer.start()
            await asyncio.sleep(args.warmup)
            first = {**serve.figures(), "tasks": await serve.tasks(s)}
            print(f"start (after {args.warmup:.0f} s): {first}", flush=True)
            began = time.monotonic()
            next_reload, next_replug = began + args.reload_every, began + args.replug_every
            while (now := time.monotonic()) < began + seconds:
                try:  # a client comes, takes the last 4 KiB and some live output, and goes
                    async with s.ws_connect(url + "&from=-4096") as ws:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(ws.receive(), 0.5)
                    churned += 1
                except (aiohttp.ClientError, OSError):
                    churn_errors += 1
                if now >= next_reload:
                    serve.reload()
                    reloads, next_reload = reloads + 1, next_reload + args.reload_every
                if now >= next_replug:
                    target.replug()
                    replugs, next_replug = replugs + 1, next_replug + args.replug_every
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            stop.set()
            writer.join()
            await asyncio.sleep(2)  # the last output reaches the watcher
            last = {**serve.figures(), "tasks": await serve.tasks(s)}
            offset = (await serve.get(s, "/api/ports"))[0]["offset"]
            await asyncio.sleep(1)
            if watcher.ws is not None:
                await watcher.ws.close()
            await watching
        code = serve.stop()
    accounted = watcher.received + watcher.gaps
    print(f"end   (after {seconds / 60:.1f} min): {last}")
    print(
        f"clients connected and left: {churned} ({churn_errors} failed), reloads {reloads}, "
        f"replugs {replugs}, exit {code}"
    )
    print(
        f"bytes: the port reached offset {offset} ({offset / MIB:.1f} MiB); the watcher "
        f"received {watcher.received} and was told of {watcher.gaps} in gaps: "
        f"{'all accounted for' if accounted == offset - watcher.start else 'MISMATCH'}"
    )


async def stalled(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        target = Target(work / "tty")
        serve = Serve(work, target.path, baud=4_000_000, max_clients=args.clients + 4)
        await asyncio.sleep(1)
        rest = serve.figures()
        ep = Endpoint(
            kind="ws", port=serve.listen, path="/api/ports/lab/console?mode=ro", token=serve.token
        )
        socks = [open_stalled(ep) for _ in range(args.clients)]
        connected = serve.figures()
        watcher = Watcher()
        url = f"{serve.base.replace('https', 'wss')}/api/ports/lab/console?mode=ro"
        data = payload(args.mib * MIB)
        async with serve.session() as s:
            watching = asyncio.create_task(watcher.run(s, url))
            while watcher.start < 0:
                await asyncio.sleep(0.05)
            stop = threading.Event()
            began = time.monotonic()
            writing = threading.Thread(target=target.stream, args=(data, 0, stop), daemon=True)
            writing.start()
            while watcher.received < len(data) and time.monotonic() - began < 600:
                await asyncio.sleep(0.1)
            stop.set()
            writing.join()
            peak = serve.figures()
            for sock in socks:
                sock.close()
            await asyncio.sleep(3)
            after = serve.figures()
            if watcher.ws is not None:
                await watcher.ws.close()
            await watching
        serve.stop()
    per_client = (peak["hwm_mib"] - connected["rss_mib"]) / args.clients
    print(
        f"at rest {rest['rss_mib']:.1f} MiB; {args.clients} stalled clients connected: "
        f"{connected['rss_mib']:.1f} MiB ({connected['fds']} fds)"
    )
    print(
        f"after {args.mib} MiB of output: peak {peak['hwm_mib']:.1f} MiB, "
        f"{per_client * 1024:.0f} KiB per stalled client (its budget: "
        f"{min(MIB, PORT_BUFFER // (args.clients + 1)) // 1024} KiB of queued output, then TLS "
        f"and socket buffers); the live client got {watcher.received} of {len(data)} bytes, "
        f"{time.monotonic() - began:.1f} s"
    )
    print(f"stalled clients gone: {after['rss_mib']:.1f} MiB ({after['fds']} fds)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("stalled", help="memory with many clients that never read")
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--mib", type=int, default=64, help="output streamed meanwhile (MiB)")
    p = sub.add_parser("soak", help="churn, reloads and replugs under 3 Mbaud output")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument(
        "--full", action="store_true", help="issue 14: 30 min, reload 60 s, replug 5 min"
    )
    p.add_argument("--reload-every", type=float, default=30.0)
    p.add_argument("--replug-every", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=RATE_3M, help="output bytes per second")
    p.add_argument("--warmup", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.what == "soak" and args.full:
        args.minutes, args.reload_every, args.replug_every = 30.0, 60.0, 300.0
    asyncio.run(soak(args) if args.what == "soak" else stalled(args))


if __name__ == "__main__":
    main()
