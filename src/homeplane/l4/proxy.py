"""The userspace L4 data path (no root needed): TCP and UDP proxies on service addresses.

Each (virtual address, port, protocol) of a Service gets a listener (with
IP_FREEBIND, so an address this machine does not hold yet can be bound). A new
flow picks its backend from the Service's Maglev table by a hash of the flow
(client address and port; client address only with ``sessionAffinity:
ClientIP``), skipping backends that failed their active TCP health check.
On a new Snapshot, listeners that remain keep running with the new table;
flows already established keep their backend until they end (graceful drain);
listeners that are gone stop accepting while their flows finish.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from homeplane.l4 import maglev
from homeplane.l4.tables import Backend, ServiceTable, compile_tables, flow_key
from homeplane.translate.snapshot import Snapshot

log = logging.getLogger("homeplane.l4")
IP_FREEBIND = 15
UDP_IDLE = 60.0


def _socket(host: str, port: int, kind: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    except OSError:
        pass
    s.bind((host, port))
    s.setblocking(False)
    return s


class _Pipe(asyncio.Protocol):
    """One direction-pair of a proxied TCP connection."""

    def __init__(self, flow: "_TCPFlow", side: str):
        self.flow = flow
        self.side = side
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.flow.forward(self.side, data)

    def eof_received(self) -> bool:
        self.flow.half_close(self.side)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.flow.close()

    def pause_writing(self) -> None:
        self.flow.pause(self.side)

    def resume_writing(self) -> None:
        self.flow.resume(self.side)


class _ClientPipe(_Pipe):
    """The client side: on connect, pick the backend and open the upstream connection."""

    def __init__(self, flow: "_TCPFlow", listener: "_Listener"):
        super().__init__(flow, "client")
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        t = self.listener.table
        proxy = self.flow.proxy
        b = t.pick(flow_key(str(peer[0]), int(peer[1]), "TCP", t.session_affinity), proxy.unhealthy)
        if b is None:
            transport.close()
            return
        transport.pause_reading()  # until the backend connection is up
        asyncio.ensure_future(proxy._connect(self.flow, b, t))


class _TCPFlow:
    def __init__(self, proxy: "UserspaceProxy", listener: "_Listener"):
        self.proxy = proxy
        self.client: _Pipe = _ClientPipe(self, listener)
        self.backend: _Pipe | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.backend_eof = False

    def forward(self, side: str, data: bytes) -> None:
        if side == "client":
            if self.backend is not None and self.backend.transport is not None:
                self.backend.transport.write(data)
            else:
                self.pending.append(data)
        elif self.client.transport is not None:
            self.client.transport.write(data)

    def half_close(self, side: str) -> None:
        other = self.backend if side == "client" else self.client
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()

    def pause(self, side: str) -> None:
        # the side's outbound buffer is full: stop reading from the other side
        other = self.backend if side == "client" else self.client
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume(self, side: str) -> None:
        other = self.backend if side == "client" else self.client
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.flows.discard(self)
        for p in (self.client, self.backend):
            if p is not None and p.transport is not None:
                p.transport.close()


@dataclass
class _Listener:
    key: tuple[str, int, str]
    table: ServiceTable
    server: Any = None  # asyncio Server (TCP) or DatagramTransport (UDP)
    udp_sessions: dict[Any, Any] = field(default_factory=dict)


class _UDPSession(asyncio.DatagramProtocol):
    def __init__(self, listener: _Listener, client: Any, front: asyncio.DatagramTransport):
        self.listener = listener
        self.client = client
        self.front = front
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = time.monotonic()
        self.front.sendto(data, self.client)


class _UDPFront(asyncio.DatagramProtocol):
    def __init__(self, proxy: "UserspaceProxy", listener: _Listener):
        self.proxy = proxy
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        sess = self.listener.udp_sessions.get(addr)
        if sess is not None and sess.transport is not None:
            sess.last = time.monotonic()
            sess.transport.sendto(data)
            return
        asyncio.ensure_future(self._open(data, addr))

    async def _open(self, data: bytes, addr: Any) -> None:
        t = self.listener.table
        b = t.pick(flow_key(addr[0], addr[1], "UDP", t.session_affinity), self.proxy.unhealthy)
        if b is None or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        sess = _UDPSession(self.listener, addr, self.transport)
        await loop.create_datagram_endpoint(lambda: sess, remote_addr=(b.address, b.port))
        self.listener.udp_sessions[addr] = sess
        assert sess.transport is not None
        sess.transport.sendto(data)


class UserspaceProxy:
    def __init__(self, health_interval: float = 2.0, node_name: str | None = None, table_size: int | None = None):
        self.node_name = node_name  # this machine's node, for externalTrafficPolicy: Local
        self.table_size = table_size or maglev.DEFAULT_SIZE
        self.listeners: dict[tuple[str, int, str], _Listener] = {}
        self.flows: set[_TCPFlow] = set()
        self.unhealthy: frozenset[str] = frozenset()
        self.health_interval = health_interval
        self._tasks: list[asyncio.Task[None]] = []
        self.tables: list[ServiceTable] = []

    async def apply(self, snap: Snapshot) -> None:
        tables = compile_tables(snap, self.table_size, node_name=self.node_name)
        self.tables = tables
        wanted: dict[tuple[str, int, str], ServiceTable] = {}
        for t in tables:
            for vip in t.vips:
                wanted[(vip, t.port, t.protocol)] = t
        loop = asyncio.get_running_loop()
        for key, t in wanted.items():
            lst = self.listeners.get(key)
            if lst is not None:
                lst.table = t  # new flows use the new table; established ones keep their backend
                continue
            lst = _Listener(key, t)
            host, port, proto = key
            try:
                if proto == "TCP":
                    sock = _socket(host, port, socket.SOCK_STREAM)
                    lst.server = await loop.create_server(lambda lst=lst: self._accept(lst), sock=sock, backlog=1024)
                else:
                    sock = _socket(host, port, socket.SOCK_DGRAM)
                    lst.server, _ = await loop.create_datagram_endpoint(lambda lst=lst: _UDPFront(self, lst), sock=sock)
            except OSError as e:
                log.error("cannot listen on %s:%d/%s for %s: %s", host, port, proto, t.service, e)
                continue
            self.listeners[key] = lst
            log.info("L4 %s:%d/%s -> %s (%d endpoints)", host, port, proto, t.service, len(t.backends))
        for key in [k for k in self.listeners if k not in wanted]:
            lst = self.listeners.pop(key)
            lst.server.close()  # stop accepting; flows already running finish on their own

    def _accept(self, lst: _Listener) -> asyncio.Protocol:
        flow = _TCPFlow(self, lst)
        self.flows.add(flow)
        return flow.client

    async def _connect(self, flow: _TCPFlow, b: Backend, t: ServiceTable) -> None:
        loop = asyncio.get_running_loop()
        tried = {b.name}
        while True:
            try:
                pipe = _Pipe(flow, "backend")
                await asyncio.wait_for(loop.create_connection(lambda: pipe, b.address, b.port), 5)
                break
            except (OSError, asyncio.TimeoutError):
                nxt = t.pick(f"{b.name}-retry-{len(tried)}".encode(), frozenset(tried) | self.unhealthy)
                if nxt is None or nxt.name in tried:
                    flow.close()
                    return
                tried.add(nxt.name)
                b = nxt
        if flow.closed:
            if pipe.transport is not None:
                pipe.transport.close()
            return
        flow.backend = pipe
        if flow.pending:
            pipe.transport.write(b"".join(flow.pending))  # type: ignore[union-attr]
            flow.pending = []
        if flow.client.transport is not None:
            flow.client.transport.resume_reading()

    async def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._health()))
        self._tasks.append(asyncio.ensure_future(self._expire_udp()))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for lst in self.listeners.values():
            lst.server.close()
        for f in list(self.flows):
            f.close()

    async def _health(self) -> None:
        """Active TCP checks: an endpoint that refuses connections gets no new flows."""
        while True:
            backends = {b.name: b for t in self.tables if t.protocol == "TCP" for b in t.backends}

            async def check(b: Backend) -> tuple[str, bool]:
                try:
                    _, w = await asyncio.wait_for(asyncio.open_connection(b.address, b.port), 1.0)
                    w.close()
                    return b.name, True
                except (OSError, asyncio.TimeoutError):
                    return b.name, False

            results = await asyncio.gather(*(check(b) for b in backends.values()))
            bad = frozenset(n for n, ok in results if not ok)
            if bad != self.unhealthy:
                log.info("L4 unhealthy endpoints: %s", ", ".join(sorted(bad)) or "none")
            self.unhealthy = bad
            await asyncio.sleep(self.health_interval)

    async def _expire_udp(self) -> None:
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            for lst in self.listeners.values():
                for addr, sess in list(lst.udp_sessions.items()):
                    if now - sess.last > UDP_IDLE:
                        if sess.transport is not None:
                            sess.transport.close()
                        del lst.udp_sessions[addr]
