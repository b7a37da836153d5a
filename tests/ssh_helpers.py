"""Driving Debian's OpenSSH client against the bridge's SSH door: keys and certificates made with
`ssh-keygen`, `ssh` run in a pseudo-terminal (interactive) or with pipes (commands), always with
`-F /dev/null`, `IdentitiesOnly` and a known_hosts file holding the daemon's real host key."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.access.sshkeys import parse_key
from bridge.access.store import UserStore
from bridge.ssh.hostkey import host_key_paths
from tests.conftest import Bridge, BridgeFactory, wait_for
from tests.test_cli import own_terminal

SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def require_openssh() -> None:
    if not (os.path.exists(SSH) and os.path.exists(SSH_KEYGEN)):
        reason = "OpenSSH client not installed (apt-get install openssh-client)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def keygen(path: Path, kind: str = "ed25519", bits: int | None = None, comment: str = "") -> Path:
    """A new key pair at `path` (no passphrase); returns the private key's path."""
    args = [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-f", str(path), "-C", comment or path.name]
    if bits:
        args += ["-b", str(bits)]
    subprocess.run(args, check=True, capture_output=True)
    return path


def sign(
    ca: Path, key: Path, principals: list[str] | None, validity: str = "+1h", serial: int = 7,
    key_id: str = "test-cert", options: list[str] | None = None, algorithm: str | None = None,
) -> Path:  # fmt: skip
    """`ssh-keygen -s`: a user certificate for `key` (its `-cert.pub` is returned)."""
    args = [SSH_KEYGEN, "-q", "-s", str(ca), "-I", key_id, "-z", str(serial), "-V", validity]
    if principals:
        args += ["-n", ",".join(principals)]
    for option in options or []:
        args += ["-O", option]
    if algorithm:
        args += ["-t", algorithm]
    subprocess.run([*args, f"{key}.pub"], check=True, capture_output=True)
    return Path(f"{key}-cert.pub")


@dataclass
class SshTarget:
    """Where and how to reach a bridge's SSH door."""

    bridge: Bridge
    port: int
    known_hosts: Path

    def args(self, key: Path | None, *extra: str) -> list[str]:
        args = [
            SSH, "-F", "/dev/null", "-p", str(self.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=no",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=0",
        ]  # fmt: skip
        if key is not None:
            args += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key)]
            args += ["-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"]
        return [*args, *extra]

    async def run(
        self,
        key: Path | None,
        user: str,
        *command: str,
        stdin: bytes = b"",
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> tuple[int, str, str]:
        """`ssh user@127.0.0.1 COMMAND` with pipes: (exit status, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            *self.args(key, *extra, "-T", f"{user}@127.0.0.1", *command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # no controlling terminal: passwords come from SSH_ASKPASS
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    @contextlib.asynccontextmanager
    async def terminal(
        self, key: Path | None, user: str, *extra: str, env: dict[str, str] | None = None
    ) -> AsyncIterator[SshTerminal]:
        """`ssh -tt user@127.0.0.1` in a pseudo-terminal for the length of an `async with`
        (killed at its end if it has not exited)."""
        term = SshTerminal()
        try:
            await term.start(self.args(key, *extra, "-tt", f"{user}@127.0.0.1"), env)
            yield term
        finally:
            await term.close()


async def ssh_target(bridge: Bridge, tmp_path: Path) -> SshTarget:
    """The SSH door of a running bridge, with a known_hosts file naming its real host key."""
    daemon = bridge.daemon
    assert daemon.ssh is not None, "the bridge was started without an [ssh] section"
    host, port = daemon.ssh.addresses[0]
    _private, public = host_key_paths(bridge.state_dir)
    known = tmp_path / f"known_hosts_{port}"
    fields = public.read_text().split()
    known.write_text(f"[{host}]:{port} {fields[0]} {fields[1]}\n")
    return SshTarget(bridge, port, known)


async def ssh_bridge(
    factory: BridgeFactory, device: Any, tmp_path: Path, ssh: dict[str, Any] | None = None,
    keys: dict[str, Path] | None = None, **sections: Any,
) -> tuple[Bridge, SshTarget]:  # fmt: skip
    """A bridge with port `lab` on `device` (or `ports=`) and the SSH door on 127.0.0.1, online,
    with the users' public `keys` registered. The other `sections` go to the factory."""
    require_openssh()
    ports = sections.pop("ports", None) or {"lab": {"device": str(device.path), "baud": 4_000_000}}
    bridge = await factory(ports=ports, ssh={"listen": ["127.0.0.1:0"], **(ssh or {})}, **sections)
    await wait_for(lambda: all(p.online for p in bridge.daemon.state.ports.values()))
    user_keys(bridge, keys or {})
    return bridge, await ssh_target(bridge, tmp_path)


PASSWORD_ONLY = (
    "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=keyboard-interactive",
)  # fmt: skip


def askpass(tmp_path: Path, password: str, code: str = "") -> dict[str, str]:
    """Environment for `ssh` that answers its password prompts without a terminal
    (SSH_ASKPASS_REQUIRE=force): `password`, and `code` for a prompt that mentions a code. Each
    prompt is appended to the file in SB_ASKPASS_LOG."""
    script = tmp_path / "askpass.sh"
    script.write_text(
        "#!/bin/sh\n"
        'printf \'%s\\n\' "$1" >> "$SB_ASKPASS_LOG"\n'
        'case "$1" in *code*) printf \'%s\\n\' "$SB_CODE" ;;\n'
        "  *) printf '%s\\n' \"$SB_PASSWORD\" ;;\n"
        "esac\n"
    )
    script.chmod(0o700)
    return {
        "SSH_ASKPASS": str(script),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
        "SB_ASKPASS_LOG": str(tmp_path / "askpass.log"),
        "SB_PASSWORD": password,
        "SB_CODE": code,
    }


class SshTerminal:
    """`ssh -tt` in a pseudo-terminal: the test is the user at the keyboard and the screen."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self.seen = bytearray()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env={**os.environ, "TERM": "xterm", **(env or {})},
            start_new_session=True,
            preexec_fn=functools.partial(own_terminal, self.slave),  # ssh asks on /dev/tty
        )

    def _read(self) -> bool:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return False
        self.seen.extend(data)
        return bool(data)

    async def until(self, needle: bytes, start: int = 0, timeout: float = 15) -> int:
        """The offset just after the first `needle` at or after `start` on the screen."""
        deadline = time.monotonic() + timeout
        while (at := self.seen.find(needle, start)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{needle!r} not on the ssh screen: {bytes(self.seen[-2000:])!r}"
                )
            if not self._read():
                await asyncio.sleep(0.005)
        return at + len(needle)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    @property
    def end(self) -> int:
        self._read()
        return len(self.seen)

    async def wait(self, timeout: float = 15) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.returncode is None:
            self._read()
            if time.monotonic() > deadline:
                raise AssertionError(f"ssh did not exit; screen: {bytes(self.seen[-1500:])!r}")
            try:
                await asyncio.wait_for(self.proc.wait(), 0.05)
            except TimeoutError:
                pass
        self._read()
        return self.proc.returncode

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def user_keys(bridge: Bridge, keys: dict[str, Path]) -> None:
    """Register each user's public key (users: admin, operator, viewer of conftest)."""
    store = UserStore(bridge.state_dir)
    for user, key in keys.items():
        store.add_ssh_key(user, parse_key(Path(f"{key}.pub").read_text()))
