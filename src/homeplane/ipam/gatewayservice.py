"""The LoadBalancer Service Envoy Gateway creates for each Gateway, as LB IPAM sees it.

Envoy Gateway gives every Gateway a Service of type LoadBalancer (in the
Gateway's namespace with the ``GatewayNamespace`` deploy type home-ops repos
use) carrying ``spec.infrastructure.annotations`` - which is how
``lbipam.cilium.io/ips`` on a Gateway pins its address. homeplane does the
same, so the Gateway's ``status.addresses`` shows what LB IPAM allocated.
"""

from __future__ import annotations

from homeplane.api.models.cilium import LBIPAM_IPS
from homeplane.api.models.envoy import EnvoyProxy, gateway_service_key
from homeplane.api.models.gateway import Gateway
from homeplane.api.objects import Obj
from homeplane.ipam.lbipam import ServiceInput


def gateway_services(objects: list[Obj]) -> list[ServiceInput]:
    proxies = {(o.namespace, o.name): o.model for o in objects if isinstance(o.model, EnvoyProxy)}
    out = []
    for o in objects:
        gw = o.model
        if not isinstance(gw, Gateway):
            continue
        infra = gw.spec.infrastructure
        ann = dict(infra.annotations) if infra else {}
        labels = dict(infra.labels) if infra else {}
        labels.update({"gateway.envoyproxy.io/owning-gateway-name": o.name, "gateway.envoyproxy.io/owning-gateway-namespace": o.namespace or ""})
        etp = "Cluster"
        for ep in proxies.values():
            svc = ((ep.spec.provider or {}).get("kubernetes") or {}).get("envoyService") or {} if ep else {}
            if svc.get("externalTrafficPolicy"):
                etp = svc["externalTrafficPolicy"]
        if gw.spec.addresses and LBIPAM_IPS not in ann:
            ann[LBIPAM_IPS] = ",".join(a.value for a in gw.spec.addresses)
        ports = sorted({(ls.port, "UDP" if ls.protocol == "UDP" else "TCP") for ls in gw.spec.listeners})
        out.append(
            ServiceInput(
                key=gateway_service_key(o.namespace or "", o.name),
                labels=labels,
                annotations=ann,
                ports=ports,
                external_traffic_policy=etp,
                selector={"gateway.envoyproxy.io/owning-gateway-name": o.name},
            )
        )
    return out
