"""The networking objects of the bjw-s ``app-template`` chart (common library 4.x/5.x), from values.

Services (``service:``) and HTTPRoutes (``route:``) are rendered as the chart would:

* names: the release name (app-template sets ``global.nameOverride`` to it), with
  ``-<identifier>`` appended when more than one item of the kind is enabled (unless
  the name already ends with it), and ``forceRename``/``prefix``/``suffix``;
* a Service selects ``app.kubernetes.io/name``, ``/instance`` (the release) and
  ``/controller`` (its ``controller``, or the only enabled controller);
* ports are the enabled ``ports``; HTTP/HTTPS/TCP protocols become TCP;
* a route without ``rules`` gets one rule to the only Service; a backendRef by
  ``identifier`` resolves to that Service's name, its port by number, by port
  name, or the Service's primary port (``primary: true`` or the first by name).
"""

from __future__ import annotations

from typing import Any, Callable

from homeplane.importer.helm import TemplateError, render_tpl

GATEWAY_API = "gateway.networking.k8s.io/v1"


def _enabled(items: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(items, dict):
        return {}
    return {k: v for k, v in items.items() if isinstance(v, dict) and v.get("enabled", True) is not False}


def resource_name(release: str, identifier: str, values: dict[str, Any], count: int, tpl: Callable[[Any], Any]) -> str:
    if values.get("forceRename"):
        return str(tpl(values["forceRename"])).lower()
    name = release
    if values.get("prefix"):
        p = str(tpl(values["prefix"]))
        if p != name:
            name = f"{p}-{name}"
    if count > 1 and not name.endswith(f"-{identifier}") and name != identifier:
        name = f"{name}-{identifier}"
    if values.get("suffix"):
        s = str(tpl(values["suffix"]))
        if not name.endswith(f"-{s}"):
            name = f"{name}-{s}"
    return name.lower()


def _primary_port(svc: dict[str, Any]) -> dict[str, Any] | None:
    ports = _enabled(svc.get("ports"))
    for p in ports.values():
        if p.get("primary"):
            return p
    if ports:
        return ports[sorted(ports)[0]]
    return None


_WORKLOAD_KINDS = {"deployment": "Deployment", "statefulset": "StatefulSet", "daemonset": "DaemonSet"}


def _workloads(release: str, namespace: str, name: str, fullname: str, controllers: dict[str, dict[str, Any]],
               values: dict[str, Any], tpl: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """The controllers' pod templates (their labels only): who network policies select. Jobs and
    CronJobs run no pods behind Services and are left out."""
    out = []
    default_labels = ((values.get("defaultPodOptions") or {}).get("labels")) or {}
    for cid, ctrl in sorted(controllers.items()):
        kind = _WORKLOAD_KINDS.get(str(ctrl.get("type") or "deployment").lower())
        if kind is None:
            continue
        selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": release, "app.kubernetes.io/controller": cid}
        labels = {k: str(tpl(v)) for k, v in {**default_labels, **((ctrl.get("pod") or {}).get("labels") or {})}.items()}
        labels.update(selector)
        out.append({
            "apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": resource_name(fullname, cid, ctrl, len(controllers), tpl), "namespace": namespace},
            "spec": {"selector": {"matchLabels": selector}, "template": {"metadata": {"labels": labels}}},
        })
    return out


def render(release: str, namespace: str, values: dict[str, Any], warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """Service and HTTPRoute objects for one app-template release, and its controllers' pod
    templates (Deployments, StatefulSets, DaemonSets with their labels)."""

    def tpl(v: Any) -> Any:
        try:
            return render_tpl(v, release, namespace, values)
        except TemplateError as e:
            warn(str(e))
            return v

    name = (values.get("global") or {}).get("nameOverride") or values.get("nameOverride") or release
    fullname = (values.get("global") or {}).get("fullnameOverride") or values.get("fullnameOverride") or (
        release if name in release else f"{release}-{name}"
    )
    controllers = _enabled(values.get("controllers"))
    services = _enabled(values.get("service"))
    out: list[dict[str, Any]] = []
    svc_names: dict[str, str] = {}
    for ident, svc in sorted(services.items()):
        sname = resource_name(fullname, ident, svc, len(services), tpl)
        svc_names[ident] = sname
        controller = svc.get("controller") or (next(iter(controllers)) if len(controllers) == 1 else None)
        if controller is None:
            warn(f"service {ident!r}: no controller given and the release has {len(controllers)} controllers")
        ports = []
        for pname, p in sorted(_enabled(svc.get("ports")).items()):
            if not p.get("port"):
                continue
            proto = str(p.get("protocol") or "TCP")
            entry: dict[str, Any] = {
                "name": pname,
                "port": p["port"],
                "targetPort": p.get("targetPort") or p["port"],
                "protocol": proto if proto not in ("HTTP", "HTTPS", "TCP") else "TCP",
            }
            if p.get("appProtocol"):
                entry["appProtocol"] = p["appProtocol"]
            if p.get("nodePort"):
                entry["nodePort"] = p["nodePort"]
            ports.append(entry)
        spec: dict[str, Any] = {"type": svc.get("type") or "ClusterIP", "ports": ports}
        for key in (
            "loadBalancerIP", "loadBalancerClass", "loadBalancerSourceRanges", "externalName", "clusterIP",
            "internalTrafficPolicy", "externalTrafficPolicy", "sessionAffinity", "externalIPs",
            "publishNotReadyAddresses", "ipFamilyPolicy", "ipFamilies",
        ):
            if svc.get(key) not in (None, "", []):
                spec[key] = svc[key]
        selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": release}
        if controller:
            selector["app.kubernetes.io/controller"] = controller
        selector.update(svc.get("extraSelectorLabels") or {})
        if spec["type"] != "ExternalName":
            spec["selector"] = selector
        labels = {"app.kubernetes.io/service": sname, "app.kubernetes.io/instance": release, "app.kubernetes.io/name": name}
        labels.update({k: str(tpl(v)) for k, v in (svc.get("labels") or {}).items()})
        meta: dict[str, Any] = {"name": sname, "namespace": namespace, "labels": labels}
        if svc.get("annotations"):
            meta["annotations"] = {k: str(tpl(v)) for k, v in svc["annotations"].items()}
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})

    out += _workloads(release, namespace, name, fullname, controllers, values, tpl)
    routes = _enabled(values.get("route"))
    for ident, route in sorted(routes.items()):
        rname = resource_name(fullname, ident, route, len(routes), tpl)
        rules = route.get("rules")
        if len(services) == 1:
            only = next(iter(services))
            if not rules:
                rules = [{"backendRefs": [{}]}]
            for rule in rules:
                for b in rule.get("backendRefs") or []:
                    if not b.get("name") and not b.get("identifier"):
                        b["identifier"] = only
        kind = route.get("kind") or "HTTPRoute"
        parents = []
        for pr in route.get("parentRefs") or []:
            entry = {"group": pr.get("group") or "gateway.networking.k8s.io", "kind": pr.get("kind") or "Gateway", "name": pr.get("name")}
            if pr.get("namespace"):
                entry["namespace"] = pr["namespace"]
            if pr.get("sectionName"):
                entry["sectionName"] = pr["sectionName"]
            if pr.get("port"):
                entry["port"] = pr["port"]
            parents.append(entry)
        out_rules = []
        for rule in rules or []:
            refs = []
            for b in rule.get("backendRefs") or []:
                svc_name = None
                service = None
                if b.get("name"):
                    svc_name = str(tpl(b["name"]))
                elif b.get("identifier"):
                    if b["identifier"] not in services:
                        warn(f"route {ident!r}: no enabled Service with identifier {b['identifier']!r}")
                        continue
                    service = services[b["identifier"]]
                    svc_name = svc_names[b["identifier"]]
                port = b.get("port")
                if port in (None, "") and service is not None:
                    pp = _primary_port(service)
                    port = pp.get("port") if pp else None
                elif isinstance(port, str):
                    if service is None:
                        warn(f"route {ident!r}: a port name needs a backendRef by identifier")
                        continue
                    p = _enabled(service.get("ports")).get(port)
                    if p is None:
                        warn(f"route {ident!r}: Service {b.get('identifier')!r} has no enabled port {port!r}")
                        continue
                    port = p.get("port")
                ref: dict[str, Any] = {
                    "group": b.get("group") or "",
                    "kind": b.get("kind") or "Service",
                    "name": svc_name,
                    "namespace": b.get("namespace") or namespace,
                    "weight": b.get("weight", 1) if b.get("weight") is not None else 1,
                }
                if port:
                    ref["port"] = port
                refs.append(ref)
            r: dict[str, Any] = {"backendRefs": refs}
            if rule.get("name"):
                r["name"] = str(tpl(rule["name"]))
            for key in ("matches", "filters", "sessionPersistence", "timeouts"):
                if rule.get(key):
                    r[key] = rule[key]
            out_rules.append(r)
        spec = {"parentRefs": parents, "rules": out_rules}
        if route.get("hostnames") and kind not in ("TCPRoute", "UDPRoute"):
            spec["hostnames"] = [str(tpl(h)) for h in route["hostnames"]]
        meta = {"name": rname, "namespace": route.get("namespaceOverride") or namespace}
        if route.get("annotations"):
            meta["annotations"] = {k: str(tpl(v)) for k, v in route["annotations"].items()}
        if route.get("labels"):
            meta["labels"] = {k: str(tpl(v)) for k, v in route["labels"].items()}
        out.append({"apiVersion": GATEWAY_API, "kind": kind, "metadata": meta, "spec": spec})
    return out
