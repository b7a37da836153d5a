"""serial-bridge as the system under test: config, user and token, `serve`, readiness.

Driven only through its public interface (docs/design contract): `serial-bridge user add ...
--password-stdin`, `serial-bridge token create NAME` (token on stdout), `serial-bridge serve
--config CFG`, `GET /healthz` for readiness, and the console websocket
`wss://127.0.0.1:PORT/api/ports/bench/console?mode=ro|rw` with a Bearer token.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.clients import Endpoint, client_ssl_context
from bench.common import free_port

REPO = Path(__file__).resolve().parent.parent
PORT_NAME = "bench"


_snapshot: Path | None = None


def use_snapshot(directory: Path) -> dict[str, str]:
    """Run serial-bridge from a copy of bridge/ taken now: the tree is being edited while the
    bench runs, and every run of one harness invocation must measure the same code."""
    global _snapshot
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        REPO / "bridge", directory / "bridge", ignore=shutil.ignore_patterns("__pycache__")
    )
    _snapshot = directory
    digest = hashlib.sha256()
    for f in sorted((directory / "bridge").rglob("*.py")):
        digest.update(f.relative_to(directory).as_posix().encode() + b"\0" + f.read_bytes())
    git = subprocess.run(
        ["git", "status", "--porcelain", "--", "bridge"], capture_output=True, text=True, cwd=REPO
    ).stdout
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    return {
        "path": str(directory),
        "git_head": head,
        "uncommitted_files_in_bridge": str(len(git.splitlines())),
        "sha256_of_py_sources": digest.hexdigest()[:16],
    }


def export_revision(rev: str, directory: Path) -> Path:
    """bridge/ as of git revision `rev`, extracted into `directory` (for before/after rows)."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", rev, "bridge"], capture_output=True, check=True, cwd=REPO
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def command() -> list[str]:
    if _snapshot is not None:
        return [sys.executable, "-m", "bridge"]
    exe = Path(sys.executable).parent / "serial-bridge"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("serial-bridge")
    return [found] if found else [sys.executable, "-m", "bridge"]


def _cwd() -> Path:
    return _snapshot or REPO


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if _snapshot is not None:
        env["PYTHONPATH"] = str(_snapshot)
    return env


def available() -> tuple[bool, str]:
    """Whether `serial-bridge serve` exists yet (the daemon is being written concurrently)."""
    try:
        out = subprocess.run(
            [*command(), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=_cwd(),
            env=_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, repr(e)
    text = out.stdout + out.stderr
    if out.returncode != 0 or "serve" not in text:
        return False, text.strip().splitlines()[-1] if text.strip() else f"rc={out.returncode}"
    return True, ""


def render_config(port: int, state_dir: Path, device: str, log_enabled: bool) -> str:
    return "\n".join(
        [
            "[server]",
            f'listen = ["127.0.0.1:{port}"]',
            f'state_dir = "{state_dir}"',
            "max_connections_per_user = 1000  # the bench connects 100+ clients as one user",
            "",
            "[log]",
            f"enabled = {'true' if log_enabled else 'false'}",
            "",
            f"[ports.{PORT_NAME}]",
            f'device = "{device}"',
            "baud = 4000000",
            "",
        ]
    )


_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.~+/=:]{16,}")


def parse_token(stdout: str) -> str:
    """The token printed by `token create` (the whole output if it is one word, else the last
    long token-looking word)."""
    text = stdout.strip()
    if text and len(text.split()) == 1:
        return text
    found = _TOKEN_RE.findall(text)
    if not found:
        raise RuntimeError(f"no token in `token create` output: {text[:200]!r}")
    return found[-1]


def loop_env(name: str) -> dict[str, str]:
    """SERIAL_BRIDGE_LOOP for a system named `...+asyncio` or `...+uvloop` (else the default)."""
    loops = [loop for loop in ("asyncio", "uvloop") if f"+{loop}" in name]
    return {"SERIAL_BRIDGE_LOOP": loops[0]} if loops else {}


class SerialBridge:
    """One serial-bridge configuration (ring log on or off)."""

    def __init__(self, workdir: Path, log_enabled: bool, name: str = "") -> None:
        self.log_enabled = log_enabled
        self.name = name or "serial-bridge" + ("+log" if log_enabled else "")
        self.workdir = workdir / self.name.replace("+", "-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = self.workdir / "state"
        self.cfg = self.workdir / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.token = ""
        self.t_spawn = 0.0
        self.device = ""
        self.tls = True
        self.code: Path | None = None  # run bridge/ from here (another revision) instead

    def _cmd(self) -> list[str]:
        return [sys.executable, "-m", "bridge"] if self.code is not None else command()

    def _where(self) -> tuple[Path, dict[str, str]]:
        if self.code is None:
            return _cwd(), {**_env(), **loop_env(self.name)}
        return self.code, {**os.environ, "PYTHONPATH": str(self.code), **loop_env(self.name)}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def endpoint(self, rw: bool = False) -> Endpoint:
        mode = "rw" if rw else "ro"
        path = f"/api/ports/{PORT_NAME}/console?mode={mode}"
        return Endpoint(kind="ws", port=self.port, path=path, token=self.token)

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        cwd, env = self._where()
        out = subprocess.run(
            [*self._cmd(), *args, "--config", str(self.cfg)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd,
            env=env,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"serial-bridge {' '.join(args)} failed ({out.returncode}): "
                f"{(out.stderr or out.stdout).strip()[-400:]}"
            )
        return out.stdout

    def setup(self, device: str) -> None:
        """Config, admin user and API token (once per harness run)."""
        self.device = device
        self.port = free_port()
        self.cfg.write_text(render_config(self.port, self.state, device, self.log_enabled))
        if not self.token:
            self._run(
                ["user", "add", "bench", "--role", "admin", "--password-stdin"],
                "bench-password-1\n",
            )
            self.token = parse_token(self._run(["token", "create", "bench"]))

    def start(self, device: str, wait: bool = True) -> None:
        if not self.token or device != self.device:
            self.setup(device)
        log = (self.workdir / "serve.log").open("ab")
        self.t_spawn = time.monotonic()
        cwd, env = self._where()
        self.proc = subprocess.Popen(
            [*self._cmd(), "serve", "--config", str(self.cfg)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=cwd,
            env=env,
        )
        log.close()
        if wait:
            self.wait_ready(30)

    def wait_ready(self, timeout: float) -> None:
        ctx: ssl.SSLContext = client_ssl_context()
        end = time.monotonic() + timeout
        url = f"https://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = (self.workdir / "serve.log").read_text(errors="replace")[-600:]
                raise RuntimeError(f"serial-bridge exited with {self.proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=1) as r:
                    if 200 <= r.status < 300:
                        return
            except OSError:
                time.sleep(0.01)
        raise TimeoutError(f"serial-bridge not healthy on {url} after {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.proc = None
