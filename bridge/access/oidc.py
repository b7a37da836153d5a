"""OpenID Connect relying party: what the bridge needs from an identity provider (`[oidc]`).

- Discovery (`ISSUER/.well-known/openid-configuration`) and the JWKS, fetched over TLS (the
  system's CAs or `ca_file`) when first needed and kept; the discovered `issuer` must be the
  configured one.
- The authorization-code flow with PKCE (S256), `state` and `nonce`: `begin` makes a one-use
  pending flow (10 minutes, at most MAX_PENDING at once) and the provider's URL; `finish` takes
  the callback's `state` and `code`, exchanges the code (client secret, code verifier) and
  verifies the ID token.
- Token verification with joserfc (never by hand): asymmetric algorithms only, signature by the
  JWKS key named by `kid` (a token without `kid` may use the JWKS's only key), `iss`, `aud`,
  `exp` and `iat`/`nbf` with LEEWAY seconds of clock skew, `nonce` for ID tokens, `azp` when
  there are several audiences. A `kid` not in the JWKS re-fetches it, at most once every
  REFETCH_INTERVAL seconds (so unknown `kid`s cannot make the bridge hammer the provider).

What a verified identity may do is decided in bridge.access.gate (`identify_oidc`), from claims.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from bridge.config import OidcConfig

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
LEEWAY = 60  # seconds of clock skew allowed either way
REFETCH_INTERVAL = 30.0  # the JWKS is fetched again for an unknown kid at most this often
FLOW_LIFETIME = 600.0
MAX_PENDING = 1000
TIMEOUT = aiohttp.ClientTimeout(total=10)


class OidcError(Exception):
    """The provider, the flow or a token failed a check; the message says which (no secret)."""


@dataclass
class Flow:
    """A sign-in under way: what the callback must match."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    next: str
    created: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OidcClient:
    """The bridge as a client of one OpenID provider."""

    def __init__(self, cfg: OidcConfig, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_keys = float("-inf")
        self.key_fetches = 0
        self._flows: OrderedDict[str, Flow] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    # ---- the provider's documents ---------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context(cafile=self.cfg.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT
            )
        return self._session

    async def _get_json(self, url: str) -> dict[str, Any]:
        if not url.startswith("https://"):
            raise OidcError(f"the provider names a non-https URL: {url}")
        try:
            async with self._http().get(url) as response:
                if response.status != 200:
                    raise OidcError(f"{url}: HTTP {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"{url}: {exc or type(exc).__name__}") from exc
        if not isinstance(body, dict):
            raise OidcError(f"{url}: not a JSON object")
        return body

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            url = f"{self.cfg.issuer}/.well-known/openid-configuration"
            found = await self._get_json(url)
            if found.get("issuer", "").rstrip("/") != self.cfg.issuer:
                raise OidcError(f"{url} names issuer {found.get('issuer')!r}, not ours")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(found.get(key), str):
                    raise OidcError(f"{url} has no {key}")
            self._metadata = found
        return self._metadata

    async def _fetch_keys(self) -> None:
        url = (await self.metadata())["jwks_uri"]
        self._fetched_keys = self.clock()
        self.key_fetches += 1
        try:
            self._keys = KeySet.import_key_set(await self._get_json(url))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OidcError(f"{url}: not a usable JWKS: {exc}") from exc

    async def prepare(self, token: str) -> None:
        """Make sure the keys to check `token` are here: fetch the JWKS the first time, and
        again for a `kid` it lacks (rate-limited). A malformed token is left to `verify`."""
        kid = _kid(token)
        async with self._lock:
            if self._keys is None or (
                kid is not None
                and not _has_kid(self._keys, kid)
                and self.clock() - self._fetched_keys >= REFETCH_INTERVAL
            ):
                await self._fetch_keys()

    # ---- tokens -----------------------------------------------------------------------------

    def verify(self, token: str, audience: str, nonce: str | None = None) -> dict[str, Any]:
        """The claims of a valid token signed by the provider, else OidcError. Synchronous:
        `prepare` first (it fetches keys)."""
        if self._keys is None:
            raise OidcError("the provider's keys are not loaded")
        key = _key_for(self._keys, token)
        try:
            decoded = jwt.decode(token, key, algorithms=list(ALGORITHMS))
        except (JoseError, ValueError) as exc:
            raise OidcError(f"bad token: {exc}") from exc
        claims = dict(decoded.claims)
        now = int(self.clock())
        registry = jwt.JWTClaimsRegistry(
            now=now,
            leeway=LEEWAY,
            iss={"essential": True, "value": self.cfg.issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise OidcError(f"token refused: {exc}") from exc
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > now + LEEWAY:
            raise OidcError("token refused: issued in the future")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.cfg.client_id:
            raise OidcError("token refused: several audiences and azp is not ours")
        if nonce is not None and not (
            isinstance(claims.get("nonce"), str) and secrets.compare_digest(claims["nonce"], nonce)
        ):
            raise OidcError("token refused: wrong nonce")
        return claims

    # ---- the authorization-code flow --------------------------------------------------------

    async def begin(self, redirect_uri: str, next_path: str) -> tuple[Flow, str]:
        """A new flow and the provider URL to send the browser to."""
        metadata = await self.metadata()
        now = self.clock()
        while self._flows and (
            len(self._flows) >= MAX_PENDING
            or now - next(iter(self._flows.values())).created > FLOW_LIFETIME
        ):
            self._flows.popitem(last=False)
        flow = Flow(
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(48),
            redirect_uri,
            next_path,
            now,
        )
        self._flows[flow.state] = flow
        challenge = _b64(hashlib.sha256(flow.verifier.encode()).digest())
        query = {
            "response_type": "code",
            "client_id": self.cfg.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.cfg.scopes),
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        endpoint = metadata["authorization_endpoint"]
        return flow, f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"

    def take_flow(self, state: str) -> Flow:
        """The pending flow of `state`, removed (one use); OidcError if unknown or too old."""
        flow = self._flows.pop(state, None)
        if flow is None or self.clock() - flow.created > FLOW_LIFETIME:
            raise OidcError("unknown or expired sign-in (state); start again")
        return flow

    async def finish(self, flow: Flow, code: str) -> tuple[dict[str, Any], str]:
        """Exchange the code; the verified ID token's claims and the raw ID token."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": flow.verifier,
            "client_id": self.cfg.client_id,
        }
        headers = {}
        if self.cfg.client_secret_file is not None:  # client_secret_basic (RFC 6749 2.3.1)
            secret = self.cfg.client_secret_file.read_text().strip()
            pair = f"{quote_plus(self.cfg.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        url = metadata["token_endpoint"]
        try:
            async with self._http().post(url, data=form, headers=headers) as response:
                body = await response.json(content_type=None)
                if response.status != 200 or not isinstance(body, dict):
                    error = body.get("error") if isinstance(body, dict) else None
                    raise OidcError(
                        f"the provider refused the code: HTTP {response.status} {error}"
                    )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"{url}: {exc or type(exc).__name__}") from exc
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the provider sent no ID token")
        await self.prepare(id_token)
        return self.verify(id_token, self.cfg.client_id, nonce=flow.nonce), id_token

    async def end_session_url(self, post_logout: str) -> str | None:
        """The provider's logout URL (RP-initiated logout), when it advertises one."""
        try:
            endpoint = (await self.metadata()).get("end_session_endpoint")
        except OidcError:
            return None
        if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
            return None
        query = urlencode(
            {"client_id": self.cfg.client_id, "post_logout_redirect_uri": post_logout}
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a JWT (our own API tokens start with `sbt_`)."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts) and len(token) < 16384


def _header(token: str) -> dict[str, Any]:
    try:
        return dict(jws.extract_compact(token.encode()).protected)
    except (JoseError, ValueError, TypeError):
        return {}


def _kid(token: str) -> str | None:
    kid = _header(token).get("kid")
    return kid if isinstance(kid, str) else None


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


def _key_for(keys: KeySet, token: str) -> Any:
    """The JWKS key that signed `token`: by `kid`, or the only key when the token has none
    (some providers leave `kid` out when they have one key)."""
    kid = _kid(token)
    if kid is not None:
        for key in keys.keys:
            if key.kid == kid:
                return key
        raise OidcError(f"token refused: unknown key {json.dumps(kid)}")
    if len(keys.keys) == 1:
        return keys.keys[0]
    raise OidcError("token refused: no kid and several keys")
