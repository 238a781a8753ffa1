"""DNS server behaviour with real clients (dnspython, dig) and a real upstream (unbound)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from homeplane.dns.config import CacheConfig, DNSConfig, ForwardConfig, TemplateRule
from homeplane.dns.responder import FORWARD
from tests.dns.harness import DNS, Unbound

APPS = """
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  clusterIP: 10.43.0.50
  ports: [{name: http, port: 80, targetPort: 8080}, {name: metrics, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: apps}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: apps, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
  - {addresses: [10.42.0.11], hostname: db-0}
  - {addresses: [10.42.0.12]}
  - {addresses: [10.42.0.13], conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: nas, namespace: apps}
spec: {type: ExternalName, externalName: nas.lan.example}
---
apiVersion: v1
kind: Service
metadata: {name: plex, namespace: media, annotations: {external-dns.alpha.kubernetes.io/hostname: "plex.home.test,tv.home.test", lbipam.cilium.io/ips: 192.0.2.30}}
spec: {type: LoadBalancer, clusterIP: 10.43.0.60, ports: [{name: http, port: 32400}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy-internal, namespace: network}
spec:
  gatewayClassName: envoy
  addresses: [{value: 192.0.2.10}]
  listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: apps}
spec:
  parentRefs: [{name: envoy-internal, namespace: network}]
  hostnames: [web.home.test, tv.home.test, "*.wild.home.test"]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""


def config(**kw) -> DNSConfig:
    cfg = DNSConfig(reverse_zones=["in-addr.arpa", "ip6.arpa"], gateway_domains=["home.test"], pods="verified", **kw)
    return cfg


@pytest.fixture
def server():
    s = DNS(APPS, config())
    yield s
    s.close()


def rr(msg: dns.message.Message) -> list[str]:
    return sorted(f"{r.name} {dns.rdatatype.to_text(r.rdtype)} {item}" for r in msg.answer for item in r)


def test_cluster_service_records(server: DNS) -> None:
    m = server.query("web.apps.svc.cluster.local", "A")
    assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    assert rr(m) == ["web.apps.svc.cluster.local. A 10.43.0.50"]
    assert m.answer[0].ttl == 5
    srv = server.query("_http._tcp.web.apps.svc.cluster.local", "SRV")
    assert rr(srv) == ["_http._tcp.web.apps.svc.cluster.local. SRV 0 100 80 web.apps.svc.cluster.local."]
    assert [str(r.name) for r in srv.additional] == ["web.apps.svc.cluster.local."]
    ptr = server.query("50.0.43.10.in-addr.arpa", "PTR")
    assert rr(ptr) == ["50.0.43.10.in-addr.arpa. PTR web.apps.svc.cluster.local."]
    txt = server.query("dns-version.cluster.local", "TXT")
    assert rr(txt) == ['dns-version.cluster.local. TXT "1.1.0"']
    cname = server.query("nas.apps.svc.cluster.local", "A")
    assert rr(cname) == ["nas.apps.svc.cluster.local. CNAME nas.lan.example."]


def test_headless_service_and_endpoint_names(server: DNS) -> None:
    m = server.query("db.apps.svc.cluster.local", "A")
    assert rr(m) == ["db.apps.svc.cluster.local. A 10.42.0.11", "db.apps.svc.cluster.local. A 10.42.0.12"]  # not the unready one
    assert rr(server.query("db-0.db.apps.svc.cluster.local")) == ["db-0.db.apps.svc.cluster.local. A 10.42.0.11"]
    assert rr(server.query("10-42-0-12.db.apps.svc.cluster.local")) == ["10-42-0-12.db.apps.svc.cluster.local. A 10.42.0.12"]
    srv = server.query("_pg._tcp.db.apps.svc.cluster.local", "SRV")
    assert rr(srv) == [
        "_pg._tcp.db.apps.svc.cluster.local. SRV 0 100 5432 10-42-0-12.db.apps.svc.cluster.local.",
        "_pg._tcp.db.apps.svc.cluster.local. SRV 0 100 5432 db-0.db.apps.svc.cluster.local.",
    ]
    assert rr(server.query("11.0.42.10.in-addr.arpa", "PTR")) == ["11.0.42.10.in-addr.arpa. PTR db-0.db.apps.svc.cluster.local."]


def test_nxdomain_nodata_and_soa(server: DNS) -> None:
    nx = server.query("missing.apps.svc.cluster.local", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.answer == []
    assert nx.authority[0].rdtype == dns.rdatatype.SOA and str(nx.authority[0].name) == "cluster.local."
    nodata = server.query("web.apps.svc.cluster.local", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == [] and nodata.authority[0].rdtype == dns.rdatatype.SOA
    ns = server.query("apps.svc.cluster.local", "A")  # an existing namespace: NODATA, not NXDOMAIN
    assert ns.rcode() == dns.rcode.NOERROR and ns.answer == []
    assert server.query("nope.svc.cluster.local", "A").rcode() == dns.rcode.NXDOMAIN
    apex = server.query("cluster.local", "SOA")
    assert apex.answer[0].rdtype == dns.rdatatype.SOA


def test_case_is_echoed_and_any_is_minimal(server: DNS) -> None:
    m = server.query("WeB.ApPs.SvC.cLuStEr.LoCaL", "A")
    assert str(m.question[0].name) == "WeB.ApPs.SvC.cLuStEr.LoCaL." and str(m.answer[0].name) == "WeB.ApPs.SvC.cLuStEr.LoCaL."
    any_ = server.query("web.apps.svc.cluster.local", "ANY")
    assert [dns.rdatatype.to_text(r.rdtype) for r in any_.answer] == ["HINFO"] and "RFC8482" in str(any_.answer[0][0])


def test_pods_verified_and_wildcards(server: DNS) -> None:
    assert rr(server.query("10-42-0-11.apps.pod.cluster.local")) == ["10-42-0-11.apps.pod.cluster.local. A 10.42.0.11"]
    assert server.query("10-42-9-9.apps.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN  # no such pod
    wild = server.query("*.apps.svc.cluster.local", "A")
    assert {str(a) for r in wild.answer for a in r} >= {"10.43.0.50"}


def test_gateway_zone(server: DNS) -> None:
    assert rr(server.query("web.home.test")) == ["web.home.test. A 192.0.2.10"]
    assert server.query("web.home.test").answer[0].ttl == 60
    # a LoadBalancer Service by annotation; for tv.home.test the HTTPRoute comes first
    assert rr(server.query("plex.home.test")) == ["plex.home.test. A 192.0.2.30"]
    assert rr(server.query("tv.home.test")) == ["tv.home.test. A 192.0.2.10"]
    assert rr(server.query("x.wild.home.test")) == ["x.wild.home.test. A 192.0.2.10"]
    assert server.query("nothing.home.test").rcode() == dns.rcode.NXDOMAIN
    soa = server.query("home.test", "SOA")
    assert soa.answer[0].rdtype == dns.rdatatype.SOA and server.query("home.test", "NS").answer


def test_gateway_zone_answers_tls_route_names() -> None:
    tls = APPS.replace(
        "listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]",
        "listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}, "
        "{name: tls, protocol: TLS, port: 443, tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: All}}}]",
    ) + """
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: git, namespace: apps}
spec:
  parentRefs: [{name: envoy-internal, namespace: network, sectionName: tls}]
  hostnames: [git.home.test]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""
    assert "protocol: TLS" in tls  # the listener was added
    s = DNS(tls, config())
    try:
        assert rr(s.query("git.home.test")) == ["git.home.test. A 192.0.2.10"]
        assert rr(s.query("web.home.test")) == ["web.home.test. A 192.0.2.10"]
    finally:
        s.close()


def test_truncation_and_tcp_retry() -> None:
    many = "\n".join(f"  - {{addresses: [10.42.1.{i}]}}" for i in range(1, 80))
    manifests = f"""
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: apps}}
spec: {{clusterIP: None, ports: [{{name: p, port: 1}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: big-1, namespace: apps, labels: {{kubernetes.io/service-name: big}}}}
addressType: IPv4
ports: [{{name: p, port: 1}}]
endpoints:
{many}
"""
    s = DNS(manifests, config())
    try:
        udp = s.query("big.apps.svc.cluster.local", "A")
        assert udp.flags & dns.flags.TC and udp.answer == []
        tcp = s.query("big.apps.svc.cluster.local", "A", tcp=True)
        assert len(tcp.answer[0]) == 79
        edns = s.query("big.apps.svc.cluster.local", "A", use_edns=0, payload=4096)
        assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == 79
        out = subprocess.run(["dig", "+short", "-p", str(s.port), "@127.0.0.1", "big.apps.svc.cluster.local"], capture_output=True, text=True, timeout=10).stdout
        assert len(out.split()) == 79  # dig retries over TCP on TC
    finally:
        s.close()


def test_malformed_packets_never_crash_it(server: DNS) -> None:
    import random

    rnd = random.Random(7)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    good = dns.message.make_query("web.apps.svc.cluster.local", "A").to_wire()
    replies = []
    for i in range(300):
        if i % 3 == 0:
            pkt = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 60)))
        else:
            b = bytearray(good)
            for _ in range(rnd.randrange(1, 5)):
                b[rnd.randrange(len(b))] = rnd.getrandbits(8)
            pkt = bytes(b[: rnd.randrange(1, len(b) + 1)])
        sock.sendto(pkt, ("127.0.0.1", server.port))
        try:
            replies.append(sock.recv(4096))
        except socket.timeout:
            pass
    sock.close()
    for r in replies:
        if len(r) >= 12:
            assert r[2] & 0x80  # every reply is a response (FORMERR or a real answer), never garbage
    assert rr(server.query("web.apps.svc.cluster.local")) == ["web.apps.svc.cluster.local. A 10.43.0.50"]
    short = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    short.settimeout(0.5)
    short.sendto(good[:12] + b"\x07", ("127.0.0.1", server.port))  # header, broken question
    resp = short.recv(512)
    assert resp[3] & 0xF == dns.rcode.FORMERR
    short.close()


def test_live_update(server: DNS) -> None:
    assert server.query("new.apps.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    server.apply(APPS + "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: new, namespace: apps}\nspec: {clusterIP: 10.43.0.77, ports: [{port: 1}]}\n")
    assert rr(server.query("new.apps.svc.cluster.local")) == ["new.apps.svc.cluster.local. A 10.43.0.77"]


def test_template_aaaa_nodata() -> None:
    rule = TemplateRule("ANY", "AAAA", ".", authority='{{ .Zone }} 60 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. (1 60 60 60 60)')
    s = DNS(APPS, config(templates=[rule]))
    try:
        m = s.query("google.com", "AAAA")
        assert m.rcode() == dns.rcode.NOERROR and m.answer == [] and m.authority[0].rdtype == dns.rdatatype.SOA
        assert str(m.authority[0].name) == "."
        assert rr(s.query("web.apps.svc.cluster.local", "A"))  # A is untouched
    finally:
        s.close()


def test_forwarding_cache_and_serve_stale(tmp_path: Path) -> None:
    ub = Unbound(tmp_path, ["host.upstream.test. 300 IN A 198.51.100.7", "short.upstream.test. 1 IN A 198.51.100.8"])
    cfg = config(
        forward=ForwardConfig(upstreams=[f"127.0.0.1:{ub.port}"], timeout=0.5, health_check=0.2),
        cache=CacheConfig(serve_stale=3600, min_ttl=0),
    )
    s = DNS(APPS, cfg)
    try:
        m = s.query("host.upstream.test", "A")
        assert rr(m) == ["host.upstream.test. A 198.51.100.7"]
        nx = s.query("nope.upstream.test", "A")
        assert nx.rcode() == dns.rcode.NXDOMAIN
        assert rr(s.query("short.upstream.test")) == ["short.upstream.test. A 198.51.100.8"]
        hits_before = s.server.cache.hits["success"]
        m2 = s.query("HOST.upstream.test", "A")
        assert s.server.cache.hits["success"] == hits_before + 1 and str(m2.answer[0].name) == "HOST.upstream.test."
        assert m2.answer[0].ttl <= 300
        ub.stop()
        time.sleep(1.5)  # short.upstream.test has expired
        stale = s.query("short.upstream.test", "A")
        assert rr(stale) == ["short.upstream.test. A 198.51.100.8"] and stale.answer[0].ttl == 0
        assert rr(s.query("host.upstream.test")) == ["host.upstream.test. A 198.51.100.7"]
        gone = s.query("never-seen.upstream.test", "A")
        assert gone.rcode() == dns.rcode.SERVFAIL  # upstream down, nothing cached
    finally:
        s.close()
        ub.stop()


def test_max_concurrent_refuses() -> None:
    # an upstream that never answers: queries pile up until max_concurrent
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    cfg = config(forward=ForwardConfig(upstreams=[f"127.0.0.1:{hole.getsockname()[1]}"], max_concurrent=2, timeout=2.0), cache=CacheConfig(enabled=False))
    s = DNS(APPS, cfg)
    try:
        import concurrent.futures

        def q(i: int) -> int:
            try:
                return s.query(f"q{i}.elsewhere.test", "A").rcode()
            except Exception:
                return -1

        with concurrent.futures.ThreadPoolExecutor(5) as ex:
            codes = list(ex.map(q, range(5)))
        assert codes.count(dns.rcode.REFUSED) >= 2
    finally:
        s.close()
        hole.close()


def test_metrics_use_coredns_names(server: DNS) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    server.query("web.apps.svc.cluster.local")
    server.query("missing.apps.svc.cluster.local")
    reg = CollectorRegistry()

    class C:
        def collect(self):
            return server.server.collect()

    reg.register(C())
    text = generate_latest(reg).decode()
    assert 'coredns_dns_requests_total{family="1",proto="udp",server=' in text
    assert 'rcode="NXDOMAIN"' in text and "coredns_cache_hits_total" in text


@pytest.mark.parametrize("policy", ["sequential", "round_robin"])
def test_forward_policies_and_failover(tmp_path: Path, policy: str) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = Unbound(tmp_path / "one", ["who.upstream.test. 300 IN A 198.51.100.1"])
    two = Unbound(tmp_path / "two", ["who.upstream.test. 300 IN A 198.51.100.2"])
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens: the kernel answers port unreachable
    ups = [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"]
    s = DNS(APPS, config(forward=ForwardConfig(upstreams=ups, policy=policy, timeout=0.5), cache=CacheConfig(enabled=False)))
    try:
        seen = [rr(s.query("who.upstream.test"))[0].split()[-1] for _ in range(6)]
        if policy == "sequential":
            assert seen == ["198.51.100.1"] * 6  # always the first while it answers
        else:
            assert set(seen) == {"198.51.100.1", "198.51.100.2"} and seen[0] != seen[1]
    finally:
        s.close()
    # the first upstream is dead: every query is still answered, by the next one
    s = DNS(APPS, config(forward=ForwardConfig(upstreams=[f"127.0.0.1:{dead_port}", ups[1]], policy="sequential", timeout=0.5), cache=CacheConfig(enabled=False)))
    try:
        assert [rr(s.query("who.upstream.test"))[0].split()[-1] for _ in range(4)] == ["198.51.100.2"] * 4
    finally:
        s.close()
        one.stop()
        two.stop()


def test_repeated_queries_answer_from_the_memo_with_their_own_ids_and_counts(server: DNS, tmp_path: Path) -> None:
    stats = server.server.responder.stats
    def counted() -> int:
        return sum(n for (z, proto, _), n in stats.requests.items() if z == "cluster.local." and proto == "udp")

    before = counted()
    # dnspython checks that each answer carries its query's (random) ID
    for _ in range(5):
        assert rr(server.query("web.apps.svc.cluster.local")) == ["web.apps.svc.cluster.local. A 10.43.0.50"]
    assert counted() == before + 5
    assert sum(n for (z, rc), n in stats.responses.items() if z == "cluster.local." and rc == "NOERROR") >= 5
    assert len(server.server.responder.memo) >= 1
    # a change of the zones empties the memo: the new address is served at once
    server.apply(APPS.replace("clusterIP: 10.43.0.50", "clusterIP: 10.43.0.51"))
    assert rr(server.query("web.apps.svc.cluster.local")) == ["web.apps.svc.cluster.local. A 10.43.0.51"]


def test_cached_forwarded_answers_age_and_count_through_the_memo(tmp_path: Path) -> None:
    ub = Unbound(tmp_path, ["memo.upstream.test. 300 IN A 198.51.100.9"])
    s = DNS(APPS, config(forward=ForwardConfig(upstreams=[f"127.0.0.1:{ub.port}"]), cache=CacheConfig(min_ttl=0)))
    try:
        first = s.query("memo.upstream.test")
        hits = s.server.cache.hits["success"]
        again = [s.query("memo.upstream.test") for _ in range(4)]
        assert all(rr(m) == ["memo.upstream.test. A 198.51.100.9"] for m in again)
        assert s.server.cache.hits["success"] == hits + 4
        time.sleep(2.1)
        aged = s.query("memo.upstream.test")
        assert aged.answer[0].ttl <= first.answer[0].ttl - 2  # TTLs keep counting down
    finally:
        s.close()
        ub.stop()


def test_default_config_answers_ptr_for_cluster_ips_and_falls_through() -> None:
    # CoreDNS's default Corefile: cluster.local in-addr.arpa ip6.arpa, fallthrough for the rest
    s = DNS(APPS, DNSConfig())
    try:
        m = s.query("50.0.43.10.in-addr.arpa", "PTR")
        assert rr(m) == ["50.0.43.10.in-addr.arpa. PTR web.apps.svc.cluster.local."]
        assert s.server.answer_now(dns.message.make_query("1.1.168.192.in-addr.arpa", "PTR").to_wire(), "udp") is FORWARD
    finally:
        s.close()
