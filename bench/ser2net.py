"""ser2net (Debian's 4.3) as a peer under test: writes its YAML config, starts and stops it.

Variants (ser2net.yaml(5) option names):
  shipped  - defaults: dev-to-net-bufsize/net-to-dev-bufsize 64 bytes, chardelay on
  64k      - dev-to-net-bufsize and net-to-dev-bufsize 65536 (its throughput best)
  nodelay  - 64k plus `chardelay: false` (its latency best)
each as raw TCP (`tcp,127.0.0.1,PORT`) and TLS (`ssl(key=...,cert=...),tcp,127.0.0.1,PORT`,
a throwaway self-signed P-256 certificate the harness generates).  `max-connections` must be
raised from its default of 1 for any multi-client workload; that is the only change "as shipped".
The connector is `serialdev,<pty slave>,4000000n81,local` (`local`: ignore modem lines).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import subprocess
import time
from pathlib import Path

from bench.clients import Endpoint, client_ssl_context
from bench.common import free_port

VARIANTS: dict[str, dict[str, object]] = {
    "shipped": {},
    "64k": {"dev-to-net-bufsize": 65536, "net-to-dev-bufsize": 65536},
    "nodelay": {"dev-to-net-bufsize": 65536, "net-to-dev-bufsize": 65536, "chardelay": "false"},
}
MAX_CONNECTIONS = 200


def make_cert(directory: Path, cn: str = "bench") -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 key and certificate (PEM) for the TLS listeners."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def render_config(
    variant: str, tls: bool, port: int, device: str, key: Path | None, cert: Path | None
) -> str:
    accepter = f"tcp,127.0.0.1,{port}"
    if tls:
        accepter = f"ssl(key={key},cert={cert}),{accepter}"
    opts = {"max-connections": MAX_CONNECTIONS, **VARIANTS[variant]}
    lines = [
        "%YAML 1.1",
        "---",
        "connection: &bench",
        f"  accepter: {accepter}",
        "  enable: on",
        "  options:",
        *(f"    {k}: {v}" for k, v in opts.items()),
        f"  connector: serialdev,{device},4000000n81,local",
        "",
    ]
    return "\n".join(lines)


class Ser2net:
    """One ser2net variant; `start` runs it in the foreground (-n) with UUCP locking off (-u)."""

    def __init__(self, variant: str, tls: bool, workdir: Path) -> None:
        self.variant = variant
        self.tls = tls
        self.name = f"ser2net-{variant}-{'tls' if tls else 'tcp'}"
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.t_spawn = 0.0
        self.key: Path | None = None
        self.cert: Path | None = None
        if tls:
            self.key, self.cert = make_cert(self.workdir)

    @staticmethod
    def available() -> bool:
        return shutil.which("ser2net") is not None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def endpoint(self, rw: bool = False) -> Endpoint:
        return Endpoint(kind="tls" if self.tls else "tcp", port=self.port)

    def start(self, device: str, wait: bool = True) -> None:
        self.port = self.port or free_port()
        cfg = self.workdir / "ser2net.yaml"
        cfg.write_text(
            render_config(self.variant, self.tls, self.port, device, self.key, self.cert)
        )
        log = (self.workdir / "stderr.log").open("ab")
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(
            ["ser2net", "-n", "-u", "-c", str(cfg), "-P", str(self.workdir / "ser2net.pid")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        if wait:
            self.wait_ready(10)

    def wait_ready(self, timeout: float) -> None:
        """Ready when a TLS handshake (or TCP connect) succeeds; the probe closes at once."""
        import socket

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if self.tls:
                        client_ssl_context().wrap_socket(s).close()
                    return
            except OSError:
                time.sleep(0.01)
        raise TimeoutError(f"{self.name} did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.proc = None
