"""`serial-bridge demo` turns the SSH door on: the `ssh` line its banner prints logs in with the
one-time password (the host key already pinned in the known_hosts file the line names) and
reaches the virtual target's shell."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys

from tests.ssh_helpers import SshTerminal, require_openssh

CLI = [sys.executable, "-m", "bridge"]


async def test_the_demo_banners_ssh_line_logs_in_with_the_one_time_password() -> None:
    require_openssh()
    demo = await asyncio.create_subprocess_exec(
        *CLI, "demo", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    assert demo.stdout is not None
    term = SshTerminal()
    try:
        banner = ""
        while "Press Ctrl-C" not in banner:
            line = await asyncio.wait_for(demo.stdout.readline(), 120)
            assert line, f"the demo ended: {banner}"
            banner += line.decode()
        password = re.search(r"password:\s+(\S+)", banner)
        ssh_line = re.search(r"ssh:\s+(ssh .*)", banner)
        assert password and ssh_line, banner
        args = shlex.split(ssh_line.group(1))
        assert "StrictHostKeyChecking" not in ssh_line.group(1)  # the key is pinned, not skipped
        # hermetic: no ~/.ssh/config, keys or agent of whoever runs the tests
        hermetic = ["-F", "/dev/null", "-o", "IdentityAgent=none", "-o", "PubkeyAuthentication=no"]
        await term.start(["/usr/bin/ssh", *hermetic, "-o", "StrictHostKeyChecking=yes", *args[1:]])
        at = await term.until(b"Password:", timeout=30)
        term.type(password.group(1).encode() + b"\r")
        at = await term.until(b"demo: read-write", at, timeout=30)
        term.type(b"echo ssh-$((40+2))\r")
        await term.until(b"ssh-42", at)
        term.type(b"\r~.")
        await term.wait()
    finally:
        await term.close()
        os.killpg(demo.pid, signal.SIGINT)
        await asyncio.wait_for(demo.wait(), 30)
