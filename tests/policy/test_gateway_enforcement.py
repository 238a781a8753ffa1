"""Network policy where the gateway sits: which backends a Gateway's routes may reach (the
bjw-s pattern: "only envoy-internal may reach this app"), and Cilium's L7 HTTP rules checked per
request — through real sockets, on both lanes of the gateway."""

from __future__ import annotations

import httpx
import pytest

from homeplane.gateway.server import Settings
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway

GATEWAYS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy-internal, namespace: network}
spec:
  gatewayClassName: envoy
  addresses: [{value: 10.0.0.1}]
  listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy-external, namespace: network}
spec:
  gatewayClassName: envoy
  addresses: [{value: 10.0.0.2}]
  listeners: [{name: http, protocol: HTTP, port: 8000, allowedRoutes: {namespaces: {from: All}}}]
"""


def app(name: str, port: int) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: selfhosted}}
spec:
  selector: {{app.kubernetes.io/name: {name}, app.kubernetes.io/instance: {name}}}
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: selfhosted, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: selfhosted}}
spec:
  parentRefs: [{{name: envoy-internal, namespace: network}}, {{name: envoy-external, namespace: network}}]
  hostnames: [{name}.test]
  rules: [{{backendRefs: [{{name: {name}, port: 80}}]}}]
"""


def only_internal(name: str, port: int, http: str = "") -> str:
    rules = f"\n          rules:\n            http:{http}" if http else ""
    return f"""
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: selfhosted}}
spec:
  endpointSelector:
    matchLabels: {{app.kubernetes.io/name: {name}, app.kubernetes.io/instance: {name}}}
  ingress:
    - fromEndpoints:
        - matchLabels:
            k8s:io.kubernetes.pod.namespace: network
            gateway.networking.k8s.io/gateway-name: envoy-internal
      toPorts:
        - ports: [{{port: "{port}", protocol: TCP}}]{rules}
"""


@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast", "python"])
def test_only_the_internal_gateway_reaches_the_app(backend: Backend, fast_lane: bool) -> None:
    api_rules = """
              - {method: GET, path: "/public(/.*)?"}
              - {method: POST, path: /public/form, headers: ["X-Form: yes"]}"""
    manifests = (GATEWAYS + app("atuin", backend.port) + only_internal("atuin", backend.port)
                 + app("open", backend.port) + app("api", backend.port) + only_internal("api", backend.port, api_rules))
    g = Gateway(manifests, Settings(access_log=False, fast_lane=fast_lane, flows=64))
    try:
        internal, external = g.url(80, "/echo"), g.url(8000, "/echo")
        assert httpx.get(internal, headers={"host": "atuin.test"}, timeout=20).status_code == 200
        refused = httpx.get(external, headers={"host": "atuin.test"}, timeout=20)
        assert refused.status_code == 503
        # a Service no policy selects stays open to both
        assert httpx.get(external, headers={"host": "open.test"}, timeout=20).status_code == 200
        assert httpx.get(internal, headers={"host": "open.test"}, timeout=20).status_code == 200
        # L7: only what the HTTP rules allow, from the internal gateway; nothing from the external one
        api = g.url(80, "/public/x")
        assert httpx.get(api, headers={"host": "api.test"}, timeout=20).status_code == 200
        assert httpx.get(g.url(80, "/public"), headers={"host": "api.test"}, timeout=20).status_code == 200
        denied = httpx.get(g.url(80, "/private"), headers={"host": "api.test"}, timeout=20)
        assert denied.status_code == 403 and denied.text == "Access denied\r\n"
        assert httpx.post(api, headers={"host": "api.test"}, timeout=20).status_code == 403
        form = g.url(80, "/public/form")
        assert httpx.post(form, headers={"host": "api.test", "x-form": "yes"}, content=b"a=1", timeout=20).status_code == 200
        assert httpx.post(form, headers={"host": "api.test", "x-form": "no"}, content=b"a=1", timeout=20).status_code == 403
        assert httpx.get(g.url(8000, "/public/x"), headers={"host": "api.test"}, timeout=20).status_code == 503
        paths = [r["target"] for r in backend.requests]
        assert "/private" not in paths and paths.count("/public/form") == 1
        flows = {(f["flow"]["l7"]["http"]["url"], f["flow"]["l7"]["http"]["method"], f["flow"]["homeplane"]["gateway"]):
                 (f["flow"]["verdict"], f["flow"].get("drop_reason_desc")) for f in g.dp.flow_ring.read()}
        assert flows[("http://atuin.test/echo", "GET", "network/envoy-external")] == ("DROPPED", "POLICY_DENIED")
        assert flows[("http://atuin.test/echo", "GET", "network/envoy-internal")] == ("FORWARDED", None)
        assert flows[("http://api.test/private", "GET", "network/envoy-internal")] == ("DROPPED", "POLICY_DENIED")
    finally:
        g.close()


def test_a_new_configuration_lifts_the_policy(backend: Backend) -> None:
    base = GATEWAYS + app("atuin", backend.port)
    g = Gateway(base + only_internal("atuin", backend.port), Settings(access_log=False))
    try:
        assert httpx.get(g.url(8000, "/echo"), headers={"host": "atuin.test"}, timeout=20).status_code == 503
        g.apply(base)
        assert httpx.get(g.url(8000, "/echo"), headers={"host": "atuin.test"}, timeout=20).status_code == 200
    finally:
        g.close()


def routed(name: str, host: str, backend_name: str, filters: str) -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: selfhosted}}
spec:
  parentRefs: [{{name: envoy-internal, namespace: network}}]
  hostnames: [{host}]
  rules:
    - backendRefs: [{{name: {backend_name}, port: 80}}]
      filters:{filters}
"""


def test_l7_rules_see_the_request_as_it_reaches_the_pod(backend: Backend, backend_b: Backend) -> None:
    """Rewrites, header filters and mirrors happen before the request reaches the pod, where
    Cilium's proxy would check it: so does homeplane."""
    import time

    rules = """
              - {method: GET, path: "/public(/.*)?"}
              - {method: POST, path: /public/form, headers: ["X-Form: yes"]}"""
    manifests = (GATEWAYS + app("api", backend.port) + only_internal("api", backend.port, rules) + app("open", backend_b.port)
                 + routed("rewrite", "rewrite.test", "api", """
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /private}}""")
                 + routed("strip", "strip.test", "api", """
        - type: RequestHeaderModifier
          requestHeaderModifier: {remove: [x-form]}""")
                 + routed("mirror", "mirror.test", "open", """
        - type: RequestMirror
          requestMirror: {backendRef: {name: api, port: 80}}"""))
    g = Gateway(manifests, Settings(access_log=False))
    try:
        assert httpx.get(g.url(80, "/public/x"), headers={"host": "rewrite.test"}, timeout=20).status_code == 403
        form = {"host": "strip.test", "x-form": "yes"}
        assert httpx.post(g.url(80, "/public/form"), headers=form, content=b"a=1", timeout=20).status_code == 403
        assert httpx.post(g.url(80, "/public/form"), headers={**form, "host": "api.test"}, content=b"a=1", timeout=20).status_code == 200
        assert httpx.get(g.url(80, "/private"), headers={"host": "mirror.test"}, timeout=20).status_code == 200
        assert httpx.get(g.url(80, "/public/seen"), headers={"host": "mirror.test"}, timeout=20).status_code == 200
        deadline = time.monotonic() + 5
        while "/public/seen" not in [r["target"] for r in backend.requests] and time.monotonic() < deadline:
            time.sleep(0.05)
        targets = [r["target"] for r in backend.requests]
        assert "/public/seen" in targets  # the mirror reaches the pod when the rules allow the request
        assert "/private" not in targets and "/private/x" not in targets and targets.count("/public/form") == 1
    finally:
        g.close()


def client_pod(name: str, ip: str, role: str) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: lan}}
spec: {{selector: {{role: {role}}}, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: lan}}
subsets: [{{addresses: [{{ip: {ip}}}], ports: [{{port: 80}}]}}]
"""


GATEWAY_INGRESS = """
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: envoy-internal-clients, namespace: network}
spec:
  endpointSelector: {matchLabels: {gateway.networking.k8s.io/gateway-name: envoy-internal}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: trusted, "k8s:io.kubernetes.pod.namespace": lan}}]
    - fromCIDR: [192.168.0.0/16]
      toPorts: [{ports: [{port: "10080", protocol: TCP}]}]
"""


@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast", "python"])
def test_who_may_connect_to_a_gateway(backend: Backend, fast_lane: bool) -> None:
    """The ingress policies of a Gateway's proxy pods: client addresses it refuses are closed at once."""
    from homeplane.policy.enforce import gateway_sources

    manifests = (GATEWAYS + app("atuin", backend.port) + client_pod("trusted", "127.1.9.8", "trusted")
                 + client_pod("other", "127.1.9.9", "other") + GATEWAY_INGRESS)
    g = Gateway(manifests, Settings(access_log=False, fast_lane=fast_lane, flows=64))

    def get(port: int, source: str) -> int | str:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as c:
            try:
                return c.get(g.url(port, "/echo"), headers={"host": "atuin.test"}).status_code
            except httpx.TransportError as e:
                return type(e).__name__

    try:
        assert get(80, "127.1.9.8") == 200  # the trusted pod
        assert get(80, "127.0.0.1") == 200  # the host (Cilium's allow-localhost)
        assert get(80, "127.1.9.9") in ("RemoteProtocolError", "ReadError", "ConnectError")  # closed at once
        assert get(8000, "127.1.9.9") == 200  # envoy-external has no such policy
        dropped = [w["flow"] for w in g.dp.flow_ring.read() if w["flow"]["verdict"] == "DROPPED"]
        assert dropped and dropped[-1]["IP"]["source"] == "127.1.9.9" and dropped[-1]["drop_reason_desc"] == "POLICY_DENIED"
        # flows name the pods network policy knows, with Cilium's labels
        assert dropped[-1]["source"]["namespace"] == "lan" and "k8s:role=other" in dropped[-1]["source"]["labels"]
        assert dropped[-1]["source"]["workloads"] == [{"name": "other"}]
        # the LAN by CIDR, on the Envoy pods' port for listener 80 (10080)
        snap = g.translate(manifests).snapshot
        check = gateway_sources(snap.network_policy, ["network/envoy-internal"], 80)
        assert check is not None and check("192.168.1.5") is None and check("8.8.8.8") is not None
        assert gateway_sources(snap.network_policy, ["network/envoy-external"], 8000) is None
    finally:
        g.close()


def test_who_may_connect_to_a_gateway_tcp_listener(backend: Backend) -> None:
    import socket

    tcp = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy-tcp, namespace: network}
spec:
  gatewayClassName: envoy
  listeners: [{name: ssh, protocol: TCP, port: 2222, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: TCPRoute}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: ssh, namespace: selfhosted}
spec:
  parentRefs: [{name: envoy-tcp, namespace: network}]
  rules: [{backendRefs: [{name: atuin, port: 80}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: envoy-tcp-clients, namespace: network}
spec:
  endpointSelector: {matchLabels: {gateway.networking.k8s.io/gateway-name: envoy-tcp}}
  ingress: [{fromEndpoints: [{matchLabels: {role: trusted, "k8s:io.kubernetes.pod.namespace": lan}}]}]
"""
    g = Gateway(GATEWAYS.split("---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway")[0] + app("atuin", backend.port)
                + client_pod("trusted", "127.1.9.8", "trusted") + client_pod("other", "127.1.9.9", "other") + tcp,
                Settings(access_log=False))

    def ask(source: str) -> bytes:
        with socket.socket() as s:
            s.settimeout(5)
            s.bind((source, 0))
            s.connect(("127.0.0.1", g.port(2222)))
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try:
                return s.recv(12)
            except ConnectionResetError:
                return b""

    try:
        assert ask("127.1.9.8") == b"HTTP/1.1 200"
        assert ask("127.1.9.9") == b""
    finally:
        g.close()
