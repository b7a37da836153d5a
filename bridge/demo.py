"""`serial-bridge demo`: the whole bridge on 127.0.0.1 with a virtual target, for a first look.

The target is a shell on a pseudo-terminal (device `virtual:shell`) with mock GPIO lines, so the
console, SysRq, NMI and power buttons all work without hardware. State lives in a temporary
directory that is removed on exit; an admin with a one-time password is created and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridge.auth.passwords import hash_password
from bridge.auth.store import UserStore
from bridge.config import Config, parse_config
from bridge.hw.factory import VIRTUAL_DEVICE

DEMO_PORT = "demo"


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def demo_config(
    state_dir: Path,
    listen_port: int,
    device: str = VIRTUAL_DEVICE,
    extra_lines: dict[str, Any] | None = None,
) -> Config:
    lines: dict[str, Any] = (
        extra_lines
        if extra_lines is not None
        else {
            "nmi": {"gpio": 17, "pulse": "200ms"},
            "reset": {"gpio": 27, "pulse": "250ms"},
            "power": {"gpio": 22, "pulse": "500ms", "long_pulse": "5s"},
        }
    )
    data = {
        "server": {"listen": [f"127.0.0.1:{listen_port}"], "state_dir": str(state_dir)},
        "log": {"size": "4MiB", "flush_interval": "5s"},
        "gpio": {"pin_factory": "mock"},
        "ports": {
            DEMO_PORT: {"device": device, "description": "virtual target (demo)", "lines": lines}
        },
    }
    return parse_config(data, "<demo>")


async def run_demo_async(args: argparse.Namespace) -> int:
    from bridge.daemon import Daemon

    state_dir = Path(tempfile.mkdtemp(prefix="serial-bridge-demo-"))
    try:
        port = args.port if args.port == 0 or _free("127.0.0.1", args.port) else 0
        config = demo_config(state_dir, port)
        password = secrets.token_urlsafe(12)
        UserStore(state_dir).add("admin", "admin", hash_password(password), None)
        daemon = Daemon(config)
        await daemon.start()
        url = daemon.urls()[0]
        print(
            f"\nserial-bridge demo is running (state in {state_dir}, removed on exit)\n\n"
            f"  browser:      {url}/  (accept the self-signed certificate)\n"
            f"  user:         admin\n"
            f"  password:     {password}   (one-time, for this run only)\n"
            f"  fingerprint:  {daemon.fingerprint}\n\n"
            f"  terminal:     serial-bridge connect {url}/{DEMO_PORT} --user admin "
            f"--fingerprint {daemon.fingerprint}\n\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            print("\nstopping the demo...", file=sys.stderr)
            await daemon.stop("the demo is stopping")
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from bridge.cli import setup_logging

    setup_logging(args.verbose)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_demo_async(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the bridge on 127.0.0.1 with a virtual target (no hardware)")
    p.add_argument(
        "--port",
        type=int,
        default=8443,
        help="TCP port on 127.0.0.1 (a free one is picked if it is taken)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run_demo)
