"""external-dns's sources over homeplane's loaded manifests (pure): which records the repo wants.

- ``gateway-httproute`` (and grpc/tls/tcp/udp routes): each route parent whose status says
  Accepted, on a listener of a matching protocol (and port, section, allowed namespaces and
  kinds); the hostname is the route's hostname narrowed by the listener's (a wildcard on either
  side); the targets are the Gateway's ``target`` annotation, else its ``status.addresses``.
  A route with no hostnames takes the listener's; the ``hostname`` annotation adds names
  (``gateway-hostname-source`` chooses between them).
- ``service``: LoadBalancer Services (and the ones Envoy Gateway makes for Gateways, with the
  Gateway's ``infrastructure.annotations``) with a ``hostname`` annotation point at their
  load-balancer addresses (or the ``target`` annotation); ExternalName Services at their name;
  ``internal-hostname`` and ``--publish-internal-services`` at the ClusterIP.
- ``crd``: DNSEndpoint objects, as written.

``controller`` annotations other than ``dns-controller`` opt an object out; ``ttl``,
``set-identifier``, ``cloudflare-proxied`` and ``webhook-*`` annotations become record fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from homeplane.api.models.envoy import gateway_service_key
from homeplane.api.selectors import parse_selector, selector_matches
from homeplane.api.models.gateway import Gateway
from homeplane.externaldns.config import Instance
from homeplane.externaldns.endpoint import Endpoint, endpoints_for_hostname, merge_endpoints, normalize, suitable_type

GATEWAY_GROUP = "gateway.networking.k8s.io"
ROUTE_SOURCES = {
    "gateway-httproute": ("HTTPRoute", ("HTTP", "HTTPS")),
    "gateway-grpcroute": ("GRPCRoute", ("HTTP", "HTTPS")),
    "gateway-tlsroute": ("TLSRoute", ("TLS",)),
    "gateway-tcproute": ("TCPRoute", ("TCP",)),
    "gateway-udproute": ("UDPRoute", ("UDP",)),
}
SUPPORTED_SOURCES = (*ROUTE_SOURCES, "service", "crd")
CONTROLLER_VALUE = "dns-controller"
CLOUDFLARE_PROPERTIES = ("cloudflare-proxied", "cloudflare-record-comment", "cloudflare-tags")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass
class SourceInput:
    """What the sources read: the loaded objects, translation status and allocated addresses."""

    objects: list[Any]
    status: Mapping[tuple, dict[str, Any]] = field(default_factory=dict)
    lb_ips: Mapping[tuple[str, str], list[str]] = field(default_factory=dict)
    cluster_ips: Mapping[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: Any) -> SourceInput:
        return cls(result.load.objects, result.translation.status, result.lb_ips, result.cluster_ips)


# --- annotations -----------------------------------------------------------------------------


class Annotations:
    """An object's external-dns annotations under the instance's prefixes (the first one that
    has the key wins)."""

    def __init__(self, raw: Mapping[str, str], prefixes: tuple[str, ...]):
        self.raw = raw
        self.prefixes = prefixes

    def get(self, key: str) -> str | None:
        for p in self.prefixes:
            if p + key in self.raw:
                return self.raw[p + key]
        return None

    def hostnames(self, key: str = "hostname") -> list[str]:
        v = self.get(key)
        return [h for h in v.replace(" ", "").split(",") if h] if v else []

    def targets(self) -> list[str]:
        v = self.get("target")
        return [t.rstrip(".") for t in v.replace(" ", "").split(",") if t] if v else []

    def controller_ok(self) -> bool:
        v = self.get("controller")
        return v is None or v == CONTROLLER_VALUE

    def ttl(self) -> int:
        v = self.get("ttl")
        if v is None:
            return 0
        seconds = _go_duration_or_int(v)
        return seconds if seconds is not None and 1 <= seconds <= 2**31 - 1 else 0

    def provider_specific(self) -> tuple[tuple[str, tuple[tuple[str, str], ...]], str]:
        props: list[tuple[str, str]] = []
        set_id = ""
        for p in self.prefixes:
            for k, v in self.raw.items():
                if not k.startswith(p):
                    continue
                attr = k[len(p):]
                if attr == "set-identifier":
                    set_id = set_id or v
                elif attr in CLOUDFLARE_PROPERTIES:  # the ones external-dns turns into properties (and homeplane serves)
                    props.append((self.prefixes[0] + attr, v))
                elif attr.startswith("webhook-"):
                    props.append(("webhook/" + attr[len("webhook-"):], v))
                elif attr == "record-type":
                    props.append(("record-type", v))
        seen: dict[str, str] = {}
        for k, v in props:
            seen.setdefault(k, v)
        return tuple(sorted(seen.items())), set_id  # type: ignore[return-value]


def _go_duration_or_int(v: str) -> int | None:
    from homeplane.externaldns.config import _duration

    try:
        return int(_duration(v))
    except ValueError:
        pass
    try:
        return int(v)
    except ValueError:
        return None


# --- the sources -----------------------------------------------------------------------------


def _filters_ok(inst: Instance, o: Any, ann: Annotations) -> bool:
    if inst.source_namespace and (o.namespace or "") != inst.source_namespace:
        return False
    if inst.label_filter and not selector_matches(parse_selector(inst.label_filter), o.labels):
        return False
    if inst.annotation_filter and not selector_matches(parse_selector(inst.annotation_filter), o.annotations):
        return False
    return ann.controller_ok()


def _gw_host(h: str) -> str | None:
    """A listener or route hostname in canonical form; None when it is not a valid one."""
    if h == "":
        return ""
    if suitable_type(h) != "CNAME" or not _DNS1123.match(h.lower().removeprefix("*.")):
        return None
    return h.lower()


def matching_host(a: str, b: str) -> str | None:
    """The hostname a listener (a) and a route (b) share, wildcards narrowed; None if none."""
    ha, hb = _gw_host(a), _gw_host(b)
    if ha is None or hb is None:
        return None
    if ha == "":
        return hb
    if hb == "" or ha == hb:
        return ha
    if len(hb) < len(ha) or (len(ha) == len(hb) and hb.startswith("*.")):
        ha, hb = hb, ha
    if ha.startswith("*.") and hb.endswith(ha[1:]):
        return hb
    return None


def _route_hosts(inst: Instance, raw: dict[str, Any], ann: Annotations) -> list[str]:
    spec_hosts = [str(h) for h in (raw.get("spec") or {}).get("hostnames") or []]
    source = (ann.get("gateway-hostname-source") or "").lower()
    ignore = inst.flag_bool("ignore-hostname-annotation")
    if source == "annotation-only":
        return [] if ignore else ann.hostnames()
    if source == "defined-hosts-only":
        return spec_hosts
    hosts = list(spec_hosts) or [""]
    if not ignore:
        hosts += ann.hostnames()
    return hosts


def _accepted(conditions: list[dict[str, Any]]) -> bool:
    return any(c.get("type") == "Accepted" and c.get("status") == "True" for c in conditions or [])


def gateway_route_endpoints(inst: Instance, src: SourceInput, source: str) -> list[Endpoint]:
    kind, protocols = ROUTE_SOURCES[source]
    gateways: dict[tuple[str, str], Any] = {}
    for o in src.objects:
        if isinstance(o.model, Gateway):
            if inst.gateway_namespace and o.namespace != inst.gateway_namespace:
                continue
            gl = inst.flag("gateway-label-filter")
            if gl and not selector_matches(parse_selector(gl), o.labels):
                continue
            if not Annotations(o.annotations, inst.annotation_prefixes).controller_ok():
                continue
            gateways[(o.namespace or "", o.name)] = o
    ns_labels = {o.name: o.labels for o in src.objects if o.kind == "Namespace"}
    out: list[Endpoint] = []
    for o in src.objects:
        if o.kind != kind or o.group != GATEWAY_GROUP:
            continue
        ann = Annotations(o.annotations, inst.annotation_prefixes)
        if not _filters_ok(inst, o, ann):
            continue
        hosts = _route_hosts(inst, o.raw, ann)
        parents = (src.status.get(o.key) or {}).get("parents") or []
        refs = (o.raw.get("spec") or {}).get("parentRefs") or []
        host_targets: dict[str, list[str]] = {}
        for ps in parents:
            ref = ps.get("parentRef") or {}
            if not _accepted(ps.get("conditions")):
                continue
            if (ref.get("group") or GATEWAY_GROUP) != GATEWAY_GROUP or (ref.get("kind") or "Gateway") != "Gateway":
                continue
            gns = ref.get("namespace") or o.namespace or ""
            if not any(_same_ref(r, ref, o.namespace or "") for r in refs):
                continue
            gw = gateways.get((gns, str(ref.get("name"))))
            if gw is None or (inst.gateway_name and inst.gateway_name != gw.name):
                continue
            gann = Annotations(gw.annotations, inst.annotation_prefixes)
            targets = gann.targets() or [
                str(a.get("value")) for a in (src.status.get(gw.key) or {}).get("addresses") or [] if a.get("value")
            ]
            section = ref.get("sectionName")
            for ls in gw.model.spec.listeners:
                if section and ls.name != section:
                    continue
                if ls.protocol not in protocols or (ref.get("port") and int(ref["port"]) != ls.port):
                    continue
                if not _allowed(ls, gw.namespace or "", o, ns_labels):
                    continue
                for h in hosts:
                    if not ls.hostname and h == "":
                        continue
                    host = matching_host(ls.hostname or "", h)
                    if host is not None:
                        host_targets.setdefault(host, []).extend(targets)
        resource = f"{kind.lower()}/{o.namespace}/{o.name}"
        props, set_id = ann.provider_specific()
        for host, targets in host_targets.items():
            out += endpoints_for_hostname(host, list(dict.fromkeys(targets)), ann.ttl(), props, set_id, resource)
    return out


def _same_ref(spec_ref: dict[str, Any], status_ref: dict[str, Any], route_ns: str) -> bool:
    return (
        str(spec_ref.get("name")) == str(status_ref.get("name"))
        and (spec_ref.get("namespace") or route_ns) == (status_ref.get("namespace") or route_ns)
        and (spec_ref.get("sectionName") or None) == (status_ref.get("sectionName") or None)
        and (spec_ref.get("kind") or "Gateway") == (status_ref.get("kind") or "Gateway")
    )


def _allowed(ls: Any, gw_ns: str, route: Any, ns_labels: Mapping[str, Mapping[str, str]]) -> bool:
    allow = ls.allowed_routes
    frm = allow.namespaces.from_
    if frm == "Same" and (route.namespace or "") != gw_ns:
        return False
    if frm == "Selector":
        sel = allow.namespaces.selector
        labels = dict(ns_labels.get(route.namespace or "", {}))
        labels.setdefault("kubernetes.io/metadata.name", route.namespace or "")
        if sel is None or not sel.matches(labels):
            return False
    if frm == "None":
        return False
    if allow.kinds:
        return any((k.group or GATEWAY_GROUP) == route.group and k.kind == route.kind for k in allow.kinds)
    return True


def service_endpoints(inst: Instance, src: SourceInput) -> list[Endpoint]:
    """LoadBalancer/ExternalName/ClusterIP Services with hostname annotations, plus the Service
    Envoy Gateway makes for each Gateway (carrying its infrastructure annotations)."""
    from homeplane.api.models.core import Service

    rows: list[tuple[Any, str, str, str, dict[str, str], list[str], str | None, str | None]] = []
    for o in src.objects:
        if isinstance(o.model, Service):
            spec = o.model.spec
            key = (o.namespace or "", o.name)
            rows.append((o, key[0], key[1], spec.type, o.annotations, list(src.lb_ips.get(key, [])),
                         src.cluster_ips.get(key) or spec.cluster_ip, getattr(spec, "external_name", None)))
        elif isinstance(o.model, Gateway):
            infra = o.model.spec.infrastructure
            ann = {str(k): str(v) for k, v in (infra.annotations if infra else {}).items()}
            ns, name = gateway_service_key(o.namespace or "", o.name)
            addrs = [str(a.get("value")) for a in (src.status.get(o.key) or {}).get("addresses") or [] if a.get("value")]
            rows.append((o, ns, name, "LoadBalancer", ann, list(src.lb_ips.get((ns, name), [])) or addrs, None, None))
    publish_internal = inst.flag_bool("publish-internal-services")
    out: list[Endpoint] = []
    for o, ns, name, stype, raw_ann, lb, cluster_ip, ext_name in rows:
        ann = Annotations(raw_ann, inst.annotation_prefixes)
        if inst.source_namespace and ns != inst.source_namespace:
            continue
        if inst.annotation_filter and not selector_matches(parse_selector(inst.annotation_filter), raw_ann):
            continue
        if inst.label_filter and not selector_matches(parse_selector(inst.label_filter), o.labels):
            continue
        if not ann.controller_ok():
            continue
        resource = f"service/{ns}/{name}"
        props, set_id = ann.provider_specific()
        ttl = ann.ttl()
        hostnames = [] if inst.flag_bool("ignore-hostname-annotation") else ann.hostnames()
        if stype == "LoadBalancer":
            targets = ann.targets() or lb
        elif stype == "ExternalName":
            targets = ann.targets() or ([ext_name] if ext_name else [])
        elif stype == "ClusterIP" and publish_internal and cluster_ip and cluster_ip != "None":
            targets = ann.targets() or [cluster_ip]
        else:
            targets = []
        for h in hostnames:
            if targets:
                out += endpoints_for_hostname(h, targets, ttl, props, set_id, resource)
        if cluster_ip and cluster_ip != "None":
            for h in ann.hostnames("internal-hostname"):
                out += endpoints_for_hostname(h, [cluster_ip], ttl, props, set_id, resource)
    return out


def crd_endpoints(inst: Instance, src: SourceInput) -> list[Endpoint]:
    from homeplane.api.models.externaldns import DNSEndpoint

    want_kind = inst.flag("crd-source-kind", "DNSEndpoint")
    out: list[Endpoint] = []
    for o in src.objects:
        if not isinstance(o.model, DNSEndpoint) or o.kind != want_kind:
            continue
        ann = Annotations(o.annotations, inst.annotation_prefixes)
        if not _filters_ok(inst, o, ann):
            continue
        for e in o.model.spec.endpoints:
            if not e.targets:
                continue
            labels = {**e.labels, "resource": f"crd/{o.namespace}/{o.name}"}
            out.append(Endpoint(
                normalize(e.dns_name), e.record_type, tuple(t.rstrip(".") if e.record_type == "CNAME" else t for t in e.targets),
                e.record_ttl or 0, e.set_identifier or "", labels,
                tuple((p.name, p.value) for p in e.provider_specific),
            ))
    return out


def desired_endpoints(inst: Instance, src: SourceInput) -> tuple[list[Endpoint], list[str]]:
    """Every record the instance's sources want, and the problems met on the way. Each source's
    records are merged within that source, then the sources' lists are concatenated (exact
    duplicates dropped), as external-dns's multi-source does: two sources wanting one name are
    two candidates for the planner to choose between."""
    out: list[Endpoint] = []
    problems: list[str] = []
    seen: set[tuple] = set()
    for source in inst.sources:
        try:
            if source in ROUTE_SOURCES:
                eps = gateway_route_endpoints(inst, src, source)
            elif source == "service":
                eps = service_endpoints(inst, src)
            elif source == "crd":
                eps = crd_endpoints(inst, src)
            else:
                problems.append(f"source {source!r} is not supported by homeplane (supported: {', '.join(SUPPORTED_SOURCES)})")
                continue
        except ValueError as e:
            problems.append(f"source {source}: {e}")
            continue
        for e in merge_endpoints(eps):
            k = (e.key, e.targets, e.ttl, e.provider_specific, tuple(sorted(e.labels.items())))
            if k not in seen:
                seen.add(k)
                out.append(e)
    return out, problems
