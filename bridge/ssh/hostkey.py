"""The SSH host key: ed25519, generated on first start in `state_dir/ssh/`, loaded thereafter.

`host_ed25519_key` (OpenSSH private key format, mode 0600) and `host_ed25519_key.pub`. Clients pin
the key by its OpenSSH fingerprint (`SHA256:` + base64), which the daemon logs at start and
`serial-bridge cert show` prints.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bridge.access.sshkeys import fingerprint as key_fingerprint


def host_key_paths(state_dir: Path) -> tuple[Path, Path]:
    directory = state_dir / "ssh"
    return directory / "host_ed25519_key", directory / "host_ed25519_key.pub"


def ensure_host_key(state_dir: Path) -> tuple[Path, bool]:
    """The host key's path, generated when missing: (path, created)."""
    private, public = host_key_paths(state_dir)
    if private.exists():
        if not public.exists():
            key = serialization.load_ssh_private_key(private.read_bytes(), None)
            _write_public(public, key.public_key())  # type: ignore[arg-type]
        return private, False
    private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    tmp = private.with_name(f".{private.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, private)
    _write_public(public, key.public_key())
    return private, True


def _write_public(path: Path, key: ed25519.Ed25519PublicKey) -> None:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.write_bytes(line + b" serial-bridge\n")


def host_key_fingerprint(state_dir: Path) -> str | None:
    """`SHA256:...` of the host key in `state_dir`, or None when there is none yet."""
    _private, public = host_key_paths(state_dir)
    try:
        fields = public.read_text().split()
    except OSError:
        return None
    if len(fields) < 2:
        return None
    return key_fingerprint(base64.b64decode(fields[1]))
