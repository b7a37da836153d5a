"""TLS: only 1.2 and 1.3, only the intermediate (ECDHE + AEAD) TLS 1.2 suites, no renegotiation,
HSTS, nothing useful for plain HTTP, and client certificates mapped to users (mTLS)."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path

import aiohttp
import pytest
import trustme

from bridge.service.tls import cert_paths
from tests.conftest import Bridge, BridgeFactory, PtyDevice, wait_for
from tests.test_security_support import client_tls


async def _handshake(bridge: Bridge, ctx: ssl.SSLContext) -> str:
    """The negotiated protocol version, or raise ssl.SSLError / ConnectionError."""
    host, port = bridge.daemon.addresses[0]
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), 10)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return str(ssl_object.version())
    finally:
        writer.close()


async def _old_server_accepts(client: ssl.SSLContext, bridge: Bridge) -> str:
    """Control: a server that allows old TLS does complete a handshake with `client`, so the
    client really offers the old version (otherwise the refusal below would prove nothing)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    cert, key = cert_paths(bridge.state_dir)
    server.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    try:
        port = srv.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        version = str(writer.get_extra_info("ssl_object").version())
        writer.close()
        return version
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")]
)
async def test_tls_1_0_and_1_1_handshakes_fail(
    bridge: Bridge, version: ssl.TLSVersion, name: str
) -> None:
    ctx = client_tls(maximum=version, minimum=version)
    assert await _old_server_accepts(ctx, bridge) == name
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(bridge, ctx)


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")]
)
async def test_tls_1_2_and_1_3_work(bridge: Bridge, version: ssl.TLSVersion, name: str) -> None:
    ctx = client_tls()
    ctx.minimum_version = ctx.maximum_version = version
    assert await _handshake(bridge, ctx) == name


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-SHA",  # CBC
        "ECDHE-ECDSA-AES256-SHA384",  # CBC
        "AES128-GCM-SHA256",  # static RSA key exchange, no forward secrecy
        "DHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-NULL-SHA",
    ],
)
async def test_weak_tls_1_2_suites_are_refused(bridge: Bridge, cipher: str) -> None:
    ctx = client_tls()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(f"{cipher}:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(bridge, ctx)


async def test_no_renegotiation_no_compression_and_hsts(bridge: Bridge) -> None:
    ctx = bridge.daemon.ssl_context
    assert ctx is not None
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    async with bridge.session() as s, s.get(f"{bridge.base}/healthz") as r:
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        assert int(r.headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 31536000


async def test_plain_http_to_the_tls_port_gets_nothing_useful(bridge: Bridge) -> None:
    host, port = bridge.daemon.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET /api/ports HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        await writer.drain()
        answer = b""
        try:
            while len(answer) < 65536:
                piece = await asyncio.wait_for(reader.read(4096), 5)
                if not piece:
                    break
                answer += piece
        except (ConnectionError, TimeoutError):
            pass
    finally:
        writer.close()
    assert b"HTTP/" not in answer and b"lab" not in answer and b"{" not in answer
    assert len(answer) <= 7  # at most a TLS alert record


# ---- mTLS -------------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def _mtls_bridge(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, ca: trustme.CA, tmp_path: Path
) -> Bridge:
    ca_file = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}}, server={"client_ca": str(ca_file)}
    )
    await wait_for(lambda: b.daemon.state is not None and b.daemon.state.ports["lab"].online)
    return b


def _client(b: Bridge, cert: trustme.LeafCert | None) -> aiohttp.ClientSession:
    ctx = client_tls()
    if cert is not None:
        cert.configure_cert(ctx)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


async def test_client_certificate_maps_to_the_user_of_that_name(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, ca: trustme.CA, tmp_path: Path
) -> None:
    b = await _mtls_bridge(bridge_factory, pty_device, ca, tmp_path)
    by_cn = ca.issue_cert("automation.example", common_name="operator")
    by_san = ca.issue_cert("viewer")
    stranger = ca.issue_cert("nobody-here", common_name="nobody-here")
    for cert, expected in ((by_cn, "operator"), (by_san, "viewer")):
        async with _client(b, cert) as s, s.get(f"{b.base}/api/whoami") as r:
            assert r.status == 200
            body = await r.json()
            assert (body["user"], body["via"]) == (expected, "certificate")
    for cert in (stranger, None):
        async with _client(b, cert) as s, s.get(f"{b.base}/api/whoami") as r:
            assert r.status == 401
    other_ca = trustme.CA().issue_cert("admin", common_name="admin")
    with pytest.raises(aiohttp.ClientError):
        async with _client(b, other_ca) as s, s.get(f"{b.base}/api/whoami") as r:
            assert r.status != 200
    # a certificate is ambient in a browser: a change from another origin is refused
    async with _client(b, by_cn) as s:
        cross = {"Origin": "https://evil.example"}
        async with s.post(f"{b.base}/api/ports/lab/break", headers=cross) as r:
            assert r.status == 403
        async with s.post(
            f"{b.base}/api/ports/lab/break", headers={"Sec-Fetch-Site": "cross-site"}
        ) as r:
            assert r.status == 403
        assert pty_device.drain_input() == b""
        async with s.post(f"{b.base}/api/ports/lab/break") as r:  # automation: no Origin
            assert r.status == 501, await r.text()  # past every check: the pty cannot BREAK


async def test_client_certificates_are_ignored_without_client_ca(
    bridge: Bridge, ca: trustme.CA
) -> None:
    async with (
        _client(bridge, ca.issue_cert("admin", common_name="admin")) as s,
        s.get(f"{bridge.base}/api/whoami") as r,
    ):
        assert r.status == 401
