"""`serial-bridge demo`: the whole bridge on 127.0.0.1 with a virtual target, for a first look.

The target is a shell on a pseudo-terminal (device `virtual:shell`) with mock GPIO lines, so the
console, SysRq, NMI and power buttons all work without hardware. With `--qemu` the target is a real
Linux kernel in QEMU instead (bridge.hw.qemu_target; docs/qemu.md): its ttyS0 on QEMU's telnet
chardev, NMI/reset/power through QMP, so SysRq and NMI reach a real kernel. State lives in a
temporary directory that is removed on exit; an admin with a one-time password is created and
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridge.access.passwords import hash_password
from bridge.access.store import UserStore
from bridge.config import Config, parse_config
from bridge.hw.factory import VIRTUAL_DEVICE

DEMO_PORT = "demo"
ONLINE_WITHIN = 15.0
"""Seconds the QEMU demo waits for the port to connect to the guest's console."""


def cli_command() -> str:
    """How to run this same serial-bridge from another terminal, for the banner: the full path of
    the `serial-bridge` script next to this interpreter (`.venv/bin/` is not on that terminal's
    PATH), or plain `serial-bridge` when this is a system-wide install that the PATH finds; the
    module (`python -m bridge`) when there is no script."""
    script = Path(sys.executable).parent / "serial-bridge"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m bridge"
    found = shutil.which("serial-bridge")
    in_venv = sys.prefix != sys.base_prefix
    if not in_venv and found and Path(found).resolve() == script.resolve():
        return "serial-bridge"
    return shlex.quote(str(script.absolute()))


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
    description: str = "virtual target (demo)",
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
        "audit": {"journal": False},  # a throwaway bridge: nothing in the system's journal
        # the SSH door on a free port; the one-time password works there too
        "ssh": {"listen": ["127.0.0.1:0"], "password_auth": True},
        "ports": {DEMO_PORT: {"device": device, "description": description, "lines": lines}},
    }
    return parse_config(data, "<demo>")


async def _start_guest(stack: contextlib.AsyncExitStack, state_dir: Path) -> Any:
    """Boot-ready QEMU guest (paused), stopped when `stack` closes; None after printing why
    it cannot run."""
    from bridge.hw.qemu_target import QemuGuest, QemuUnavailable, check_prerequisites

    try:
        check_prerequisites()
    except QemuUnavailable as exc:
        print(f"serial-bridge demo --qemu: {exc}", file=sys.stderr)
        return None
    guest = QemuGuest(state_dir / "qemu")
    print("starting the QEMU guest (the first run downloads Debian's cloud kernel)...", flush=True)
    stack.push_async_callback(guest.stop)
    try:
        await guest.start()
    except (QemuUnavailable, RuntimeError, OSError) as exc:
        print(f"serial-bridge demo --qemu: {exc}", file=sys.stderr)
        return None
    return guest


def _ssh_line(daemon: Any, state_dir: Path) -> tuple[str, str]:
    """The `ssh` command to paste, with a known_hosts file in the demo's state that already
    holds its (new, throwaway) host key: no prompt, no stale entry left in ~/.ssh."""
    from bridge.ssh.hostkey import host_key_paths

    host, port = daemon.ssh.addresses[0]
    known = state_dir / "ssh" / "known_hosts"
    kind, key = host_key_paths(state_dir)[1].read_text().split()[:2]
    known.write_text(f"[{host}]:{port} {kind} {key}\n")
    known_opt = shlex.quote(f"UserKnownHostsFile={known}")
    line = f"ssh -p {port} -o {known_opt} admin:{DEMO_PORT}@{host}"
    return line, daemon.ssh.fingerprint


async def _wait_online(daemon: Any, name: str, within: float) -> bool:
    """True once the port's console is connected; False after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if daemon.state.ports[name].online:
            return True
        await asyncio.sleep(0.05)
    return False


async def run_demo_async(args: argparse.Namespace) -> int:
    from bridge.service.daemon import Daemon

    state_dir = Path(tempfile.mkdtemp(prefix="serial-bridge-demo-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            port = args.port if args.port == 0 or _free("127.0.0.1", args.port) else 0
            guest = None
            if getattr(args, "qemu", False):
                guest = await _start_guest(stack, state_dir)
                if guest is None:
                    return 1
                config = demo_config(
                    state_dir,
                    port,
                    device=guest.telnet_url,
                    extra_lines={"qmp": guest.qmp_path},
                    description="QEMU guest: Debian cloud kernel + busybox (demo)",
                )
            else:
                config = demo_config(state_dir, port)
            password = secrets.token_urlsafe(12)
            UserStore(state_dir).add("admin", "admin", hash_password(password), None)
            # Ctrl-C is ours from before the bridge starts until the demo stops: one pressed (or
            # sent by a script) while it starts or as soon as the banner shows is not lost (a
            # shell that starts the demo in the background has SIGINT ignored until this handler
            # replaces that; one that came while the daemon started was lost, seen in CI)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            daemon = Daemon(config)
            await daemon.start()
            stack.push_async_callback(daemon.stop, "the demo is stopping")
            url = daemon.urls()[0]
            if guest is not None:
                if await _wait_online(daemon, DEMO_PORT, ONLINE_WITHIN):
                    await guest.cont()  # boot only now: no line of the boot log is lost
                else:
                    print(
                        "serial-bridge demo --qemu: the bridge did not reach the guest's "
                        f"console within {ONLINE_WITHIN:g} s (see {guest.log_path})",
                        file=sys.stderr,
                    )
                    return 1
            target = f"{url}/{DEMO_PORT}"
            fp = daemon.fingerprint
            ssh_line, ssh_fp = _ssh_line(daemon, state_dir)
            cmd = cli_command()
            extra = ""
            if guest is not None:
                auth = f"--user admin --fingerprint {fp}"
                extra = (
                    f"  qemu pid:     {guest.pid}   (a real Linux kernel; a shell on ttyS0)\n"
                    f"  try:          {cmd} sysrq {target} h {auth}\n"
                    f"                {cmd} nmi {target} {auth}\n"
                    f"                {cmd} power {target} reset {auth}\n"
                )
            print(
                f"\nserial-bridge demo is running (state in {state_dir}, removed on exit)\n\n"
                f"  browser:      {url}/  (accept the self-signed certificate)\n"
                f"  user:         admin\n"
                f"  password:     {password}   (one-time, for this run only)\n"
                f"  fingerprint:  {fp}\n\n"
                f"  terminal:     {cmd} connect {target} --user admin --fingerprint {fp}\n"
                f"  ssh:          {ssh_line}\n"
                f"                (the same password; host key {ssh_fp})\n"
                f"{extra}\n"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            try:
                await stop.wait()
            finally:
                print("\nstopping the demo...", file=sys.stderr)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from bridge.service import eventloop
    from bridge.service.cli import setup_logging

    setup_logging(args.verbose)
    with contextlib.suppress(KeyboardInterrupt):
        return eventloop.run_command(run_demo_async(args))  # the loop `serve` runs on
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the bridge on 127.0.0.1 with a virtual target (no hardware)")
    p.add_argument(
        "--port",
        type=int,
        default=8443,
        help="TCP port on 127.0.0.1 (a free one is picked if it is taken)",
    )
    p.add_argument(
        "--qemu",
        action="store_true",
        help="target a real Linux kernel in QEMU (needs qemu-system-x86 and busybox-static; "
        "see docs/qemu.md)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run_demo)
