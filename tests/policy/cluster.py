"""The Kubernetes e2e "truth table" cluster: namespaces x, y, z with pods a, b, c each.

Every pod is a Service's endpoint on a loopback address of its own (127.1.N.P, port 80 and 81),
so the same manifests serve the pure evaluator and real sockets through the L4 proxy.
"""

from __future__ import annotations

import itertools

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
ALL = tuple(f"{n}/{p}" for n, p in itertools.product(NAMESPACES, PODS))


def address(pod: str) -> str:
    ns, name = pod.split("/")
    return f"127.1.{NAMESPACES.index(ns) + 1}.{PODS.index(name) + 1}"


def cluster_manifests(vip_base: str = "127.2", ports: tuple[int, int] = (80, 81), svc_ports: tuple[int, int] = (80, 81)) -> str:
    """Namespaces, Deployments (pod labels and named ports) and a Service per pod with its endpoint;
    the Service of pod P in namespace N has ClusterIP {vip_base}.N.P. Pods serve on ``ports``,
    Services on ``svc_ports``."""
    (p80, p81), (s80, s81) = ports, svc_ports
    docs = []
    for ni, ns in enumerate(NAMESPACES, 1):
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n")
        for pi, pod in enumerate(PODS, 1):
            addr = address(f"{ns}/{pod}")
            docs.append(f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: {pod}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{pod: {pod}}}}}
  template:
    metadata: {{labels: {{pod: {pod}, tier: t{pi}}}}}
    spec:
      containers:
        - name: main
          ports: [{{name: serve-80-tcp, containerPort: {p80}}}, {{name: serve-81-tcp, containerPort: {p81}}}]
""")
            docs.append(f"""apiVersion: v1
kind: Service
metadata: {{name: s-{pod}, namespace: {ns}}}
spec:
  clusterIP: {vip_base}.{ni}.{pi}
  selector: {{pod: {pod}}}
  ports: [{{name: http, port: {s80}, targetPort: serve-80-tcp}}, {{name: alt, port: {s81}, targetPort: serve-81-tcp}}]
""")
            for pname, port in (("http", p80), ("alt", p81)):
                docs.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s-{pod}-{pname}, namespace: {ns}, labels: {{kubernetes.io/service-name: s-{pod}}}}}
addressType: IPv4
ports: [{{name: {pname}, port: {port}, protocol: TCP}}]
endpoints: [{{addresses: ["{addr}"], conditions: {{ready: true}}}}]
""")
    return "---\n".join(docs)
