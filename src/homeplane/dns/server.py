"""DNS over UDP and TCP on asyncio, serving the current ZoneData; forwarding through the cache."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from dataclasses import replace
from typing import Any, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from homeplane.dns import wire
from homeplane.dns.acl import ALLOW, BLOCK, DROP, FILTER, Acl, Client
from homeplane.dns.batchudp import MMsgBatch, SimpleBatch, open_batch, packed
from homeplane.dns.cache import Cache
from homeplane.dns.config import DNSConfig
from homeplane.dns.forward import Forwarder
from homeplane.dns.responder import FORWARD, MEMO_LIMIT, Responder
from homeplane.dns.rrl import DROP as RRL_DROP
from homeplane.dns.rrl import SLIP, RateLimiter
from homeplane.dns.zones import ZoneData, compile_zones
from homeplane.observe.flows import DNS as DNS_FLOW
from homeplane.observe.flows import FlowRing
from homeplane.policy.enforce import DROP as NETPOL_DROP
from homeplane.policy.enforce import DNSPolicy, dns_policy
from homeplane.translate.snapshot import Snapshot

log = logging.getLogger("homeplane.dns")


class DNSServer:
    def __init__(self, cfg: DNSConfig, listen: Iterable[tuple[str, int]]):
        self.cfg = cfg
        self.listen = list(listen)
        self.responder = Responder(ZoneData(config=cfg))
        self.cache = Cache(cfg.cache)
        self.cache_memo: dict[bytes, tuple[bytes, float, Any, Any, int, str]] = {}  # see from_cache
        self.forwarder = Forwarder(cfg.forward)
        self.netpol: DNSPolicy | None = None  # network policy for kube-dns's clients
        self._policy(cfg)
        self.loop = asyncio.get_event_loop()
        self._udp: list[MMsgBatch | SimpleBatch] = []
        self._servers: list[asyncio.base_events.Server] = []
        self.bound: list[tuple[str, int]] = []
        self.flow_ring: FlowRing | None = None  # set by the runtime: a flow per query
        self._local: dict[Any, tuple[str, int]] = {}  # UDP socket -> its address, for flows

    # --- configuration ------------------------------------------------------------------

    def apply(self, snap: Snapshot) -> None:
        """Swap in the zones of a new Snapshot (one reference assignment: atomic)."""
        data = compile_zones(snap, self.cfg)
        stats = self.responder.stats
        self.responder = Responder(data)
        self.responder.stats = stats
        self.cache_memo.clear()  # a forwarded name may be ours now
        netpol = dns_policy(snap.network_policy)
        if netpol is not None or self.netpol is not None:
            self.netpol = netpol
            self.clients = {}  # what each client may do is worked out again

    def reconfigure(self, cfg: DNSConfig) -> None:
        """New settings (from the manifests' CoreDNS values): a fresh cache and forwarder."""
        self.cfg = cfg
        self.cache = Cache(cfg.cache)
        self.cache_memo.clear()
        self.forwarder = Forwarder(cfg.forward)
        self._policy(cfg)

    def _policy(self, cfg: DNSConfig) -> None:
        """Who may ask what (acl, recursion) and how fast (RRL), per client address."""
        self.acl = Acl(list(cfg.acl), cfg.recursion)
        self.rrl = RateLimiter(cfg.rrl)
        self.clients: dict[bytes, Client] = {}  # address bytes -> what that client may do

    def client(self, key: bytes, ip: str) -> Client:
        c = self.clients.get(key)
        if c is None:
            if len(self.clients) >= 65536:
                self.clients.clear()
            c = self.acl.client(ip)
            if self.netpol is not None:
                c = replace(c, netpol=self.netpol.for_client(ip, "UDP"))
            self.clients[key] = c
        return c

    def limited(self, client: Client) -> bool:
        """Are this client's UDP answers rate limited?"""
        return self.rrl.cfg.enabled and not (client.private and self.cfg.rrl_exempt_private)

    async def start(self) -> None:
        for host, port in self.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            io = open_batch(sock)
            self._udp.append(io)
            self._local[io] = (host, sock.getsockname()[1])
            self.loop.add_reader(sock.fileno(), self._udp_ready, io)
            actual = sock.getsockname()[1]
            srv = await asyncio.start_server(self._tcp, host, actual)
            self._servers.append(srv)
            self.bound.append((host, actual))
            log.info("DNS listening on %s:%d (udp, tcp)", host, actual)

    async def close(self) -> None:
        for io in self._udp:
            self.loop.remove_reader(io.sock.fileno())
            io.sock.close()
        self._udp = []
        for s in self._servers:
            s.close()

    # --- the query path -------------------------------------------------------------------

    def answer_now(self, data: bytes, proto: str, client: Client | None = None) -> bytes | object | None:
        """An answer now, FORWARD (not ours, and this client may have it forwarded), or None
        (drop). ``client`` None: a local caller (``dig -f``), allowed everything."""
        if client is not None and (self.acl.active or client.netpol is not None):
            refusal = self._acl(data, client)
            if refusal is not False:
                return refusal
        recursion = client is None or client.recursion
        if proto == "udp" and self.cache_memo and recursion:
            hit = self.cache_memo.get(data[2:])
            if hit is not None:
                resp = self._memo_hit(hit, data)
                if resp is not None:
                    return resp
        resp = self.responder.respond(data, proto)
        if resp is FORWARD and not recursion:
            q = self.responder.last
            assert q is not None
            self.responder.stats.rcode(b"", wire.REFUSED)
            return wire.reply(data, q, wire.REFUSED, ede=wire.EDE_PROHIBITED, ra=False)
        return resp

    def _acl(self, data: bytes, client: Client) -> bytes | None | bool:
        """False: the acl and network policy let the query through; else the refusal (None: drop it)."""
        netpol = client.netpol
        if netpol == NETPOL_DROP:
            return None  # network policy refuses this client port 53: Cilium drops the packets
        try:
            q = wire.parse_query(data)
        except wire.FormatError:
            return False  # the responder answers FORMERR
        if netpol is not None and not netpol.allows_query(q.key.decode("ascii", "replace")):  # type: ignore[attr-defined]
            self.responder.stats.rcode(b"", wire.REFUSED)  # Cilium's DNS proxy refuses names its rules do not allow
            return wire.reply(data, q, wire.REFUSED, ra=False)
        verdict = client.verdict(q.key, q.qtype)
        if verdict == ALLOW:
            return False
        if verdict == DROP:
            return None
        q.edns = True  # CoreDNS adds the OPT record carrying the extended error in any case
        if verdict == BLOCK:
            self.responder.stats.rcode(b"", wire.REFUSED)
            return wire.reply(data, q, wire.REFUSED, ede=wire.EDE_BLOCKED, ra=False)
        assert verdict == FILTER
        self.responder.stats.rcode(b"", wire.NOERROR)
        return wire.reply(data, q, wire.NOERROR, ede=wire.EDE_FILTERED, ra=False)

    def rate_limit(self, data: bytes, resp: bytes, client_key: bytes, now: float) -> bytes | None:
        """RRL on one UDP answer: the answer, a truncated one (slip), or None (dropped)."""
        rl = self.rrl
        prefix = rl.prefix_of_key(client_key)
        rcode = resp[3] & 0xF if len(resp) > 3 else wire.SERVFAIL
        try:
            q = wire.parse_query(data)
        except wire.FormatError:
            q = None
        # accounts by what the answer is (BIND's classes): the name (case folded, so 0x20
        # letter case does not open new accounts) and type for answers, the name for NODATA, the
        # zone for NXDOMAIN, one per network for errors
        if q is None or rcode not in (wire.NOERROR, wire.NXDOMAIN):
            kind, what = "error", b""
        elif rcode == wire.NXDOMAIN:
            zone = self.responder.data.zone_for(q.key)
            kind, what = "nxdomain", b"nx:" + (zone.apex if zone is not None else b".".join(q.key.split(b".")[-2:]))
        elif len(resp) > 7 and (resp[6] or resp[7]):
            kind, what = "answer", b"%s/%d" % (q.key, q.qtype)
        else:
            kind, what = "answer", b"nodata:" + q.key
        verdict = rl.check(prefix, what, kind, now)
        if verdict == RRL_DROP:
            return None
        if verdict == SLIP:
            if q is None:
                return None
            return wire.reply(data, q, rcode, tc=True, aa=bool(resp[2] & 0x04))
        return resp

    def _memo_hit(self, hit: tuple[bytes, float, Any, Any, int, str], data: bytes) -> bytes | None:
        """A cached answer rendered moments ago for the same query bytes, while its TTLs still read
        the same (within the same second of age): counted and prefetched as a cache hit."""
        rest, until, entry, key, qtype, kind = hit
        now = time.monotonic()
        if now >= until:
            del self.cache_memo[data[2:]]
            return None
        self.responder.stats.count(b"", "udp", qtype)
        self.cache.hits[kind] += 1
        if self.cache.should_prefetch(entry, now):
            entry.prefetching = True
            asyncio.ensure_future(self._refresh(key, data))
        return data[:2] + rest

    def from_cache(self, data: bytes) -> bytes | None:
        """A fresh cached answer, without leaving the receive callback (the common forwarded case)."""
        q = self.responder.last
        if not self.cfg.cache.enabled or q is None:
            return None
        now = time.monotonic()
        key = (q.key, q.qtype, q.do)
        entry = self.cache.peek(key, now)
        if entry is None:
            return None
        if self.cache.should_prefetch(entry, now):
            entry.prefetching = True
            asyncio.ensure_future(self._refresh(key, data))
        resp = self._fit(Cache.render(entry, q.id, data, q.question_end, now, False), q, "udp")
        # the same query again within this second of age gets these bytes without parsing
        until = min(entry.stored + int(now - entry.stored) + 1, entry.stored + entry.ttl)
        if len(self.cache_memo) >= MEMO_LIMIT:
            self.cache_memo.clear()
        kind = "success" if key in self.cache.success else "denial"
        self.cache_memo[data[2:]] = (resp[2:], until, entry, key, q.qtype, kind)
        return resp

    async def forward(self, data: bytes, proto: str) -> bytes | None:
        try:
            q = wire.parse_query(data)
        except wire.FormatError:
            return wire.error_response(data, wire.FORMERR)
        key = (q.key, q.qtype, q.do)
        now = time.monotonic()
        if self.cfg.cache.enabled:
            entry, fresh = self.cache.get(key, now)
            if entry is not None:
                if fresh:
                    if self.cache.should_prefetch(entry, now):
                        entry.prefetching = True
                        asyncio.ensure_future(self._refresh(key, data))
                    return self._fit(Cache.render(entry, q.id, data, q.question_end, now, False), q, proto)
                # stale: refresh; serve the stale copy now, or only if the upstream fails ("verify")
                if not self.cfg.cache.serve_stale_verify:
                    asyncio.ensure_future(self._refresh(key, data))
                    self.cache.stale_served += 1
                    return self._fit(Cache.render(entry, q.id, data, q.question_end, now, True), q, proto)
                resp = await self.forwarder.resolve(data)
                if resp and resp[3] & 0xF == wire.NOERROR:
                    self.cache.store(key, resp, time.monotonic())
                    return self._fit(resp, q, proto)
                self.cache.stale_served += 1
                return self._fit(Cache.render(entry, q.id, data, q.question_end, now, True), q, proto)
        resp = await self.forwarder.resolve(data)
        if resp and self.cfg.cache.enabled and resp[3] & 0xF in (wire.NOERROR, wire.NXDOMAIN, wire.SERVFAIL):
            if not (resp[3] & 0xF == wire.SERVFAIL and self._upstream_unreachable(resp)):
                self.cache.store(key, resp, time.monotonic())
        return self._fit(resp, q, proto) if resp else None

    @staticmethod
    def _upstream_unreachable(resp: bytes) -> bool:
        # our own SERVFAIL (no question section) means no upstream answered: not an answer to cache
        return len(resp) == 12

    async def _refresh(self, key: tuple[bytes, int, bool], data: bytes) -> None:
        try:
            resp = await self.forwarder.resolve(data)
            if resp and resp[3] & 0xF in (wire.NOERROR, wire.NXDOMAIN) and len(resp) > 12:
                self.cache.store(key, resp, time.monotonic())
        finally:
            for table in (self.cache.success, self.cache.denial):
                e = table.get(key)
                if e is not None:
                    e.prefetching = False

    @staticmethod
    def _fit(resp: bytes, q: wire.Query, proto: str) -> bytes:
        """A forwarded answer: RA set, and truncated when too big for this client over UDP."""
        if proto != "udp":
            if len(resp) > 3 and not resp[3] & 0x80:
                resp = resp[:3] + bytes((resp[3] | 0x80,)) + resp[4:]
            return resp
        limit = q.payload if q.edns else 512
        if not resp[3] & 0x80 and len(resp) > 3:
            resp = resp[:3] + bytes((resp[3] | 0x80,)) + resp[4:]  # recursion is available: RA
        if len(resp) <= limit:
            return resp
        flags = struct.unpack_from("!H", resp, 2)[0] | 0x0200
        question = resp[12 : q.question_end] if len(resp) >= q.question_end else b""
        return wire.header(q.id, flags, 1 if question else 0, 0, 0, 1 if q.edns else 0) + question + (wire.opt_rr() if q.edns else b"")

    def _udp_ready(self, io: MMsgBatch | SimpleBatch) -> None:
        """The socket is readable: answer what is waiting, a batch per system call. Bounded, so
        TCP clients and forwarded answers get their turn under a flood."""
        answer_now = self.answer_now
        memo = self.responder.memo  # the Responder's memo, inlined: the path nearly every query takes
        hits = self.responder.stats.memo_hits
        clients = self.clients
        acl = self.acl.active
        ring = self.flow_ring  # a flow per query: raw bytes into the ring, decoded only when read
        record = ring.entries.append if ring is not None else None
        seq = ring.seq if ring is not None else None
        local = self._local.get(io)
        for _ in range(16):
            try:
                datagrams = io.recv()
            except OSError as e:
                log.warning("DNS UDP receive: %s", e)
                return
            now = time.monotonic()
            for i, data in enumerate(datagrams):
                if data is None:
                    continue  # bigger than any query: dropped
                key = io.client_key(i)
                client = clients.get(key)
                if client is None:
                    client = self.client(key, io.address(i)[0])
                limited = self.limited(client)
                if not acl and not limited and client.netpol is None:
                    hit = memo.get(data[2:])
                    if hit is not None:
                        hits[hit[1]] = hits.get(hit[1], 0) + 1
                        resp = data[:2] + hit[0]
                        io.queue(i, resp)
                        if record is not None:
                            record((next(seq), DNS_FLOW, now, key, "udp", data, resp, local))  # type: ignore[arg-type]
                        continue
                try:
                    resp = answer_now(data, "udp", client)
                    if resp is FORWARD:
                        resp = self.from_cache(data)
                        if resp is None:
                            asyncio.ensure_future(self._forward_udp(io, data, io.address(i), key if limited else None))
                            continue
                    if type(resp) is bytes:
                        if limited:
                            resp = self.rate_limit(data, resp, key, now)
                            if resp is None:
                                self.flow(key, "udp", data, None, local)
                                continue
                        io.queue(i, resp)
                        if record is not None:
                            record((next(seq), DNS_FLOW, now, key, "udp", data, resp, local))  # type: ignore[arg-type]
                    elif resp is None:
                        self.flow(key, "udp", data, None, local)
                except Exception:  # one query must never take the server down
                    log.exception("DNS query failed")
            io.flush()
            if len(datagrams) < io.batch:
                return

    async def _forward_udp(self, io: MMsgBatch | SimpleBatch, data: bytes, addr: Any, limit_key: bytes | None = None) -> None:
        try:
            resp = await self.forward(data, "udp")
        except Exception:  # one query must never take the server down
            log.exception("forwarding failed")
            resp = wire.error_response(data, wire.SERVFAIL)
        if resp and limit_key is not None:
            resp = self.rate_limit(data, resp, limit_key, time.monotonic())
        self.flow(addr[0], "udp", data, resp or None, self._local.get(io))
        if resp and io in self._udp:
            io.send_to(resp, addr)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname")
        try:
            client = self.client(packed(str(peer[0])), str(peer[0]))
        except OSError:
            client = self.acl.client(str(peer[0]))
        if self.netpol is not None:
            client = replace(client, netpol=self.netpol.for_client(str(peer[0]), "TCP"))
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), timeout=10)
                (n,) = struct.unpack("!H", head)  # a frame is at most 64 KiB: bounded by the protocol
                data = await asyncio.wait_for(reader.readexactly(n), timeout=10)
                resp = self.answer_now(data, "tcp", client)
                if resp is FORWARD:
                    resp = await self.forward(data, "tcp")
                self.flow(str(peer[0]), "tcp", data, resp if isinstance(resp, bytes) and resp else None, local)
                if isinstance(resp, bytes) and resp:
                    writer.write(struct.pack("!H", len(resp)) + resp)
                    await writer.drain()
                elif resp is None:
                    break
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def flow(self, client: bytes | str, proto: str, query: bytes, answer: bytes | None, local: Any) -> None:
        """One flow record (answer None: the query was dropped). A TCP message may be 64 KiB: the
        ring keeps at most 4 KiB of each, so it stays bounded in bytes (a cut answer is shown as
        unreadable)."""
        ring = self.flow_ring
        if ring is not None:
            ring.entries.append((next(ring.seq), DNS_FLOW, time.monotonic(), client, proto, query[:4096],
                                 answer[:4096] if answer else answer, local))

    # --- metrics (CoreDNS names) -----------------------------------------------------------

    def collect(self) -> Iterable[Any]:
        server = "dns://" + ",".join(f"{h}:{p}" for h, p in self.bound)
        req = CounterMetricFamily("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.", labels=["server", "zone", "proto", "family", "type"])
        for (zone, proto, qtype), n in self.responder.stats.requests.items():
            req.add_metric([server, zone, proto, "1", qtype], n)
        yield req
        resp = CounterMetricFamily("coredns_dns_responses", "Counter of response status codes.", labels=["server", "zone", "rcode", "plugin"])
        for (zone, rcode), n in self.responder.stats.responses.items():
            resp.add_metric([server, zone, rcode, "kubernetes"], n)
        yield resp
        hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.", labels=["server", "type", "zones", "view"])
        for kind, n in self.cache.hits.items():
            hits.add_metric([server, kind, ".", ""], n)
        yield hits
        misses = CounterMetricFamily("coredns_cache_misses", "The count of cache misses.", labels=["server", "zones", "view"])
        misses.add_metric([server, ".", ""], self.cache.misses)
        yield misses
        entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.", labels=["server", "type", "zones", "view"])
        entries.add_metric([server, "success", ".", ""], len(self.cache.success))
        entries.add_metric([server, "denial", ".", ""], len(self.cache.denial))
        yield entries
        fr = CounterMetricFamily("coredns_forward_requests", "Counter of requests made per upstream.", labels=["to"])
        fresp = CounterMetricFamily("coredns_forward_responses", "Counter of responses received per upstream.", labels=["to", "rcode"])
        hc = CounterMetricFamily("coredns_forward_healthcheck_failures", "Counter of the number of failed healthchecks.", labels=["to"])
        for up in self.forwarder.upstreams:
            fr.add_metric([up.name], up.requests)
            for rcode, n in up.responses.items():
                fresp.add_metric([up.name, rcode], n)
            hc.add_metric([up.name], up.healthcheck_failures)
        yield fr
        yield fresp
        yield hc
