"""Envoy Gateway policies: targeting, conflicts, overrides, fail-closed SecurityPolicy."""

from __future__ import annotations

from tests.conftest import translate_text
from tests.translate.helpers import BASE, rules_of

ROUTE = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: apps, labels: {auth: "yes"}}
spec:
  parentRefs: [{name: gw, namespace: network}]
  hostnames: [app.example.com]
  rules:
    - backendRefs: [{name: web, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: outpost, namespace: auth}
spec:
  ports: [{port: 9000}]
"""


def sp(name: str, ns: str = "apps", target: str = "kind: HTTPRoute, name: app", backend_ns: str = "auth") -> str:
    return f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, {target}}}]
  extAuth:
    http:
      backendRefs: [{{name: outpost, namespace: {backend_ns}, port: 9000}}]
      path: /outpost.goauthentik.io/auth/envoy
"""


GRANT = """
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: outpost, namespace: auth}
spec:
  from: [{group: gateway.envoyproxy.io, kind: SecurityPolicy, namespace: apps}]
  to: [{group: "", kind: Service}]
"""


def accepted(tr, kind: str, ns: str, name: str) -> dict:
    s = tr.status[("gateway.envoyproxy.io", kind, ns, name)]
    return {c["type"]: c for c in s["ancestors"][0]["conditions"]}


def test_ext_auth_without_reference_grant_fails_closed() -> None:
    _, tr = translate_text(BASE + ROUTE + sp("auth"))
    a = accepted(tr, "SecurityPolicy", "apps", "auth")["Accepted"]
    assert (a["status"], a["reason"]) == ("False", "Invalid")
    assert "not permitted by any ReferenceGrant" in a["message"]
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.direct_status == 500, "a route whose SecurityPolicy is invalid must never be served unprotected"
    assert rule.security is not None and not rule.security.valid


def test_ext_auth_with_grant_protects_route() -> None:
    _, tr = translate_text(BASE + ROUTE + sp("auth") + GRANT)
    assert accepted(tr, "SecurityPolicy", "apps", "auth")["Accepted"]["status"] == "True"
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.direct_status is None
    ext = rule.security.settings.ext_auth  # the policy lowered: its Service's pool, path, timeout
    assert rule.security.valid and ext.pool == "service/auth/outpost:9000"
    assert ext.path == "/outpost.goauthentik.io/auth/envoy" and ext.timeout == 10.0
    # the policy's ancestor is the route's Gateway
    anc = tr.status[("gateway.envoyproxy.io", "SecurityPolicy", "apps", "auth")]["ancestors"][0]["ancestorRef"]
    assert (anc["kind"], anc["namespace"], anc["name"]) == ("Gateway", "network", "gw")


def test_route_policy_overrides_gateway_policy() -> None:
    gw_policy = sp("gw-auth", ns="network", target="kind: Gateway, name: gw").replace("namespace: auth", "namespace: network")
    svc = "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: outpost, namespace: network}\nspec: {ports: [{port: 9000}]}\n"
    _, tr = translate_text(BASE + ROUTE + svc + gw_policy + sp("route-auth") + GRANT)
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.security.policy.name == "route-auth"
    ov = accepted(tr, "SecurityPolicy", "network", "gw-auth")
    assert ov["Accepted"]["status"] == "True"
    assert ov["Overridden"]["status"] == "True" and "apps/app" in ov["Overridden"]["message"]


def test_two_policies_on_one_target_older_wins() -> None:
    older = sp("b-older").replace("metadata: {", "metadata: {creationTimestamp: '2024-01-01T00:00:00Z', ")
    newer = sp("a-newer").replace("metadata: {", "metadata: {creationTimestamp: '2025-01-01T00:00:00Z', ")
    _, tr = translate_text(BASE + ROUTE + newer + older + GRANT)
    assert accepted(tr, "SecurityPolicy", "apps", "b-older")["Accepted"]["status"] == "True"
    c = accepted(tr, "SecurityPolicy", "apps", "a-newer")["Accepted"]
    assert (c["status"], c["reason"]) == ("False", "Conflicted")
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.security.policy.name == "b-older"


def test_target_not_found() -> None:
    _, tr = translate_text(BASE + ROUTE + sp("lost", target="kind: HTTPRoute, name: ghost") + GRANT)
    a = accepted(tr, "SecurityPolicy", "apps", "lost")["Accepted"]
    assert (a["status"], a["reason"]) == ("False", "TargetNotFound")


def test_target_selectors_and_client_traffic_policy() -> None:
    ctp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: envoy, namespace: network}
spec:
  targetSelectors: [{group: gateway.networking.k8s.io, kind: Gateway}]
  clientIPDetection: {xForwardedFor: {numTrustedHops: 1}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: retries, namespace: apps}
spec:
  targetSelectors: [{group: gateway.networking.k8s.io, kind: HTTPRoute, matchLabels: {auth: "yes"}}]
  retry: {numRetries: 5}
"""
    _, tr = translate_text(BASE + ROUTE + ctp)
    ls = tr.snapshot.gateway("network", "gw").listeners[0]
    assert ls.client_traffic.policy.name == "envoy"
    assert ls.client_traffic.settings.xff_enabled and ls.client_traffic.settings.xff_hops == 1
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.backend_traffic.settings.retry.num_retries == 5


def test_client_traffic_policy_cannot_target_routes() -> None:
    ctp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: bad, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
"""
    _, tr = translate_text(BASE + ROUTE + ctp)
    a = accepted(tr, "ClientTrafficPolicy", "apps", "bad")["Accepted"]
    assert (a["status"], a["reason"]) == ("False", "Invalid")


def test_basic_auth_secret_checks() -> None:
    basic = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: basic, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  basicAuth: {users: {name: users}}
"""
    _, tr = translate_text(BASE + ROUTE + basic)
    assert "Secret apps/users not found" in accepted(tr, "SecurityPolicy", "apps", "basic")["Accepted"]["message"]
    secret = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: apps}\nstringData: {.htpasswd: 'user:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M='}\n"
    _, tr2 = translate_text(BASE + ROUTE + basic + secret)
    assert accepted(tr2, "SecurityPolicy", "apps", "basic")["Accepted"]["status"] == "True"
