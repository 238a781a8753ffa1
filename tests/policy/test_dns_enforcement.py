"""Network policy at homeplane's DNS server, which plays kube-dns: a pod whose egress carries
Cilium DNS rules gets REFUSED for other names (as Cilium's DNS proxy answers), a pod whose
policies refuse it port 53 gets no answer, everyone else is served as before — real queries
from each pod's own loopback address."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from homeplane.dns.config import DNSConfig
from homeplane.observe.flows import FlowRing
from tests.dns.harness import DNS
from tests.policy.cluster import address, cluster_manifests

POLICIES = """
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: dns-for-x}
spec:
  endpointSelector: {matchLabels: {"k8s:io.kubernetes.pod.namespace": x}}
  egress:
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns, "k8s:io.kubernetes.pod.namespace": kube-system}}]
      toPorts:
        - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
          rules:
            dns: [{matchPattern: "*.x.svc.cluster.local"}, {matchName: s-b.y.svc.cluster.local}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world-only, namespace: z}
spec:
  endpointSelector: {}
  egress: [{toEntities: [world]}]
"""


def ask(server: DNS, src: str, name: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=3, source=src)
    return dns.query.udp(q, "127.0.0.1", port=server.port, timeout=1.5, source=src)


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    s = DNS(cluster_manifests() + POLICIES, DNSConfig())
    s.server.flow_ring = FlowRing(256)
    yield s
    s.close()


def test_dns_rules_refuse_other_names(server: DNS) -> None:
    xa = address("x/a")
    ok = ask(server, xa, "s-b.x.svc.cluster.local.")
    assert ok.rcode() == dns.rcode.NOERROR and ok.answer[0][0].address == "127.2.1.2"
    assert ask(server, xa, "s-b.y.svc.cluster.local.").rcode() == dns.rcode.NOERROR  # matchName
    for name in ("s-a.y.svc.cluster.local.", "x.svc.cluster.local.", "a.b.x.svc.cluster.local."):
        assert ask(server, xa, name).rcode() == dns.rcode.REFUSED, name  # "*" stays within one label
        assert ask(server, xa, name, tcp=True).rcode() == dns.rcode.REFUSED, name
    # pods no policy restricts, and the host, are served as before
    assert ask(server, address("y/c"), "s-a.y.svc.cluster.local.").rcode() == dns.rcode.NOERROR
    assert ask(server, "127.0.0.1", "s-a.y.svc.cluster.local.").rcode() == dns.rcode.NOERROR
    flows = [w["flow"] for w in server.server.flow_ring.read()]
    refused = [f for f in flows if f["IP"]["source"] == xa and f["verdict"] == "DROPPED"]
    assert refused and all(f["drop_reason_desc"] == "POLICY_DENIED" for f in refused)


def test_a_pod_refused_port_53_gets_no_answer(server: DNS) -> None:
    with pytest.raises(dns.exception.Timeout):
        ask(server, address("z/a"), "s-a.z.svc.cluster.local.")
    # and once the policy is gone, it is answered
    server.apply(cluster_manifests())
    assert ask(server, address("z/a"), "s-a.z.svc.cluster.local.").rcode() == dns.rcode.NOERROR
    assert ask(server, address("x/a"), "s-a.y.svc.cluster.local.").rcode() == dns.rcode.NOERROR
