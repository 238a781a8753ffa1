"""SecurityPolicy ``jwt``: bearer tokens verified against local or remote JWKS, as Envoy's
jwt_authn filter does it (Envoy Gateway sets it up with "any provider may accept").

Answers follow Envoy: no token -> 401 ``Jwt is missing`` (allowed when ``optional``), a bad
signature -> 401 ``Jwt verification fails``, expired -> 401 ``Jwt is expired``, wrong audience ->
403 ``Audiences in Jwt are not allowed``; 401s carry ``WWW-Authenticate: Bearer realm=...``.
Claims named in ``claimToHeaders`` replace any client-sent header of that name.
Signature checks use PyJWT; remote key sets are fetched over HTTP(S) and cached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import jwt

from homeplane.translate.security import DEFAULT_JWKS_CACHE, JWTProviderSettings, JWTSettings  # noqa: F401

log = logging.getLogger("homeplane.jwt")

FETCH_TIMEOUT = 5.0
FAILURE_PAUSE = 5.0  # seconds before a failed JWKS fetch is tried again


class JWTFailure(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Extractor:
    kind: str  # header | cookie | param
    name: str
    prefix: str = ""


@dataclass
class CompiledProvider:
    name: str
    issuer: str | None
    audiences: tuple[str, ...]
    local_keys: jwt.PyJWKSet | None
    remote_uri: str | None
    cache_for: float
    claim_headers: tuple[tuple[bytes, str], ...]
    extractors: tuple[Extractor, ...]


@dataclass
class CompiledJWT:
    optional: bool
    providers: tuple[CompiledProvider, ...]
    problems: list[str] = field(default_factory=list)


def _provider(p: JWTProviderSettings) -> CompiledProvider:
    local = None
    if p.local_jwks is not None:
        try:
            local = jwt.PyJWKSet.from_json(p.local_jwks)
        except (jwt.PyJWTError, ValueError, KeyError):
            local = None  # translate refused the policy already: its routes answer 500
    return CompiledProvider(
        name=p.name,
        issuer=p.issuer,
        audiences=p.audiences,
        local_keys=local,
        remote_uri=p.remote_uri,
        cache_for=p.cache_for,
        claim_headers=tuple((h.encode(), claim) for h, claim in p.claim_headers),
        extractors=tuple(Extractor(s.kind, s.name, s.prefix) for s in p.sources),
    )


def compile_jwt(s: JWTSettings) -> CompiledJWT:
    return CompiledJWT(s.optional, tuple(_provider(p) for p in s.providers))


def extract_token(p: CompiledProvider, headers: dict[bytes, bytes], query: bytes) -> str | None:
    for e in p.extractors:
        if e.kind == "header":
            v = headers.get(e.name.encode())
            if v is not None:
                s = v.decode("latin-1")
                if not e.prefix:
                    return s.strip()
                if s[: len(e.prefix)].lower() == e.prefix.lower():
                    return s[len(e.prefix) :].strip()
        elif e.kind == "cookie":
            for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == e.name and v:
                    return v
        elif e.kind == "param" and query:
            for k, v in parse_qsl(query.decode("latin-1")):
                if k == e.name and v:
                    return v
    return None


def verify(p: CompiledProvider, token: str, keys: jwt.PyJWKSet) -> dict[str, Any]:
    """The token's claims, or JWTFailure with Envoy's status and message."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise JWTFailure(401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections") from None
    kid = header.get("kid")
    candidates = [k for k in keys.keys if kid is None or k.key_id in (None, kid)]
    if not candidates:
        raise JWTFailure(401, "Jwks doesn't have key to match kid or alg from Jwt")
    last: JWTFailure | None = None
    for k in candidates:
        try:
            return jwt.decode(
                token,
                key=k.key,
                algorithms=[k.algorithm_name] if k.algorithm_name else [header.get("alg", "RS256")],
                audience=list(p.audiences) or None,
                issuer=p.issuer or None,
                options={"verify_aud": bool(p.audiences), "require": []},
                leeway=60,  # Envoy's default clock skew
            )
        except jwt.ExpiredSignatureError:
            raise JWTFailure(401, "Jwt is expired") from None
        except jwt.ImmatureSignatureError:
            raise JWTFailure(401, "Jwt not yet valid") from None
        except jwt.InvalidAudienceError:
            raise JWTFailure(403, "Audiences in Jwt are not allowed") from None
        except jwt.InvalidIssuerError:
            raise JWTFailure(401, "Jwt issuer is not configured") from None
        except jwt.PyJWTError:
            last = JWTFailure(401, "Jwt verification fails")
    assert last is not None
    raise last


class JWKSFetcher:
    """Remote key sets by URI, cached for the provider's cacheDuration; one fetch at a time."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._inflight: dict[str, asyncio.Future[jwt.PyJWKSet]] = {}
        self._failed_until: dict[str, float] = {}  # a failing key server is asked again only after a pause

    def cached(self, uri: str) -> jwt.PyJWKSet | None:
        hit = self._cache.get(uri)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    async def get(self, uri: str, cache_for: float) -> jwt.PyJWKSet:
        hit = self.cached(uri)
        if hit is not None:
            return hit
        if self._failed_until.get(uri, 0) > time.monotonic():
            raise OSError(f"fetching {uri} failed moments ago")
        fut = self._inflight.get(uri)
        if fut is None:
            fut = self._inflight[uri] = asyncio.ensure_future(self._fetch(uri, cache_for))
            fut.add_done_callback(lambda _f: self._inflight.pop(uri, None))
        return await asyncio.shield(fut)

    async def _fetch(self, uri: str, cache_for: float) -> jwt.PyJWKSet:
        try:
            body = await asyncio.wait_for(http_get(uri), FETCH_TIMEOUT)
            keys = jwt.PyJWKSet.from_dict(json.loads(body))
        except Exception:
            self._failed_until[uri] = time.monotonic() + FAILURE_PAUSE
            raise
        self._failed_until.pop(uri, None)
        self._cache[uri] = (time.monotonic() + cache_for, keys)
        return keys


async def http_get(uri: str) -> bytes:
    """A plain HTTP/1.1 GET (TLS for https) returning the 200 body; anything else raises."""
    u = urlsplit(uri)
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = u.hostname or ""
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None)
    try:
        conn = h11.Connection(h11.CLIENT)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        writer.write(conn.send(h11.Request(method="GET", target=target, headers=[("host", u.netloc), ("accept", "application/json"), ("connection", "close")])))
        writer.write(conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if status != 200:
            raise OSError(f"GET {uri}: HTTP {status}")
        return body
    finally:
        writer.close()


def claim_value(claims: dict[str, Any], path: str) -> str | None:
    """A claim by name; dotted names reach into nested objects, as Envoy's claim_to_headers do."""
    cur: Any = claims
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    if isinstance(cur, str):
        return cur
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, (int, float)):
        return str(cur)
    if isinstance(cur, list):
        return ",".join(str(x) for x in cur)
    return json.dumps(cur, separators=(",", ":"))
