"""Forwarding to upstream resolvers (CoreDNS ``forward`` semantics).

Upstreams are tried in the policy's order (random, round_robin, sequential);
one that fails twice in a row is marked down and health-checked (``. IN NS``)
every ``health_check`` seconds until it answers; while all are down they are
tried anyway. ``max_concurrent`` caps queries in flight: beyond it the answer
is REFUSED. UDP first; a truncated answer is retried over TCP (and
``force_tcp`` always uses TCP). Query IDs towards upstreams are fresh random
numbers, so answers cannot be matched by guessing the client's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import struct
from typing import Any

from homeplane.dns import wire
from homeplane.dns.config import ForwardConfig

log = logging.getLogger("homeplane.dns.forward")
MAX_FAILS = 2


class _UDPClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            return
        fut = self.pending.pop(struct.unpack_from("!H", data)[0], None)
        if fut is not None and not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()


class Upstream:
    def __init__(self, spec: str):
        host, _, port = spec.rpartition(":")
        self.host = host.strip("[]") or spec
        self.port = int(port) if port.isdigit() else 53
        self.name = f"{self.host}:{self.port}"
        self.fails = 0
        self.udp: _UDPClient | None = None
        self.requests = 0
        self.responses: dict[str, int] = {}
        self.healthcheck_failures = 0
        self._checking = False

    @property
    def down(self) -> bool:
        return self.fails >= MAX_FAILS

    async def _udp(self, loop: asyncio.AbstractEventLoop) -> _UDPClient:
        if self.udp is None or self.udp.transport is None or self.udp.transport.is_closing():
            _, proto = await loop.create_datagram_endpoint(_UDPClient, remote_addr=(self.host, self.port))
            self.udp = proto
        return self.udp

    async def exchange(self, query: bytes, timeout: float, tcp: bool) -> bytes:
        loop = asyncio.get_running_loop()
        qid = random.getrandbits(16)
        wire_q = struct.pack("!H", qid) + query[2:]
        if not tcp:
            client = await self._udp(loop)
            while qid in client.pending:
                qid = random.getrandbits(16)
                wire_q = struct.pack("!H", qid) + query[2:]
            fut: asyncio.Future[bytes] = loop.create_future()
            client.pending[qid] = fut
            assert client.transport is not None
            client.transport.sendto(wire_q)
            try:
                resp = await asyncio.wait_for(fut, timeout)
            finally:
                client.pending.pop(qid, None)
            if not struct.unpack_from("!H", resp, 2)[0] & 0x0200:
                return resp
            # truncated: ask again over TCP
        r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        try:
            w.write(struct.pack("!H", len(wire_q)) + wire_q)
            n = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), timeout))[0]
            return await asyncio.wait_for(r.readexactly(n), timeout)
        finally:
            w.close()


class Forwarder:
    def __init__(self, cfg: ForwardConfig):
        self.cfg = cfg
        self.upstreams = [Upstream(u) for u in cfg.upstreams]
        self._rr = itertools.count()
        self.inflight = 0
        self.refused = 0

    def _order(self) -> list[Upstream]:
        ups = list(self.upstreams)
        if self.cfg.policy == "random":
            random.shuffle(ups)
        elif self.cfg.policy == "round_robin" and ups:
            i = next(self._rr) % len(ups)
            ups = ups[i:] + ups[:i]
        healthy = [u for u in ups if not u.down]
        return healthy or ups  # all down: try them anyway

    async def resolve(self, query: bytes) -> bytes:
        """The upstream answer (its ID set back to the client's), REFUSED or SERVFAIL."""
        if not self.upstreams:
            return wire.error_response(query, wire.SERVFAIL) or b""
        if self.cfg.max_concurrent and self.inflight >= self.cfg.max_concurrent:
            self.refused += 1
            return wire.error_response(query, wire.REFUSED) or b""
        self.inflight += 1
        try:
            for up in self._order():
                up.requests += 1
                try:
                    resp = await up.exchange(query, self.cfg.timeout, self.cfg.force_tcp)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, struct.error) as e:
                    up.fails += 1
                    if up.down:
                        self._start_health_check(up)
                    log.debug("upstream %s failed: %r", up.name, e)
                    continue
                up.fails = 0
                rcode = wire.RCODE_NAME.get(resp[3] & 0xF, "other") if len(resp) > 3 else "other"
                up.responses[rcode] = up.responses.get(rcode, 0) + 1
                return query[:2] + resp[2:]
            return wire.error_response(query, wire.SERVFAIL) or b""
        finally:
            self.inflight -= 1

    def _start_health_check(self, up: Upstream) -> None:
        if up._checking or not self.cfg.health_check:
            return
        up._checking = True

        async def check() -> None:
            probe = wire.header(0, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)
            try:
                while up.down:
                    try:
                        await up.exchange(probe, self.cfg.health_check or 1.0, False)
                        up.fails = 0
                    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, struct.error):
                        up.healthcheck_failures += 1
                        await asyncio.sleep(self.cfg.health_check)
            finally:
                up._checking = False

        asyncio.ensure_future(check())
