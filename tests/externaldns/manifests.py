"""A small repo for the DNS automation tests: two Gateways, routes, Services, a DNSEndpoint."""

from __future__ import annotations

from pathlib import Path

from tests.translate.helpers import tls_secret

GATEWAYS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: envoy-external
  namespace: network
  annotations: {external-dns.alpha.kubernetes.io/target: external.home.example}
spec:
  gatewayClassName: envoy
  infrastructure:
    annotations:
      external-dns.alpha.kubernetes.io/hostname: external.home.example
      lbipam.cilium.io/ips: 192.168.42.120
  listeners:
    - {name: http, protocol: HTTP, port: 80}
    - {name: https, protocol: HTTPS, port: 443, allowedRoutes: {namespaces: {from: All}},
       tls: {certificateRefs: [{name: tls}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: envoy-internal
  namespace: network
spec:
  gatewayClassName: envoy
  infrastructure:
    annotations:
      external-dns.alpha.kubernetes.io/hostname: internal.home.example
      lbipam.cilium.io/ips: 192.168.42.121
  listeners:
    - {name: https, protocol: HTTPS, port: 443, hostname: "*.home.example", allowedRoutes: {namespaces: {from: All}},
       tls: {certificateRefs: [{name: tls}]}}
---
{TLS}
---
apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata: {name: pool}
spec:
  blocks: [{cidr: 192.168.42.0/24}]
"""


GATEWAYS = GATEWAYS.replace("{TLS}", tls_secret("tls", "network", "*.home.example", "home.example").strip().removeprefix("---").strip())


def route(name: str, ns: str, gateway: str, hosts: list[str] | None, annotations: dict[str, str] | None = None,
          section: str = "https") -> str:
    ann = "".join(f"\n    {k}: \"{v}\"" for k, v in (annotations or {}).items()) or " {}"
    hostnames = f"\n  hostnames: [{', '.join(hosts)}]" if hosts else ""
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: {ns}
  annotations:{ann}
spec:
  parentRefs: [{{name: {gateway}, namespace: network, sectionName: {section}}}]{hostnames}
  rules: [{{backendRefs: [{{name: {name}, port: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{ports: [{{port: 80}}]}}
"""


def external_dns(name: str, provider: str, sources: list[str], owner: str, prefix: str, extra: list[str],
                 policy: str = "sync", env: str = "") -> str:
    args = "".join(f"\n      - \"{a}\"" for a in extra)
    return f"""
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {{name: {name}, namespace: network}}
spec:
  chartRef: {{kind: OCIRepository, name: {name}}}
  values:
    provider: {{name: {provider}}}
    sources: [{', '.join(sources)}]
    txtOwnerId: {owner}
    txtPrefix: "{prefix}"
    policy: {policy}
    triggerLoopOnEvent: true
    domainFilters: [home.example]{env}
    extraArgs:{args or ' []'}
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: OCIRepository
metadata: {{name: {name}, namespace: network}}
spec: {{url: oci://ghcr.io/home-operations/charts-mirror/external-dns, ref: {{tag: 1.21.1}}}}
"""


def write(dirpath: Path, docs: dict[str, str]) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (dirpath / name).write_text(text)
    return dirpath
