"""One request through the proxy, whatever protocol the client speaks.

The client side (an HTTP/1.1 connection or an HTTP/2 stream) hands the request
head to :meth:`Exchange.start`, then body pieces to :meth:`feed_body`/:meth:`end_body`.
The exchange routes the request, applies the rule's filters, picks an endpoint,
talks to it over a pooled upstream connection, and gives the response back to
the client side through its :class:`Sink`. Failures before the response head
become proper answers (404, 500, 502, 503, 504); after it, the client stream is
reset, never left hanging.

Retries: a request whose body is still fully buffered is retried on another
endpoint when the attempt fails in a way the BackendTrafficPolicy ``retry``
allows; a pooled keep-alive connection that turns out to be closed by the
backend is always retried once on a fresh connection (it never reached the
backend).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from homeplane.gateway.base import ConnInfo, DataPlaneHooks, ExchangeState
from homeplane.gateway.policies.compression import Encoder, accepted, compressible
from homeplane.gateway.routing.filters import CompiledHeaderOps, redirect_location, replace_path
from homeplane.gateway.routing.headers import HOP_BY_HOP, RequestInfo, detect_client_ip, request_id
from homeplane.gateway.routing.paths import DEFAULT as DEFAULT_PATH
from homeplane.gateway.routing.paths import Verdict, is_canonical, match_path, normalize, valid_target_bytes
from homeplane.gateway.routing.router import normalize_host, valid_host
from homeplane.gateway.upstreams.connect import connect
from homeplane.gateway.upstreams.pool import PooledConnection
from homeplane.policy.enforce import head_allowed
from homeplane.policy.verdict import ACCESS_DENIED
from homeplane.translate import snapshot as ir

if TYPE_CHECKING:
    from homeplane.gateway.upstreams.cluster import Cluster, EndpointState
    from homeplane.gateway.routing.router import ListenerTable, PortTable


class Sink(Protocol):
    """The client side of one exchange."""

    def respond_head(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None, has_body: bool) -> None: ...
    def respond_data(self, data: bytes) -> None: ...
    def respond_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None: ...
    def respond_end(self) -> None: ...
    def respond_abort(self) -> None: ...
    def flush(self) -> None: ...
    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...
    def start_tunnel(self, exchange: "Exchange") -> None: ...
    def tunnel_write(self, data: bytes) -> None: ...
    def tunnel_close(self) -> None: ...


@dataclass(slots=True)
class WeightedCluster:
    cluster: str | None  # None: invalid backendRef, answers 500
    weight: int
    req_ops: CompiledHeaderOps | None = None
    resp_ops: CompiledHeaderOps | None = None
    rewrite_host: bytes | None = None  # a URLRewrite hostname on the backendRef


@dataclass(slots=True)
class RetryPolicy:
    num_retries: int = 0
    triggers: frozenset[str] = frozenset()
    status_codes: frozenset[int] = frozenset()
    per_try_timeout: float | None = None
    backoff_base: float = 0.025


@dataclass(slots=True)
class RouteAction:
    """What the data plane does for one compiled rule (built once per Snapshot)."""

    rule: ir.RouteRule
    route_id: str
    direct_status: int | None = None
    direct_body: bytes = b""
    direct_headers: list[tuple[bytes, bytes]] | None = None
    redirect: ir.Redirect | None = None
    rewrite_host: bytes | None = None
    rewrite_path_type: str | None = None
    rewrite_path_value: bytes | None = None
    matched_prefix: bytes | None = None
    req_ops: CompiledHeaderOps | None = None
    resp_ops: CompiledHeaderOps | None = None
    backends: list[WeightedCluster] = field(default_factory=list)
    total_weight: int = 0
    timeout: float | None = 15.0
    backend_timeout: float | None = None
    connect_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    hash_on: tuple[str, bytes] | None = None  # ("SourceIP", b"") / ("Header", name) / ("Cookie", name)
    mirrors: list[tuple[str, float]] = field(default_factory=list)
    security: Any = None  # enforced by homeplane.gateway.policies.auth
    compression: tuple[bytes, ...] = ()  # content-coding tokens, in the policy's order
    cluster_config: Any = None  # ClusterConfig for the backends' clusters
    lua: tuple[Any, ...] = ()  # EnvoyExtensionPolicy Lua scripts (lua.LuaScript), in order
    cors: Any = None  # the HTTPRoute CORS filter (policies.cors.CompiledCors)

    def choose(self) -> WeightedCluster | None:
        b = self.backends
        if len(b) == 1:
            return b[0]
        if self.total_weight <= 0:
            return None
        r = random.randrange(self.total_weight)
        for wc in b:
            if r < wc.weight:
                return wc
            r -= wc.weight
        return b[-1]


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# Request body kept for retries and mirrors, and read ahead while no upstream is ready; a
# ClientTrafficPolicy connection.bufferLimit sets it per listener
_RETRY_BODY_LIMIT = 64 * 1024

_ROUTING, _CONNECTING, _WAITING, _STREAMING, _TUNNEL, _DONE = tuple(ExchangeState)


# --- decisions, as pure functions of their inputs (time and chance included) --------------


def retriable_status(retry: RetryPolicy, status: int) -> bool:
    """Does a response status call for another attempt under Envoy's retry_on conditions?"""
    t = retry.triggers
    if "5xx" in t and status >= 500:
        return True
    if "gateway-error" in t and status in (502, 503, 504):
        return True
    if "retriable-4xx" in t and status == 409:
        return True
    return "retriable-status-codes" in t and status in retry.status_codes


def retry_backoff(base: float, attempts: int, u: float) -> float:
    """Envoy's fully jittered exponential backoff: uniform in [0, base * 2^(attempts-1)), with
    ``u`` the uniform draw in [0, 1)."""
    return u * base * (2 ** max(0, attempts - 1))


def deadline_passed(deadline: float, now: float) -> bool:
    return bool(deadline) and now >= deadline


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def _with_cors(headers: list[tuple[bytes, bytes]], cors: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The CORS filter's headers replace any the upstream sent."""
    names = {n for n, _ in cors}
    return [h for h in headers if h[0] not in names] + cors


def _with_alt_svc(headers: list[tuple[bytes, bytes]], value: bytes) -> list[tuple[bytes, bytes]]:
    """HTTP/3 advertised (ClientTrafficPolicy http3), unless the backend advertises its own."""
    if any(n == b"alt-svc" for n, _ in headers):
        return headers
    return headers + [(b"alt-svc", value)]


class Exchange:
    __slots__ = (
        "dp", "sink", "conn", "table", "listener", "method", "target", "headers", "http_version", "has_body",
        "path", "query", "host", "action", "cluster", "endpoint", "upstream", "state", "started", "deadline",
        "attempt_deadline", "status", "bytes_in", "bytes_out", "body_buf", "body_buffered", "body_done",
        "attempts", "tried", "upgrade", "request_id", "client_ip", "info", "resp_ops", "head_only", "req_head",
        "upstream_paused", "_task", "error", "weighted", "chunked_upload", "listener_conf", "pending",
        "pending_bytes", "body_paused", "encoder", "accept_encoding", "cors_headers", "mirror_pending",
        "lua_call", "gateway", "upstream_started", "upstream_time",
    )

    def __init__(
        self,
        dp: DataPlaneHooks,
        sink: Sink,
        conn: ConnInfo,
        table: PortTable,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: bytes = b"1.1",
        has_body: bool = False,
        listener: ListenerTable | None = None,
        now: float | None = None,
    ):
        self.dp = dp
        self.sink = sink
        self.conn = conn
        self.table = table
        self.listener = listener
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.has_body = has_body
        self.state = _ROUTING
        self.started = time.monotonic() if now is None else now
        self.deadline = 0.0
        self.attempt_deadline = 0.0
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.body_buf: list[bytes] | None = [] if has_body else None
        self.body_buffered = 0
        self.body_done = not has_body
        self.attempts = 0
        self.tried: list[EndpointState] = []
        self.upstream: PooledConnection | None = None
        self.endpoint: EndpointState | None = None
        self.cluster: Cluster | None = None
        self.action: RouteAction | None = None
        self.host = b""
        self.path = b""
        self.query = b""
        self.upgrade: bytes | None = None
        self.request_id = b""
        self.client_ip = conn.client_ip
        self.info: RequestInfo | None = None
        self.resp_ops: CompiledHeaderOps | None = None
        self.cors_headers: list[tuple[bytes, bytes]] | None = None
        self.mirror_pending: list[str] | None = None  # mirrors waiting for the request body
        self.head_only = method == b"HEAD"
        self.req_head = b""
        self.upstream_paused = False
        self._task: asyncio.Task[None] | None = None
        self.error = ""
        self.weighted: WeightedCluster | None = None
        self.chunked_upload = False
        self.listener_conf: Any = None
        self.pending: list[bytes] = []  # body received before the upstream connection was ready
        self.pending_bytes = 0
        self.body_paused = False
        self.encoder: Any = None
        self.accept_encoding: bytes | None = None
        self.lua_call: Any = None  # the Lua scripts' view of this request (lua.Call)
        self.gateway = table.gateway  # the Gateway of the listener that took it (merged gateways share ports)
        self.upstream_started = 0.0
        self.upstream_time: float | None = None  # Envoy's x-envoy-upstream-service-time, in seconds

    # --- start: route and decide ----------------------------------------------------

    def start(self) -> None:
        if self.dp.overload.refuse_requests:
            self.error = "overload: memory"
            self.respond_simple(503, b"envoy overloaded\n")  # Envoy's stop_accepting_requests answer
            return
        target = self.target
        q = target.find(b"?")
        if q >= 0:
            self.path, self.query = target[:q], target[q + 1 :]
        else:
            self.path = target
        hmap: dict[bytes, bytes] = {}
        hosts = 0
        for n, v in self.headers:
            if n in hmap:
                hmap[n] = hmap[n] + b"," + v
            else:
                hmap[n] = v
            if n == b"host":
                hosts += 1
        if hosts > 1:
            self.respond_simple(400, b"more than one Host header\n")  # RFC 9112 §3.2
            return
        host_raw = hmap.get(b"host", b"")
        if self.path[:1] != b"/":
            if self.path == b"*" and self.method == b"OPTIONS":
                self.path = b"*"
            elif b"://" in self.path:
                # absolute-form: the target's authority wins over Host and is what the backend
                # sees (RFC 9112 §3.2.2)
                scheme, _, rest = self.path.partition(b"://")
                slash = rest.find(b"/")
                host_raw = rest if slash < 0 else rest[:slash]
                self.path = b"/" if slash < 0 else rest[slash:]
                if scheme.lower() not in (b"http", b"https") or not host_raw:
                    self.respond_simple(400, b"invalid request target\n")
                    return
                self.headers = [h for h in self.headers if h[0] != b"host"] + [(b"host", host_raw)]
                hmap[b"host"] = host_raw
                self.target = self.path + (b"?" + self.query if q >= 0 else b"")
            else:
                self.respond_simple(400, b"invalid request target\n")
                return
        if not host_raw:
            self.respond_simple(400, b"missing Host header\n")
            return
        if not valid_host(host_raw):
            self.respond_simple(400, b"invalid Host header\n")
            return
        self.host = normalize_host(host_raw)
        if self.listener is not None and not any(x is self.listener for x in self.table.listeners):
            # the connection chose its listener (by SNI) in a table a new Snapshot has replaced:
            # the same choice in the table of now
            self.listener = self.table.listener_for(self.conn.sni.encode()) if self.conn.sni else None
        lt = self.listener or self.table.listener_for(self.host)
        if self.listener is not None and len(self.table.listeners) > 1:
            owner = self.table.listener_for(self.host)
            if owner is not None and owner is not self.listener:
                # a connection made for one HTTPS listener (SNI) asking for a name another
                # listener owns - HTTP/2 connection coalescing: RFC 9110 §15.5.20, Gateway API
                self.respond_simple(421, b"misdirected request\n")
                return
        if not valid_target_bytes(self.target):
            self.respond_simple(400, b"invalid request target\n")  # HTTP/2 and /3 paths reach here unchecked
            return
        matched = self.path
        if self.path[:1] == b"/" and not is_canonical(self.path):
            conf = lt.conf if lt is not None else None
            path, verdict = normalize(self.path, conf.path if conf is not None else DEFAULT_PATH)
            if verdict == Verdict.REJECT:
                self.respond_simple(400, b"invalid request path\n")
                return
            self.path = path
            self.target = path + (b"?" + self.query if q >= 0 else b"")
            if verdict == Verdict.REDIRECT:
                # Envoy's UNESCAPE_AND_REDIRECT: the client asks again for the decoded path
                # (never "//host/...": that would be a redirect to another site)
                self.respond_simple(307, b"", [(b"location", b"/" + self.target.lstrip(b"/"))])
                return
            matched = match_path(path)
        lt, m = self.table.route(self.host, self.method, matched, hmap, self.query, lt)
        if lt is not None:
            self.listener_conf = lt.conf
            self.gateway = lt.listener.gateway
            self._detect_client(hmap)
        if m is None:
            self.respond_simple(404, b"")
            return
        action: RouteAction = m.action
        self.action = action
        up = hmap.get(b"upgrade")
        if up is not None and b"upgrade" in hmap.get(b"connection", b"").lower():
            self.upgrade = up
        self.request_id = hmap.get(b"x-request-id") or request_id()
        if action.compression:
            self.accept_encoding = hmap.get(b"accept-encoding")
        self.info = RequestInfo(
            self.client_ip, self.conn.client_port, self.conn.local_ip, self.conn.local_port,
            self.conn.protocol, self.conn.sni, hmap,
        )
        if action.direct_status is not None:
            self.respond_simple(action.direct_status, action.direct_body,
                                list(action.direct_headers) if action.direct_headers else None)
            return
        if action.redirect is not None:
            self._redirect(action, lt)
            return
        if action.timeout:
            self.deadline = self.started + action.timeout
        sec = action.security
        # the HTTPRoute's CORS filter, else the SecurityPolicy's; preflights answered before auth
        cors = action.cors or (sec.cors if sec is not None else None)
        if cors is not None:
            origin = hmap.get(b"origin")
            if origin and cors.allows(origin):
                if self.method == b"OPTIONS" and b"access-control-request-method" in hmap:
                    self.respond_simple(200, b"", cors.preflight_headers(origin))
                    return
                self.cors_headers = cors.response_headers(origin)
        if sec is not None:
            self.dp.auth.check(self, sec, hmap)
            return
        self.proceed()

    def _detect_client(self, hmap: dict[bytes, bytes]) -> None:
        conf = self.listener_conf
        if conf is not None and conf.xff_enabled:
            xff = hmap.get(b"x-forwarded-for")
            self.client_ip = detect_client_ip(
                self.conn.client_ip, xff.decode("latin-1") if xff else None, conf.xff_hops, conf.xff_trusted
            )

    def proceed(self) -> None:
        """After auth: Lua extensions, then pick a backend and send the request upstream."""
        action = self.action
        assert action is not None
        if action.lua and self.lua_call is None and not self.run_lua_request(action):
            return
        wc = action.choose()
        if wc is None or wc.cluster is None:
            self.respond_simple(500, b"")
            return
        self.weighted = wc
        cluster = self.dp.clusters.get(wc.cluster)
        if cluster is None or not cluster.endpoints:
            denied = cluster is not None and cluster.pool.policy_denied
            self.error = "network policy denied every endpoint" if denied else "no healthy upstream"
            self.respond_simple(503, b"no healthy upstream\n")
            return
        self.cluster = cluster
        if cluster.active_requests() >= cluster.config.max_requests:
            self.error = "circuit breaker: too many requests in flight"
            self.respond_simple(503, b"upstream overloaded\n", [(b"x-envoy-overloaded", b"true")])
            return
        self.resp_ops = wc.resp_ops or action.resp_ops
        self.req_head = self._build_request_head(action, wc)
        if cluster.pool.policy_http is not None and not head_allowed(cluster.pool.policy_http, self.req_head):
            # Cilium's L7 rules for traffic from this gateway, on the request as it would reach the
            # pod (after rewrites, header filters and Lua): its proxy answers 403
            self.cluster = None
            self.error = "network policy denied the HTTP request"
            self.respond_simple(403, ACCESS_DENIED, [(b"content-type", b"text/plain")])
            return
        if action.mirrors:
            chosen = [name for name, percent in action.mirrors if percent >= 100 or random.random() * 100 < percent]
            if not self.has_body:
                for name in chosen:
                    self.dp.mirror(name, self.req_head)
            elif chosen:
                self.mirror_pending = chosen
                if self.body_done:
                    self._mirror_with_body()
        self._attempt()

    def run_lua_request(self, action: RouteAction) -> bool:
        """envoy_on_request of each script (EG runs Lua after authentication); False when a
        script answered the request itself."""
        from homeplane.lua import Call

        c = self.conn
        call = Call(list(self.headers), info={
            "protocol": c.protocol, "remote": f"{self.client_ip}:{c.client_port}", "local": f"{c.local_ip}:{c.local_port}",
            "sni": c.sni, "tls": c.scheme == b"https" or None,
        })
        for script in action.lua:
            script.request(call)
            if call.reply is not None:
                status, headers, body = call.reply
                self.respond_simple(status, body, headers)
                return False
        self.headers = call.request
        self.lua_call = call
        return True

    def _mirror_with_body(self) -> None:
        """Mirrors of a request with a body go out once it is complete, from the replay buffer;
        a body larger than that buffer is not mirrored (the copy is best effort, as in Envoy)."""
        names, self.mirror_pending = self.mirror_pending or [], None
        if self.body_buf is None:
            return
        body = b"".join(self._encode_body(c) for c in self.body_buf)
        if self.chunked_upload:
            body += b"0\r\n\r\n"
        for name in names:
            self.dp.mirror(name, self.req_head + body)

    def _hash_key(self) -> bytes | None:
        a = self.action
        if a is None or a.hash_on is None:
            return None
        kind, name = a.hash_on
        if kind == "SourceIP":
            return self.client_ip.encode()
        if kind == "Header":
            for n, v in self.headers:
                if n == name:
                    return v
            return None
        if kind == "Cookie":
            for n, v in self.headers:
                if n == b"cookie":
                    for part in v.split(b";"):
                        k, _, val = part.strip().partition(b"=")
                        if k == name:
                            return val
            return None
        return None

    # --- the upstream request -------------------------------------------------------------

    def _build_request_head(self, action: RouteAction, wc: WeightedCluster) -> bytes:
        headers = self.headers
        conn_tokens: set[bytes] = set()
        te_chunked = False
        for n, v in headers:
            if n == b"connection":
                conn_tokens.update(t.strip().lower() for t in v.split(b","))
            elif n == b"transfer-encoding":
                te_chunked = True
        info = self.info
        assert info is not None
        if action.req_ops is not None:
            headers = action.req_ops.apply(list(headers), info)
        if wc.req_ops is not None:
            headers = wc.req_ops.apply(list(headers), info)
        host = wc.rewrite_host or action.rewrite_host or None
        path = self.path
        if action.rewrite_path_type is not None:
            path = replace_path(
                path.decode("latin-1"),
                action.rewrite_path_type,
                action.rewrite_path_value.decode("latin-1") if action.rewrite_path_value is not None else None,
                action.matched_prefix.decode("latin-1") if action.matched_prefix is not None else None,
            ).encode("latin-1")
        # an empty query keeps its "?" (forwarded as the client sent it, as the fast lane does)
        target = path + (b"?" + self.query if self.query or b"?" in self.target else b"")
        parts = [self.method, b" ", target, b" HTTP/1.1\r\n"]
        xff = None
        orig_host = b""
        for n, v in headers:
            if n in HOP_BY_HOP or n in conn_tokens:
                continue
            if n == b"host":
                orig_host = v
                parts += [b"host: ", host or v, b"\r\n"]
                continue
            if n == b"x-forwarded-for":
                xff = v
                continue
            if n in (b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"expect", b"content-length"):
                continue
            parts += [n, b": ", v, b"\r\n"]
        if not orig_host:
            parts += [b"host: ", host or self.host, b"\r\n"]
        remote = self.conn.client_ip.encode()
        parts += [
            b"x-forwarded-for: ", (xff + b", " + remote) if xff else remote, b"\r\n",
            b"x-forwarded-proto: ", self.conn.scheme, b"\r\n",
            b"x-forwarded-host: ", orig_host or self.host, b"\r\n",
            b"x-request-id: ", self.request_id, b"\r\n",
        ]
        if self.upgrade is not None:
            parts += [b"connection: upgrade\r\nupgrade: ", self.upgrade, b"\r\n"]
        if self.cluster is not None and self.cluster.h2c and any(n == b"te" and b"trailers" in v.lower() for n, v in headers):
            # hop-by-hop, but the one TE value HTTP/2 keeps: gRPC servers want it end to end
            # (the h2c stream reads it back from this head)
            parts.append(b"te: trailers\r\n")
        if self.has_body:
            length = None
            for n, v in self.headers:
                if n == b"content-length":
                    length = v
            if length is not None and not te_chunked:
                parts += [b"content-length: ", length, b"\r\n"]
            else:
                self.chunked_upload = True
                parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _attempt(self, replay: bool = False) -> None:
        cluster = self.cluster
        assert cluster is not None
        ep = cluster.pick(self._hash_key(), self.tried)
        if ep is None:
            self.error = "no healthy upstream"
            self.respond_simple(503, b"no healthy upstream\n")
            return
        self.endpoint = ep
        self.attempts += 1
        self.upstream_started = time.monotonic()
        ep.active += 1
        a = self.action
        if a is not None and a.backend_timeout:
            self.attempt_deadline = time.monotonic() + a.backend_timeout
        while ep.idle:
            conn = ep.idle.pop()
            if not conn.closed:
                self._send_on(conn, replay)
                return
        self.state = _CONNECTING
        self._task = asyncio.ensure_future(self._connect(ep, replay))

    async def _connect(self, ep: EndpointState, replay: bool) -> None:
        a = self.action
        try:
            c = self.cluster
            conn = await connect(self.dp.loop, ep, a.connect_timeout if a else 10.0, c is not None and c.h2c, c.tls() if c else None)
        except asyncio.CancelledError:
            return
        except (OSError, asyncio.TimeoutError) as e:
            if self.state != _CONNECTING:
                return
            ep.active -= 1
            self._failed_attempt(ep, "connect-failure", f"upstream connect error: {e or type(e).__name__}")
            return
        if self.state != _CONNECTING:
            if not conn.closed:
                conn.release()
            return
        self._send_on(conn, replay)

    def _send_on(self, conn: PooledConnection, replay: bool) -> None:
        self.upstream = conn
        conn.exchange = self
        conn.head_only = self.head_only
        self.state = _WAITING
        if replay and self.body_buf:
            body = self.body_buf
        else:
            body = self.pending
        self.pending = []
        self.pending_bytes = 0
        if body:
            conn.write(self.req_head + b"".join(self._encode_body(c) for c in body))
        else:
            conn.write(self.req_head)
        if self.body_done and self.chunked_upload:
            conn.write(b"0\r\n\r\n")
        if self.body_paused:
            self.body_paused = False
            self.sink.resume_request_body()

    def _encode_body(self, chunk: bytes) -> bytes:
        if self.chunked_upload:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        return chunk

    # --- request body from the client -----------------------------------------------------

    def _buffer_limit(self) -> int:
        conf = self.listener_conf
        return conf.buffer_limit if conf is not None and conf.buffer_limit else _RETRY_BODY_LIMIT

    def feed_body(self, data: bytes) -> None:
        if not data:
            return  # (an empty HTTP/2 DATA frame: as a chunk it would end a chunked upload)
        self.bytes_in += len(data)
        if self.body_buf is not None:
            if self.body_buffered + len(data) <= self._buffer_limit():
                self.body_buf.append(data)
                self.body_buffered += len(data)
            else:
                self.body_buf = None  # too big to replay: no retries from here on
        if self.state == _WAITING and self.upstream is not None:
            self.upstream.write(self._encode_body(data))
        elif self.state == _TUNNEL and self.upstream is not None:
            self.upstream.write(data)
        elif self.state in (_ROUTING, _CONNECTING):
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > self._buffer_limit() and not self.body_paused:
                self.body_paused = True
                self.sink.pause_request_body()

    def end_body(self) -> None:
        self.body_done = True
        if self.mirror_pending:
            self._mirror_with_body()
        if self.state == _WAITING and self.upstream is not None and self.chunked_upload:
            self.upstream.write(b"0\r\n\r\n")

    # --- responses from upstream -----------------------------------------------------------

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        if self.state != _WAITING:
            return
        self.upstream_time = time.monotonic() - self.upstream_started
        a = self.action
        if (
            a is not None
            and a.retry.num_retries
            and self.attempts <= a.retry.num_retries
            and self._retriable_status(status)
            and self._can_replay()
        ):
            conn = self.upstream
            self.upstream = None
            if conn is not None:
                conn.exchange = None
                conn.close()
            if self.endpoint is not None:
                self.endpoint.active -= 1
            self._retry_later(self.endpoint)
            return
        self.status = status
        if self.cluster is not None and self.endpoint is not None:
            self.cluster.result(self.endpoint, status)
        length: int | None = None
        out: list[tuple[bytes, bytes]] = []
        conn_tokens: tuple[bytes, ...] = ()
        for n, v in headers:
            if n == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
            elif n in HOP_BY_HOP:
                if n == b"connection":  # several Connection fields: their tokens add up
                    conn_tokens += tuple(t.strip().lower() for t in v.split(b","))
            else:
                out.append((n, v))
        if conn_tokens:
            # headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1)
            out = [h for h in out if h[0] not in conn_tokens]
        if self.resp_ops is not None and self.info is not None:
            out = self.resp_ops.apply(out, self.info)
        if self.cors_headers is not None:
            out = _with_cors(out, self.cors_headers)
        if self.lua_call is not None and a is not None:
            self.lua_call.response = out
            self.lua_call.info["status"] = status
            for script in reversed(a.lua):  # response filters run in reverse order, as in Envoy
                script.response(self.lua_call)
            out = self.lua_call.response
        if status == 101 and self.upgrade is not None:
            out.append((b"connection", b"upgrade"))
            for n, v in headers:
                if n == b"upgrade":
                    out.append((b"upgrade", v))
            self.state = _TUNNEL
            self.sink.respond_head(101, out, None, False)
            self.sink.start_tunnel(self)
            return
        has_body = not (self.head_only or status in (204, 304))
        if self.accept_encoding is not None and has_body and a is not None:
            token = accepted(self.accept_encoding, a.compression)
            if token is not None and compressible(status, out, length):
                self.encoder = Encoder(token)
                out = [h for h in out if h[0] != b"etag"] + [(b"content-encoding", token), (b"vary", b"accept-encoding")]
                length = None
        self.state = _STREAMING
        conf = self.listener_conf
        if conf is not None and conf.alt_svc is not None:
            out = _with_alt_svc(out, conf.alt_svc)
        self.sink.respond_head(status, out, length if has_body else (length if self.head_only else None), has_body)

    def _retriable_status(self, status: int) -> bool:
        a = self.action
        return a is not None and retriable_status(a.retry, status)

    def upstream_data(self, data: bytes) -> None:
        if self.state == _STREAMING:
            if self.encoder is not None:
                data = self.encoder.feed(data)
            self.bytes_out += len(data)
            self.sink.respond_data(data)

    def upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Trailer fields of an HTTP/2 upstream's answer (gRPC's status): relayed to an HTTP/2
        client with the end of the body; an HTTP/1.1 client does not get them."""
        if self.state == _STREAMING and trailers:
            self.sink.respond_trailers(trailers)

    def upstream_end(self, reusable: bool) -> None:
        conn = self.upstream
        self.upstream = None
        if self.endpoint is not None:
            self.endpoint.active -= 1
        if conn is not None:
            if reusable and self.body_done and not conn.closed:
                conn.release()
            else:
                conn.close()
        if self.state == _STREAMING:
            self.state = _DONE
            if self.encoder is not None:
                tail = self.encoder.finish()
                self.bytes_out += len(tail)
                self.sink.respond_data(tail)
            self.sink.respond_end()
            self.dp.finished(self)

    def upstream_lost(self, conn: PooledConnection) -> None:
        """The upstream connection closed before the response was complete."""
        if self.upstream is conn:
            self.upstream = None
        ep = self.endpoint
        if self.state == _WAITING:
            if ep is not None:
                ep.active -= 1
            if conn.reused and self._can_replay():
                # a pooled connection the backend had already closed: not a real attempt
                self.attempts -= 1
                self.state = _CONNECTING
                self._attempt(replay=True)
                return
            self._failed_attempt(ep, "reset", "upstream connection reset before the response")
        elif self.state == _STREAMING:
            if ep is not None:
                ep.active -= 1
            self.state = _DONE
            self.error = "upstream reset during the response"
            self.sink.respond_abort()
            self.dp.finished(self)

    def upstream_failed(self, kind: str, message: str) -> None:
        conn = self.upstream
        if conn is not None:
            conn.exchange = None
            conn.close()
            self.upstream = None
        ep = self.endpoint
        if self.state in (_WAITING, _CONNECTING):
            if ep is not None:
                ep.active -= 1
            self._failed_attempt(ep, kind, message)
        elif self.state == _STREAMING:
            if ep is not None:
                ep.active -= 1
            self.state = _DONE
            self.error = message
            self.sink.respond_abort()
            self.dp.finished(self)

    def upstream_flush(self) -> None:
        self.sink.flush()

    def upstream_write_paused(self) -> None:
        self.sink.pause_request_body()

    def upstream_write_resumed(self) -> None:
        self.sink.resume_request_body()

    def downstream_paused(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()
            self.upstream_paused = True

    def downstream_resumed(self) -> None:
        if self.upstream is not None and self.upstream_paused:
            self.upstream.resume_reading()
            self.upstream_paused = False

    # --- tunnels (WebSocket and other upgrades) ----------------------------------------

    def upstream_tunnel_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.sink.tunnel_write(data)

    def upstream_tunnel_closed(self) -> None:
        if self.state == _TUNNEL:
            self.state = _DONE
            if self.endpoint is not None:
                self.endpoint.active -= 1
            self.sink.tunnel_close()
            self.dp.finished(self)

    def client_tunnel_closed(self) -> None:
        if self.state == _TUNNEL:
            self.state = _DONE
            if self.endpoint is not None:
                self.endpoint.active -= 1
            if self.upstream is not None:
                self.upstream.exchange = None
                self.upstream.close()
            self.dp.finished(self)

    # --- failures, retries, timeouts ----------------------------------------------------

    def _can_replay(self) -> bool:
        return self.body_done and (self.body_buf is not None or not self.has_body)

    def _failed_attempt(self, ep: EndpointState | None, kind: str, message: str) -> None:
        if ep is not None and self.cluster is not None:
            self.cluster.result(ep, None, local_failure=True)
        a = self.action
        if a is not None and self.attempts <= a.retry.num_retries and self._can_replay():
            t = a.retry.triggers
            # Envoy: "5xx" and "gateway-error" include resets and connect failures;
            # "reset" covers a backend that does not answer at all.
            if kind in t or "5xx" in t or "gateway-error" in t or "reset" in t:
                self._retry_later(ep)
                return
        self.error = message
        self.respond_simple(503 if kind == "connect-failure" else 502, (message + "\n").encode())

    def _retry_later(self, ep: EndpointState | None) -> None:
        if ep is not None and ep not in self.tried:
            self.tried.append(ep)
        a = self.action
        delay = retry_backoff(a.retry.backoff_base if a else 0.025, self.attempts, random.random())
        self.state = _CONNECTING
        self.dp.loop.call_later(delay, self._attempt_again)

    def _attempt_again(self) -> None:
        if self.state != _CONNECTING:
            return
        cluster = self.cluster
        if cluster is not None and len(self.tried) >= len(cluster.endpoints):
            self.tried = []  # every endpoint was tried: start over
        self._attempt(replay=True)

    def check_deadline(self, now: float) -> None:
        """Called by the data plane's timer sweep."""
        if self.state == _DONE:
            return
        if deadline_passed(self.deadline, now):
            self._timeout("request timeout")
        elif deadline_passed(self.attempt_deadline, now) and self.state in (_CONNECTING, _WAITING):
            self._timeout("upstream request timeout")

    def _abandon_upstream(self) -> None:
        """Drop whatever is under way towards the backend: the connection, a pending connect, and
        the endpoint's count of this request."""
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.exchange = None
            conn.abort()  # what was not sent yet is dropped, not kept for a peer that may never read
        if self._task is not None:
            self._task.cancel()
        if self.endpoint is not None and self.state in (_CONNECTING, _WAITING, _STREAMING, _TUNNEL):
            self.endpoint.active -= 1

    def _timeout(self, what: str) -> None:
        self._abandon_upstream()
        self.error = what
        if self.state in (_ROUTING, _CONNECTING, _WAITING):
            self.respond_simple(504, (what + "\n").encode())
        else:
            self.state = _DONE
            self.sink.respond_abort()
            self.dp.finished(self)

    def client_gone(self) -> None:
        """The client closed or reset before the exchange finished."""
        if self.state == _DONE:
            return
        self._abandon_upstream()
        self.state = _DONE
        self.status = self.status or 499
        self.error = self.error or "client closed"
        self.dp.finished(self)

    # --- answers made by the proxy itself ------------------------------------------------

    def respond_simple(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.state == _DONE:
            return
        self.state = _DONE
        self.status = status
        if status == 400 and self.action is None and not self.error:
            self.error = body.decode("latin-1").strip()  # a request the proxy refused to read (DPE in the log)
        hdrs = headers if headers is not None else []
        if body and not any(n == b"content-type" for n, _ in hdrs):
            hdrs = hdrs + [(b"content-type", b"text/plain")]
        if self.cors_headers is not None:
            hdrs = _with_cors(hdrs, self.cors_headers)
        if self.resp_ops is None and self.action is not None:
            self.resp_ops = self.action.resp_ops
        has_body = not self.head_only and status not in (204, 304)
        conf = self.listener_conf
        if conf is not None and conf.alt_svc is not None:
            hdrs = _with_alt_svc(hdrs, conf.alt_svc)
        self.sink.respond_head(status, hdrs, len(body), has_body)
        if body and has_body:
            self.sink.respond_data(body)
            self.bytes_out += len(body)
        self.sink.respond_end()
        self.dp.finished(self)

    def _addressed_mapped_port(self, listener_port: int) -> bool:
        """Whether the client named the port --port-map moved this listener to (its Host says
        :8080 for the listener on 80): then the other listeners' mapped ports reach it too. A
        client that came through a port forward from 80 names no port, and keeps 443."""
        local = self.dp.bind.port_map.get(listener_port)
        if local is None:
            return False
        for n, v in self.headers:
            if n == b"host":
                return v.rsplit(b":", 1)[-1] == str(local).encode() if b":" in v.rsplit(b"]", 1)[-1] else False
        return False

    def _redirect(self, action: RouteAction, lt: ListenerTable | None) -> None:
        r = action.redirect
        assert r is not None
        listener_port = lt.listener.port if lt is not None else self.table.port
        loc = redirect_location(
            r,
            self.conn.scheme.decode(),
            self.host.decode("latin-1"),
            listener_port,
            self.path.decode("latin-1"),
            self.query.decode("latin-1"),
            action.matched_prefix.decode("latin-1") if action.matched_prefix is not None else None,
            self.dp.bind.port_map if self._addressed_mapped_port(listener_port) else None,
        )
        self.respond_simple(r.status_code, b"", [(b"location", loc.encode("latin-1"))])
