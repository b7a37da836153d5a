"""SSH keys and certificates as identity sources: which keys and CAs may log in as a user.

Owns the rules, independent of any SSH implementation (keys are read with `cryptography`):

- A user's public keys (`serial-bridge user key add`) are OpenSSH public key lines; accepted types
  are Ed25519, ECDSA (NIST P-256/384/521), their FIDO (`sk-`) variants and RSA of at least 2048
  bits (signed with SHA-2 only: the SSH door offers no `ssh-rsa` SHA-1 signatures). DSA and
  certificates are refused. A key is named by its OpenSSH fingerprint, `SHA256:` + base64.
- Certificate authorities: `[ssh] trusted_user_ca_keys` is a file of CA public keys, one per line
  (`#` comments and blank lines allowed; a leading `cert-authority` is accepted), re-read when it
  changes. A CA file that cannot be read or parsed trusts no CA (fail closed) and says why.
- `authorized_keys(user, cas)`: the user's keys, and each CA with `principals="NAME"`, in the
  OpenSSH authorized_keys format an SSH server enforces. A certificate is accepted only when it is
  signed by a trusted CA, is a user certificate within its validity, names the user among its
  principals (a certificate with no principals names nobody: refused, as OpenSSH does) and, when
  it has a source-address option, comes from there.
- `describe(blob)`: the fingerprint of a key, or the key id, serial and CA of a certificate, for
  the audit trail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    load_ssh_public_identity,
)

log = logging.getLogger(__name__)

KEY_TYPES = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",  # the key type; its signatures must be rsa-sha2-256/512 (bridge.ssh)
)
MIN_RSA_BITS = 2048
SHA1_SIGNATURES = frozenset({"ssh-rsa", "ssh-dss"})  # never accepted, from a user or a CA


class BadKey(ValueError):
    """A public key line that cannot be used, with the reason."""


@dataclass(frozen=True)
class SshKey:
    """One OpenSSH public key: its type, base64 wire form and comment."""

    type: str
    data: str  # base64 of the wire blob
    comment: str = ""

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.data)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def line(self) -> str:
        return f"{self.type} {self.data}" + (f" {self.comment}" if self.comment else "")


def fingerprint(blob: bytes) -> str:
    """The OpenSSH fingerprint of a key's wire blob: `SHA256:` + unpadded base64."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def parse_key(line: str) -> SshKey:
    """One public key line (`TYPE BASE64 [COMMENT]`, an optional `cert-authority` before it);
    raises BadKey naming what is wrong."""
    text = line.strip()
    if text.startswith("cert-authority "):
        text = text.removeprefix("cert-authority ").lstrip()
    fields = text.split(None, 2)
    if len(fields) < 2:
        raise BadKey("expected an OpenSSH public key line: TYPE BASE64 [COMMENT]")
    kind, data = fields[0], fields[1]
    comment = fields[2].strip() if len(fields) > 2 else ""
    if kind.endswith("-cert-v01@openssh.com"):
        raise BadKey("a certificate is not a key: add the key itself, or trust its CA")
    if kind not in KEY_TYPES:
        raise BadKey(f"key type {kind!r} is not accepted (use ed25519, ecdsa or rsa >= 2048)")
    try:
        blob = base64.b64decode(data, validate=True)
        key = load_ssh_public_identity(f"{kind} {data}".encode())
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadKey(f"not a valid {kind} key: {exc}") from None
    if _blob_type(blob) != kind:
        raise BadKey(f"the key data is not of type {kind}")
    if isinstance(key, dsa.DSAPublicKey):  # pragma: no cover - ssh-dss is not in KEY_TYPES
        raise BadKey("DSA keys are not accepted")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise BadKey(f"an RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})")
    return SshKey(kind, data, " ".join(comment.split()))


def _blob_type(blob: bytes) -> str:
    if len(blob) < 4:
        return ""
    (n,) = struct.unpack(">I", blob[:4])
    return blob[4 : 4 + n].decode("ascii", "replace")


def parse_keys(text: str) -> list[SshKey]:
    """Every key of an authorized_keys-like text (blank lines and `#` comments skipped);
    BadKey names the first bad line."""
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            keys.append(parse_key(raw))
        except BadKey as exc:
            raise BadKey(f"line {number}: {exc}") from None
    return keys


@dataclass(frozen=True)
class Credential:
    """What signed an SSH login: a key, or a certificate (with its id, serial and CA)."""

    fingerprint: str  # of the key (for a certificate: of the certified key)
    certificate: bool = False
    key_id: str = ""
    serial: int = 0
    ca: str = ""  # the CA key's fingerprint
    ca_signature: str = ""  # the algorithm the CA signed the certificate with

    def audit_fields(self) -> dict[str, object]:
        if not self.certificate:
            return {"key": self.fingerprint}
        return {"key": self.fingerprint, "cert_id": self.key_id, "cert_serial": self.serial,
                "ca": self.ca}  # fmt: skip


def describe(blob: bytes) -> Credential | None:
    """The key or certificate a client presented (its wire blob), or None if unreadable."""
    kind = _blob_type(blob)
    if not kind.endswith("-cert-v01@openssh.com"):
        return Credential(fingerprint(blob)) if kind else None
    try:
        cert = load_ssh_public_identity(f"{kind} {base64.b64encode(blob).decode()}".encode())
    except (ValueError, TypeError):
        return None
    if not isinstance(cert, SSHCertificate):
        return None
    ca_blob = _key_blob(cert.signature_key())
    return Credential(
        fingerprint(_key_blob(cert.public_key())),
        certificate=True,
        key_id=cert.key_id.decode("utf-8", "replace"),
        serial=cert.serial,
        ca=fingerprint(ca_blob) if ca_blob else "",
        ca_signature=_signature_after(blob, ca_blob),
    )


def _key_blob(key: object) -> bytes:
    try:
        line = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)  # type: ignore[attr-defined]
    except (AttributeError, ValueError, TypeError):
        return b""
    return base64.b64decode(line.split()[1])


def _signature_after(cert: bytes, ca_blob: bytes) -> str:
    """The algorithm of a certificate's signature: the last field, after the CA key."""
    field = struct.pack(">I", len(ca_blob)) + ca_blob
    at = cert.rfind(field) if ca_blob else -1
    return signature_algorithm(cert[at + len(field) + 4 :]) if at >= 0 else ""


def signature_algorithm(signature: bytes) -> str:
    """The algorithm name an SSH signature blob starts with ("" if unreadable)."""
    return _blob_type(signature)


class TrustedCas:
    """The CA keys of `[ssh] trusted_user_ca_keys`, re-read when the file changes."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._keys: list[SshKey] = []
        self.error: str | None = None

    def load(self, path: Path | None) -> list[SshKey]:
        """The trusted CAs now; [] (and `error` set, logged once) when the file is unusable."""
        if path is None:
            self._path, self._stamp, self._keys, self.error = None, None, [], None
            return []
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            if path == self._path and stamp == self._stamp:
                return self._keys
            keys = parse_keys(path.read_text())
        except (OSError, UnicodeDecodeError, BadKey) as exc:
            error = f"{path}: {getattr(exc, 'strerror', None) or exc}"
            if error != self.error:
                log.error("ssh: trusting no certificate authority: %s", error)
            self._path, self._stamp, self._keys, self.error = path, None, [], error
            return []
        self._path, self._stamp, self._keys, self.error = path, stamp, keys, None
        log.info("ssh: %d trusted user CA key(s) from %s", len(keys), path)
        return keys


def authorized_keys(user: str, keys: Iterable[SshKey], cas: Iterable[SshKey]) -> str:
    """authorized_keys lines for `user`: their own keys, and each CA for certificates that name
    `user` as a principal (user names hold no quote, comma or wildcard: see access.store)."""
    lines = [f"{k.type} {k.data}" for k in keys]
    lines += [f'cert-authority,principals="{user}" {ca.type} {ca.data}' for ca in cas]
    return "".join(line + "\n" for line in lines)
