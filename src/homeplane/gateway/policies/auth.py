"""SecurityPolicy enforcement on the request path, in Envoy Gateway's filter order:
cors (in the exchange, see gateway/cors.py), extAuth (HTTP), apiKeyAuth, basicAuth, jwt
(gateway/jwtauth.py), then EnvoyExtensionPolicy Lua (gateway/lua.py), then authorization
(gateway/authz.py).

apiKeyAuth takes the key from the first of ``extractFrom``'s headers, query parameters or
cookies that the request has; a missing or unknown key is a 401. The client id (the key's name
in the Secret) can be forwarded in a header, and ``sanitize`` removes the key from the request.

extAuth follows Envoy's ext_authz HTTP semantics: the check request keeps the
original method; its path is the policy's ``path`` prefix plus the original
path and query (the prefix may itself carry a query, e.g. ``/api/auth?path=``);
it has no body (``content-length: 0``) and carries Host, Authorization, the
X-Forwarded-* headers and the headers named in ``headersToExtAuth``. Only a 200
lets the request through; headers named in ``headersToBackend`` (``*``
wildcards allowed) are then copied from the auth response onto the upstream
request, after removing any client-sent header of those names, so a client can
never forge ``X-authentik-username``. Any other status goes back to the client
with the auth server's headers and body. Errors (unreachable, timeout - 10 s by
default - or a 5xx) deny with 403, or allow when ``failOpen`` is set.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence
from urllib.parse import unquote_to_bytes

import bcrypt

from homeplane.gateway.base import DataPlaneHooks, ExchangeState
from homeplane.gateway.policies.authz import CompiledAuthorization, compile_authorization
from homeplane.gateway.upstreams.cluster import cluster_key
from homeplane.gateway.policies.cors import CompiledCors, compile_cors
from homeplane.gateway.routing.headers import HOP_BY_HOP
from homeplane.gateway.policies.jwtauth import CompiledJWT, JWKSFetcher, JWTFailure, claim_value, compile_jwt, extract_token, verify
from homeplane.gateway.routing.router import parse_query
from homeplane.gateway.upstreams.connect import connect
from homeplane.gateway.upstreams.pool import PooledConnection
from homeplane.translate.snapshot import SecurityIR


log = logging.getLogger("homeplane.auth")

_ALWAYS_SENT = (b"authorization",)
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id")


def _patterns(names: Sequence[str]) -> tuple[re.Pattern[bytes], ...]:
    return tuple(re.compile(fnmatch.translate(n.lower()).encode(), re.IGNORECASE) for n in names)


def _matches(name: bytes, pats: tuple[re.Pattern[bytes], ...]) -> bool:
    return any(p.match(name) for p in pats)


@dataclass
class CompiledSecurity:
    ir: SecurityIR
    ext_cluster: str | None = None
    ext_path: bytes = b""
    ext_timeout: float = 10.0
    ext_fail_open: bool = False
    to_ext: tuple[re.Pattern[bytes], ...] = ()
    to_backend: tuple[re.Pattern[bytes], ...] = ()
    users: dict[bytes, bytes] | None = None
    forward_username: bytes | None = None
    authz: CompiledAuthorization | None = None
    cors: CompiledCors | None = None
    jwt: CompiledJWT | None = None
    api_keys: tuple[tuple[bytes, bytes], ...] | None = None  # (key, client id)
    key_sources: tuple[tuple[str, bytes], ...] = ()  # ("header" | "param" | "cookie", name), in order
    forward_client_id: bytes | None = None
    sanitize: bool = False


def compile_security(sec: SecurityIR) -> CompiledSecurity:
    """The run-time form of a SecurityPolicy's settings (lowered by translate): compiled header
    patterns, parsed htpasswd and key sets."""
    s = sec.settings
    c = CompiledSecurity(sec)
    if s.ext_auth is not None:
        c.ext_cluster = cluster_key(s.ext_auth.pool, "LeastRequest")
        c.ext_path = s.ext_auth.path.encode()
        c.ext_timeout = s.ext_auth.timeout
        c.ext_fail_open = s.ext_auth.fail_open
        c.to_ext = _patterns(s.ext_auth.headers_to_ext_auth)
        c.to_backend = _patterns(s.ext_auth.headers_to_backend)
    if s.basic_auth is not None:
        c.users = parse_htpasswd(bytes(s.basic_auth.htpasswd))
        if s.basic_auth.forward_username_header:
            c.forward_username = s.basic_auth.forward_username_header.encode()
    if s.api_key is not None:
        k = s.api_key
        c.api_keys = tuple((bytes(key), client.encode()) for client, key in k.keys)
        c.key_sources = tuple((kind, name.encode()) for kind, name in k.sources)
        c.forward_client_id = k.forward_client_id_header.encode() if k.forward_client_id_header else None
        c.sanitize = k.sanitize
    if s.cors is not None:
        c.cors = compile_cors(s.cors)
    if s.jwt is not None:
        c.jwt = compile_jwt(s.jwt)
    if s.authorization is not None:
        c.authz = compile_authorization(s.authorization)
    return c


# --- basic auth -------------------------------------------------------------------------


def parse_htpasswd(data: bytes) -> dict[bytes, bytes]:
    users: dict[bytes, bytes] = {}
    for line in data.splitlines():
        line = line.strip()
        if not line or line.startswith(b"#") or b":" not in line:
            continue
        user, _, hashed = line.partition(b":")
        users[user] = hashed
    return users


def check_password(hashed: bytes, password: bytes) -> bool:
    """bcrypt ($2y$/$2a$/$2b$) and {SHA} (base64 SHA-1), the formats htpasswd -B / -s write."""
    if hashed.startswith((b"$2y$", b"$2a$", b"$2b$")):
        try:
            return bcrypt.checkpw(password, b"$2b$" + hashed[4:])
        except ValueError:
            return False
    if hashed.startswith(b"{SHA}"):
        digest = base64.b64encode(hashlib.sha1(password).digest())
        return hmac.compare_digest(digest, hashed[5:])
    return False


# --- the enforcement ----------------------------------------------------------------


class Auth:
    def __init__(self, dp: DataPlaneHooks):
        self.dp = dp
        self._verified: dict[tuple[bytes, bytes], float] = {}  # bcrypt is slow: cache good logins briefly
        self.jwks = JWKSFetcher()

    def check(self, ex: AuthSubject, compiled: CompiledSecurity, headers: dict[bytes, bytes]) -> None:
        """Decide, then either ``ex.proceed()`` or answer the client. May finish later (extAuth)."""
        if compiled.ext_cluster is not None:
            asyncio.ensure_future(self._ext_auth(ex, compiled, headers))
            return
        self._after_ext(ex, compiled, headers)

    def _after_ext(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes]) -> None:
        if c.api_keys is not None and not self._api_key(ex, c, headers):
            return
        if c.users is not None:
            user = self._basic(c, headers)
            if user is None:
                realm = b'Basic realm="http://' + ex.host + b'"'
                ex.error = "basic auth failed"
                ex.respond_simple(401, b"User authentication failed. Missing username and password.\n" if b"authorization" not in headers else b"User authentication failed. Invalid username/password combination.\n", [(b"www-authenticate", realm)])
                return
            if c.forward_username is not None:
                ex.headers = [h for h in ex.headers if h[0] != c.forward_username] + [(c.forward_username, user)]
        if c.jwt is not None:
            self._jwt(ex, c, headers)
            return
        self._authorize(ex, c)

    def _authorize(self, ex: AuthSubject, c: CompiledSecurity, verified: tuple[str, dict[str, Any]] | None = None) -> None:
        """The last step (Envoy's RBAC filter comes after authentication and Lua), then upstream.
        ``verified``: the JWT provider that accepted the request's token, and its claims."""
        if ex.action is not None and ex.action.lua and not ex.run_lua_request(ex.action):
            return  # a script answered
        if c.authz is not None and not c.authz.allows(ex.client_ip, ex.method, ex.headers, verified):
            ex.error = "denied by authorization rules"
            ex.respond_simple(403, b"RBAC: access denied\n")
            return
        ex.proceed()

    # --- api keys ---------------------------------------------------------------------------

    def _api_key(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes]) -> bool:
        """True when the request carries a known key (and is then prepared for upstream)."""
        found: tuple[str, bytes, bytes] | None = None
        query: dict[bytes, bytes] | None = None
        for kind, name in c.key_sources:
            if kind == "header":
                value = headers.get(name)
            elif kind == "param":
                query = query if query is not None else parse_query(ex.query)
                value = query.get(name)
            else:
                value = _cookies(headers.get(b"cookie", b"")).get(name)
            if value:
                found = (kind, name, value)
                break
        client = None
        if found is not None:
            for key, cid in c.api_keys or ():
                if hmac.compare_digest(key, found[2]):  # no early exit on the first differing byte
                    client = cid
        if client is None:
            ex.error = "api key auth failed"
            ex.respond_simple(401, b"Client authentication failed.\n")
            return False
        assert found is not None
        if c.sanitize:
            kind, name, _ = found
            if kind == "header":
                ex.headers = [h for h in ex.headers if h[0] != name]
            elif kind == "param":
                ex.query = b"&".join(p for p in ex.query.split(b"&") if unquote_to_bytes(p.partition(b"=")[0]) != name)
            else:
                ex.headers = _without_cookie(ex.headers, name)
        if c.forward_client_id is not None:
            ex.headers = [h for h in ex.headers if h[0] != c.forward_client_id] + [(c.forward_client_id, client)]
        return True

    # --- jwt ------------------------------------------------------------------------------

    def _jwt(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes]) -> None:
        assert c.jwt is not None
        missing = [p for p in c.jwt.providers if p.local_keys is None and p.remote_uri and self.jwks.cached(p.remote_uri) is None]
        if missing:
            asyncio.ensure_future(self._jwt_fetch_then_decide(ex, c, headers, missing))
            return
        self._jwt_decide(ex, c, headers)

    async def _jwt_fetch_then_decide(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes], providers: list[Any]) -> None:
        for p in providers:
            try:
                await self.jwks.get(p.remote_uri, p.cache_for)
            except Exception as e:  # unreachable, not 200, not a key set: the request still gets an answer
                log.warning("fetching JWKS %s for provider %s failed: %r", p.remote_uri, p.name, e)
        if ex.state == ExchangeState.DONE:  # the client went away meanwhile
            return
        self._jwt_decide(ex, c, headers)

    def _jwt_decide(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes]) -> None:
        j = c.jwt
        assert j is not None
        failure: JWTFailure | None = None
        presented = False
        for p in j.providers:
            token = extract_token(p, headers, ex.query)
            if token is None:
                continue
            presented = True
            keys = p.local_keys or (self.jwks.cached(p.remote_uri) if p.remote_uri else None)
            if keys is None:
                failure = failure or JWTFailure(401, "Jwks remote fetch is failed")
                continue
            try:
                claims = verify(p, token, keys)
            except JWTFailure as f:
                failure = failure or f
                continue
            if p.claim_headers:
                names = {h for h, _ in p.claim_headers}
                kept = [h for h in ex.headers if h[0] not in names]  # a client cannot forge a claim header
                for name, claim in p.claim_headers:
                    v = claim_value(claims, claim)
                    if v is not None:
                        kept.append((name, v.encode("utf-8")))
                ex.headers = kept
            self._authorize(ex, c, (p.name, claims))
            return
        if not presented and j.optional:
            self._authorize(ex, c)
            return
        failure = failure or JWTFailure(401, "Jwt is missing")
        ex.error = "jwt: " + failure.message
        extra = []
        if failure.status == 401:
            realm = b'Bearer realm="' + ex.conn.scheme + b"://" + ex.host + ex.path + b'"'
            extra.append((b"www-authenticate", realm + (b', error="invalid_token"' if presented else b"")))
        ex.respond_simple(failure.status, failure.message.encode(), extra)

    def _basic(self, c: CompiledSecurity, headers: dict[bytes, bytes]) -> bytes | None:
        auth = headers.get(b"authorization", b"")
        if not auth[:6].lower() == b"basic ":
            return None
        try:
            user, _, password = base64.b64decode(auth[6:].strip(), validate=True).partition(b":")
        except ValueError:
            return None
        assert c.users is not None
        hashed = c.users.get(user)
        if hashed is None:
            return None
        key = (user, hashlib.sha256(hashed + b"\0" + password).digest())
        now = time.monotonic()
        if self._verified.get(key, 0) > now:
            return user
        if check_password(hashed, password):
            if len(self._verified) > 10000:
                self._verified.clear()
            self._verified[key] = now + 300
            return user
        return None

    # --- extAuth over HTTP ------------------------------------------------------------------

    def _check_request(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes]) -> bytes:
        target = ex.path + (b"?" + ex.query if ex.query else b"")
        path = c.ext_path + target if c.ext_path else target
        lines = [ex.method, b" ", path, b" HTTP/1.1\r\nhost: ", headers.get(b"host", ex.host), b"\r\n"]
        for n, v in ex.headers:
            if n in HOP_BY_HOP or n in (b"host", b"content-length") or n in _FORWARDED:
                continue
            if n in _ALWAYS_SENT or _matches(n, c.to_ext):
                lines += [n, b": ", v, b"\r\n"]
        xff = headers.get(b"x-forwarded-for")
        remote = ex.conn.client_ip.encode()
        lines += [
            b"x-forwarded-for: ", (xff + b", " + remote) if xff else remote, b"\r\n",
            b"x-forwarded-proto: ", ex.conn.scheme, b"\r\n",
            b"x-forwarded-host: ", headers.get(b"host", ex.host), b"\r\n",
            b"x-request-id: ", ex.request_id, b"\r\n",
            b"content-length: 0\r\n\r\n",
        ]
        return b"".join(lines)

    async def _ext_auth(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes]) -> None:
        try:
            status, resp_headers, body = await asyncio.wait_for(self._call(ex, c, headers), c.ext_timeout)
        except (OSError, asyncio.TimeoutError, _AuthError) as e:
            self._ext_error(ex, c, headers, f"ext auth error: {e or type(e).__name__}")
            return
        if ex.state == ExchangeState.DONE:  # the client went away meanwhile
            return
        if status >= 500:
            self._ext_error(ex, c, headers, f"ext auth server answered {status}")
            return
        if status != 200:
            ex.error = f"denied by ext auth ({status})"
            out = [(n, v) for n, v in resp_headers if n not in HOP_BY_HOP and n != b"content-length"]
            ex.respond_simple(status, body, out)
            return
        if c.to_backend:
            kept = [h for h in ex.headers if not _matches(h[0], c.to_backend)]
            kept += [(n, v) for n, v in resp_headers if _matches(n, c.to_backend)]
            ex.headers = kept
        self._after_ext(ex, c, headers)

    def _ext_error(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes], message: str) -> None:
        if ex.state == ExchangeState.DONE:
            return
        log.warning("%s for %s (%s)", message, ex.action.route_id if ex.action else "?", ex.host.decode("latin-1"))
        if c.ext_fail_open:
            self._after_ext(ex, c, headers)
            return
        ex.error = message
        ex.respond_simple(403, b"")

    async def _call(self, ex: AuthSubject, c: CompiledSecurity, headers: dict[bytes, bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        cluster = self.dp.clusters.get(c.ext_cluster or "")
        if cluster is None:
            raise _AuthError("no such cluster")
        ep = cluster.pick()
        if ep is None:
            raise _AuthError("no healthy ext auth endpoint")
        call = _AuthCall(self.dp.loop)
        request = self._check_request(ex, c, headers)
        conn = None
        while ep.idle:
            cand = ep.idle.pop()
            if not cand.closed:
                conn = cand
                break
        if conn is None:
            conn = await connect(self.dp.loop, ep, min(c.ext_timeout, 10.0))
        call.conn = conn
        conn.exchange = call  # type: ignore[assignment]
        ep.active += 1
        try:
            conn.write(request)
            return await call.done
        finally:
            ep.active -= 1


def _cookies(header: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for part in header.split(b";"):
        k, _, v = part.strip().partition(b"=")
        if k and k not in out:
            out[k] = v
    return out


def _without_cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for n, v in headers:
        if n == b"cookie":
            kept = [p.strip() for p in v.split(b";") if p.strip().partition(b"=")[0] != name]
            if not kept:
                continue
            v = b"; ".join(kept)
        out.append((n, v))
    return out


class AuthSubject(Protocol):
    """What the enforcement reads of a request and how it lets it go on or answers it (the
    exchange; a Protocol, so that policies do not import the exchange that uses them)."""

    state: ExchangeState
    action: Any  # exchange.RouteAction
    conn: Any  # base.ConnInfo
    method: bytes
    host: bytes
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    client_ip: str
    request_id: bytes
    error: str

    def proceed(self) -> None: ...
    def respond_simple(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None: ...
    def run_lua_request(self, action: Any) -> bool: ...


class _AuthError(Exception):
    pass


class _NullSink:
    def flush(self) -> None:
        pass


class _AuthCall:
    """Collects one response from an upstream connection (the exchange callbacks it needs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.done: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = loop.create_future()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.conn: PooledConnection | None = None

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.status, self.headers = status, headers

    def upstream_data(self, data: bytes) -> None:
        if len(self.body) < 1024 * 1024:
            self.body += data

    def upstream_end(self, reusable: bool) -> None:
        conn = self.conn
        if conn is not None:
            if reusable and not conn.closed:
                conn.release()
            else:
                conn.close()
        if not self.done.done():
            self.done.set_result((self.status, self.headers, bytes(self.body)))

    def upstream_lost(self, conn: PooledConnection) -> None:
        if not self.done.done():
            self.done.set_exception(_AuthError("connection closed by the ext auth server"))

    def upstream_failed(self, kind: str, message: str) -> None:
        if not self.done.done():
            self.done.set_exception(_AuthError(message))

    def upstream_write_paused(self) -> None:
        pass

    def upstream_flush(self) -> None:
        pass

    def upstream_write_resumed(self) -> None:
        pass
