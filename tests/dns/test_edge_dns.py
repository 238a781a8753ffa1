"""A DNS server safe to expose on a LAN: acl, no open recursion, response rate limiting, EDNS
versions. Queries come from two loopback source addresses (127.0.0.1 and 127.0.0.2) so that
per-client rules are exercised with real packets."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from homeplane.dns import wire
from homeplane.dns.acl import ALLOW, BLOCK, DROP, FILTER, Acl, parse_rule
from homeplane.dns.config import CacheConfig, DNSConfig, ForwardConfig, from_coredns_values
from homeplane.dns.rrl import DROP as RDROP
from homeplane.dns.rrl import SEND, SLIP, RateLimiter, RRLConfig
from tests.dns.harness import DNS, Unbound
from tests.dns.test_dns import APPS

WEB = "web.apps.svc.cluster.local"


def ask(s: DNS, name: str, rdtype: str = "A", source: str = "127.0.0.1", tcp: bool = False, **kw) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=s.port, timeout=3, source=source)
    return dns.query.udp(q, "127.0.0.1", port=s.port, timeout=3, source=source, ignore_trailing=True)


def ede(m: dns.message.Message) -> list[int]:
    return [o.code for o in m.options if o.otype == dns.edns.OptionType.EDE]


def coredns(*plugins: dict) -> dict:
    return {"servers": [{"zones": [{"zone": "."}], "port": 53, "plugins": list(plugins)}]}


def test_acl_from_the_coredns_chart_values() -> None:
    cfg = from_coredns_values(coredns(
        {"name": "acl", "configBlock": "filter type AAAA net 127.0.0.1/32\nallow net 127.0.0.1/32\nblock"},
        {"name": "kubernetes", "parameters": "cluster.local in-addr.arpa ip6.arpa"},
    ))
    s = DNS(APPS, cfg)
    try:
        ok = ask(s, WEB)
        assert ok.rcode() == dns.rcode.NOERROR and ok.answer
        filtered = ask(s, WEB, "AAAA")
        assert filtered.rcode() == dns.rcode.NOERROR and not filtered.answer and ede(filtered) == [17]
        blocked = ask(s, WEB, source="127.0.0.2")
        assert blocked.rcode() == dns.rcode.REFUSED and not blocked.answer and ede(blocked) == [15]
        blocked_tcp = ask(s, WEB, source="127.0.0.2", tcp=True)  # the same over TCP
        assert blocked_tcp.rcode() == dns.rcode.REFUSED
        assert ask(s, WEB, tcp=True).answer
    finally:
        s.close()


def test_acl_drop_sends_nothing() -> None:
    cfg = DNSConfig(acl=[parse_rule([], [["drop", "net", "127.0.0.2"]])])
    s = DNS(APPS, cfg)
    try:
        assert ask(s, WEB).answer
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query(WEB, "A"), "127.0.0.1", port=s.port, timeout=0.5, source="127.0.0.2")
    finally:
        s.close()


def test_an_unreadable_acl_fails_closed() -> None:
    cfg = from_coredns_values(coredns({"name": "acl", "configBlock": "allow net 10.0.0.0/33\nblock"}))
    assert cfg.problems and "blocked" in cfg.problems[0]
    s = DNS(APPS, cfg)
    try:
        assert ask(s, WEB).rcode() == dns.rcode.REFUSED
    finally:
        s.close()


@pytest.mark.parametrize("lines,queries", [
    # CoreDNS semantics: first matching line wins; allow ends the search; no match allows
    ([["block", "type", "AAAA"], ["allow"]], [("a.test", 1, ALLOW), ("a.test", 28, BLOCK)]),
    ([["allow", "net", "10.0.0.0/8"], ["drop"]], [("a.test", 1, DROP)]),
    ([["filter", "type", "A", "AAAA", "net", "203.0.113.0/24"]], [("a.test", 1, FILTER), ("a.test", 16, ALLOW)]),
    ([["block", "net", "*"]], [("a.test", 1, BLOCK)]),
    ([["block", "type", "*", "net", "203.0.113.9"]], [("a.test", 255, BLOCK)]),
])
def test_acl_verdicts(lines: list[list[str]], queries: list[tuple[str, int, int]]) -> None:
    client = Acl([parse_rule([], lines)]).client("203.0.113.9")
    for name, qtype, want in queries:
        assert client.verdict(name.encode(), qtype) == want, (lines, name, qtype)


def test_acl_zones_and_rule_order() -> None:
    acl = Acl([parse_rule(["internal.test"], [["block"]]), parse_rule([], [["allow"]])])
    c = acl.client("192.0.2.1")
    assert c.verdict(b"x.internal.test", 1) == BLOCK
    assert c.verdict(b"internal.test", 1) == BLOCK
    assert c.verdict(b"public.test", 1) == ALLOW


def test_recursion_defaults_to_loopback_and_private_ranges() -> None:
    acl = Acl()
    for ip, want in [("127.0.0.1", True), ("::1", True), ("192.168.1.20", True), ("10.1.2.3", True), ("172.20.0.1", True),
                     ("fd00::1", True), ("203.0.113.5", False), ("8.8.8.8", False), ("2001:db8::1", False),
                     ("::ffff:192.168.1.2", True)]:
        assert acl.client(ip).recursion is want, ip
    assert Acl([parse_rule([], [["allow", "net", "203.0.113.0/24"]])]).client("203.0.113.5").recursion


def test_no_open_resolver(tmp_path: Path) -> None:
    ub = Unbound(tmp_path, ["host.upstream.test. 300 IN A 198.51.100.7"])
    cfg = DNSConfig(
        forward=ForwardConfig(upstreams=[f"127.0.0.1:{ub.port}"], timeout=0.5),
        cache=CacheConfig(),
        recursion=(ipaddress.ip_network("127.0.0.1/32"),),  # as --dns-allow-recursion 127.0.0.1/32
    )
    s = DNS(APPS, cfg)
    try:
        m = ask(s, "host.upstream.test")
        assert [str(r) for r in m.answer[0]] == ["198.51.100.7"] and m.flags & dns.flags.RA
        m = ask(s, "host.upstream.test")  # now from the cache (and its memo): still RA
        assert m.answer and m.flags & dns.flags.RA
        for tcp in (False, True):
            refused = ask(s, "host.upstream.test", source="127.0.0.2", tcp=tcp, use_edns=0)
            assert refused.rcode() == dns.rcode.REFUSED and not refused.answer and ede(refused) == [18]
            assert not refused.flags & dns.flags.RA
        # names homeplane is authoritative for are answered to anyone
        assert ask(s, WEB, source="127.0.0.2").answer
        # an ANY for a forwarded name draws no amplified answer either
        assert ask(s, "upstream.test", "ANY", source="127.0.0.2").rcode() == dns.rcode.REFUSED
    finally:
        s.close()
        ub.stop()


def test_response_rate_limiting_drops_and_slips() -> None:
    cfg = DNSConfig(rrl=RRLConfig(responses_per_second=5, window=15, slip=2), rrl_exempt_private=False)
    s = DNS(APPS, cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    sock.settimeout(0.5)
    try:
        q = dns.message.make_query(WEB, "A")
        for i in range(40):
            q.id = i
            sock.sendto(q.to_wire(), ("127.0.0.1", s.port))
        full = truncated = 0
        while True:
            try:
                data = sock.recv(4096)
            except socket.timeout:
                break
            m = dns.message.from_wire(data)
            if m.flags & dns.flags.TC:
                assert not m.answer
                truncated += 1
            else:
                assert m.answer
                full += 1
        # 5 credits (a burst can earn a sixth while it lasts); of the 35 held back, every
        # second one slips out truncated; the rest are dropped
        assert 5 <= full <= 7 and 15 <= truncated <= 18 and full + truncated < 40
        # another client network is not affected; TCP never is
        assert ask(s, WEB, source="127.0.1.1").answer
        assert ask(s, WEB, source="127.0.0.2", tcp=True).answer
    finally:
        sock.close()
        s.close()


def test_private_clients_are_not_rate_limited_by_default() -> None:
    s = DNS(APPS, DNSConfig())
    try:
        assert DNSConfig().rrl.enabled
        answers = [ask(s, WEB) for _ in range(30)]
        assert all(a.answer for a in answers)
    finally:
        s.close()


def test_rate_limiter_accounts_with_time_as_input() -> None:
    rl = RateLimiter(RRLConfig(responses_per_second=2, window=2, slip=3))
    p = rl.prefix("192.0.2.77")
    assert p == bytes([192, 0, 2, 0]) and rl.prefix_of_key(bytes([192, 0, 2, 200])) == p
    got = [rl.check(p, b"q", "answer", 0.0) for _ in range(8)]
    # two credits, then held back: the first held back slips, then every third
    assert got == [SEND, SEND, SLIP, RDROP, RDROP, SLIP, RDROP, RDROP]
    # the balance cannot fall below -window*rate (-4): two seconds bring it back to 0
    assert rl.check(p, b"q", "answer", 2.0) in (SLIP, RDROP)
    assert rl.check(p, b"q", "answer", 5.0) == SEND
    assert rl.check(p, b"other", "answer", 0.0) == SEND  # another answer has its own account
    six = RateLimiter(RRLConfig(responses_per_second=1, ipv6_prefix=56))
    assert six.prefix("2001:db8:1:2ff::1") == six.prefix("2001:db8:1:200::9") != six.prefix("2001:db8:1:300::1")


def test_edns_version_above_zero_is_badvers() -> None:
    s = DNS(APPS, DNSConfig())
    try:
        m = ask(s, WEB, use_edns=1)
        assert m.rcode() == dns.rcode.BADVERS and not m.answer and m.edns == 0
        assert ask(s, WEB, use_edns=0).answer
        # two OPT records: FORMERR (RFC 6891 §6.1.1)
        q = dns.message.make_query(WEB, "A", use_edns=0).to_wire()
        opt = q[-11:]
        twice = q[:10] + struct.pack("!H", 2) + q[12:] + opt
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(3)
            c.sendto(twice, ("127.0.0.1", s.port))
            assert c.recv(512)[3] & 0xF == wire.FORMERR
    finally:
        s.close()


def test_rate_limit_accounts_fold_letter_case_and_options() -> None:
    cfg = DNSConfig(rrl=RRLConfig(responses_per_second=5, window=15, slip=0), rrl_exempt_private=False)
    s = DNS(APPS, cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    sock.settimeout(0.5)
    try:
        for i in range(60):
            # DNS 0x20: random letter case, and EDNS on and off: still the same answer
            name = "".join(c.upper() if (i >> (k % 6)) & 1 else c for k, c in enumerate(WEB))
            q = dns.message.make_query(name, "A", use_edns=0 if i % 2 else None)
            q.id = i
            sock.sendto(q.to_wire(), ("127.0.0.1", s.port))
        got = 0
        while True:
            try:
                sock.recv(4096)
            except socket.timeout:
                break
            got += 1
        assert 5 <= got <= 7  # slip 0: held-back answers are all dropped
    finally:
        sock.close()
        s.close()


def test_ipv4_mapped_clients_are_their_own_network_and_floods_do_not_reset_accounts() -> None:
    rl = RateLimiter(RRLConfig(responses_per_second=1, max_table_size=20))
    mapped = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 9])
    assert rl.prefix_of_key(mapped) == bytes([192, 0, 2, 0]) != rl.prefix_of_key(bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 1]))
    victim = rl.prefix_of_key(bytes([203, 0, 113, 5]))
    for _ in range(3):
        rl.check(victim, b"q", "answer", 0.0)
    assert rl.accounts[(victim, b"q")].balance < 0
    for i in range(200):  # a flood of new accounts fills the table...
        rl.check(rl.prefix_of_key(bytes([10, 0, i // 256, i % 256])), b"x%d" % i, "answer", 0.5)
        rl.check(victim, b"q", "answer", 0.5)  # ...while the victim's account stays in use
    assert (victim, b"q") in rl.accounts and rl.accounts[(victim, b"q")].balance < 0


def test_edns_version_is_read_past_other_records() -> None:
    s = DNS(APPS, DNSConfig())
    try:
        q = dns.message.make_query(WEB, "A", use_edns=1)
        q.authority.append(dns.rrset.from_text("x.test.", 60, "IN", "A", "192.0.2.1"))
        m = dns.query.udp(q, "127.0.0.1", port=s.port, timeout=3)
        assert m.rcode() == dns.rcode.BADVERS
    finally:
        s.close()
