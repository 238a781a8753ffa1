"""Services and Envoy Gateway Backends -> backend pools with endpoints.

Endpoints come from EndpointSlices (label ``kubernetes.io/service-name``) or,
failing that, from an Endpoints object of the same name; this is also how a
Service without a selector points at something outside the cluster. Readiness
follows the API: a slice endpoint with no ``ready`` condition is ready,
Endpoints' ``notReadyAddresses`` are not.
"""

from __future__ import annotations

from homeplane.api.diagnostics import Diagnostics
from homeplane.api.models.core import EndpointSlice, Endpoints, Service
from homeplane.api.models.envoy import Backend
from homeplane.api.objects import Obj
from homeplane.api.models.cilium import LBIPAM_IPS, LBIPAM_LEGACY_SATISFIED, LBIPAM_SATISFIED
from homeplane.translate import snapshot as ir
from homeplane.translate.context import Context

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def service_pool_name(namespace: str, name: str, port: int) -> str:
    return f"service/{namespace}/{name}:{port}"


def backend_pool_name(namespace: str, name: str) -> str:
    return f"backend/{namespace}/{name}"


def build_services(ctx: Context, diags: Diagnostics) -> tuple[list[ir.Service], dict[str, ir.BackendPool]]:
    slices_by_service: dict[tuple[str | None, str], list[EndpointSlice]] = {}
    for o in ctx.kind("discovery.k8s.io", "EndpointSlice"):
        svc = o.labels.get(SERVICE_NAME_LABEL)
        if svc:
            assert isinstance(o.model, EndpointSlice)
            slices_by_service.setdefault((o.namespace, svc), []).append(o.model)

    services: list[ir.Service] = []
    pools: dict[str, ir.BackendPool] = {}
    for o in ctx.kind("", "Service"):
        svc = o.model
        assert isinstance(svc, Service)
        slices = slices_by_service.get((o.namespace, o.name), [])
        endpoints_obj = ctx.model("", "Endpoints", o.namespace, o.name, Endpoints)
        source = "none"
        if svc.spec.type == "ExternalName":
            source = "ExternalName"
        elif slices:
            source = "EndpointSlice"
        elif endpoints_obj is not None:
            source = "Endpoints"
        ports: list[ir.ServicePort] = []
        for p in svc.spec.ports:
            assert o.namespace is not None
            pool_name = service_pool_name(o.namespace, o.name, p.port)
            if source == "ExternalName" and svc.spec.external_name:
                eps: tuple[ir.Endpoint, ...] = (
                    ir.Endpoint(svc.spec.external_name, p.port, True, fqdn=True),
                )
            elif source == "EndpointSlice":
                eps = _from_slices(slices, p.name)
            elif source == "Endpoints":
                assert endpoints_obj is not None
                eps = _from_endpoints(endpoints_obj, p.name, len(svc.spec.ports))
            else:
                eps = ()
            pools[pool_name] = ir.BackendPool(
                pool_name,
                ir.Ref("Service", o.namespace, o.name, str(p.port)),
                eps,
                app_protocol=p.app_protocol,
                service_port=p.port,
            )
            ports.append(
                ir.ServicePort(p.name, p.port, p.protocol, p.effective_target_port, p.app_protocol, pool_name)
            )
        ann = o.annotations
        key = (o.namespace or "", o.name)
        lb = ctx.options.lb.services.get(key) if ctx.options.lb is not None else None
        if svc.spec.type == "LoadBalancer" and lb is not None:
            status: dict = {
                "loadBalancer": {"ingress": [{"ip": a} for a in lb.addresses]},
                "conditions": [
                    {"type": t, "status": "True" if lb.satisfied else "False", "reason": lb.reason, "message": lb.message}
                    for t in (LBIPAM_SATISFIED, LBIPAM_LEGACY_SATISFIED)
                ],
            }
            ctx.set_status(o, status)
        requested = tuple(
            x.strip() for x in ann.get(LBIPAM_IPS, "").split(",") if x.strip()
        ) or ((svc.spec.load_balancer_ip,) if svc.spec.load_balancer_ip else ())
        cluster_ip = ctx.options.cluster_ips.get(key)
        if cluster_ip is None and svc.spec.cluster_ip not in (None, "", "None") and not ctx.options.cluster_ips:
            cluster_ip = svc.spec.cluster_ip  # no allocator ran: show what the manifest fixes
        problem = ctx.options.cluster_ip_problems.get(key)
        if problem:
            diags.error(
                f"no ClusterIP: {problem}", file=o.source.file, line=o.source.line, document=o.source.document,
                kind="Service", namespace=o.namespace, name=o.name, field="spec.clusterIP", code="ClusterIPConflict",
            )
        services.append(
            ir.Service(
                ref=ir.Ref("Service", o.namespace, o.name),
                type=svc.spec.type,
                cluster_ip=cluster_ip,
                ports=tuple(ports),
                selector=svc.spec.selector,
                external_name=svc.spec.external_name,
                requested_lb_ips=requested if svc.spec.type == "LoadBalancer" else (),
                lb_ips=tuple(lb.addresses) if lb is not None else (),
                annotations=ann,
                labels=o.labels,
                external_traffic_policy=svc.spec.effective_external_traffic_policy,
                session_affinity=svc.spec.session_affinity,
                headless=svc.spec.headless,
                endpoint_source=source,
                external_ips=tuple(svc.spec.external_ips),
            )
        )

    if ctx.options.lb is not None:
        for o in ctx.kind("cilium.io", "CiliumLoadBalancerIPPool"):
            pr = ctx.options.lb.pools.get(o.name)
            if pr is None:
                continue
            ctx.set_status(
                o,
                {
                    "conditions": [
                        {"type": "cilium.io/IPsTotal", "status": "Unknown", "reason": "noreason", "message": str(pr.total)},
                        {"type": "cilium.io/IPsAvailable", "status": "Unknown", "reason": "noreason", "message": str(pr.available)},
                        {"type": "cilium.io/IPsUsed", "status": "Unknown", "reason": "noreason", "message": str(pr.used)},
                        {
                            "type": "cilium.io/PoolConflict",
                            "status": "True" if pr.conflict else "False",
                            "reason": "cidr_overlap" if pr.conflict else "resolved",
                            "message": f"Pool overlaps with pool {pr.conflict}" if pr.conflict else "",
                        },
                    ]
                },
            )

    for o in ctx.kind("gateway.envoyproxy.io", "Backend"):
        be = o.model
        assert isinstance(be, Backend) and o.namespace is not None
        eps_list: list[ir.Endpoint] = []
        for e in be.spec.endpoints:
            if e.fqdn is not None:
                eps_list.append(ir.Endpoint(e.fqdn.hostname, e.fqdn.port, True, fqdn=True, zone=e.zone))
            elif e.ip is not None:
                eps_list.append(ir.Endpoint(e.ip.address, e.ip.port, True, zone=e.zone))
            elif e.unix is not None:
                eps_list.append(ir.Endpoint("unix:" + e.unix.path, 0, True, zone=e.zone))
        name = backend_pool_name(o.namespace, o.name)
        app_protocol = be.spec.app_protocols[0] if be.spec.app_protocols else None
        pools[name] = ir.BackendPool(name, ir.Ref("Backend", o.namespace, o.name), tuple(eps_list), app_protocol)
    return services, pools


def _from_slices(slices: list[EndpointSlice], port_name: str | None) -> tuple[ir.Endpoint, ...]:
    out: list[ir.Endpoint] = []
    seen: set[tuple[str, int]] = set()
    for s in slices:
        if s.address_type == "FQDN":
            fqdn = True
        else:
            fqdn = False
        number = None
        for sp in s.ports:
            if (sp.name or None) == (port_name or None) and sp.port is not None:
                number = sp.port
                break
        if number is None:
            continue
        for ep in s.endpoints:
            for addr in ep.addresses[:1]:  # the API says consumers use the first address
                key = (addr, number)
                if key in seen:
                    continue
                seen.add(key)
                out.append(ir.Endpoint(addr, number, ep.conditions.is_ready, ep.hostname, fqdn, ep.zone, ep.node_name))
    return tuple(out)


def _from_endpoints(eps: Endpoints, port_name: str | None, n_service_ports: int) -> tuple[ir.Endpoint, ...]:
    out: list[ir.Endpoint] = []
    for subset in eps.subsets:
        number = None
        for sp in subset.ports:
            if (sp.name or None) == (port_name or None) or (n_service_ports == 1 and len(subset.ports) == 1):
                number = sp.port
                break
        if number is None:
            continue
        for a in subset.addresses:
            out.append(ir.Endpoint(a.ip, number, True, a.hostname, node_name=a.node_name))
        for a in subset.not_ready_addresses:
            out.append(ir.Endpoint(a.ip, number, False, a.hostname, node_name=a.node_name))
    return tuple(out)


def find_service_port(obj: Obj, port: int) -> bool:
    svc = obj.model
    return isinstance(svc, Service) and any(p.port == port for p in svc.spec.ports)
