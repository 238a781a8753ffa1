"""Translate: loaded objects in, one immutable Snapshot plus status out. Pure.

The pipeline is fixed (as Envoy Gateway's translator): index the objects, then
GatewayClasses, Gateways and listeners, Services and backend pools, HTTPRoutes,
policies, and finally the per-listener virtual hosts with rules in precedence
order. No sockets, clocks or globals: the same call backs ``homeplane check``,
``homeplane get`` and the running data planes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from homeplane.api.diagnostics import Diagnostics
from homeplane.api.objects import Obj, ObjectKey
from homeplane.translate import snapshot as ir
from homeplane.translate.backendtls import apply_backend_tls
from homeplane.translate.context import Context, TranslateOptions, age_key
from homeplane.translate.gateways import (
    GatewayState,
    envoyproxy_access_log,
    gateway_status,
    process_gateway_classes,
    process_gateways,
)
from homeplane.translate.policies import attachments_summary, effective_l4, effective_rule, finish_policies, process_policies
from homeplane.translate.routes import build_vhosts, process_l4_routes, process_routes
from homeplane.translate.services import build_services
from homeplane.tunnel.discover import default_ingress, find_cloudflared

__all__ = ["TranslateOptions", "Translation", "translate", "digest_objects"]


@dataclass
class Translation:
    snapshot: ir.Snapshot
    status: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)


def digest_objects(objects: Iterable[Obj]) -> str:
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: (o.group, o.kind, o.namespace or "", o.name)):
        h.update(json.dumps(o.raw, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def translate(objects: list[Obj], options: TranslateOptions | None = None, version: int = 1) -> Translation:
    options = options or TranslateOptions()
    diags = Diagnostics()
    ctx = Context(objects, options)
    classes = process_gateway_classes(ctx, diags)
    gateways = process_gateways(ctx, classes, diags)
    services, pools = build_services(ctx, diags)
    process_routes(ctx, gateways, diags)
    process_l4_routes(ctx, gateways)
    policies = process_policies(ctx, gateways)

    gw_irs: list[ir.Gateway] = []
    for gw in gateways:
        listeners = []
        for ls in gw.listeners:
            vhosts = tuple(
                ir.VirtualHost(vh.hostname, tuple(effective_rule(policies, gw, ls, r) for r in vh.rules))
                for vh in build_vhosts(ls)
            )
            listeners.append(
                ir.Listener(
                    gateway=gw.ref,
                    name=ls.name,
                    port=ls.spec.port,
                    protocol=ls.spec.protocol,
                    hostname=ls.spec.hostname.lower() if ls.spec.hostname else None,
                    ready=ls.ready,
                    tls_certs=tuple(ls.certs),
                    tls_mode=ls.spec.tls.mode if ls.spec.tls else None,
                    vhosts=vhosts,
                    client_traffic=ls.client_traffic,
                    attached_routes=len(ls.routes),
                    l4_routes=tuple(
                        effective_l4(policies, gw, ls, a.l4) for a in sorted(ls.routes, key=lambda a: age_key(a.route)) if a.l4 is not None
                    ),
                )
            )
        ctx.set_status(gw.obj, gateway_status(gw))
        infra = gw.model.spec.infrastructure
        gw_irs.append(
            ir.Gateway(
                ref=gw.ref,
                class_name=gw.class_name,
                listeners=tuple(listeners),
                addresses=tuple(gw.addresses),
                annotations=gw.obj.annotations,
                infrastructure_annotations=dict(infra.annotations) if infra else {},
                programmed=any(ls.ready for ls in listeners),
                bind_address=_bind_address(ctx, gw, gateways),
                merge_group=gw.class_name if gw.merged else None,
                access_log=envoyproxy_access_log(ctx, gw, diags),
            )
        )
    finish_policies(ctx, policies)
    pools = apply_backend_tls(ctx, pools, gw_irs)
    from homeplane.policy.enforce import build_policy_set, restrict_gateways  # it reads translate's IR

    netpol = build_policy_set(objects, services, pools, gw_irs)
    if netpol is not None:
        gw_irs, pools = restrict_gateways(netpol, gw_irs, pools)
        _policy_status(ctx, netpol, diags)
    extras: dict[str, Any] = {}
    l2 = tuple(o for o in objects if o.kind == "CiliumL2AnnouncementPolicy" and o.model is not None)
    if l2:
        extras["l2policies"] = l2
    coredns = _coredns_values(objects)
    if coredns is not None:
        extras["coredns"] = coredns
    tunnel = find_cloudflared(objects)
    for f in tunnel:
        if f.error:
            diags.warning(f"cloudflared config in {f.origin}: {f.error}")
        for w in f.ingress.warnings if f.ingress else ():
            diags.warning(f"cloudflared config in {f.origin}: {w}")
    if tunnel:
        extras["cloudflared"] = tuple(tunnel)
    else:
        fallback = default_ingress(objects, gw_irs)
        if fallback is not None:
            extras["tunnelIngress"] = fallback
    snapshot = ir.Snapshot(
        version=version,
        gateways=tuple(gw_irs),
        services=tuple(services),
        pools=pools,
        policies=attachments_summary(policies),
        digest=digest_objects(objects),
        extras=extras,
        network_policy=netpol,
    )
    return Translation(snapshot, ctx.status, diags)


def _policy_status(ctx: Context, netpol: Any, diags: Diagnostics) -> None:
    """Each network policy's Valid condition (Cilium's), with what homeplane cannot enforce of it
    as warnings that name the policy."""
    kinds = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
    problems: dict[str, list[str]] = {}
    for policy, text in netpol.problems:
        problems.setdefault(policy.split("#", 1)[0], []).append(text)
    for addr, owners in sorted(netpol.identities.ambiguous.items()):
        if addr in netpol.identities.host_addresses:
            continue  # this machine's own address: the host, whoever else sits there
        diags.warning(f"network policy: {addr} is an endpoint of {', '.join(owners)}, which cannot be one pod; "
                      "connections from it match no selector or CIDR (only the entity all)", code="AmbiguousEndpoint")
    for o in ctx.objects:
        if o.kind not in kinds or o.model is None:
            continue
        mine = problems.get(o.ref(), [])
        refused = any(t.startswith("not enforced:") for t in mine)
        for text in mine:
            # a policy that cannot be read is an error (a running homeplane keeps its last good
            # configuration rather than open what the policy closed); a part that cannot be
            # enforced where homeplane sits is a warning
            report = diags.error if text.startswith("not enforced:") else diags.warning
            report(f"network policy: {text}", kind=o.kind, namespace=o.namespace, name=o.name,
                   file=o.source.file, line=o.source.line, code="InvalidNetworkPolicy" if refused else "PolicyNotEnforced")
        ctx.set_status(o, {"conditions": [{
            "type": "Valid", "status": "False" if refused else "True",
            "reason": "InvalidRule" if refused else "Compiled",
            "message": "; ".join(mine) if mine else "enforced where traffic passes through homeplane",
        }]})


def _coredns_values(objects: list[Obj]) -> dict[str, Any] | None:
    """The values of a CoreDNS HelmRelease (servers with a kubernetes plugin), if the manifests hold one."""
    for o in objects:
        if o.kind != "HelmRelease":
            continue
        values = (o.raw.get("spec") or {}).get("values") or {}
        servers = values.get("servers") if isinstance(values, dict) else None
        if isinstance(servers, list) and any(
            isinstance(s, dict) and any(isinstance(p, dict) and p.get("name") == "kubernetes" for p in s.get("plugins") or [])
            for s in servers
        ):
            return values
    return None


def _bind_address(ctx: Context, gw: GatewayState, gateways: list[GatewayState]) -> str | None:
    """Where the Gateway listens; merged Gateways all listen where the oldest of their class does."""
    if gw.merged:
        first = min((g for g in gateways if g.merged and g.class_name == gw.class_name), key=lambda g: age_key(g.obj))
        return ctx.options.bindings.get(f"{first.obj.namespace}/{first.obj.name}")
    return ctx.options.bindings.get(f"{gw.obj.namespace}/{gw.obj.name}")
