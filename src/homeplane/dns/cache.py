"""The response cache in front of the forwarder, with CoreDNS ``cache`` semantics.

Positive answers live at most ``max_ttl`` (default 3600 s) and at least
``min_ttl``; denials (NXDOMAIN, NODATA) take the SOA minimum, capped at
``denial_max_ttl`` (1800 s); SERVFAIL is kept ``servfail_ttl`` (5 s). Each kind
has its own capacity (9984 entries) with least-recently-used eviction. A hit is
served with TTLs aged by the time spent in the cache. ``prefetch`` refreshes a
popular entry shortly before it expires; ``serve_stale`` answers from an
expired entry (TTL 0) for a while when the upstream cannot be reached, or
always while it refreshes ("immediate" mode). Time is an input (``now``).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from homeplane.dns import wire
from homeplane.dns.config import CacheConfig

Key = tuple[bytes, int, bool]


@dataclass(slots=True)
class Entry:
    response: bytes  # as received, ID included (patched on the way out)
    ttl_offsets: list[int]
    stored: float
    ttl: float
    kind: str  # "success" | "denial" | "servfail"
    hits: int = 0
    window_start: float = 0.0
    prefetching: bool = False


class Cache:
    def __init__(self, cfg: CacheConfig):
        self.cfg = cfg
        self.success: OrderedDict[Key, Entry] = OrderedDict()
        self.denial: OrderedDict[Key, Entry] = OrderedDict()
        self.hits = {"success": 0, "denial": 0}
        self.misses = 0
        self.stale_served = 0

    def store(self, key: Key, response: bytes, now: float) -> None:
        try:
            info = wire.inspect_response(response)
        except wire.FormatError:
            return
        if struct.unpack_from("!H", response, 2)[0] & 0x0200:
            return  # truncated: never cached
        c = self.cfg
        if info.rcode == wire.NOERROR and info.answers:
            kind, table, cap = "success", self.success, c.success_cap
            ttl = max(c.min_ttl, min(c.max_ttl, info.min_ttl))
        elif info.rcode == wire.NXDOMAIN or (info.rcode == wire.NOERROR and not info.answers):
            kind, table, cap = "denial", self.denial, c.denial_cap
            base = info.soa_minimum if info.soa_minimum is not None else c.denial_min_ttl
            ttl = max(c.denial_min_ttl, min(c.denial_max_ttl, base))
        elif info.rcode == wire.SERVFAIL and c.servfail_ttl > 0:
            kind, table, cap = "denial", self.denial, c.denial_cap
            ttl = c.servfail_ttl
        else:
            return
        table[key] = Entry(response, info.ttl_offsets, now, ttl, kind, window_start=now)
        table.move_to_end(key)
        while len(table) > cap:
            table.popitem(last=False)

    def get(self, key: Key, now: float) -> tuple[Entry | None, bool]:
        """(entry, fresh). A stale entry within serve_stale is returned with fresh=False."""
        for table in (self.success, self.denial):
            e = table.get(key)
            if e is None:
                continue
            age = now - e.stored
            if age < e.ttl:
                table.move_to_end(key)
                self.hits["success" if table is self.success else "denial"] += 1
                return e, True
            if self.cfg.serve_stale and age < e.ttl + self.cfg.serve_stale:
                return e, False
            del table[key]
        self.misses += 1
        return None, False

    def peek(self, key: Key, now: float) -> Entry | None:
        """A fresh entry for the fast path, counted as a hit; None (and nothing counted) otherwise."""
        for kind, table in (("success", self.success), ("denial", self.denial)):
            e = table.get(key)
            if e is not None and now - e.stored < e.ttl:
                table.move_to_end(key)
                self.hits[kind] += 1
                return e
        return None

    def should_prefetch(self, e: Entry, now: float) -> bool:
        c = self.cfg
        if not c.prefetch_amount or e.prefetching:
            return False
        if now - e.window_start > c.prefetch_duration:
            e.window_start, e.hits = now, 0
        e.hits += 1
        remaining = e.ttl - (now - e.stored)
        return e.hits >= c.prefetch_amount and remaining <= e.ttl * c.prefetch_percentage / 100

    @staticmethod
    def render(e: Entry, qid: int, query: bytes, question_end: int, now: float, stale: bool) -> bytes:
        """The cached response for this query: its ID, the client's question casing, aged TTLs."""
        buf = bytearray(e.response)
        struct.pack_into("!H", buf, 0, qid)
        # copy the question as the client wrote it (same length: only case may differ)
        if len(query) >= question_end and buf[12:question_end].lower() == query[12:question_end].lower():
            buf[12:question_end] = query[12:question_end]
        age = int(now - e.stored)
        for off in e.ttl_offsets:
            ttl = struct.unpack_from("!I", buf, off)[0]
            struct.pack_into("!I", buf, off, 0 if stale else max(0, ttl - age))
        return bytes(buf)

    def __len__(self) -> int:
        return len(self.success) + len(self.denial)
