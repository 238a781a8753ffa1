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
from dataclasses import dataclass
from typing import Any

from homeplane.l4 import maglev
from homeplane.l4.relay import Splice, UDPRelay
from homeplane.l4.tables import Backend, ServiceTable, compile_tables, flow_key
from homeplane.observe.flows import FlowRing
from homeplane.policy.enforce import Verdicts
from homeplane.translate.snapshot import Snapshot

log = logging.getLogger("homeplane.l4")
IP_FREEBIND = 15


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


@dataclass
class _Listener:
    key: tuple[str, int, str]
    table: ServiceTable
    server: Any = None  # asyncio Server (TCP) or DatagramTransport (UDP)
    udp: UDPRelay | None = None

    def pick_udp(self, proxy: UserspaceProxy, addr: Any) -> tuple[str, int, Any] | None:
        t = self.table
        exclude, _ = proxy.excluded(addr[0], t)
        b = t.pick(flow_key(addr[0], addr[1], "UDP", t.session_affinity), exclude)
        return (b.address, b.port, None) if b is not None else None


class UserspaceProxy:
    def __init__(self, health_interval: float = 2.0, node_name: str | None = None, table_size: int | None = None):
        self.node_name = node_name  # this machine's node, for externalTrafficPolicy: Local
        self.table_size = table_size or maglev.DEFAULT_SIZE
        self.listeners: dict[tuple[str, int, str], _Listener] = {}
        self.flows: set[Splice] = set()
        self.unhealthy: frozenset[str] = frozenset()
        self.health_interval = health_interval
        self._tasks: list[asyncio.Task[None]] = []
        self.tables: list[ServiceTable] = []
        self.flow_ring: FlowRing | None = None  # set by the runtime: a flow per connection
        self.verdicts: Verdicts | None = None  # network policy: which backends a client may reach

    def excluded(self, client_ip: str, t: ServiceTable) -> tuple[frozenset[str], str | None]:
        """Backends a new flow from this client must not get: unhealthy ones, and those network
        policy refuses it (with the reason, when it refuses them all)."""
        if self.verdicts is None:
            return self.unhealthy, None
        allowed, why = self.verdicts.allowed_backends(client_ip, t)
        if len(allowed) == len(t.backends):
            return self.unhealthy, None
        refused = frozenset(b.name for b in t.backends if b.name not in allowed)
        return self.unhealthy | refused, (why if not allowed else None)

    async def apply(self, snap: Snapshot) -> None:
        tables = compile_tables(snap, self.table_size, node_name=self.node_name)
        self.tables = tables
        self.verdicts = Verdicts(snap.network_policy, snap) if snap.network_policy is not None else None
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
                    lst.udp = UDPRelay(lambda addr, lst=lst: lst.pick_udp(self, addr))
                    lst.server, _ = await loop.create_datagram_endpoint(lambda lst=lst: lst.udp, sock=sock)
            except OSError as e:
                log.error("cannot listen on %s:%d/%s for %s: %s", host, port, proto, t.service, e)
                continue
            self.listeners[key] = lst
            log.info("L4 %s:%d/%s -> %s (%d endpoints)", host, port, proto, t.service, len(t.backends))
        for key in [k for k in self.listeners if k not in wanted]:
            lst = self.listeners.pop(key)
            lst.server.close()  # stop accepting; flows already running finish on their own

    def _accept(self, lst: _Listener) -> asyncio.Protocol:
        flow = Splice(lambda f, peer: self._opened(f, lst, peer), self._closed)
        flow.context = (lst.table, None, None)
        self.flows.add(flow)
        return flow.client

    def _opened(self, flow: Splice, lst: _Listener, peer: tuple[str, int]) -> None:
        t = lst.table
        exclude, denied = self.excluded(peer[0], t)
        b = t.pick(flow_key(peer[0], peer[1], "TCP", t.session_affinity), exclude)
        flow.context = (t, None, "POLICY_DENIED" if denied else None)
        if b is None:
            if denied:
                log.debug("L4 %s:%d -> %s refused by network policy: %s", peer[0], peer[1], t.service, denied)
            flow.close()
            return
        asyncio.ensure_future(self._connect(flow, b, t, exclude))

    async def _connect(self, flow: Splice, b: Backend, t: ServiceTable, exclude: frozenset[str]) -> None:
        loop = asyncio.get_running_loop()
        tried = {b.name}
        while True:
            try:
                pipe = flow.backend_side()
                await asyncio.wait_for(loop.create_connection(lambda: pipe, b.address, b.port), 5)
                break
            except (OSError, asyncio.TimeoutError):
                nxt = t.pick(f"{b.name}-retry-{len(tried)}".encode(), frozenset(tried) | exclude | self.unhealthy)
                if nxt is None or nxt.name in tried:
                    flow.close()
                    return
                tried.add(nxt.name)
                b = nxt
        flow.context = (t, b, None)
        flow.attach(pipe)

    def _closed(self, flow: Splice) -> None:
        self.flows.discard(flow)
        if self.flow_ring is not None and flow.peer[0]:
            t, b, reason = flow.context
            self.flow_ring.l4("TCP", flow.peer, str(t.service), None, b.name if b is not None else None, flow.bytes_in,
                              flow.bytes_out, time.monotonic() - flow.started, reason=reason)

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
                if lst.udp is not None:
                    lst.udp.expire(now)
