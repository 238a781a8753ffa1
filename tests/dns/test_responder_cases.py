"""The sans-IO DNS responder as a case table (CoreDNS's test.Case): query in, answer out, no
socket; records compared in zone-file text."""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from homeplane.dns.config import DNSConfig
from homeplane.dns.responder import FORWARD, Responder
from homeplane.dns.zones import compile_zones
from tests.dns.harness import snapshot
from tests.dns.test_dns import APPS


@dataclass
class Case:
    qname: str
    qtype: str
    rcode: int = dns.rcode.NOERROR
    answer: list[str] = field(default_factory=list)  # "name ttl class type rdata", any order
    authority: list[str] = field(default_factory=list)  # record types only (SOA, NS)
    forward: bool = False  # not ours: handed to the forwarder


CASES = [
    Case("web.apps.svc.cluster.local.", "A", answer=["web.apps.svc.cluster.local. 5 IN A 10.43.0.50"]),
    Case("WEB.Apps.svc.cluster.local.", "A", answer=["WEB.Apps.svc.cluster.local. 5 IN A 10.43.0.50"]),  # 0x20 kept
    Case("web.apps.svc.cluster.local.", "AAAA", authority=["SOA"]),  # NODATA
    Case("_http._tcp.web.apps.svc.cluster.local.", "SRV", answer=["_http._tcp.web.apps.svc.cluster.local. 5 IN SRV 0 100 80 web.apps.svc.cluster.local."]),
    Case("db.apps.svc.cluster.local.", "A", answer=["db.apps.svc.cluster.local. 5 IN A 10.42.0.11", "db.apps.svc.cluster.local. 5 IN A 10.42.0.12"]),
    Case("db-0.db.apps.svc.cluster.local.", "A", answer=["db-0.db.apps.svc.cluster.local. 5 IN A 10.42.0.11"]),
    Case("nas.apps.svc.cluster.local.", "A", answer=["nas.apps.svc.cluster.local. 5 IN CNAME nas.lan.example."]),
    Case("nope.apps.svc.cluster.local.", "A", rcode=dns.rcode.NXDOMAIN, authority=["SOA"]),
    Case("50.0.43.10.in-addr.arpa.", "PTR", answer=["50.0.43.10.in-addr.arpa. 5 IN PTR web.apps.svc.cluster.local."]),
    Case("1.1.168.192.in-addr.arpa.", "PTR", forward=True),  # fallthrough in-addr.arpa
    Case("example.org.", "A", forward=True),
]


@pytest.fixture(scope="module")
def responder() -> Responder:
    return Responder(compile_zones(snapshot(APPS), DNSConfig()))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.qname}{c.qtype}")
def test_responder(responder: Responder, case: Case) -> None:
    q = dns.message.make_query(case.qname, case.qtype)
    resp = responder.respond(q.to_wire(), "udp")
    if case.forward:
        assert resp is FORWARD
        return
    assert isinstance(resp, bytes)
    m = dns.message.from_wire(resp)
    assert m.id == q.id and m.rcode() == case.rcode and m.flags & dns.flags.AA
    got = sorted(f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd}" for rrset in m.answer for rd in rrset)
    assert got == sorted(case.answer)
    assert [dns.rdatatype.to_text(r.rdtype) for r in m.authority] == case.authority


def test_a_query_seen_before_comes_from_the_memo_with_its_own_id(responder: Responder) -> None:
    q1 = dns.message.make_query("web.apps.svc.cluster.local.", "A")
    q2 = dns.message.make_query("web.apps.svc.cluster.local.", "A")
    q2.id = (q1.id + 1) % 65536
    a1, a2 = responder.respond(q1.to_wire(), "udp"), responder.respond(q2.to_wire(), "udp")
    assert isinstance(a1, bytes) and isinstance(a2, bytes) and a1[2:] == a2[2:] and a2[:2] == q2.to_wire()[:2]
