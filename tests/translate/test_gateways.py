"""GatewayClass/Gateway/listener status: TLS references, conflicts, unsupported protocols."""

from __future__ import annotations

from tests.conftest import translate_text
from tests.translate.helpers import BASE, listener_status, tls_secret

HTTPS_GW = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: network}
spec:
  gatewayClassName: envoy
  listeners:
    - name: https
      protocol: HTTPS
      port: 443
      tls:
        certificateRefs: [{name: CERT}]
"""


def gw_status(tr, name: str) -> dict:
    s = tr.status[("gateway.networking.k8s.io", "Gateway", "network", name)]
    return {c["type"]: c for c in s["conditions"]}


def test_https_listener_with_valid_certificate() -> None:
    _, tr = translate_text(BASE + HTTPS_GW.replace("CERT", "wild") + tls_secret("wild", "network", "*.example.com", "example.com"))
    ls = listener_status(tr, "network", "tls", "https")
    assert ls["ResolvedRefs"]["status"] == "True" and ls["Programmed"]["status"] == "True"
    gw = tr.snapshot.gateway("network", "tls")
    cert = gw.listeners[0].tls_certs[0]
    assert cert.dns_names == ("*.example.com", "example.com")
    assert "PRIVATE KEY" not in repr(cert.key_pem) and b"PRIVATE KEY" in cert.key_pem


def test_https_listener_missing_secret() -> None:
    _, tr = translate_text(BASE + HTTPS_GW.replace("CERT", "nope"))
    ls = listener_status(tr, "network", "tls", "https")
    assert (ls["ResolvedRefs"]["status"], ls["ResolvedRefs"]["reason"]) == ("False", "InvalidCertificateRef")
    assert "network/nope does not exist" in ls["ResolvedRefs"]["message"]
    assert ls["Programmed"]["status"] == "False"
    assert not tr.snapshot.gateway("network", "tls").listeners[0].ready
    assert gw_status(tr, "tls")["Accepted"]["reason"] == "ListenersNotValid"


def test_https_certificate_in_other_namespace_needs_grant() -> None:
    text = BASE + HTTPS_GW.replace("{name: CERT}", "{name: wild, namespace: certs}") + tls_secret("wild", "certs", "a.example.com")
    _, tr = translate_text(text)
    assert listener_status(tr, "network", "tls", "https")["ResolvedRefs"]["reason"] == "RefNotPermitted"
    grant = """
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: network}]
  to: [{group: "", kind: Secret}]
"""
    _, tr2 = translate_text(text + grant)
    assert listener_status(tr2, "network", "tls", "https")["ResolvedRefs"]["status"] == "True"


def test_garbage_certificate_is_invalid_ref() -> None:
    bad = """
---
apiVersion: v1
kind: Secret
metadata: {name: bad, namespace: network}
type: kubernetes.io/tls
stringData: {tls.crt: not a cert, tls.key: not a key}
"""
    _, tr = translate_text(BASE + HTTPS_GW.replace("CERT", "bad") + bad)
    rr = listener_status(tr, "network", "tls", "https")["ResolvedRefs"]
    assert rr["reason"] == "InvalidCertificateRef" and "not a PEM certificate" in rr["message"]


def test_mismatched_key_is_invalid_ref() -> None:
    a = tls_secret("a", "network", "a.example.com")
    b = tls_secret("b", "network", "b.example.com")
    key_b = b.split("tls.key: ")[1].strip()
    mixed = a.split("tls.key: ")[0] + "tls.key: " + key_b + "\n"
    _, tr = translate_text(BASE + HTTPS_GW.replace("CERT", "a") + mixed)
    rr = listener_status(tr, "network", "tls", "https")["ResolvedRefs"]
    assert "does not match" in rr["message"]


def test_listener_conflicts() -> None:
    gw = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: clash, namespace: network}
spec:
  gatewayClassName: envoy
  listeners:
    - {name: a, protocol: HTTP, port: 8080, hostname: same.example.com}
    - {name: b, protocol: HTTP, port: 8080, hostname: same.example.com}
    - {name: c, protocol: HTTP, port: 8080, hostname: other.example.com}
    - {name: d, protocol: HTTP, port: 9000}
    - {name: e, protocol: TCP, port: 9000}
    - {name: f, protocol: TLS, port: 9443}
"""
    _, tr = translate_text(BASE + gw)
    st = {n: listener_status(tr, "network", "clash", n) for n in "abcdef"}
    assert st["a"]["Conflicted"]["reason"] == "HostnameConflict" and st["a"]["Conflicted"]["status"] == "True"
    assert st["b"]["Conflicted"]["reason"] == "HostnameConflict"
    assert st["c"]["Conflicted"]["status"] == "False"
    # an HTTP and a TCP listener on one port conflict: both lose it
    assert st["d"]["Conflicted"]["reason"] == "ProtocolConflict"
    assert st["e"]["Conflicted"]["reason"] == "ProtocolConflict" and st["e"]["Accepted"]["status"] == "True"
    assert st["f"]["ResolvedRefs"]["reason"] == "InvalidCertificateRef"  # a TLS listener terminating without a certificate
    ready = {ls.name: ls.ready for ls in tr.snapshot.gateway("network", "clash").listeners}
    assert ready == {"a": False, "b": False, "c": True, "d": False, "e": False, "f": False}


def test_invalid_route_kinds() -> None:
    gw = BASE.replace("namespaces: {from: All}", "namespaces: {from: All}\n        kinds: [{kind: TCPRoute}, {kind: HTTPRoute}]")
    _, tr = translate_text(gw)
    ls = listener_status(tr, "network", "gw", "http")
    assert ls["ResolvedRefs"]["reason"] == "InvalidRouteKinds"
    assert tr.snapshot.gateway("network", "gw").listeners[0].ready  # HTTPRoute is still supported


def test_other_controllers_class_is_ignored_and_missing_class_is_assumed() -> None:
    other = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: cilium}
spec: {controllerName: io.cilium/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: network}
spec:
  gatewayClassName: cilium
  listeners: [{name: http, protocol: HTTP, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: helm-class, namespace: network}
spec:
  gatewayClassName: installed-by-helm
  listeners: [{name: http, protocol: HTTP, port: 80}]
"""
    _, tr = translate_text(BASE + other)
    names = [g.ref.name for g in tr.snapshot.gateways]
    assert "theirs" not in names and "helm-class" in names
    assert ("gateway.networking.k8s.io", "GatewayClass", None, "cilium") not in tr.status
    assert any(d.code == "GatewayClassAssumed" for d in tr.diagnostics)


def test_gatewayclass_with_missing_parameters_is_not_accepted() -> None:
    text = BASE.replace(
        "controllerName: gateway.envoyproxy.io/gatewayclass-controller",
        "controllerName: gateway.envoyproxy.io/gatewayclass-controller\n  parametersRef: {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: ep, namespace: network}",
    )
    _, tr = translate_text(text)
    c = tr.status[("gateway.networking.k8s.io", "GatewayClass", None, "envoy")]["conditions"][0]
    assert (c["status"], c["reason"]) == ("False", "InvalidParameters")
    assert not tr.snapshot.gateway("network", "gw").programmed


def test_gateway_addresses_from_spec_and_lbipam_annotation() -> None:
    text = BASE.replace(
        "  gatewayClassName: envoy\n  listeners:",
        "  gatewayClassName: envoy\n  addresses: [{value: 192.0.2.1}]\n  infrastructure:\n    annotations: {lbipam.cilium.io/ips: '192.0.2.2, 192.0.2.3'}\n  listeners:",
        1,
    )
    _, tr = translate_text(text)
    assert tr.snapshot.gateway("network", "gw").addresses == ("192.0.2.1", "192.0.2.2", "192.0.2.3")
