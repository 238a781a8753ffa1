"""Bad policies are refused at load with the field named (never a crash, never a policy quietly
dropped), and the edges of the semantics: addresses two pods claim, L7 rules where they cannot be
checked, reserved:world selectors in the kernel path, range arithmetic."""

from __future__ import annotations

import random

import pytest

from homeplane.l4.tables import compile_tables
from homeplane.policy.enforce import _subtract, kernel_filters
from tests.conftest import load, translate_text
from tests.policy.cluster import address, cluster_manifests

BAD = [
    ("rules: {http: [{path: '/a('}]}", "spec.ingress[0].toPorts[0].rules.http[0].path", "not a valid RE2 pattern"),
    ("rules: {http: ['GET /']}", "spec.ingress[0].toPorts[0].rules.http[0]", ""),
    ("rules: {http: {method: GET}}", "spec.ingress[0].toPorts[0].rules.http", ""),
    ("rules: {http: [{headerMatches: [x]}]}", "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0]", ""),
    ("rules: {http: [{method: [GET]}]}", "spec.ingress[0].toPorts[0].rules.http[0].method", ""),
    ("rules: {dns: [{matchPattern: 5}]}", "spec.ingress[0].toPorts[0].rules.dns[0]", ""),
    ("rules: {dns: [{matchPattern: 'a b'}]}", "spec.ingress[0].toPorts[0].rules.dns[0]", "letters, digits"),
]


@pytest.mark.parametrize("rules,field,words", BAD, ids=[b[0] for b in BAD])
def test_malformed_l7_rules_are_load_errors_naming_the_field(rules: str, field: str, words: str) -> None:
    r = load(f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bad, namespace: x}}
spec:
  endpointSelector: {{}}
  ingress: [{{toPorts: [{{ports: [{{port: "80"}}], {rules}}}]}}]
""")
    errors = r.diagnostics.errors
    assert errors and errors[0].field and errors[0].field.startswith(field), [str(e) for e in errors]
    assert words in errors[0].message


def test_a_rule_must_say_whom_it_selects() -> None:
    r = load("""
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: typo}
spec:
  endpointselector: {}
  ingress: [{}]
""")
    assert any("endpointSelector" in e.message for e in r.diagnostics.errors)


def test_an_address_two_pods_claim_is_nobody() -> None:
    extra = """
---
apiVersion: v1
kind: Service
metadata: {name: shell, namespace: y}
spec: {selector: {pod: shell}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: shell, namespace: y}
subsets: [{addresses: [{ip: 127.1.1.1}], ports: [{port: 80}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-x-a, namespace: z}
spec:
  endpointSelector: {}
  ingress: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": x, pod: a}}]}]
"""
    _, tr = translate_text(cluster_manifests() + extra)
    ps = tr.snapshot.network_policy
    who = ps.identities.of_address(address("x/a"))  # x/a's address, also y/shell's
    assert who.kind == "unknown" and "y/shell" in who.name
    assert not ps.decide(who, ps.identities.of_address(address("z/b")), 80).allowed
    assert any(d.code == "AmbiguousEndpoint" and "127.1.1.1" in d.message for d in tr.diagnostics.warnings)


L7_POLICY = """
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
    - fromEntities: [world, cluster]
      toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET}]}}]
"""


def test_l7_rules_refuse_where_they_cannot_be_checked() -> None:
    from homeplane.policy.enforce import Verdicts

    _, tr = translate_text(cluster_manifests() + L7_POLICY)
    snap = tr.snapshot
    ps = snap.network_policy
    tables = compile_tables(snap)
    table = next(t for t in tables if t.service.name == "s-a" and t.service.namespace == "x" and t.port == 80)
    allowed, why = Verdicts(ps, snap).allowed_backends(address("y/b"), table)
    assert not allowed and "L7 rules apply" in why  # the L4 proxy cannot read HTTP: refused, not waved through
    other = next(t for t in tables if t.service.name == "s-b" and t.service.namespace == "x" and t.port == 80)
    assert Verdicts(ps, snap).allowed_backends(address("y/b"), other)[0]
    # the kernel path: only the host may open connections to x/a:80
    f = next(f for f in kernel_filters(ps, snap, tables) if f.address == address("x/a") and f.port == 80)
    assert all(127 << 24 <= lo and hi <= (128 << 24) - 1 for lo, hi in f.allowed)


def test_reserved_world_deny_reaches_the_kernel() -> None:
    _, tr = translate_text(cluster_manifests() + """
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-world, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [all]}]
  ingressDeny: [{fromEndpoints: [{matchLabels: {"reserved:world": ""}}]}]
""")
    snap = tr.snapshot
    ps = snap.network_policy
    from homeplane.policy.identity import world

    assert not ps.decide(world("192.168.1.50"), ps.identities.of_address(address("x/a")), 80).allowed
    f = next(f for f in kernel_filters(ps, snap, compile_tables(snap)) if f.address == address("x/a") and f.port == 80)
    ip = (192 << 24) + (168 << 16) + (1 << 8) + 50
    assert not any(lo <= ip <= hi for lo, hi in f.allowed)
    pod = sum(int(x) << s for x, s in zip(address("y/b").split("."), (24, 16, 8, 0)))
    assert any(lo <= pod <= hi for lo, hi in f.allowed)


def test_range_subtraction_against_sets() -> None:
    rnd = random.Random(7)
    for _ in range(2000):
        r = [(a, a + rnd.randint(0, 20)) for a in (rnd.randint(0, 100) for _ in range(rnd.randint(0, 5)))]
        c = [(a, a + rnd.randint(0, 20)) for a in (rnd.randint(0, 100) for _ in range(rnd.randint(0, 5)))]
        want = set().union(*(range(lo, hi + 1) for lo, hi in r)) - set().union(*(range(lo, hi + 1) for lo, hi in c))
        got = _subtract(r, c)
        assert set().union(*(range(lo, hi + 1) for lo, hi in got)) == want and list(got) == sorted(got)


def test_the_forward_auth_service_is_reached_under_the_gateways_policies() -> None:
    from tests.gateway.manifests import gateway, route, service
    from tests.gateway.test_auth import GRANT, auth_service, ext_auth_policy

    only_other = """
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: outpost, namespace: security}
spec:
  endpointSelector: {}
  ingress: [{fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": network, gateway.networking.k8s.io/gateway-name: other}}]}]
"""
    base = gateway() + service("a", 8080) + route("r", "[auth.test]") + auth_service(9000) + GRANT + ext_auth_policy()
    _, tr = translate_text(base + only_other)
    rule = tr.snapshot.gateway("network", "gw").listeners[0].vhosts[0].rules[0]
    pool = rule.security.settings.ext_auth.pool
    assert pool.endswith("@network/gw/auth") and not tr.snapshot.pools[pool].endpoints  # refused: auth fails closed
    _, tr = translate_text(base + only_other.replace("gateway-name: other", "gateway-name: gw"))
    rule = tr.snapshot.gateway("network", "gw").listeners[0].vhosts[0].rules[0]
    assert "@" not in rule.security.settings.ext_auth.pool
