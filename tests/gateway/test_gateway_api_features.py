"""Gateway API features against real loopback backends: merged gateways on one address (HTTP
and HTTPS by SNI), HTTPRoute retry (the backend counts the attempts), the CORS filter, filters
on backendRefs, and 421 for a request misdirected to another HTTPS listener."""

from __future__ import annotations

import itertools
import json
import socket
import ssl
from typing import Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from homeplane.gateway.server import Settings
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import service
from tests.gateway.test_fastlane import Scripted, exchange, ok, responses
from tests.translate.helpers import tls_secret

GATEWAYS = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
  parametersRef: {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: merged, namespace: network}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: merged, namespace: network}
spec: {mergeGateways: true}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy-external, namespace: network}
spec:
  gatewayClassName: envoy
  listeners:
    - {name: http, protocol: HTTP, port: 80, hostname: "*.public.test", allowedRoutes: {namespaces: {from: All}}}
    - {name: https, protocol: HTTPS, port: 443, hostname: "*.public.test", tls: {certificateRefs: [{name: public}]}, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy-internal, namespace: network}
spec:
  gatewayClassName: envoy
  listeners:
    - {name: http, protocol: HTTP, port: 80, hostname: "*.lan.test", allowedRoutes: {namespaces: {from: All}}}
    - {name: https, protocol: HTTPS, port: 443, hostname: "*.lan.test", tls: {certificateRefs: [{name: lan}]}, allowedRoutes: {namespaces: {from: All}}}
"""


def routes(gw: str, host: str, svc: str) -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {svc}, namespace: apps}}
spec:
  parentRefs: [{{name: {gw}, namespace: network}}]
  hostnames: [{host}]
  rules: [{{backendRefs: [{{name: {svc}, port: 80}}]}}]
"""


@pytest.fixture
def merged(backend: Backend, backend_b: Backend) -> Iterator[Gateway]:
    m = (
        GATEWAYS + tls_secret("public", "network", "*.public.test") + tls_secret("lan", "network", "*.lan.test")
        + service("a", backend.port) + service("b", backend_b.port)
        + routes("envoy-external", "app.public.test", "a") + routes("envoy-internal", "app.lan.test", "b")
    )
    g = Gateway(m)  # every Gateway binds 127.0.0.1: merged, they share its ports
    yield g
    g.close()


def tls_get(port: int, sni: str, host: str, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=sni) as s:
        cert = s.getpeercert(binary_form=True)
        s.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert cert
    return data


def test_merged_gateways_share_one_address(merged: Gateway) -> None:
    assert [b.get("mergedGateways") for b in merged.dp.bindings if b["port"] == 80] == [["network/envoy-external", "network/envoy-internal"]]
    for host, backend in (("app.public.test", "a"), ("app.lan.test", "b")):
        (status, _, body), = responses(exchange(merged.port(80), f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()))
        assert status == b"HTTP/1.1 200 OK" and json.loads(body)["backend"] == backend
        (status, _, body), = responses(tls_get(merged.port(443), host, host))
        assert status == b"HTTP/1.1 200 OK" and json.loads(body)["backend"] == backend
    status = merged.translate(GATEWAYS).status
    external = next(v for k, v in status.items() if k[1] == "Gateway" and k[3] == "envoy-external")
    assert all(c["status"] == "True" for c in external["conditions"])


def test_a_request_for_another_https_listener_is_421(merged: Gateway) -> None:
    # connected (SNI) for the public listener, asking for a name the LAN listener owns
    raw = tls_get(merged.port(443), "app.public.test", "app.lan.test")
    assert raw.startswith(b"HTTP/1.1 421 ")
    # over HTTP/2, as a browser coalescing connections would send it
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", merged.port(443)), timeout=5) as raw_sock, ctx.wrap_socket(raw_sock, server_hostname="app.public.test") as s:
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        for sid, host in ((1, "app.lan.test"), (3, "app.public.test")):
            c.send_headers(sid, [(":method", "GET"), (":path", "/echo"), (":scheme", "https"), (":authority", host)], end_stream=True)
        s.sendall(c.data_to_send())
        statuses: dict[int, str] = {}
        while len(statuses) < 2:
            for ev in c.receive_data(s.recv(65536)):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = dict(ev.headers)[":status"]
            s.sendall(c.data_to_send())
    assert statuses == {1: "421", 3: "200"}


ROUTE = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: network}
spec:
  gatewayClassName: envoy
  listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: network}]
  hostnames: [app.test]
  rules:
"""


def get(g: Gateway, path: str, extra: str = "", method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    (status, headers, body), = responses(exchange(g.port(80), f"{method} {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n".encode()))
    return int(status.split()[1]), headers, body


@pytest.mark.parametrize("fast", [True, False])
def test_httproute_retry_counts_attempts(fast: bool) -> None:
    flaky = itertools.count(1)  # attempts across connections (a retried one is not reused)
    s = Scripted({
        "/flaky": lambda n: ok(b"third time") if next(flaky) >= 3 else b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        "/broken": lambda n: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        "/teapot": lambda n: b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n",
    })
    rules = """
    - matches: [{path: {type: PathPrefix, value: /}}]
      retry: {attempts: 2, codes: [503, 500], backoff: 10ms}
      backendRefs: [{name: a, port: 80}]
"""
    g = Gateway(ROUTE + rules + service("a", s.port), Settings(access_log=False, fast_lane=fast))
    try:
        assert get(g, "/flaky")[0] == 200 and len(s.bodies) == 3  # two retries on 503
        before = len(s.bodies)
        assert get(g, "/broken")[0] == 500 and len(s.bodies) - before == 3  # one attempt and two retries, then the answer
        before = len(s.bodies)
        assert get(g, "/teapot")[0] == 418 and len(s.bodies) - before == 1  # a code it was not asked to retry
    finally:
        g.close()
        s.close()


def test_cors_filter_and_backend_filters(backend: Backend) -> None:
    rules = """
    - matches: [{path: {type: PathPrefix, value: /echo}}]
      filters:
        - type: CORS
          cors: {allowOrigins: ["https://*.home.test"], allowMethods: [GET, PUT], allowHeaders: [x-token], allowCredentials: true, maxAge: 600}
      backendRefs:
        - name: a
          port: 80
          filters:
            - {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Backend-Filter, value: "yes"}]}}
            - {type: URLRewrite, urlRewrite: {hostname: app.internal}}
    - matches: [{path: {type: PathPrefix, value: /redirect}}]
      backendRefs: [{name: a, port: 80, filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]}]
"""
    g = Gateway(ROUTE + rules + service("a", backend.port))
    try:
        status, headers, _ = get(g, "/echo", "Origin: https://ui.home.test\r\nAccess-Control-Request-Method: PUT\r\n", "OPTIONS")
        assert status == 200 and headers[b"access-control-allow-origin"] == b"https://ui.home.test"
        assert headers[b"access-control-allow-methods"] == b"GET, PUT" and headers[b"access-control-max-age"] == b"600"
        assert headers[b"access-control-allow-credentials"] == b"true"
        assert not backend.requests  # a preflight is answered by the gateway
        status, headers, body = get(g, "/echo", "Origin: https://evil.test\r\n")
        assert status == 200 and b"access-control-allow-origin" not in headers
        seen = dict((n, v) for n, v in json.loads(body)["headers"])
        assert seen["host"] == "app.internal" and seen["x-backend-filter"] == "yes"
        status, headers, _ = get(g, "/echo", "Origin: https://ui.home.test\r\n")
        assert headers[b"access-control-allow-origin"] == b"https://ui.home.test"
        assert get(g, "/redirect")[0] == 500  # a redirect on a backendRef is not served
        st = g.translate(ROUTE + rules + service("a", backend.port)).status
        route = next(v for k, v in st.items() if k[1] == "HTTPRoute")
        resolved = next(c for c in route["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
        assert resolved["status"] == "False" and resolved["reason"] == "UnsupportedRefValue"
    finally:
        g.close()


def test_envoy_gateway_httproutefilter_direct_response(backend: Backend) -> None:
    """Envoy Gateway's HTTPRouteFilter: a rule whose ExtensionRef names one with directResponse
    answers by itself (inline body or a ConfigMap's), with its status and content type."""
    filters = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: HTTPRouteFilter
metadata: {name: maintenance, namespace: apps}
spec:
  directResponse:
    contentType: application/json
    statusCode: 503
    body: {type: Inline, inline: '{"status": "maintenance"}'}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: HTTPRouteFilter
metadata: {name: robots, namespace: apps}
spec:
  directResponse:
    body: {type: ValueRef, valueRef: {kind: ConfigMap, name: robots}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: robots, namespace: apps}
data: {a-note: "for humans", response.body: "User-agent: *\\nDisallow: /\\n"}
"""
    rules = """
    - matches: [{path: {type: PathPrefix, value: /down}}]
      filters: [{type: ExtensionRef, extensionRef: {group: gateway.envoyproxy.io, kind: HTTPRouteFilter, name: maintenance}}]
    - matches: [{path: {type: Exact, value: /robots.txt}}]
      filters: [{type: ExtensionRef, extensionRef: {group: gateway.envoyproxy.io, kind: HTTPRouteFilter, name: robots}}]
    - matches: [{path: {type: PathPrefix, value: /missing}}]
      filters: [{type: ExtensionRef, extensionRef: {group: gateway.envoyproxy.io, kind: HTTPRouteFilter, name: nope}}]
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: a, port: 80}]
"""
    g = Gateway(ROUTE + rules + service("a", backend.port) + filters)
    try:
        status, headers, body = get(g, "/down/now")
        assert (status, headers[b"content-type"], json.loads(body)) == (503, b"application/json", {"status": "maintenance"})
        status, headers, body = get(g, "/robots.txt")
        assert (status, headers[b"content-type"], body) == (200, b"text/plain", b"User-agent: *\nDisallow: /\n")
        assert get(g, "/missing")[0] == 500  # a filter that does not exist: the rule is not served
        assert get(g, "/other")[0] == 200 and len(backend.requests) == 1
        st = g.translate(ROUTE + rules + service("a", backend.port) + filters).status
        route = next(v for k, v in st.items() if k[1] == "HTTPRoute")
        refs = next(c for c in route["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
        assert refs["status"] == "False" and "HTTPRouteFilter apps/nope not found" in refs["message"]
    finally:
        g.close()
