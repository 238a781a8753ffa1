"""HTTPRoute attachment and backend resolution: Gateway API conditions and reasons."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import translate_text
from tests.translate.helpers import BASE, listener_status, parent, rules_of


def route(name: str = "r", ns: str = "apps", parent_extra: str = "", hostnames: str = "[app.example.com]", rules: str = "") -> str:
    rules = rules or "\n    - backendRefs: [{name: web, port: 80}]"
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs:
    - {{name: gw, namespace: network{parent_extra}}}
  hostnames: {hostnames}
  rules:{rules}
"""


def test_accepted_route_serves_backend_with_ready_endpoints_only() -> None:
    _, tr = translate_text(BASE + route())
    p = parent(tr, "apps", "r")
    assert p["Accepted"]["status"] == "True" and p["Accepted"]["reason"] == "Accepted"
    assert p["ResolvedRefs"]["status"] == "True"
    assert listener_status(tr, "network", "gw", "http")["attachedRoutes"] == 1
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    pool = tr.snapshot.pools[rule.backends[0].pool]
    assert [(e.address, e.port, e.ready) for e in pool.endpoints] == [("10.0.0.1", 8080, True), ("10.0.0.2", 8080, False)]
    assert [e.address for e in pool.ready_endpoints] == ["10.0.0.1"]


def test_section_name_that_does_not_exist() -> None:
    _, tr = translate_text(BASE + route(parent_extra=", sectionName: nope"))
    a = parent(tr, "apps", "r")["Accepted"]
    assert (a["status"], a["reason"]) == ("False", "NoMatchingParent")


def test_missing_gateway() -> None:
    _, tr = translate_text(BASE + route().replace("name: gw, namespace: network", "name: ghost, namespace: network"))
    a = parent(tr, "apps", "r")["Accepted"]
    assert (a["status"], a["reason"]) == ("False", "NoMatchingParent")
    assert "ghost" in a["message"]


def test_from_same_rejects_other_namespaces() -> None:
    text = (BASE + route()).replace("namespaces: {from: All}", "namespaces: {from: Same}")
    _, tr = translate_text(text)
    a = parent(tr, "apps", "r")["Accepted"]
    assert (a["status"], a["reason"]) == ("False", "NotAllowedByListeners")
    assert listener_status(tr, "network", "gw", "http")["attachedRoutes"] == 0


def test_from_selector_uses_namespace_labels() -> None:
    text = BASE.replace(
        "namespaces: {from: All}", "namespaces: {from: Selector, selector: {matchLabels: {expose: \"yes\"}}}"
    )
    _, tr = translate_text(text + route() + route(name="o", ns="other"))
    assert parent(tr, "apps", "r")["Accepted"]["status"] == "True"
    assert parent(tr, "other", "o")["Accepted"]["reason"] == "NotAllowedByListeners"


def test_hostname_intersection() -> None:
    text = BASE.replace("port: 80\n", "port: 80\n      hostname: \"*.example.com\"\n")
    _, tr = translate_text(
        text
        + route(name="match", hostnames="[a.example.com, a.other.org]")
        + route(name="nomatch", hostnames="[a.other.org]")
        + route(name="wild", hostnames="[\"*.sub.example.com\"]")
        + route(name="none", hostnames="[]")
    )
    assert parent(tr, "apps", "match")["Accepted"]["status"] == "True"
    a = parent(tr, "apps", "nomatch")["Accepted"]
    assert (a["status"], a["reason"]) == ("False", "NoMatchingListenerHostname")
    g = tr.snapshot.gateway("network", "gw")
    hosts = [vh.hostname for vh in g.listeners[0].vhosts]
    # exact names first, then longer wildcards; a route without hostnames takes the listener's
    assert hosts == ["a.example.com", "*.sub.example.com", "*.example.com"]


def test_backend_not_found_and_all_invalid_answers_500() -> None:
    _, tr = translate_text(BASE + route(rules="\n    - backendRefs: [{name: ghost, port: 80}]"))
    p = parent(tr, "apps", "r")
    assert p["Accepted"]["status"] == "True"  # an invalid backend does not un-accept the route
    assert (p["ResolvedRefs"]["status"], p["ResolvedRefs"]["reason"]) == ("False", "BackendNotFound")
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.direct_status == 500 and rule.backends[0].pool is None


def test_partially_invalid_backends_keep_weights() -> None:
    _, tr = translate_text(
        BASE + route(rules="\n    - backendRefs: [{name: web, port: 80, weight: 3}, {name: ghost, port: 80, weight: 1}]")
    )
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.direct_status is None
    assert [(b.pool is not None, b.weight) for b in rule.backends] == [(True, 3), (False, 1)]


@pytest.mark.parametrize(
    "route_ns,backend,reason",
    [
        ("apps", "{name: web, port: 81}", "PortNotFound"),
        ("apps", "{name: web}", "PortNotFound"),
        ("apps", "{name: web, port: 80, kind: Pod}", "InvalidKind"),
        ("other", "{name: web, namespace: apps, port: 80}", "RefNotPermitted"),
    ],
)
def test_backend_ref_reasons(route_ns: str, backend: str, reason: str) -> None:
    _, tr = translate_text(BASE + route(ns=route_ns, rules=f"\n    - backendRefs: [{backend}]"))
    rr = parent(tr, route_ns, "r")["ResolvedRefs"]
    assert (rr["status"], rr["reason"]) == ("False", reason)


def test_reference_grant_allows_cross_namespace_backend() -> None:
    grant = """
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]
  to: [{group: "", kind: Service, name: web}]
"""
    text = BASE + route(ns="other", rules="\n    - backendRefs: [{name: web, namespace: apps, port: 80}]")
    _, without = translate_text(text)
    assert parent(without, "other", "r")["ResolvedRefs"]["reason"] == "RefNotPermitted"
    _, with_grant = translate_text(text + grant)
    assert parent(with_grant, "other", "r")["ResolvedRefs"]["status"] == "True"
    wrong_name = grant.replace("name: web}", "name: other-svc}")
    _, narrow = translate_text(text + wrong_name)
    assert parent(narrow, "other", "r")["ResolvedRefs"]["reason"] == "RefNotPermitted"


def test_precedence_order() -> None:
    rules = """
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: web, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: web, port: 80}]
    - matches: [{path: {type: Exact, value: /api/login}}]
      backendRefs: [{name: web, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
      backendRefs: [{name: web, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-A, value: "1"}, {name: x-b, value: "2"}]}]
      backendRefs: [{name: web, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-a, value: "1"}]}]
      backendRefs: [{name: web, port: 80}]"""
    other_rules = """
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: web, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: web, port: 80}]"""
    _, tr = translate_text(BASE + route(rules=rules) + route(name="a-older-name", rules=other_rules))
    got = [(r.route.name, r.rule_index) for r in rules_of(tr, "network/gw", "http", "app.example.com")]
    assert got == [
        ("r", 2),  # Exact
        ("r", 3),  # longest prefix /api: method first
        ("r", 4),  # then most header matches
        ("r", 5),
        ("a-older-name", 1),  # same match: alphabetical namespace/name first
        ("r", 1),
        ("a-older-name", 0),  # "/" last
        ("r", 0),
    ]
    # header names are compared case-insensitively
    assert rules_of(tr, "network/gw", "http", "app.example.com")[2].match.headers[0][1] == "x-a"


def test_filters_compile_and_incompatible_filters_answer_500() -> None:
    rules = """
    - filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: X-Env, value: home}], remove: [X-Drop]}
        - type: RequestMirror
          requestMirror: {backendRef: {name: web, port: 80}, percent: 10}
      backendRefs: [{name: web, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /both}}]
      filters:
        - {type: RequestRedirect, requestRedirect: {scheme: https}}
        - {type: URLRewrite, urlRewrite: {hostname: x.example.com}}
    - matches: [{path: {type: Exact, value: /exact}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}
      backendRefs: [{name: web, port: 80}]"""
    _, tr = translate_text(BASE + route(rules=rules))
    by_index = {r.rule_index: r for r in rules_of(tr, "network/gw", "http", "app.example.com")}
    f = by_index[0].filters
    assert f.request_headers.set == (("X-Env", "home"),) and f.request_headers.remove == ("x-drop",)
    assert f.mirrors[0].percent == 10.0 and f.mirrors[0].pool == "service/apps/web:80"
    assert by_index[1].direct_status == 500 and "cannot be used in the same rule" in by_index[1].direct_reason
    assert by_index[2].direct_status == 500 and "PathPrefix" in by_index[2].direct_reason
    pi = parent(tr, "apps", "r")["PartiallyInvalid"]
    assert pi["status"] == "True" and pi["reason"] == "UnsupportedValue"


def test_invalid_regex_is_reported() -> None:
    _, tr = translate_text(BASE + route(rules="\n    - matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]\n      backendRefs: [{name: web, port: 80}]"))
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert rule.direct_status == 500 and "regular expression" in rule.direct_reason


def test_timeouts() -> None:
    _, tr = translate_text(BASE + route(rules="\n    - timeouts: {request: 10s, backendRequest: 2500ms}\n      backendRefs: [{name: web, port: 80}]"))
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    assert (rule.timeout_request, rule.timeout_backend_request) == (10.0, 2.5)


def test_snapshot_is_immutable() -> None:
    _, tr = translate_text(BASE + route())
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.snapshot.version = 99  # type: ignore[misc]
    (rule,) = rules_of(tr, "network/gw", "http", "app.example.com")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.direct_status = 200  # type: ignore[misc]
