"""TLS for every listener: the server certificate (configured, or generated once) and the contexts.

A generated certificate is ECDSA P-256, self-signed, valid 10 years, with SANs for the host name,
`localhost` and the listen addresses; the key file is mode 0600 in `state_dir/tls/`. Made on a
bridge whose clock is still wrong (no real-time clock, before NTP: a date before
NOT_BEFORE_SANE), it is valid from then until 10 years after NOT_BEFORE_SANE, so it has not
expired by the time the clock is set. Clients pin it by its SHA-256 fingerprint (`SHA256:` + hex,
colon-free), which `serial-bridge cert show` prints.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.history.statedir import private_dir, replace_private

NOT_BEFORE_SANE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)  # older: a clock not yet set
# Mozilla "intermediate" TLS 1.2 suites (TLS 1.3 suites are fixed by OpenSSL and all strong).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def cert_paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / "tls" / "cert.pem", state_dir / "tls" / "key.pem"


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def generate_self_signed(cert_path: Path, key_path: Path, names: list[str]) -> None:
    """Write a new ECDSA P-256 self-signed certificate and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"serial-bridge {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    wanted = [hostname, "localhost", "127.0.0.1", "::1", *names]
    wanted = [n for n in wanted if n and n not in ("0.0.0.0", "::")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(max(now, NOT_BEFORE_SANE) + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(_san_entries(wanted)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    private_dir(cert_path.parent)
    pem = serialization.Encoding.PEM
    replace_private(
        key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    replace_private(cert_path, cert.public_bytes(pem))


def ensure_certificate(state_dir: Path, names: list[str]) -> tuple[Path, Path, bool]:
    """The generated certificate in state_dir, made on first use: (cert, key, created)."""
    cert, key = cert_paths(state_dir)
    if cert.exists() and key.exists():
        return cert, key, False
    generate_self_signed(cert, key, names)
    return cert, key, True


def fingerprint_of_der(der: bytes) -> str:
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def fingerprint(cert_path: Path) -> str:
    """`SHA256:<hex>` of the certificate's DER encoding."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ only, intermediate ciphers, no renegotiation, no compression, no tickets reuse
    across restarts; client certificates requested (optional) when `client_ca` is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
