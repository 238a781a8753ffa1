"""Who is who when there is no Kubernetes: the "pods" that network policies select.

homeplane runs no pods, so it builds the identities from what the manifests say:

- **the endpoints of Services** are pods: their namespace is the Service's, their labels the
  Service's selector (every pod behind it carries those) plus the pod template labels of the
  workload the selector picks (a Deployment, StatefulSet or DaemonSet in the repo, or an
  app-template controller, which the importer renders as one), their named ports the Service's
  string ``targetPort``\\ s;
- **each Gateway** is the Envoy proxy pods Envoy Gateway would run for it, with the labels it
  gives them (``gateway.networking.k8s.io/gateway-name`` included), in the namespace of the
  Envoy Gateway controller (its HelmRelease) or else the Gateway's own;
- **homeplane's DNS server** is CoreDNS's pods (``k8s-app=kube-dns`` in ``kube-system``), unless
  the repo has a ``kube-system/kube-dns`` Service with pods of its own;
- **the host** is this machine (its loopback and node addresses), **the world** everything else
  (LAN clients included, as in Cilium, where a LAN is outside the cluster).

Cilium's selectors see a pod's labels plus the ones it derives (``io.kubernetes.pod.namespace``,
``io.cilium.k8s.namespace.labels.*``); :meth:`Identity.cilium_labels` gives those.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

from homeplane.translate import snapshot as ir

NS_LABEL = "io.kubernetes.pod.namespace"
NS_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod")


@dataclass(frozen=True)
class Identity:
    kind: Literal["pod", "host", "world", "unknown"]
    name: str  # for people: "pod media/jellyfin 10.0.0.5", "gateway network/envoy-internal", "world 1.2.3.4"
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ns_labels: Mapping[str, str] = field(default_factory=dict)
    address: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)  # named ports (container port names)
    services: frozenset[tuple[str, str]] = frozenset()  # (namespace, name) of the Services it backs

    def cilium_labels(self) -> dict[str, str]:
        """The labels Cilium's selectors see (``reserved:`` ones for the host and the world)."""
        if self.kind != "pod":
            return {f"reserved:{self.kind}": ""}  # (reserved:unknown is no label Cilium has: nothing selects it)
        out = dict(self.labels)
        out[NS_LABEL] = self.namespace or "default"
        out["io.cilium.k8s.policy.cluster"] = "default"
        out.update({NS_LABELS_PREFIX + k: v for k, v in self.ns_labels.items()})
        return out

    @property
    def family(self) -> int | None:
        try:
            return ipaddress.ip_address(self.address).version if self.address else None
        except ValueError:
            return None


def world(address: str) -> Identity:
    return Identity("world", f"world {address}", address=address)


def host(address: str | None = None) -> Identity:
    return Identity("host", f"host {address}" if address else "host", address=address)


def envoy_proxy_labels(gateway: ir.Ref) -> dict[str, str]:
    """The labels Envoy Gateway puts on a Gateway's proxy pods."""
    return {
        "app.kubernetes.io/name": "envoy",
        "app.kubernetes.io/component": "proxy",
        "app.kubernetes.io/managed-by": "envoy-gateway",
        "gateway.envoyproxy.io/owning-gateway-name": gateway.name,
        "gateway.envoyproxy.io/owning-gateway-namespace": gateway.namespace or "default",
        "gateway.networking.k8s.io/gateway-name": gateway.name,
    }


@dataclass
class Identities:
    """The pods, gateways and namespaces of one configuration, and who an address is."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    service_pods: dict[tuple[str, str], Identity] = field(default_factory=dict)  # (ns, service) -> its pods
    by_address: dict[str, Identity] = field(default_factory=dict)
    gateways: dict[str, Identity] = field(default_factory=dict)  # "ns/name" -> its proxy pods
    dns: Identity | None = None  # homeplane's DNS server, as CoreDNS's pods (k8s-app=kube-dns in kube-system)
    # addresses that are endpoints of pods that cannot be one pod (other namespaces, or labels that
    # contradict): as a source such an address is nobody any selector or CIDR names (only "all")
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    host_addresses: frozenset[str] = frozenset({"127.0.0.1", "::1"})

    def ns_labels(self, namespace: str) -> dict[str, str]:
        return self.namespaces.get(namespace) or {"kubernetes.io/metadata.name": namespace}

    def of_address(self, address: str) -> Identity:
        """Who connects from this address: this machine's own addresses are the host (even where
        an endpoint sits too: an endpoints file often puts apps on 127.0.0.1, and the gateway,
        the L4 proxy and local tools connect from there); else a pod (a Service endpoint), other
        loopback addresses the host, and the rest the world."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return world(address)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            return self.of_address(str(ip.ipv4_mapped))
        address = str(ip)
        if address in self.host_addresses:
            return host(address)
        ident = self.by_address.get(address)
        if ident is not None:
            return ident
        if address in self.ambiguous:
            return Identity("unknown", f"ambiguous {address} ({', '.join(self.ambiguous[address])})", address=address)
        if ip.is_loopback:
            return host(address)
        return world(address)

    def all_pods(self) -> list[Identity]:
        seen: dict[tuple[str | None, str], Identity] = {}
        for ident in (*self.service_pods.values(), *self.gateways.values(), *((self.dns,) if self.dns else ())):
            seen.setdefault((ident.namespace, ident.name), ident)
        return list(seen.values())


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A workload's ``spec.selector`` (matchLabels only, or the bare map of older kinds)."""
    want = selector.get("matchLabels") if isinstance(selector.get("matchLabels"), dict) else selector
    return isinstance(want, dict) and bool(want) and all(labels.get(str(k)) == str(v) for k, v in want.items())


def _templates(objects: Iterable[Any]) -> list[tuple[str, str, dict[str, str], dict[str, int]]]:
    """(namespace, workload, pod template labels, named container ports) of the repo's workloads."""
    out = []
    for o in objects:
        if o.kind not in WORKLOAD_KINDS or o.group not in ("apps", ""):
            continue
        spec = o.raw.get("spec") or {}
        pod = spec if o.kind == "Pod" else (spec.get("template") or {}).get("spec") or {}
        meta = o.raw.get("metadata") if o.kind == "Pod" else (spec.get("template") or {}).get("metadata")
        labels = (meta or {}).get("labels") or {}
        if not isinstance(labels, dict):
            continue
        ports: dict[str, int] = {}
        for c in (pod.get("containers") or []) if isinstance(pod, dict) else []:
            for p in (c.get("ports") or []) if isinstance(c, dict) else []:
                if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int):
                    ports[str(p["name"])] = p["containerPort"]
        out.append((o.namespace or "default", f"{o.kind}/{o.name}", {str(k): str(v) for k, v in labels.items()}, ports))
    return out


def _envoy_gateway_namespace(objects: Iterable[Any]) -> str | None:
    """Where Envoy Gateway's controller (and so, by default, its proxies) runs: the namespace of
    its HelmRelease (chart ``gateway-helm``)."""
    sources: set[tuple[str | None, str]] = set()
    releases = []
    for o in objects:
        spec = o.raw.get("spec") or {}
        if o.kind in ("OCIRepository", "HelmRepository") and "gateway-helm" in str(spec.get("url") or ""):
            sources.add((o.namespace, o.name))
        elif o.kind == "HelmRelease":
            releases.append(o)
    for r in releases:
        spec = r.raw.get("spec") or {}
        chart = ((spec.get("chart") or {}).get("spec") or {}).get("chart")
        ref = spec.get("chartRef") or {}
        if chart == "gateway-helm" or (ref.get("name") and (ref.get("namespace") or r.namespace, ref["name"]) in sources):
            return r.namespace
    return None


def build_identities(
    objects: list[Any], services: Iterable[ir.Service], pools: Mapping[str, ir.BackendPool],
    gateways: Iterable[ir.Gateway], host_addresses: Iterable[str] = (),
) -> Identities:
    ids = Identities()
    if host_addresses:
        ids.host_addresses = frozenset(host_addresses) | ids.host_addresses
    for o in objects:
        if o.kind == "Namespace" and not o.group:
            ids.namespaces[o.name] = {**o.labels, "kubernetes.io/metadata.name": o.name}
    templates = _templates(objects)
    for svc in services:
        ns = svc.ref.namespace or "default"
        pools_of = [pools.get(p.pool) for p in svc.ports]
        addresses = sorted({e.address for pool in pools_of if pool for e in pool.endpoints if not e.fqdn})
        labels = dict(svc.selector or {})
        named: dict[str, int] = {}
        for t_ns, _, t_labels, t_ports in templates:
            if t_ns == ns and labels and all(t_labels.get(k) == v for k, v in labels.items()):
                labels = {**t_labels, **labels}
                named = {**t_ports, **named}
                break
        for p, pool in zip(svc.ports, pools_of):
            if isinstance(p.target_port, str) and pool and pool.endpoints:
                named.setdefault(p.target_port, pool.endpoints[0].port)
        if not svc.selector and not addresses:
            continue
        ident = Identity(
            "pod", f"pod {ns}/{svc.ref.name}", ns, labels, ids.ns_labels(ns), None, named, frozenset({(ns, svc.ref.name)})
        )
        ids.service_pods[(ns, svc.ref.name)] = ident
        for addr in addresses:
            if addr in ids.ambiguous:
                ids.ambiguous[addr].append(f"{ns}/{svc.ref.name}")
                continue
            prev = ids.by_address.get(addr)
            if prev is None:
                ids.by_address[addr] = Identity(
                    "pod", f"pod {ns}/{svc.ref.name} {addr}", ns, labels, ident.ns_labels, addr, named, ident.services
                )
            elif prev.namespace == ns and all(prev.labels.get(k, v) == v for k, v in labels.items()):
                # one pod behind several Services: it carries all their labels
                ids.by_address[addr] = Identity(
                    "pod", prev.name, ns, {**prev.labels, **labels}, prev.ns_labels, addr, {**named, **prev.ports},
                    prev.services | ident.services,
                )
            else:  # not one pod: two namespaces, or labels that contradict
                del ids.by_address[addr]
                ids.ambiguous[addr] = [f"{a}/{b}" for a, b in sorted(prev.services)] + [f"{ns}/{svc.ref.name}"]
    if ("kube-system", "kube-dns") not in ids.service_pods:
        ids.dns = Identity("pod", "dns kube-system/kube-dns (homeplane's DNS server)", "kube-system", {"k8s-app": "kube-dns"},
                           ids.ns_labels("kube-system"))
    eg_ns = _envoy_gateway_namespace(objects)
    for gw in gateways:
        ns = eg_ns or gw.ref.namespace or "default"
        ids.gateways[gw.key] = Identity("pod", f"gateway {gw.key}", ns, envoy_proxy_labels(gw.ref), ids.ns_labels(ns))
    return ids
