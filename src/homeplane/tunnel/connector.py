"""The connector: inside ``homeplane run`` (or alone), it dials out to one or more edges and
serves the streams they open, as cloudflared does for Cloudflare's edge.

* Several connections (default 4, spread over the edges given, as cloudflared keeps four
  across two regions), each redialled with exponential backoff and jitter; an edge that
  says ``drain`` gets a replacement connection at once while its streams finish.
* Each stream is matched against cloudflared ingress rules (the repo's cloudflared config,
  or one given) by hostname, and joined to the rule's origin.
* An origin that is one of this process's own Gateways (``https://envoy-external.network.
  svc.cluster.local:443``) is handed the connection in-process, with the public client's
  address as the peer: ClientTrafficPolicy, authorization by client CIDR and the access log
  see the real client. Other origins are dialled over TCP (with TLS for https://).
* ``drain()`` (SIGTERM): tells every edge to open no new stream on this connector's
  connections, lets those in flight finish, then closes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from homeplane.gateway.frontends import proxyproto
from homeplane.observe.promnames import counter, sample
from homeplane.tunnel import requests, wire
from homeplane.tunnel.ingress import Ingress, Rule
from homeplane.tunnel.mux import Pipe, Session, Stream

log = logging.getLogger("homeplane.tunnel")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
DIAL_TIMEOUT = 10.0


class LocalOrigins(Protocol):
    """This process's own listeners, for origins that name them."""

    def find(self, host: str, port: int) -> Any: ...

    def plain_twin(self, srv: Any) -> Any: ...


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass
class Slot:
    index: int
    edge: tuple[str, int]
    state: str = "connecting"  # connecting, connected, draining, backoff
    session: Session | None = None
    since: float = 0.0
    edge_name: str = ""
    last_error: str = ""
    attempts: int = 0


class Dial(asyncio.Protocol):
    """A tunnel connection until the edge accepts it; then a Session takes over."""

    def __init__(self, connector: "Connector", slot: Slot, hello: bytes):
        self.connector = connector
        self.slot = slot
        self.hello = hello
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.result: asyncio.Future[Session] = asyncio.get_event_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        t = self.transport
        assert t is not None
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > wire.MAX_HEAD:
                self._fail(wire.HandshakeError("edge answer too large"))
            return
        head, rest = self.buf[: end + 4], self.buf[end + 4 :]
        try:
            edge_name = wire.parse_accept(head)
        except wire.HandshakeError as e:
            body = rest.decode("utf-8", "replace").strip()
            self._fail(wire.HandshakeError(f"{e}{': ' + body if body else ''}"))
            return
        self.slot.edge_name = edge_name
        session = self.connector.new_session(self.slot)
        t.set_protocol(session)
        session.connection_made(t)
        session.feed(rest)
        if not self.result.done():
            self.result.set_result(session)

    def _fail(self, e: Exception) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.result.done():
            self.result.set_exception(e)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_exception(exc or ConnectionError("the edge closed the connection during the handshake"))


class Connector:
    def __init__(
        self,
        edges: list[tuple[str, int]],
        token: str,
        name: str = "homeplane",
        connections: int = 4,
        ca_file: Path | None = None,
        local: LocalOrigins | None = None,
        insecure: bool = False,
    ):
        if not edges:
            raise ValueError("no edge to connect to")
        self.edges = edges
        self.token = token
        self.name = name
        self.local = local
        self.ingress: Ingress | None = None
        self.ingress_origin = ""
        self.slots = [Slot(i, edges[i % len(edges)]) for i in range(max(1, connections))]
        self.tasks: list[asyncio.Task[None]] = []
        self.pipes: set[Pipe] = set()
        self.flow_ring: Any = None  # observe.flows.FlowRing: a flow per stream (set by `run`)
        self.stopping = False
        self.edge_ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if insecure:
            self.edge_ctx.check_hostname = False
            self.edge_ctx.verify_mode = ssl.CERT_NONE
        self._origin_ctx: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self.counts = {"requests": 0, "errors": 0}
        self.by_code: dict[str, int] = {}
        self.collector = _Metrics(self)

    # --- configuration ------------------------------------------------------------------

    def set_ingress(self, ingress: Ingress | None, origin: str) -> None:
        if ingress is not self.ingress:
            self.ingress, self.ingress_origin = ingress, origin
            if ingress is not None:
                log.info("tunnel ingress from %s: %s", origin, ", ".join(f"{r.hostname or '*'} -> {r.service}" for r in ingress.rules))

    # --- connections --------------------------------------------------------------------

    async def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self._run_slot(s)) for s in self.slots]

    async def _run_slot(self, slot: Slot) -> None:
        backoff = BACKOFF_FIRST
        retiring: Session | None = None  # the edge asked it to drain: it serves on until a successor is up
        while not self.stopping:
            slot.state, slot.attempts = "connecting", slot.attempts + 1
            try:
                session = await self._dial(slot)
            except (OSError, ssl.SSLError, asyncio.TimeoutError, wire.HandshakeError) as e:
                slot.last_error = str(e) or type(e).__name__
                slot.state = "backoff"
                log.warning("tunnel connection %d to %s:%d: %s; again in %.1f s", slot.index, *slot.edge, slot.last_error, backoff)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            slot.session, slot.state, slot.since, slot.last_error = session, "connected", time.time(), ""
            log.info("tunnel connection %d up to edge %s (%s:%d)", slot.index, slot.edge_name, *slot.edge)
            if retiring is not None:
                retiring.send_control("replaced")
                retiring = None
            while not session.closed and not session.draining and not self.stopping:
                await asyncio.sleep(0.05)
            if session.draining and not session.closed and not self.stopping:
                # its edge goes away: dial a successor now (the edge's ports are shared with the
                # next edge), and let the edge close this one once its clients are finished
                slot.state = "draining"
                log.info("tunnel connection %d: edge %s drains; connecting again", slot.index, slot.edge_name)
                retiring = session
                asyncio.ensure_future(self._retire(session))
            slot.session = None

    async def _retire(self, session: Session, at_least: float = 60.0) -> None:
        """Close a connection its edge drains once the edge did, or it has been idle after a while."""
        since = time.monotonic()
        while not session.closed and (session.active_streams or time.monotonic() - since < at_least):
            await asyncio.sleep(0.1)
        session.close()

    async def _dial(self, slot: Slot) -> Session:
        loop = asyncio.get_running_loop()
        host, port = slot.edge
        proto = Dial(self, slot, wire.connector_hello(host, self.token, self.name, slot.index))
        await asyncio.wait_for(
            loop.create_connection(lambda: proto, host, port, ssl=self.edge_ctx, server_hostname=host, ssl_handshake_timeout=DIAL_TIMEOUT),
            DIAL_TIMEOUT,
        )
        return await asyncio.wait_for(proto.result, DIAL_TIMEOUT)

    def new_session(self, slot: Slot) -> Session:
        return Session(client_side=False, on_stream=self._stream, name=f"{slot.index}->{slot.edge[0]}:{slot.edge[1]}")

    @property
    def connected(self) -> int:
        return sum(1 for s in self.slots if s.session is not None and not s.session.closed and not s.session.draining)

    async def drain(self, timeout: float = 30.0) -> None:
        """No new streams (the edges are told, and confirm), those open finish, then every
        connection closes. A stream that crossed the "drain" on the wire is still served."""
        self.stopping = True
        sessions = [s.session for s in self.slots if s.session is not None and not s.session.closed]
        for sess in sessions:
            sess.send_control("drain")
            sess.draining = True
        deadline = time.monotonic() + timeout
        acked = time.monotonic() + 2.0
        while any(not s.closed and not s.drain_acked for s in sessions) and time.monotonic() < acked:
            await asyncio.sleep(0.02)
        while any(not s.closed and s.active_streams for s in sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = sum(s.active_streams for s in sessions if not s.closed)
        if left:
            log.warning("tunnel drain: %d streams still open after %.0f s; closing them", left, timeout)
        await self.close()

    async def close(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        for slot in self.slots:
            if slot.session is not None:
                slot.session.close()

    # --- streams ------------------------------------------------------------------------

    def _stream(self, session: Session, stream: Stream, headers: list[tuple[str, str]]) -> None:
        try:
            opened = wire.parse_open(headers)
        except ValueError as e:
            log.info("tunnel %s: %s", session.name, e)
            stream.respond(400, end=True)
            return
        self.counts["requests"] += 1
        asyncio.ensure_future(self._serve(stream, opened))

    def _count(self, code: int) -> None:
        self.by_code[str(code)] = self.by_code.get(str(code), 0) + 1

    async def _serve(self, stream: Stream, opened: wire.Open) -> None:
        ingress = self.ingress
        if ingress is None:
            log.info("tunnel: %s for %r refused: no ingress rules", opened.kind, opened.hostname)
            self._flow(opened, None, None, time.monotonic(), "no ingress rules", "NO_SERVICE")
            self.counts["errors"] += 1
            self._count(503)
            stream.respond(503, end=True)
            return
        path = None
        if opened.kind == wire.KIND_HTTP and opened.alpn in ("", "http/1.1") and ingress.has_paths(opened.hostname):
            path = await first_request_path(stream)
        rule = ingress.match(opened.hostname, path)
        if rule.scheme == "http_status":
            self._flow(opened, rule, None, time.monotonic(), f"the rule answers {rule.status}", "POLICY_DENIED")
            self._count(rule.status)
            stream.respond(rule.status, end=True)
            return
        try:
            await self._connect(stream, opened, rule)
        except Refused as e:
            self._fail(stream, opened, rule, e.status, str(e))
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ValueError) as e:  # (ValueError: a name IDNA refuses)
            self._fail(stream, opened, rule, 502, str(e) or type(e).__name__)
        except Exception as e:  # a stream must always be answered, whatever went wrong
            log.exception("tunnel: serving %s for %r failed", opened.kind, opened.hostname)
            self._fail(stream, opened, rule, 502, f"{type(e).__name__}: {e}")

    def _flow(self, opened: wire.Open, rule: Rule | None, pipe: Pipe | None, started: float, why: str = "", reason: str = "") -> None:
        """A flow for a stream that ended or was refused: the public client, the rule, the origin."""
        ring = self.flow_ring
        if ring is None:
            return
        route = f"tunnel ingress[{rule.index}] {rule.hostname or '*'}" if rule is not None else "tunnel (no ingress rules)"
        origin = f"{rule.host}:{rule.port}" if rule is not None and rule.host else None
        ring.l4("TCP", opened.client, "", route, origin, pipe.bytes_out if pipe else 0, pipe.bytes_in if pipe else 0,
                time.monotonic() - started, why or None, opened.hostname or None, reason or None)

    def _done(self, pipe: Pipe, opened: wire.Open, rule: Rule, started: float) -> None:
        self.pipes.discard(pipe)
        self._flow(opened, rule, pipe, started)

    def _fail(self, stream: Stream, opened: wire.Open, rule: Rule, status: int, why: str) -> None:
        self._flow(opened, rule, None, time.monotonic(), why, "POLICY_DENIED" if status in (400, 403, 404) else "NO_SERVICE")
        self.counts["errors"] += 1
        self._count(status)
        log.warning("tunnel: %s from %s for %r: origin %s (ingress[%d]): %s", opened.kind, opened.client[0], opened.hostname,
                    rule.service, rule.index, why)
        stream.respond(status, end=True)

    def origin_context(self, rule: Rule, alpn: str, trusted: bool) -> ssl.SSLContext:
        key = (rule.origin.ca_pool, rule.origin.no_tls_verify or trusted, alpn)
        ctx = self._origin_ctx.get(key)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=rule.origin.ca_pool)
            if rule.origin.no_tls_verify or trusted:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if alpn:
                ctx.set_alpn_protocols([alpn])
            self._origin_ctx[key] = ctx
        return ctx

    async def _connect(self, stream: Stream, opened: wire.Open, rule: Rule) -> None:
        loop = asyncio.get_running_loop()
        if opened.kind == wire.KIND_TLS and rule.scheme == "http":
            raise Refused(502, "TLS passed through by the edge needs an https:// origin")
        if opened.kind != wire.KIND_TCP and rule.scheme == "tcp":
            # a TCP service is reached through one of the edge's TCP ports, never by naming it
            # in a public HTTP request or ClientHello (cloudflared: only through `access`)
            raise Refused(404, f"{rule.service} is served only on the edge's TCP ports")
        server = self.local.find(rule.host, rule.port) if self.local is not None else None
        plain = False
        if server is not None and opened.plain and rule.scheme == "https" and server.table.protocol == "HTTPS":
            twin = self.local.plain_twin(server)  # type: ignore[union-attr]
            if twin is not None:
                server, plain = twin, True
        ctx: ssl.SSLContext | None = None
        sni: str | None = None
        if opened.kind == wire.KIND_HTTP and rule.scheme == "https" and not plain:
            # cloudflared's order: originServerName, the request's host (matchSNItoHost), the URL's host
            sni = rule.origin.server_name or (opened.hostname if rule.origin.match_sni_to_host else None) or rule.host
            # a Gateway of this very process: the bytes never leave it, nothing to verify
            ctx = self.origin_context(rule, opened.alpn, trusted=server is not None)
        started = time.monotonic()
        done = lambda p: self._done(p, opened, rule, started)  # noqa: E731
        if opened.kind == wire.KIND_HTTP and self.ingress is not None:
            pipe: Pipe = HostGuard(stream, done, self.ingress, rule, opened.hostname, opened.alpn)
        else:
            pipe = Pipe(stream, on_done=done)
        self.pipes.add(pipe)
        try:
            if server is not None:
                ours, theirs = socket.socketpair()
                ours.setblocking(False)
                theirs.setblocking(False)
                # (a socket handed to the loop is the loop's to close, even when the call fails:
                # closing it here too could close a number the kernel has given out again)
                try:
                    await server.adopt(theirs, opened.client)
                except BaseException:
                    ours.close()
                    raise
                await asyncio.wait_for(
                    loop.create_connection(lambda: pipe, sock=ours, ssl=ctx, server_hostname=sni,
                                           ssl_handshake_timeout=rule.origin.connect_timeout if ctx else None),
                    rule.origin.connect_timeout,
                )
            elif rule.origin.proxy_protocol:
                # the PROXY header goes first, in the clear, then TLS (if any) over the same socket
                sock = await asyncio.wait_for(_dial_raw(loop, rule.host, rule.port), rule.origin.connect_timeout)
                try:
                    sock.send(proxyproto.encode_v2(opened.client, sock.getpeername()[:2]))
                except OSError:
                    sock.close()
                    raise
                await asyncio.wait_for(
                    loop.create_connection(lambda: pipe, sock=sock, ssl=ctx, server_hostname=sni,
                                           ssl_handshake_timeout=rule.origin.connect_timeout if ctx else None),
                    rule.origin.connect_timeout,
                )
            else:
                await asyncio.wait_for(
                    loop.create_connection(lambda: pipe, rule.host, rule.port, ssl=ctx, server_hostname=sni,
                                           ssl_handshake_timeout=rule.origin.connect_timeout if ctx else None),
                    rule.origin.connect_timeout,
                )
        except BaseException:
            self.pipes.discard(pipe)
            raise
        self._count(200)
        stream.respond(200)

    # --- reporting ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "connector": self.name,
            "ingress": self.ingress_origin or None,
            "rules": [{"hostname": r.hostname or "*", "service": r.service} for r in (self.ingress.rules if self.ingress else ())],
            "connections": [
                {"index": s.index, "edge": f"{s.edge[0]}:{s.edge[1]}", "edgeName": s.edge_name or None, "state": s.state,
                 "activeStreams": s.session.active_streams if s.session is not None else 0, "lastError": s.last_error or None}
                for s in self.slots
            ],
            "activeStreams": len(self.pipes),
        }


class HostGuard(Pipe):
    """HTTP the edge saw in clear (HTTP/1.1 or HTTP/2): every request's host and path must
    belong to the rule that chose this stream's origin, so a connection opened for one
    hostname cannot reach the origin of another (or one a rule refuses), whichever way the
    request names it. Such a request ends the connection before the origin sees it (a coalesced
    HTTP/2 connection of a browser is then opened anew). An HTTP/1.1 Upgrade ends the reading."""

    def __init__(self, stream: Stream, on_done: Any, ingress: Ingress, rule: Rule, hostname: str, alpn: str):
        super().__init__(stream, on_done=on_done)
        self.ingress, self.rule, self.first = ingress, rule, hostname
        self.paths = ingress.has_paths(hostname)  # then every request's path is matched too
        self.read: Any = requests.reader(alpn)
        self.refused = False
        for d in self.pending:  # what arrived before this pipe
            if not self._check(d):
                self.refused = True
                break

    def connection_made(self, transport: Any) -> None:
        if self.refused:
            self.transport = transport
            self.stream.abort()
            asyncio.get_event_loop().call_soon(self._tunnel_reset)  # (see Pipe.connection_made)
            return
        super().connection_made(transport)

    def _belongs(self, host: str, path: str) -> bool:
        if host == self.first and not self.paths:
            return True
        return self.ingress.match(host, path) is self.rule

    def _check(self, data: bytes) -> bool:
        if self.read is None:
            return True
        try:
            seen = self.read(data)
        except requests.Upgraded as e:
            seen, self.read = e.args[0], None
        except requests.NotReadable as e:
            seen = [("\x00", f" ({e})")]
        for host, path in seen:
            if not self._belongs(host, path):
                log.warning("tunnel: a request for %r%s on a connection opened for %r (ingress[%d]): connection closed",
                            host, path, self.first, self.rule.index)
                self.read = None
                return False
        return True

    def _tunnel_data(self, data: bytes) -> None:
        if self.refused:
            return
        if not self._check(data):
            self.refused = True
            self.stream.abort()
            if self.transport is not None:
                self._tunnel_reset()
            return
        super()._tunnel_data(data)


async def first_request_path(stream: Stream, limit: int = 64 * 1024, timeout: float = 10.0) -> str | None:
    """The path of the first HTTP/1.1 request on a stream, read from what waits in its backlog
    (left there for the origin); None if it does not come (in time, within limit) or is not HTTP."""
    read = requests.H1Requests()
    arrived = asyncio.Event()
    stream.on_arrival = arrived.set
    fed = size = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            for chunk in stream.backlog[fed:]:
                fed += 1
                size += len(chunk)
                try:
                    seen = read.feed(chunk)
                except requests.Upgraded as e:
                    seen = e.args[0]
                except requests.NotReadable:
                    return None
                if seen:
                    return seen[0][1]
            if size > limit or stream.reset or stream.remote_ended or time.monotonic() > deadline:
                return None
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return None
    finally:
        stream.on_arrival = lambda: None


async def _dial_raw(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to host:port (the first address that answers)."""
    last: Exception = OSError(f"{host}: no address")
    for family, kind, proto, _, addr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last


class _Metrics:
    """cloudflared's metric names (Go's client exposes its counters without ``_total``), so its
    Grafana dashboard (17457) reads these."""

    def __init__(self, c: Connector):
        self.c = c

    def collect(self) -> Iterable[Metric]:
        c = self.c
        total = counter("cloudflared_tunnel_total_requests", "Amount of requests proxied through all the tunnels")
        sample(total, {}, c.counts["requests"])
        yield total
        errors = counter("cloudflared_tunnel_request_errors", "Amount of errors due to proxying")
        sample(errors, {}, c.counts["errors"])
        yield errors
        codes = counter("cloudflared_tunnel_response_by_code", "Count of responses by HTTP status code")
        for code, n in sorted(c.by_code.items()):
            sample(codes, {"status_code": code}, n)
        yield codes
        yield GaugeMetricFamily("cloudflared_tunnel_ha_connections", "Number of active ha connections", value=c.connected)
        conc = GaugeMetricFamily("cloudflared_tunnel_concurrent_requests_per_tunnel",
                                 "Concurrent requests proxied through each tunnel", labels=["connection_id"])
        for s in c.slots:
            conc.add_metric([str(s.index)], s.session.active_streams if s.session is not None and not s.session.closed else 0)
        yield conc
