"""The SSH listener: asyncssh configured for a serial console, and nothing else.

Algorithms are listed explicitly (asyncssh's defaults still offer SHA-1 and weak groups): key
exchange with the ML-KEM/X25519 hybrid or curve25519 (no finite-field Diffie-Hellman, the costly
kind a connection flood exploits: CVE-2002-20001); AEAD ciphers or AES-CTR with encrypt-then-MAC
SHA-2 MACs; the ed25519 host key; no compression (console traffic is small and interactive).
Client signatures: ed25519, ECDSA, their FIDO variants and RSA with SHA-2 (SHA-1 `ssh-rsa`
signatures are refused in bridge.ssh.auth, since asyncssh would verify them). No agent or X11
forwarding, no SFTP/SCP, no line editor, bytes in and out (no encoding), no GSSAPI, no
host-based authentication, no config files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncssh
from asyncssh.encryption import get_encryption_algs
from asyncssh.kex import get_kex_algs
from asyncssh.mac import get_mac_algs

from bridge.access.sshkeys import KEY_TYPES, SHA1_SIGNATURES
from bridge.ssh.auth import Connection
from bridge.ssh.context import Door
from bridge.ssh.hostkey import ensure_host_key, host_key_fingerprint

log = logging.getLogger(__name__)

KEX = (
    "mlkem768x25519-sha256",  # post-quantum hybrid (OpenSSH 9.9+)
    "sntrup761x25519-sha512",  # (when asyncssh has liboqs)
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",  # OpenSSH 7.4+: ssh-audit warns it is not post-quantum
    "curve25519-sha256@libssh.org",
)
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
)
SIGNATURES = (  # each accepted key type's own signature; RSA keys sign with SHA-2 only
    *(kind for kind in KEY_TYPES if kind not in SHA1_SIGNATURES),
    "rsa-sha2-512",
    "rsa-sha2-256",
)
KEEPALIVE = 60.0  # seconds between keepalives; 3 unanswered drop a dead client


def _available(wanted: tuple[str, ...], known: list[bytes]) -> list[str]:
    names = {alg.decode() for alg in known}
    return [alg for alg in wanted if alg in names]


class SshListener:
    """The SSH door's listening sockets."""

    def __init__(self, door: Door, state_dir: Path) -> None:
        self.door = door
        self.state_dir = state_dir
        self.fingerprint = ""
        self.addresses: list[tuple[str, int]] = []
        self._servers: list[asyncssh.SSHAcceptor] = []
        self._options: asyncssh.SSHServerConnectionOptions | None = None

    def prepare(self) -> None:
        """The host key (made on first start) and the connection options; OSError if the key
        cannot be read or written."""
        quiet = logging.getLogger("asyncssh")
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)  # it logs every channel request at INFO
        key_path, created = ensure_host_key(self.state_dir)
        if created:
            log.info("generated an SSH host key in %s", key_path)
        self.fingerprint = host_key_fingerprint(self.state_dir) or ""
        log.info("ssh host key fingerprint %s", self.fingerprint)
        ssh = self.door.ssh
        self._options = asyncssh.SSHServerConnectionOptions(
            server_factory=lambda: Connection(self.door),
            server_host_keys=[str(key_path)],
            config=None,
            kex_algs=_available(KEX, get_kex_algs()),
            encryption_algs=_available(CIPHERS, get_encryption_algs()),
            mac_algs=_available(MACS, get_mac_algs()),
            compression_algs=["none"],
            signature_algs=list(SIGNATURES),
            gss_host=None,
            host_based_auth=False,
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=True,  # offered only while [ssh] password_auth is true (auth.Connection)
            login_timeout=ssh.login_grace,
            keepalive_interval=KEEPALIVE,
            keepalive_count_max=3,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=True,
            line_editor=False,
            encoding=None,
            allow_scp=False,
            sftp_factory=None,
            server_version="serial-bridge",
        )

    async def listen(self, host: str, port: int) -> None:
        """Listen on one address (after `prepare`); OSError if it cannot be bound."""
        assert self._options is not None
        server = await asyncssh.listen(host, port, options=self._options, backlog=128)
        self._servers.append(server)
        added = [(str(a[0]), int(a[1])) for a in server.get_addresses()]
        self.addresses += added
        log.info("ssh listening on %s", ", ".join(f"{h}:{p}" for h, p in added))

    async def stop(self, reason: str = "the bridge is shutting down") -> None:
        """Stop listening and disconnect every connection (consoles were told why already)."""
        for server in self._servers:
            server.close()
        for connection in list(self.door.connections):
            if connection.conn is not None:
                connection.conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
