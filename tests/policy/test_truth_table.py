"""The reachability matrix of x/y/z × a/b/c for each policy case (Kubernetes e2e's truth-table
method), for NetworkPolicy and for Cilium's forms, through the compiled evaluator."""

from __future__ import annotations

from typing import Callable

import pytest

from homeplane.policy.identity import world
from homeplane.policy.verdict import PolicySet
from tests.conftest import translate_text
from tests.policy.cluster import ALL, address, cluster_manifests

Expect = Callable[[str, str], bool]


def policy_set(policies: str) -> PolicySet:
    _, tr = translate_text(cluster_manifests() + "---\n" + policies)
    ps = tr.snapshot.network_policy
    assert ps is not None
    return ps


def matrix(ps: PolicySet, port: int = 80, proto: str = "TCP") -> dict[tuple[str, str], bool]:
    ids = ps.identities
    out = {}
    for src in ALL:
        for dst in ALL:
            if src != dst:  # a pod's traffic to itself does not leave it
                d = ps.decide(ids.of_address(address(src)), ids.of_address(address(dst)), port, proto)
                out[(src, dst)] = d.allowed
    return out


def assert_matrix(ps: PolicySet, expect: Expect, port: int = 80, proto: str = "TCP") -> None:
    got = matrix(ps, port, proto)
    wrong = sorted(f"{s} -> {d}: got {'allow' if ok else 'deny'}" for (s, d), ok in got.items() if ok != expect(s, d))
    assert not wrong, "\n".join(wrong)


def ns(pod: str) -> str:
    return pod.split("/")[0]


def name(pod: str) -> str:
    return pod.split("/")[1]


def test_no_policy_means_everything_reaches_everything() -> None:
    ps = policy_set("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated}\n---\n" + NP_DENY_X.replace("deny-x", "elsewhere").replace("namespace: x", "namespace: nowhere"))
    assert_matrix(ps, lambda s, d: True)


NP_DENY_X = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-x, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

CASES_NP: list[tuple[str, str, Expect, int]] = [
    ("default deny ingress in x", NP_DENY_X, lambda s, d: ns(d) != "x", 80),
    ("allow-all ingress rule {} beside a deny", NP_DENY_X + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]
""", lambda s, d: ns(d) != "x" or d == "x/a", 80),
    ("x/a from its own namespace only", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}]}]
""", lambda s, d: d != "x/a" or ns(s) == "x", 80),
    ("x/a from namespace y", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
""", lambda s, d: d != "x/a" or ns(s) == "y", 80),
    ("namespace AND pod in one peer", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]
""", lambda s, d: d != "x/a" or s == "y/b", 80),
    ("namespace OR pod as two peers", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]
""", lambda s, d: d != "x/a" or ns(s) == "y" or s == "x/b", 80),
    ("matchExpressions on namespaces", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: expr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}}]}]
""", lambda s, d: d != "x/a" or ns(s) != "y", 80),
    ("only port 81: port 80 refused", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81}]}]
""", lambda s, d: d != "x/a", 80),
    ("only port 81: port 81 allowed", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81}]}]
""", lambda s, d: True, 81),
    ("named port serve-81-tcp, probed on 81", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: serve-81-tcp}]}]
""", lambda s, d: True, 81),
    ("named port serve-81-tcp, probed on 80", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: serve-81-tcp}]}]
""", lambda s, d: d != "x/a", 80),
    ("endPort range 70-80 from y", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 70, endPort: 80}]}]
""", lambda s, d: ns(d) != "x" or ns(s) == "y", 80),
    ("UDP-only rule does not let TCP through", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, protocol: UDP}]}]
""", lambda s, d: ns(d) != "x", 80),
    ("egress default deny in x", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
""", lambda s, d: ns(s) != "x", 80),
    ("egress rules without policyTypes isolate ingress too", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-z, namespace: x}
spec:
  podSelector: {}
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
""", lambda s, d: ns(d) != "x" and (ns(s) != "x" or ns(d) == "z"), 80),
    ("policyTypes Ingress ignores the egress rules it has", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: [{}]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
""", lambda s, d: True, 80),
    ("egress and ingress must both allow", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: eg, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}, namespaceSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
""", lambda s, d: (s != "x/a" or name(d) == "b") and (d != "y/b" or ns(s) == "z"), 80),
]


@pytest.mark.parametrize("title,policies,expect,port", CASES_NP, ids=[c[0] for c in CASES_NP])
def test_network_policy_truth_table(title: str, policies: str, expect: Expect, port: int) -> None:
    assert_matrix(policy_set(policies), expect, port)


CASES_CNP: list[tuple[str, str, Expect, int]] = [
    ("ingress: [{}] is default deny", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{}]
""", lambda s, d: ns(d) != "x", 80),
    ("fromEndpoints {} stays in the policy's namespace", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-ns, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{}]}]
""", lambda s, d: d != "x/a" or ns(s) == "x", 80),
    ("fromEndpoints naming k8s:io.kubernetes.pod.namespace", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-y-b, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": y, pod: b}}]}]
""", lambda s, d: d != "x/a" or s == "y/b", 80),
    ("namespace labels through io.cilium.k8s.namespace.labels, once the namespace key is named", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: nslabels, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
    - fromEndpoints:
        - matchLabels: {"io.cilium.k8s.namespace.labels.ns": z}
          matchExpressions: [{key: "k8s:io.kubernetes.pod.namespace", operator: Exists}]
""", lambda s, d: d != "x/a" or ns(s) == "z", 80),
    ("namespace labels alone stay in the policy's namespace (as Cilium confines them)", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: nslabels, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {"io.cilium.k8s.namespace.labels.ns": z}}]}]
""", lambda s, d: d != "x/a", 80),
    ("fromEntities cluster", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cluster, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
""", lambda s, d: True, 80),
    ("fromEntities world keeps pods out", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [world]}]
""", lambda s, d: ns(d) != "x", 80),
    ("toPorts only: every peer on 81", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4only, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "81", protocol: TCP}]}]}]
""", lambda s, d: ns(d) != "x", 80),
    ("ingressDeny wins over allow-all", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-y, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [all]}]
  ingressDeny: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}]}]
""", lambda s, d: ns(d) != "x" or ns(s) != "y", 80),
    ("enableDefaultDeny ingress false: only the deny applies", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingressDeny: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": z, pod: b}}]}]
""", lambda s, d: ns(d) != "x" or s != "z/b", 80),
    ("cluster-wide egress: only to kube-system-like z/c", """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: egress-z-c}
spec:
  endpointSelector: {matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}
  egress: [{toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": z, pod: c}}], toPorts: [{ports: [{port: "80"}]}]}]
""", lambda s, d: ns(s) != "y" or d == "z/c", 80),
    ("cluster-wide {} selects every namespace", """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: from-tier1}
spec:
  endpointSelector: {matchLabels: {pod: c}}
  ingress: [{fromEndpoints: [{matchLabels: {tier: t1}}]}]
""", lambda s, d: name(d) != "c" or name(s) == "a", 80),
    ("toServices by name", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-svc, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  egress: [{toServices: [{k8sService: {serviceName: s-a, namespace: z}}]}]
""", lambda s, d: s != "x/b" or d == "z/a", 80),
    ("two specs: both rules count", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: two, namespace: x}
specs:
  - endpointSelector: {matchLabels: {pod: a}}
    ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]
  - endpointSelector: {matchLabels: {pod: a}}
    ingress: [{fromEndpoints: [{matchLabels: {pod: c}}]}]
""", lambda s, d: d != "x/a" or s in ("x/b", "x/c"), 80),
    ("NetworkPolicy and CNP together: union of allows, either isolates", NP_DENY_X + """---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: plus, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  ingress: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": z}}]}]
""", lambda s, d: ns(d) != "x" or (d == "x/b" and ns(s) == "z"), 80),
]


@pytest.mark.parametrize("title,policies,expect,port", CASES_CNP, ids=[c[0] for c in CASES_CNP])
def test_cilium_policy_truth_table(title: str, policies: str, expect: Expect, port: int) -> None:
    assert_matrix(policy_set(policies), expect, port)


def test_cidr_rules_with_except_and_entities_for_the_world() -> None:
    ps = policy_set("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lan, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.42.0/24]}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  ingress: [{fromEntities: [world-ipv6]}, {fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]}]
""")
    ids = ps.identities
    a, b = ids.of_address(address("x/a")), ids.of_address(address("x/b"))
    cases = [
        (a, "192.168.1.5", True), (a, "192.168.42.7", False), (a, "10.0.0.1", False),
        (b, "10.1.2.3", True), (b, "10.9.1.1", False), (b, "2001:db8::1", True), (b, "192.168.1.5", False),
    ]
    for dst, client, ok in cases:
        assert ps.decide(world(client), dst, 80).allowed is ok, (dst.name, client)
    # a CIDR rule never selects the cluster's own pods, even when their address is in it
    ps2 = policy_set("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lo, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 127.0.0.0/8}}]}]
""")
    i2 = ps2.identities
    assert not ps2.decide(i2.of_address(address("y/a")), i2.of_address(address("x/a")), 80).allowed
    # the host may always reach its endpoints (Cilium's allow-localhost)
    assert ps2.decide(i2.of_address("127.0.0.1"), i2.of_address(address("x/a")), 80).allowed


def test_egress_deny_to_cidr_sets_as_in_onedr0p_runner() -> None:
    ps = policy_set("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: runner, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  enableDefaultDeny: {egress: false}
  egressDeny:
    - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.42.0.0/16, 10.43.0.0/16]}]
    - toCIDR: [172.16.0.0/12]
""")
    a = ps.identities.of_address(address("x/a"))
    for dst, ok in (("10.1.1.1", False), ("10.42.0.9", True), ("172.20.0.1", False), ("1.1.1.1", True)):
        assert ps.decide(a, world(dst), 443).allowed is ok, dst
    # other pods are not selected; pod-to-pod from x/a is untouched by the CIDR denies
    assert ps.decide(a, ps.identities.of_address(address("y/b")), 80).allowed


def test_l7_http_rules_allow_some_requests() -> None:
    ps = policy_set("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
    - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: "/api/.*"}
              - {method: "POST|PUT", path: /submit, headers: ["X-Token: yes"]}
""")
    ids = ps.identities
    d = ps.decide(ids.of_address(address("y/b")), ids.of_address(address("x/a")), 80)
    assert d.allowed and d.verdict == "REDIRECTED"
    assert d.allows_request("GET", "/api/v1?q=1", "h", {})
    assert not d.allows_request("GET", "/apix", "h", {})
    assert not d.allows_request("DELETE", "/api/v1", "h", {})
    assert d.allows_request("PUT", "/submit", "h", {"x-token": "yes"})
    assert not d.allows_request("PUT", "/submit", "h", {"x-token": "no"})
    assert not ps.decide(ids.of_address(address("z/b")), ids.of_address(address("x/a")), 80).allowed


def test_trace_steps_name_the_rule() -> None:
    ps = policy_set(NP_DENY_X)
    ids = ps.identities
    d = ps.decide(ids.of_address(address("y/a")), ids.of_address(address("x/b")), 80)
    assert not d.allowed
    assert "NetworkPolicy/x/deny-x" in d.steps[-1].text and d.steps[-1].direction == "ingress"
    assert d.steps[0].allowed and "egress open" in d.steps[0].text


def test_l7_rules_apply_without_default_deny() -> None:
    """enableDefaultDeny false leaves unmatched traffic open, but L7 rules still apply (Cilium)."""
    ps = policy_set("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  enableDefaultDeny: {ingress: false}
  ingress:
    - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}]
      toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET}]}}]
""")
    ids = ps.identities
    xa = ids.of_address(address("x/a"))
    from_y = ps.decide(ids.of_address(address("y/b")), xa, 80)
    assert from_y.allowed and from_y.allows_request("GET", "/", "h", {}) and not from_y.allows_request("DELETE", "/", "h", {})
    z = ps.decide(ids.of_address(address("z/b")), xa, 80)
    assert z.allowed and z.http is None  # no rule matches it: open, as default deny is off
