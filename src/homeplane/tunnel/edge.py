"""``homeplane edge``: the public side of the tunnel, run on any host with a public address.

Connectors dial in (:class:`TunnelAccept`: TLS, one Upgrade with a token, then HTTP/2 with
the edge as client). Public connections are forwarded over them, one stream each:

* HTTPS: the ClientHello's SNI says what to do: pass the TLS through to the home gateway
  (the default: certificates stay at home), or terminate it here with the edge's
  certificate for hostnames configured so (then the stream carries plaintext HTTP);
* HTTP: by the first request's Host;
* TCP ports: each names the hostname the connector's ingress rules match.

With no connector, HTTP and terminated HTTPS get a 503 page (a 502 when the home side
cannot reach the service); passed-through TLS and TCP are closed, having no page to show.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import time
import collections
from typing import Any

import h2.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from homeplane.gateway.frontends.late_tls import start_tls_after
from homeplane.gateway.frontends.quic import source_key
from homeplane.gateway.frontends.tlspeek import NEED_MORE, NotTLS, client_hello_sni
from homeplane.observe.admin import AdminServer
from homeplane.tunnel import wire
from homeplane.tunnel.edge_config import EdgeConfig, HostTLS
from homeplane.tunnel.mux import Pipe, Session, Stream
from homeplane.tunnel.pages import MAX_HEAD, StatusAnswer

log = logging.getLogger("homeplane.edge")

HEAD_TIMEOUT = 10.0
RESPONSE_TIMEOUT = 30.0  # cloudflared's default connectTimeout: the longest a connector may take to answer


def _peer(t: asyncio.BaseTransport) -> tuple[str, int]:
    p = t.get_extra_info("peername")
    return (str(p[0]), int(p[1])) if isinstance(p, tuple) and len(p) >= 2 else ("", 0)


class Edge:
    def __init__(self, cfg: EdgeConfig):
        self.cfg = cfg
        self.sessions: list[Session] = []
        self.meta: dict[Session, dict[str, Any]] = {}
        self.servers: list[asyncio.base_events.Server] = []
        self.tunnel_server: asyncio.base_events.Server | None = None
        self.admin: AdminServer | None = None
        self._contexts: dict[HostTLS, ssl.SSLContext] = {}
        self._rr = 0
        self.pipes: set[Pipe] = set()
        self.draining = False
        self.clients: dict[asyncio.BaseTransport, str] = {}  # open public connections, by source
        self.per_source: collections.Counter[str] = collections.Counter()
        self._sweeper: asyncio.Task[None] | None = None
        self.public_open = False
        self._public_task: asyncio.Future[None] | None = None
        self.bound: dict[str, tuple[str, int]] = {}  # what each listener got (port 0 picks one)
        self.registry = CollectorRegistry()
        self.m_connections = Gauge("homeplane_edge_tunnel_connections", "Connector connections up", registry=self.registry)
        self.m_streams = Counter("homeplane_edge_streams", "Public connections forwarded, by kind and result",
                                 ["kind", "result"], registry=self.registry)
        self.m_active = Gauge("homeplane_edge_active_streams", "Public connections open through the tunnel", registry=self.registry)

    # --- connectors ---------------------------------------------------------------------

    def pick(self) -> Session | None:
        live = [s for s in self.sessions if not s.closed and not s.draining and s.has_room]
        if not live:
            return None
        self._rr += 1
        least = min(s.active_streams for s in live)
        best = [s for s in live if s.active_streams == least]
        return best[self._rr % len(best)]

    def admit(self, token: str) -> str | None:
        for known, name in self.cfg.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return name
        return None

    def joined(self, session: Session, info: dict[str, Any]) -> None:
        self.sessions.append(session)
        self.meta[session] = info
        self.m_connections.set(len(self.sessions))
        log.info("connector %s connection %d joined from %s", info["connector"], info["index"], info["address"])
        if self.draining:
            session.send_control("drain")

    def left(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
            info = self.meta.pop(session, {})
            log.info("connector %s connection %s left", info.get("connector"), info.get("index"))
        self.m_connections.set(len(self.sessions))

    def control(self, session: Session, msg: dict[str, Any]) -> None:
        info = self.meta.get(session, {})
        kind = msg.get("type")
        if kind == "drain":  # the connector stops: no new streams on it (Session marked it)
            session.send_control("drain-ack")
            log.info("connector %s connection %s drains: no new streams on it", info.get("connector"), info.get("index"))
        elif kind == "replaced":  # it has dialled this edge's successor
            info["replaced"] = True

    # --- public connections -------------------------------------------------------------

    def forward(self, t: asyncio.Transport, kind: str, hostname: str, client: tuple[str, int], first: bytes, alpn: str,
                plain: bool = False) -> None:
        session = self.pick()
        if session is None:
            self.m_streams.labels(kind, "no_connector").inc()
            log.info("%s connection from %s for %r: no connector", kind, client[0], hostname)
            if kind == wire.KIND_HTTP:
                answer = StatusAnswer(503, hostname, alpn, first)
                t.set_protocol(answer)
                answer.connection_made(t)
            else:
                t.close()
            return
        try:
            stream = session.open(wire.Open(kind, hostname, client, alpn, plain).headers())
        except h2.exceptions.H2Error as e:  # (a connector that refuses streams: tell, and close this one)
            log.warning("connector connection %s cannot take a stream (%s); closing it", session.name, e)
            session.close()
            self.forward(t, kind, hostname, client, first, alpn, plain)
            return
        pipe = EdgePipe(self, stream, kind, hostname, alpn)
        self.pipes.add(pipe)
        self.m_active.set(len(self.pipes))
        t.set_protocol(pipe)
        pipe.connection_made(t)
        if first:
            pipe.data_received(first)

    def admit_client(self, t: asyncio.BaseTransport, client: tuple[str, int]) -> bool:
        """Whether a new public connection may stay open: bounded in all and per source (an
        IPv4 address or IPv6 /64), so one client cannot take every descriptor."""
        key = source_key(client)
        if len(self.clients) >= self.cfg.max_connections or self.per_source[key] >= self.cfg.max_per_source:
            self.m_streams.labels("any", "over_limit").inc()
            t.close()
            return False
        self.clients[t] = key
        self.per_source[key] += 1
        return True

    async def _sweep(self) -> None:
        """Count closed public connections out (whichever protocol they ended in)."""
        while True:
            await asyncio.sleep(0.5)
            for t, key in [(t, k) for t, k in self.clients.items() if t.is_closing()]:
                del self.clients[t]
                self.per_source[key] -= 1
                if not self.per_source[key]:
                    del self.per_source[key]

    def pipe_done(self, pipe: Pipe) -> None:
        self.pipes.discard(pipe)
        self.m_active.set(len(self.pipes))

    def context_for(self, h: HostTLS) -> ssl.SSLContext:
        ctx = self._contexts.get(h)
        if ctx is None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(h.cert_file), str(h.key_file))
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            self._contexts[h] = ctx
        return ctx

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        migrate_queued_connections()
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        self.tunnel_server = await loop.create_server(lambda: TunnelAccept(self), *cfg.tunnel_listen, ssl=cfg.tunnel_context(),
                                                      reuse_address=True, reuse_port=True, ssl_handshake_timeout=HEAD_TIMEOUT)
        self.bound["tunnel"] = self.tunnel_server.sockets[0].getsockname()[:2]
        if cfg.admin_listen:
            self.admin = AdminServer(*cfg.admin_listen)
            self.admin.route("/healthz", lambda _: (200, "text/plain", b"ok\n"))
            self.admin.route("/readyz", self._readyz)
            self.admin.route("/status", lambda _: (200, "application/json", json.dumps(self.status(), indent=2).encode() + b"\n"))
            self.admin.route("/metrics", lambda _: (200, CONTENT_TYPE_LATEST, generate_latest(self.registry)))
            await self.admin.start()
            self.bound["admin"] = (self.admin.host, self.admin.port)
        log.info("edge %s: tunnel on %s:%d; public ports open when a connector joins (or in %.0f s)", cfg.name,
                 *self.bound["tunnel"], cfg.public_wait)
        self._public_task = asyncio.ensure_future(self._open_public())
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _open_public(self) -> None:
        deadline = time.monotonic() + self.cfg.public_wait
        while not self.sessions and not self.draining:
            # past publicWait, open without a connector - unless another edge (a predecessor
            # handing over) still serves these ports: then its connectors are coming here
            if time.monotonic() >= deadline and not await self._ports_served_elsewhere():
                break
            await asyncio.sleep(0.02 if time.monotonic() < deadline else 0.5)
        if self.draining:
            return
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        listen: list[tuple[str, Any, tuple[str, int]]] = []
        if cfg.https_listen:
            listen.append(("https", lambda: HttpsPeek(self), cfg.https_listen))
        if cfg.http_listen:
            listen.append(("http", lambda: HttpPeek(self), cfg.http_listen))
        for tp in cfg.tcp:
            listen.append((f"tcp/{tp.hostname}", lambda tp=tp: TcpAccept(self, tp.hostname), (tp.host, tp.port)))
        for name, factory, (host, port) in listen:
            try:
                srv = await loop.create_server(factory, host, port, reuse_address=True, reuse_port=True, backlog=1024)
            except OSError as e:
                log.error("edge %s: cannot listen for %s on %s:%d: %s", cfg.name, name, host, port, e)
                continue
            self.servers.append(srv)
            self.bound[name] = srv.sockets[0].getsockname()[:2]
        self.public_open = True
        log.info("edge %s: %s", cfg.name, ", ".join(f"{k} on {h}:{p}" for k, (h, p) in self.bound.items()))

    async def _ports_served_elsewhere(self) -> bool:
        """Does something already listen on this edge's public ports (before it opens its own)?"""
        for listen in (self.cfg.https_listen, self.cfg.http_listen):
            if not listen:
                continue
            host, port = listen
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(host if host not in ("", "0.0.0.0", "::") else "127.0.0.1", port), 0.3)
            except (OSError, asyncio.TimeoutError):
                continue
            w.close()
            return True
        return False

    def _readyz(self, _: str) -> tuple[int, str, bytes]:
        if self.pick() is None:
            return 503, "text/plain", b"no connector\n"
        return 200, "text/plain", b"ok\n"

    def status(self) -> dict[str, Any]:
        return {
            "edge": self.cfg.name,
            "draining": self.draining,
            "publicOpen": self.public_open,
            "listeners": {k: f"{h}:{p}" for k, (h, p) in self.bound.items()},
            "connections": [
                {**self.meta.get(s, {}), "activeStreams": s.active_streams, "streams": s.opened, "draining": s.draining}
                for s in self.sessions
            ],
            "activeStreams": len(self.pipes),
            "publicConnections": len(self.clients),
        }

    async def drain(self) -> None:
        """Hand over, then stop: connectors are told first (no new connector joins here, they
        dial the successor started on the same ports), then, once they have or after
        handoverTimeout, the public ports close (the successor's take the clients), and the
        connections open finish (up to drainTimeout), those still being read included."""
        self.draining = True
        cfg = self.cfg
        if self.tunnel_server is not None:
            self.tunnel_server.close()
        for s in list(self.sessions):
            s.send_control("drain")
        deadline = time.monotonic() + cfg.handover_timeout
        while time.monotonic() < deadline and any(not self.meta.get(s, {}).get("replaced") for s in self.sessions):
            await asyncio.sleep(0.02)
        if self._public_task is not None:
            self._public_task.cancel()
        for srv in self.servers:
            srv.close()
        deadline = time.monotonic() + cfg.drain_timeout
        # every public connection, also those accepted a moment before the listeners closed and
        # still being read (the ClientHello or request head not in yet: no pipe yet)
        while (self.pipes or self._open_clients()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.pipes or self._open_clients():
            log.warning("edge drain: %d connections still open after %.0f s; closing them",
                        max(len(self.pipes), self._open_clients()), cfg.drain_timeout)

    def _open_clients(self) -> int:
        return sum(1 for t in self.clients if not t.is_closing())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for srv in self.servers:
            srv.close()
        if self.tunnel_server is not None:
            self.tunnel_server.close()
        for s in list(self.sessions):
            s.close()
        if self.admin is not None:
            await self.admin.close()


class EdgePipe(Pipe):
    """A public connection on its stream; until the connector answers, the bytes sent are kept
    (bounded) so that a refusal can be answered in the client's protocol."""

    def __init__(self, edge: Edge, stream: Stream, kind: str, hostname: str, alpn: str):
        super().__init__(stream, on_done=edge.pipe_done)
        self.edge = edge
        self.kind = kind
        self.hostname = hostname
        self.alpn = alpn
        self.early: bytearray | None = bytearray()
        stream.on_response = self._response
        # a connector that never answers: the client is told, not left waiting
        self.timer: asyncio.TimerHandle | None = asyncio.get_event_loop().call_later(RESPONSE_TIMEOUT, self._no_answer)

    def _done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super()._done()

    def _no_answer(self) -> None:
        self.timer = None
        if self.early is not None:
            log.warning("no answer from the connector for %s %r in %.0f s", self.kind, self.hostname, RESPONSE_TIMEOUT)
            self.edge.m_streams.labels(self.kind, "timeout").inc()
            self._answer(504)

    def data_received(self, data: bytes) -> None:
        if self.early is not None and len(self.early) < MAX_HEAD:
            self.early += data[: MAX_HEAD - len(self.early)]
        super().data_received(data)

    def _response(self, headers: dict[str, str]) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            status = int(headers.get(":status", "502"))
        except ValueError:
            status = 502
        if status == 200:
            self.early = None
            self.edge.m_streams.labels(self.kind, "forwarded").inc()
            return
        self.edge.m_streams.labels(self.kind, f"refused_{status}").inc()
        self._answer(status)

    def _tunnel_reset(self) -> None:
        if self.early is not None:  # (no answer yet: the connector went away or gave up)
            self.edge.m_streams.labels(self.kind, "reset").inc()
            self._answer(502)
            return
        super()._tunnel_reset()

    def _answer(self, status: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        s = self.stream
        s.on_data = s.on_end = s.on_reset = lambda *a: None  # type: ignore[assignment]
        s.abort()
        t = self.transport
        early, self.early = bytes(self.early or b""), None
        self._done()
        if t is None or t.is_closing():
            return
        if self.kind != wire.KIND_HTTP:
            t.close()
            return
        answer = StatusAnswer(status if 400 <= status <= 599 else 502, self.hostname, self.alpn, early)
        t.set_protocol(answer)
        answer.connection_made(t)


class TunnelAccept(asyncio.Protocol):
    """A connector's connection until its handshake is done; then the Session takes it."""

    def __init__(self, edge: Edge):
        self.edge = edge
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_event_loop().call_later(HEAD_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        t = self.transport
        assert t is not None
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > wire.MAX_HEAD:
                t.write(wire.edge_refuse(431, "Request Header Fields Too Large", "handshake too large"))
                t.close()
            return
        if self.timer is not None:
            self.timer.cancel()
        head, rest = self.buf[: end + 4], self.buf[end + 4 :]
        peer = _peer(t)
        try:
            hello = wire.parse_hello(head)
        except wire.HandshakeError as e:
            log.info("tunnel connection from %s refused: %s", peer[0], e)
            t.write(wire.edge_refuse(400, "Bad Request", str(e)))
            t.close()
            return
        name = self.edge.admit(hello.token)
        if name is None:
            log.warning("tunnel connection from %s refused: unknown token (connector %r)", peer[0], hello.connector)
            t.write(wire.edge_refuse(401, "Unauthorized", "unknown tunnel token"))
            t.close()
            return
        t.write(wire.edge_accept(self.edge.cfg.name))
        label = f"{hello.connector}#{hello.index}"
        session = Session(client_side=True, on_control=self.edge.control, on_closed=self.edge.left, name=label)
        t.set_protocol(session)
        session.connection_made(t)
        self.edge.joined(session, {"connector": hello.connector, "token": name, "index": hello.index,
                                   "address": f"{peer[0]}:{peer[1]}", "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        session.feed(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class _Peek(asyncio.Protocol):
    """Reads the first bytes of a public connection (bounded in size and time)."""

    def __init__(self, edge: Edge):
        self.edge = edge
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.client = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = _peer(transport)
        if not self.edge.admit_client(transport, self.client):
            self.buf = b""
            self.transport = None
            return
        self.timer = asyncio.get_event_loop().call_later(HEAD_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.received(data)

    def received(self, data: bytes) -> None:
        """What the subclass reads first (a ClientHello, a request head)."""

    def _done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()


class HttpsPeek(_Peek):
    def received(self, data: bytes) -> None:
        t = self.transport
        assert t is not None
        self.buf += data
        try:
            sni = client_hello_sni(self.buf)
        except NotTLS:
            self._done()
            t.close()
            return
        if sni is NEED_MORE:
            return
        self._done()
        name = str(sni or "")
        if not wire.valid_hostname(name):
            log.info("TLS connection from %s closed: server name %r is not a host name", self.client[0], name[:80])
            t.close()
            return
        h = self.edge.cfg.host_tls(name)
        if h is not None and h.terminate:
            start_tls_after(asyncio.get_event_loop(), t, Terminated(self.edge, name, self.client), self.edge.context_for(h), self.buf)
            return
        self.edge.forward(t, wire.KIND_TLS, name, self.client, self.buf, "")


class Terminated(asyncio.Protocol):
    """TLS the edge terminated: once the handshake is done, the plaintext goes on a stream."""

    def __init__(self, edge: Edge, hostname: str, client: tuple[str, int]):
        self.edge = edge
        self.hostname = hostname
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        alpn = (sslobj.selected_alpn_protocol() if sslobj is not None else None) or "http/1.1"
        self.edge.forward(transport, wire.KIND_HTTP, self.hostname, self.client, b"", alpn)  # type: ignore[arg-type]


def host_of(head: bytes) -> str:
    """The request's host: an absolute-form target's authority wins over Host (RFC 9112 §3.2.2)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    target = parts[1] if len(parts) == 3 else b""
    if target.lower().startswith((b"http://", b"https://")):
        from urllib.parse import urlsplit

        try:
            return (urlsplit(target.decode("latin-1")).hostname or "").lower()
        except ValueError:
            return "\x00"  # (not a host name: answered 400)
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("latin-1").lower()
            if host.startswith("["):
                return host.split("]")[0] + "]"
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


class HttpPeek(_Peek):
    def received(self, data: bytes) -> None:
        t = self.transport
        assert t is not None
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 and len(self.buf) < MAX_HEAD:
            return
        self._done()
        host = host_of(self.buf[: max(end, 0)])
        if end < 0 or not wire.valid_hostname(host):
            # no complete request head in 64 KiB, or a Host that is not a host name: answered
            # here, never carried to the home side
            answer = StatusAnswer(431 if end < 0 else 400, "", "http/1.1", self.buf)
            t.set_protocol(answer)
            answer.connection_made(t)
            return
        self.edge.forward(t, wire.KIND_HTTP, host, self.client, self.buf, "http/1.1", plain=True)


class TcpAccept(asyncio.Protocol):
    def __init__(self, edge: Edge, hostname: str):
        self.edge = edge
        self.hostname = hostname

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = _peer(transport)
        if self.edge.admit_client(transport, client):
            self.edge.forward(transport, wire.KIND_TCP, self.hostname, client, b"", "")  # type: ignore[arg-type]


MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def migrate_queued_connections(path: str = MIGRATE_REQ) -> bool:
    """At a handover the old edge closes its public listeners while the successor's share the
    ports (SO_REUSEPORT). Connections still waiting in a closed listener's queue are reset unless
    the kernel migrates them to another listener of the group (``net.ipv4.tcp_migrate_req``,
    Linux 5.14+, per network namespace): turn it on where allowed, say so where not."""
    try:
        with open(path) as f:
            if f.read().strip() == "1":
                return True
        with open(path, "w") as f:
            f.write("1\n")
        log.info("net.ipv4.tcp_migrate_req=1: a listener closed at handover passes its waiting connections to the successor")
        return True
    except OSError as e:
        log.warning("cannot enable net.ipv4.tcp_migrate_req (%s): a handover may reset connections still waiting to be accepted", e)
        return False

