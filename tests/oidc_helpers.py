"""OpenID providers for the single sign-on tests, both on 127.0.0.1 over TLS (a trustme CA):

- `SmallProvider`: our own minimal provider (aiohttp), which checks PKCE, lets a test choose the
  user's claims, mint any token (expired, wrong audience or issuer, unknown key) and rotate its
  key, and counts JWKS fetches;
- `MockProvider`: the `oidc-provider-mock` package (PyPI) in a process of its own, served over
  TLS by werkzeug (tests/oidc_mock_server.py), for the browser sign-in through a real
  provider's pages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trustme
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

CLIENT_ID = "serial-bridge"
CLIENT_SECRET = "s3cret-of-the-client"
API_AUDIENCE = "serial-bridge-api"


@dataclass
class SmallProvider:
    """A minimal OpenID provider: discovery, JWKS, an authorize endpoint that signs in
    `claims` at once, a token endpoint that checks the client secret and PKCE, end_session."""

    ca: trustme.CA
    claims: dict[str, Any] = field(default_factory=dict)
    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", {"kid": "k1"}))
    nonce_override: str | None = None
    jwks_fetches: int = 0
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "end_session_endpoint": f"{self.issuer}/logout",
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
        assert q["code_challenge_method"] == "S256" and len(q["state"]) >= 32
        code = secrets.token_urlsafe(16)
        self.codes[code] = dict(q)
        target = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
        raise web.HTTPFound(target)

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        asked = self.codes.pop(str(form.get("code")), None)
        if asked is None or form.get("redirect_uri") != asked["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if challenge.rstrip(b"=").decode() != asked["code_challenge"]:
            return web.json_response({"error": "invalid_grant", "pkce": "mismatch"}, status=400)
        nonce = self.nonce_override or asked["nonce"]
        id_token = self.mint({"aud": CLIENT_ID, "nonce": nonce})
        return web.json_response({"id_token": id_token, "token_type": "Bearer"})

    def mint(
        self, extra: dict[str, Any] | None = None, key: ECKey | None = None, **header: Any
    ) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "u-1", "iat": now, "exp": now + 300, **self.claims}
        claims.update(extra or {})
        key = key or self.key
        return jwt.encode({"alg": "ES256", "kid": key.kid, **header}, claims, key)


class MockProvider:
    """`oidc-provider-mock` in its own process, over TLS on 127.0.0.1."""

    def __init__(self, ca: trustme.CA, workdir: Path) -> None:
        self.ca, self.workdir = ca, workdir
        self.proc: subprocess.Popen[str] | None = None
        self.log: Any = None
        self.port = 0

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        cert = self.ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.workdir / "mock.pem"))
        script = Path(__file__).parent / "oidc_mock_server.py"
        self.log = open(self.workdir / "mock.log", "w")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.workdir / "mock.pem")],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "PORT n" once it listens
        if not line.startswith("PORT "):
            raise AssertionError(
                f"oidc-provider-mock did not start: {(self.workdir / 'mock.log').read_text()}"
            )
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        if self.log is not None:
            self.log.close()


async def put_user(provider: MockProvider, sub: str, claims: dict[str, Any]) -> None:
    """Define a user's claims at the mock (its PUT /users/SUB)."""
    import aiohttp

    context = ssl.create_default_context()
    provider.ca.configure_trust(context)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s,
        s.put(
            f"{provider.issuer}/users/{sub}",
            data=json.dumps(claims),
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 204, await r.text()
    await asyncio.sleep(0)
