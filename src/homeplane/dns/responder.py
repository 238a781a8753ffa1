"""The sans-IO responder: query bytes in, answer bytes out (or "forward this").

The chain, in CoreDNS's plugin order for the corpus's Corefile: templates, then
the zones homeplane is authoritative for (cluster, gateway, reverse), then the
forwarder (with the cache in front of it, in :mod:`server`). Authoritative
answers set AA; NXDOMAIN and NODATA carry the zone's SOA in the authority
section (RFC 2308); ANY gets the RFC 8482 HINFO answer; a query that does not
parse gets FORMERR when its header is readable, and is dropped otherwise.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from homeplane.dns import wire
from homeplane.dns.zones import Answer, ZoneData

FORWARD = object()  # sentinel: not ours, ask the forwarder

_RFC8482 = wire.rr(wire.POINTER_TO_QNAME, 13, 3600, wire.txt_rdata("RFC8482", ""))


@dataclass
class Stats:
    """Per-query counters, kept as plain ints keyed by raw values (cheap on the query path);
    names and labels are made at scrape time."""

    raw_requests: dict[tuple[bytes, str, int], int] = field(default_factory=dict)  # (zone apex, proto, qtype)
    raw_responses: dict[tuple[bytes, int], int] = field(default_factory=dict)  # (zone apex, rcode)
    # answers from the memo (UDP), one count for both of the above: (zone apex, qtype, rcode)
    memo_hits: dict[tuple[bytes, int, int], int] = field(default_factory=dict)

    def count(self, zone: bytes, proto: str, qtype: int) -> None:
        k = (zone, proto, qtype)
        self.raw_requests[k] = self.raw_requests.get(k, 0) + 1

    def rcode(self, zone: bytes, rcode: int) -> None:
        k = (zone, rcode)
        self.raw_responses[k] = self.raw_responses.get(k, 0) + 1

    @staticmethod
    def _zone(apex: bytes) -> str:
        return apex.decode() + "." if apex else "."

    @property
    def requests(self) -> dict[tuple[str, str, str], int]:
        out: dict[tuple[str, str, str], int] = {}
        raw = [(k, n) for k, n in self.raw_requests.items()] + [((z, "udp", qt), n) for (z, qt, _), n in self.memo_hits.items()]
        for (z, proto, qt), n in raw:
            k = (self._zone(z), proto, wire.TYPE_NAME.get(qt, "other"))
            out[k] = out.get(k, 0) + n
        return out

    @property
    def responses(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        raw = [(k, n) for k, n in self.raw_responses.items()] + [((z, rc), n) for (z, _, rc), n in self.memo_hits.items()]
        for (z, rc), n in raw:
            k = (self._zone(z), wire.RCODE_NAME.get(rc, str(rc)))
            out[k] = out.get(k, 0) + n
        return out


MEMO_LIMIT = 20_000


class Responder:
    def __init__(self, data: ZoneData):
        self.data = data
        self.stats = Stats()
        self.last: wire.Query | None = None  # the query of the last FORWARD answer (the cache reuses its parse)
        # the types any template answers: a query of another type skips the templates
        self.template_types = {wire.QTYPE.get(r.qtype, -1) for r, _ in data.templates}
        self.template_any = any(r.qtype == "ANY" for r, _ in data.templates)
        # query bytes after the ID -> (answer bytes after the ID, (zone, qtype, rcode) for
        # Stats.memo_hits): a repeated query (the usual case: resolvers ask the same names again
        # and again) is answered without parsing. Only UDP answers from the precomputed tables
        # go in; the Responder is replaced on every zone change, which empties it.
        self.memo: dict[bytes, tuple[bytes, tuple[bytes, int, int]]] = {}
        # name -> zone apex, for the precomputed answers (the hot path needs no suffix search)
        self.zone_of: dict[bytes, bytes] = {}
        for key, _ in data.answers:
            if key not in self.zone_of:
                z = data.zone_for(key)
                self.zone_of[key] = z.apex if z else b""

    def respond(self, data: bytes, proto: str = "udp") -> bytes | object | None:
        """Answer bytes, FORWARD, or None (drop)."""
        if proto == "udp":
            hit = self.memo.get(data[2:])
            if hit is not None:
                hits = self.stats.memo_hits
                hits[hit[1]] = hits.get(hit[1], 0) + 1
                return data[:2] + hit[0]
        try:
            q = wire.parse_query(data)
        except wire.FormatError:
            resp = wire.error_response(data, wire.FORMERR)
            self.stats.rcode(b"", wire.FORMERR)
            return resp
        if q.opcode != 0:
            self.stats.rcode(b"", wire.NOTIMP)
            return wire.error_response(data, wire.NOTIMP)
        if q.edns_version > 0:
            # RFC 6891 §6.1.3: a version we do not implement is answered BADVERS, version 0
            self.stats.rcode(b"", wire.BADVERS)
            return wire.reply(data, q, wire.BADVERS)
        d = self.data
        if self.template_any or q.qtype in self.template_types:
            for rule, ans in d.templates:
                if rule.matches(q.qclass, q.qtype, q.key):
                    self.stats.count(b"", proto, q.qtype)
                    return self.build(data, q, ans, proto)
        if q.qclass == wire.CLASS_IN:
            # the hot path: a precomputed answer for exactly this name and type
            ans = d.answers.get((q.key, q.qtype))
            if ans is not None:
                z = self.zone_of[q.key]
                self.stats.count(z, proto, q.qtype)
                self.stats.rcode(z, ans.rcode)
                resp = self.build(data, q, ans, proto)
                if proto == "udp":
                    if len(self.memo) >= MEMO_LIMIT:
                        self.memo.clear()  # many distinct queries: start over rather than grow
                    self.memo[data[2:]] = (resp[2:], (z, q.qtype, ans.rcode))
                return resp
        zone = d.zone_for(q.key)
        if zone is None or q.qclass not in (wire.CLASS_IN, wire.CLASS_ANY):
            self.stats.count(b"", proto, q.qtype)
            self.last = q
            return FORWARD
        self.stats.count(zone.apex, proto, q.qtype)
        found = self.lookup(q, zone)
        if found is FORWARD:
            self.last = q
            return FORWARD
        assert isinstance(found, Answer)
        self.stats.rcode(zone.apex, found.rcode)
        return self.build(data, q, found, proto)

    def lookup(self, q: wire.Query, zone) -> Answer | object:
        d = self.data
        key = q.key
        if q.qtype == 255:
            return Answer(wire.NOERROR, True, _RFC8482, 1)
        ans = d.answers.get((key, q.qtype))
        if ans is not None:
            return ans
        if q.qtype != 5:
            cname = d.answers.get((key, 5))
            if cname is not None:
                return cname
        dyn = self._dynamic(q, zone)
        if dyn is not None:
            return dyn
        if key in d.names:
            return Answer(wire.NOERROR, True, b"", 0, zone.soa, 1)
        if zone.fallthrough:
            return FORWARD
        return Answer(wire.NXDOMAIN, True, b"", 0, zone.soa, 1)

    def _dynamic(self, q: wire.Query, zone) -> Answer | None:
        """Answers that are not precomputed: pod names, wildcard queries, wildcard routes."""
        d = self.data
        key = q.key
        if zone.kind == "gateway":
            for suffix, by_type in d.wildcards.items():
                if key.endswith(suffix):
                    a = by_type.get(q.qtype)
                    if a is not None:
                        return a
                    if by_type:
                        return Answer(wire.NOERROR, True, b"", 0, zone.soa, 1)
            return None
        if zone.kind != "cluster":
            return None
        labels = key.split(b".")
        apex_len = len(zone.apex.split(b"."))
        rel = labels[: len(labels) - apex_len]
        cfg = d.config
        # <a-b-c-d>.<namespace>.pod.<zone>
        if len(rel) == 3 and rel[2] == b"pod" and cfg.pods != "disabled" and q.qtype in (1, 28):
            ip_text = rel[0].decode(errors="replace").replace("-", "." if rel[0].count(b"-") == 3 else ":")
            try:
                ip = ipaddress.ip_address(ip_text)
            except ValueError:
                return None
            if cfg.pods == "verified" and str(ip) not in d.pods.get(rel[1].decode(errors="replace"), set()):
                return None
            if (ip.version == 4) != (q.qtype == 1):
                return Answer(wire.NOERROR, True, b"", 0, zone.soa, 1)
            return Answer(wire.NOERROR, True, wire.rr(wire.POINTER_TO_QNAME, q.qtype, cfg.ttl, ip.packed), 1)
        # wildcard queries: "*" (or "any") for the service or namespace label
        if len(rel) == 3 and rel[2] == b"svc" and (rel[0] in (b"*", b"any") or rel[1] in (b"*", b"any")):
            recs = []
            for (name, rtype), ans in d.answers.items():
                if rtype != q.qtype:
                    continue
                parts = name.split(b".")
                if len(parts) != len(labels) or parts[2:] != labels[2:]:
                    continue
                if rel[0] not in (b"*", b"any") and parts[0] != rel[0]:
                    continue
                if rel[1] not in (b"*", b"any") and parts[1] != rel[1]:
                    continue
                recs.append((ans.answer, ans.an))
            if recs:
                uniq = list(dict.fromkeys(recs))
                return Answer(wire.NOERROR, True, b"".join(r for r, _ in uniq), sum(n for _, n in uniq))
        return None

    @staticmethod
    def build(data: bytes, q: wire.Query, ans: Answer, proto: str) -> bytes:
        flags = 0x8000 | (q.flags & 0x7900) | 0x0080 | ans.rcode
        if ans.aa:
            flags |= 0x0400
        ar = ans.ar + (1 if q.edns else 0)
        question = data[12 : q.question_end]
        body = ans.answer + ans.authority + ans.additional
        if q.edns:
            body += wire.opt_rr()
        resp = wire.header(q.id, flags, 1, ans.an, ans.ns, ar) + question + body
        if proto == "udp":
            limit = q.payload if q.edns else 512
            if len(resp) > limit:
                # RFC 1035 §4.2.1 / RFC 6891: drop the records, set TC; the client retries over TCP
                tail = wire.opt_rr() if q.edns else b""
                resp = wire.header(q.id, flags | 0x0200, 1, 0, 0, 1 if q.edns else 0) + question + tail
        return resp
