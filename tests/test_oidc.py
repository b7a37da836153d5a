"""Single sign-on (OpenID Connect) through a real daemon and a small provider of our own over TLS
on 127.0.0.1 (tests/oidc_helpers.py): the authorization-code flow with PKCE, state and nonce;
the group -> role mapping; IdP access tokens as bearer tokens, and the tokens that must be
refused (tampered, expired, wrong audience, wrong issuer, unknown key); JWKS re-fetch on a new
`kid`, rate-limited."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import trustme
from joserfc.jwk import ECKey

from bridge.access import oidc
from bridge.history.audit import AuditLog
from tests.conftest import PASSWORDS, Bridge, BridgeFactory
from tests.oidc_helpers import API_AUDIENCE, CLIENT_ID, CLIENT_SECRET, SmallProvider


@pytest.fixture
async def provider() -> AsyncIterator[SmallProvider]:
    p = SmallProvider(trustme.CA())
    p.claims = {"preferred_username": "carol", "groups": ["staff", "lab-ops"]}
    await p.start()
    yield p
    await p.stop()


def oidc_section(provider: SmallProvider, tmp_path: Path, **more: Any) -> dict[str, Any]:
    provider.ca.cert_pem.write_to_path(str(tmp_path / "idp-ca.pem"))
    (tmp_path / "client-secret").write_text(CLIENT_SECRET + "\n")
    return {
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret_file": str(tmp_path / "client-secret"),
        "ca_file": str(tmp_path / "idp-ca.pem"),
        "audience": API_AUDIENCE,
        "name": "Example IdP",
        "groups": {"sre": {"role": "admin"}, "lab-ops": {"role": "operator", "ports": ["lab"]}},
        **more,
    }


@pytest.fixture
async def sso(bridge_factory: BridgeFactory, provider: SmallProvider, tmp_path: Path) -> Bridge:
    return await bridge_factory(
        ports={"lab": {"device": "virtual:shell"}, "other": {"device": "virtual:shell"}},
        oidc=oidc_section(provider, tmp_path),
    )


def provider_session(provider: SmallProvider) -> aiohttp.ClientSession:
    import ssl

    context = ssl.create_default_context()
    provider.ca.configure_trust(context)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


async def sign_in(bridge: Bridge, provider: SmallProvider, s: aiohttp.ClientSession) -> Any:
    """Walk the redirects by hand: bridge -> provider -> bridge's callback. The callback's
    answer (a page that moves on to `next`)."""
    async with s.get(f"{bridge.base}/oidc/login?next=/ports/lab", allow_redirects=False) as r:
        assert r.status == 302
        to_provider = r.headers["Location"]
    query = parse_qs(urlsplit(to_provider).query)
    assert to_provider.startswith(f"{provider.issuer}/authorize?")
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    async with (
        provider_session(provider) as p,
        p.get(to_provider, allow_redirects=False) as r,
    ):
        back = r.headers["Location"]
    assert back.startswith(f"{bridge.base}/oidc/callback?")
    return await s.get(back, allow_redirects=False)


async def test_sign_in_with_pkce_state_and_nonce_maps_groups_to_a_role(
    sso: Bridge, provider: SmallProvider
) -> None:
    async with sso.session() as s:
        r = await sign_in(sso, provider, s)
        page = await r.text()
        assert r.status == 200 and 'http-equiv="refresh" content="0;url=/ports/lab"' in page
        assert "SameSite=Strict" in r.headers.getall("Set-Cookie")[0]
        async with s.get(f"{sso.base}/api/whoami") as w:
            me = await w.json()
        assert me == {"user": "carol", "role": "operator", "via": "session", "ports": ["lab"]}
        async with s.get(f"{sso.base}/api/ports") as w:
            assert [p["name"] for p in await w.json()] == ["lab"]  # the mapped ports only
        csrf = (await (await s.get(f"{sso.base}/api/csrf")).json())["csrf"]
        async with s.post(f"{sso.base}/api/logout", headers={"X-CSRF-Token": csrf}) as w:
            answer = await w.json()
        assert answer["end_session"].startswith(f"{provider.issuer}/logout?")
        async with s.get(f"{sso.base}/api/whoami") as w:
            assert w.status == 401
    (exchange,) = provider.token_requests
    assert exchange["grant_type"] == "authorization_code" and exchange["code_verifier"]
    events = [e for e in AuditLog(sso.state_dir / "audit").query() if e["event"] == "login"]
    assert events[-1] | {"time": ""} == {
        "time": "", "event": "login", "user": "carol", "peer": "127.0.0.1", "ok": True,
        "via": "oidc", "role": "operator",
    }  # fmt: skip
    assert sso.daemon.state.gate.auth_counts["oidc", "success"] == 1


async def test_a_callback_from_another_browser_or_a_replay_is_refused(
    sso: Bridge, provider: SmallProvider
) -> None:
    async with sso.session() as s:
        r = await sign_in(sso, provider, s)
        callback = str(r.url)
        assert r.status == 200
    async with (
        sso.session() as other,  # no flow cookie: another browser
        other.get(callback, allow_redirects=False) as r,
    ):
        assert r.status == 403
    async with sso.session() as s:
        async with s.get(f"{sso.base}/oidc/login", allow_redirects=False) as r:
            state = parse_qs(urlsplit(r.headers["Location"]).query)["state"][0]
        forged = f"{sso.base}/oidc/callback?code=made-up&state={state}"
        async with s.get(forged, allow_redirects=False) as r:
            assert r.status == 403  # the provider refuses the code: no session
        async with s.get(forged, allow_redirects=False) as r:
            assert r.status == 403  # and the state is used up
        async with s.get(f"{sso.base}/api/whoami") as w:
            assert w.status == 401


async def test_wrong_nonce_or_no_mapped_group_gets_no_session(
    sso: Bridge, provider: SmallProvider
) -> None:
    provider.nonce_override = "not-the-nonce"
    async with sso.session() as s:
        r = await sign_in(sso, provider, s)
        assert r.status == 403
        assert (await s.get(f"{sso.base}/api/whoami")).status == 401
    provider.nonce_override = None
    provider.claims["groups"] = ["staff"]
    async with sso.session() as s:
        r = await sign_in(sso, provider, s)
        assert r.status == 403 and "no mapped group" in await r.text()
        assert (await s.get(f"{sso.base}/api/whoami")).status == 401
    reasons = [e.get("reason") for e in AuditLog(sso.state_dir / "audit").query()]
    assert any("nonce" in str(r) for r in reasons) and "no mapped group" in reasons


def bearer(bridge: Bridge, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=bridge.ssl_pin()),
        headers={"Authorization": f"Bearer {token}", "Origin": bridge.origin},
    )


async def whoami_status(bridge: Bridge, token: str) -> tuple[int, Any]:
    async with bearer(bridge, token) as s, s.get(f"{bridge.base}/api/whoami") as r:
        return r.status, await r.json()


async def test_idp_access_tokens_work_as_bearer_tokens_and_bad_ones_are_refused(
    sso: Bridge, provider: SmallProvider
) -> None:
    provider.claims["groups"] = ["sre"]
    good = provider.mint({"aud": API_AUDIENCE})
    assert await whoami_status(sso, good) == (
        200, {"user": "carol", "role": "admin", "via": "oidc-token", "ports": None},
    )  # fmt: skip
    now = int(time.time())
    header, payload, signature = good.split(".")
    tampered = f"{header}.{payload[:-4]}{'AAAA' if payload[-4:] != 'AAAA' else 'BBBB'}.{signature}"
    refused = {
        "tampered": tampered,
        "expired": provider.mint({"aud": API_AUDIENCE, "iat": now - 900, "exp": now - 300}),
        "wrong audience": provider.mint({"aud": "another-api"}),
        "the id token's audience": provider.mint({"aud": CLIENT_ID}),
        "wrong issuer": provider.mint({"aud": API_AUDIENCE, "iss": "https://evil.example"}),
        "another key": provider.mint(
            {"aud": API_AUDIENCE}, key=ECKey.generate_key("P-256", {"kid": "k1"})
        ),
        "unsigned": f"{header.replace('ES256', 'none')}.{payload}.",
    }
    for what, token in refused.items():
        status, _ = await whoami_status(sso, token)
        assert status == 401, what
    counts = sso.daemon.state.gate.auth_counts
    assert counts["oidc", "success"] == 1 and counts["oidc", "failure"] >= 6


async def test_a_new_kid_refetches_the_jwks_once_within_the_interval(
    sso: Bridge, provider: SmallProvider
) -> None:
    provider.claims["groups"] = ["sre"]
    assert (await whoami_status(sso, provider.mint({"aud": API_AUDIENCE})))[0] == 200
    assert provider.jwks_fetches == 1
    provider.key = ECKey.generate_key("P-256", {"kid": "k2"})  # the provider rotates its key
    token = provider.mint({"aud": API_AUDIENCE})
    assert (await whoami_status(sso, token))[0] == 401  # too soon after the last fetch
    assert provider.jwks_fetches == 1
    client = sso.daemon.state.gate.oidc
    assert client is not None
    client.clock = lambda: time.time() + oidc.REFETCH_INTERVAL + 1  # later
    assert (await whoami_status(sso, token))[0] == 200
    assert provider.jwks_fetches == 2
    stranger = ECKey.generate_key("P-256", {"kid": "k3"})
    for _ in range(5):  # unknown kids do not make the bridge hammer the provider
        token = provider.mint({"aud": API_AUDIENCE}, key=stranger)
        assert (await whoami_status(sso, token))[0] == 401
    assert provider.jwks_fetches == 2


async def test_a_token_without_kid_uses_the_only_key(sso: Bridge, provider: SmallProvider) -> None:
    """oidc-provider-mock's ID tokens carry no kid while its JWKS has one key."""
    provider.claims["groups"] = ["lab-ops"]
    client = sso.daemon.state.gate.oidc
    assert client is not None
    token = provider.mint({"aud": API_AUDIENCE})
    await client.prepare(token)
    header, rest = token.split(".", 1)
    import base64
    import json

    fields = json.loads(base64.urlsafe_b64decode(header + "=="))
    del fields["kid"]
    unsigned = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    with pytest.raises(oidc.OidcError, match="bad token"):  # the header is signed too
        client.verify(f"{unsigned}.{rest}", API_AUDIENCE)
    from joserfc import jwt

    now = int(time.time())
    claims = {"iss": provider.issuer, "sub": "u", "aud": API_AUDIENCE, "iat": now, "exp": now + 60}
    no_kid = jwt.encode({"alg": "ES256"}, claims, provider.key)
    assert client.verify(no_kid, API_AUDIENCE)["sub"] == "u"


async def test_password_sign_in_can_be_turned_off(
    bridge_factory: BridgeFactory, provider: SmallProvider, tmp_path: Path
) -> None:
    b = await bridge_factory(ports={}, oidc=oidc_section(provider, tmp_path, password_login=False))
    async with b.session() as s:
        async with s.get(f"{b.base}/api/sso") as r:
            assert await r.json() == {
                "enabled": True,
                "name": "Example IdP",
                "password_login": False,
            }
        body = {"username": "admin", "password": PASSWORDS["admin"]}
        async with s.post(f"{b.base}/api/login", json=body) as r:
            assert r.status == 403 and "single sign-on" in (await r.json())["error"]
        async with s.get(
            f"{b.base}/metrics", headers={"Authorization": f"Bearer {b.tokens['admin']}"}
        ) as r:
            assert r.status == 200  # our own API tokens still work


def test_the_oidc_section_is_checked(tmp_path: Path) -> None:
    from bridge.config import ConfigError
    from tests.conftest import make_config

    with pytest.raises(ConfigError) as bad:
        make_config(
            tmp_path, {}, oidc={"issuer": "http://idp", "client_id": "x", "scopes": ["profile"]}
        )
    problems = "\n".join(bad.value.problems)
    assert re.search(r"oidc.issuer: expected an https:// URL", problems)
    assert 'oidc.scopes: must include "openid"' in problems
    assert "oidc.groups: missing" in problems
