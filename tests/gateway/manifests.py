"""Manifest snippets for gateway tests."""

from __future__ import annotations


def gateway(listeners: str = "- {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}") -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: envoy}}
spec: {{controllerName: gateway.envoyproxy.io/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: network}}
spec:
  gatewayClassName: envoy
  listeners:
    {listeners}
"""


def service(name: str, port: int, ns: str = "apps", ready: bool = True) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: {str(ready).lower()}}}}}]
"""


def route(name: str = "r", hostnames: str = "[app.test]", rules: str = "", ns: str = "apps", section: str = "") -> str:
    rules = rules or "\n    - backendRefs: [{name: a, port: 80}]"
    sec = f", sectionName: {section}" if section else ""
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw, namespace: network{sec}}}]
  hostnames: {hostnames}
  rules:{rules}
"""


def two_endpoints(name: str, a: int, b: int) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: apps}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: apps}}
subsets:
  - addresses: [{{ip: 127.0.0.1}}]
    ports: [{{name: http, port: {a}}}]
  - addresses: [{{ip: 127.0.0.1}}]
    ports: [{{name: http, port: {b}}}]
"""
