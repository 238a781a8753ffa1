"""GatewayClass and Gateway processing: which gateways homeplane serves, and listener status.

Listener validation follows the Gateway API: protocol support, route kinds,
TLS certificate references (with ReferenceGrant across namespaces), and
conflicts between listeners sharing a port (ProtocolConflict, HostnameConflict).
Routes are attached afterwards by :mod:`homeplane.translate.routes`, which fills
``ListenerState.routes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeplane.api.diagnostics import Diagnostics
from homeplane.api.models.core import Secret
from homeplane.api.models.cilium import LBIPAM_IPS
from homeplane.api.models.envoy import ENVOY_GROUP, gateway_service_key
from homeplane.api.models.gateway import GATEWAY_GROUP, Gateway, GatewayClass, Listener
from homeplane.api.objects import Obj
from homeplane.translate import snapshot as ir
from homeplane.translate import status as st
from homeplane.translate.context import Context, age_key, generation
from homeplane.translate.tlscerts import CertificateError, load_tls_secret

SERVED_PROTOCOLS = ("HTTP", "HTTPS", "TCP", "UDP", "TLS")
# Gateway API features homeplane implements (pkg/features names), for GatewayClass
# status.supportedFeatures: sorted, as the API requires
SUPPORTED_FEATURES = tuple(sorted((
    "BackendTLSPolicy", "Gateway", "GatewayHTTPSListenerDetectMisdirectedRequests", "GatewayPort8080",
    "HTTPRoute", "HTTPRouteBackendProtocolH2C", "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification", "HTTPRouteBackendTimeout", "HTTPRouteCORS", "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching", "HTTPRoutePathRedirect", "HTTPRoutePathRewrite", "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching", "HTTPRouteRequestMirror", "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestTimeout", "HTTPRouteResponseHeaderModification", "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout", "HTTPRouteRetryConnectionError", "HTTPRouteSchemeRedirect", "ReferenceGrant",
    "TCPRoute", "TLSRoute", "UDPRoute",
)))
HTTP_ROUTE_KINDS = ((GATEWAY_GROUP, "HTTPRoute"), (GATEWAY_GROUP, "GRPCRoute"))
# the route kinds each protocol's listeners take (Envoy Gateway's)
ROUTE_KINDS = {
    "HTTP": HTTP_ROUTE_KINDS,
    "HTTPS": HTTP_ROUTE_KINDS,
    "TCP": ((GATEWAY_GROUP, "TCPRoute"),),
    "UDP": ((GATEWAY_GROUP, "UDPRoute"),),
    "TLS": ((GATEWAY_GROUP, "TLSRoute"),),
}


@dataclass
class AttachedRoute:
    route: Obj
    hostnames: list[str]
    rules: list[ir.RouteRule]
    l4: ir.L4Route | None = None  # a TCPRoute or UDPRoute


@dataclass
class ListenerState:
    gateway: "GatewayState"
    spec: Listener
    index: int
    accepted: st.Condition = field(default_factory=lambda: st.cond(st.ACCEPTED, True, st.R_ACCEPTED, "Listener is accepted"))
    conflicted: st.Condition = field(default_factory=lambda: st.cond(st.CONFLICTED, False, st.R_NO_CONFLICTS, "No conflicts"))
    resolved: st.Condition = field(default_factory=lambda: st.cond(st.RESOLVED_REFS, True, st.R_RESOLVED_REFS, "Resolved all references"))
    supported_kinds: list[tuple[str, str]] = field(default_factory=list)
    certs: list[ir.TLSCert] = field(default_factory=list)
    routes: list[AttachedRoute] = field(default_factory=list)
    client_traffic: ir.ClientTrafficIR | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ready(self) -> bool:
        """Served by the data plane: accepted, not conflicted, routable, and (HTTPS) with a certificate.

        A listener whose ResolvedRefs is False still serves with what did resolve
        (some of its certificates, or the supported subset of its route kinds).
        """
        if self.accepted.status is not True or self.conflicted.status or not self.supported_kinds:
            return False
        return not self.terminates_tls or bool(self.certs)

    @property
    def terminates_tls(self) -> bool:
        p, tls = self.spec.protocol, self.spec.tls
        return p == "HTTPS" or (p == "TLS" and (tls is None or tls.mode == "Terminate"))

    @property
    def accepts_routes(self) -> bool:
        """Routes may attach even when TLS refs are broken (they are counted, not served)."""
        return self.accepted.status is True and not self.conflicted.status

    def conditions(self) -> list[st.Condition]:
        gen = generation(self.gateway.obj)
        programmed = (
            st.cond(st.PROGRAMMED, True, st.R_PROGRAMMED, "Sending translated listener configuration to the data plane", gen)
            if self.ready
            else st.cond(st.PROGRAMMED, False, st.R_INVALID, "Listener is invalid, see other conditions for details.", gen)
        )
        return [
            _with_gen(self.accepted, gen),
            _with_gen(self.resolved, gen),
            _with_gen(self.conflicted, gen),
            programmed,
        ]


def _with_gen(c: st.Condition, gen: int | None) -> st.Condition:
    return st.Condition(c.type, c.status, c.reason, c.message, gen)


@dataclass
class GatewayState:
    obj: Obj
    model: Gateway
    class_name: str
    listeners: list[ListenerState] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    merged: bool = False  # its class merges Gateways: listeners share one address with the others'
    invalid_parameters: str = ""  # infrastructure.parametersRef problem (Accepted=False, InvalidParameters)

    @property
    def ref(self) -> ir.Ref:
        return ir.Ref("Gateway", self.obj.namespace, self.obj.name)

    def listener(self, name: str) -> ListenerState | None:
        for ls in self.listeners:
            if ls.name == name:
                return ls
        return None


def process_gateway_classes(ctx: Context, diags: Diagnostics) -> dict[str, bool]:
    """Classes homeplane serves -> whether each is accepted."""
    classes: dict[str, bool] = {}
    for o in ctx.kind(GATEWAY_GROUP, "GatewayClass"):
        gc = o.model
        assert isinstance(gc, GatewayClass)
        if gc.spec.controller_name not in ctx.options.controller_names:
            continue
        gen = generation(o)
        ok, message = True, "Valid GatewayClass"
        pref = gc.spec.parameters_ref
        if pref is not None:
            if (pref.group, pref.kind) != ("gateway.envoyproxy.io", "EnvoyProxy"):
                ok, message = False, f"Unsupported parametersRef kind {pref.group}/{pref.kind}; only gateway.envoyproxy.io/EnvoyProxy is supported"
            elif not pref.namespace:
                ok, message = False, "parametersRef.namespace must be set for an EnvoyProxy reference"
            elif ctx.get("gateway.envoyproxy.io", "EnvoyProxy", pref.namespace, pref.name) is None:
                ok, message = False, f"EnvoyProxy {pref.namespace}/{pref.name} referenced by parametersRef not found"
        classes[o.name] = ok
        ctx.set_status(
            o,
            {
                "conditions": st.conditions_json(
                    [
                        st.cond(st.ACCEPTED, ok, st.R_ACCEPTED if ok else st.R_INVALID_PARAMETERS, message, gen),
                        st.cond(st.SUPPORTED_VERSION, True, st.R_SUPPORTED_VERSION, "Gateway API CRD version is supported", gen),
                    ]
                ),
                "supportedFeatures": [{"name": f} for f in SUPPORTED_FEATURES],
            },
        )
    return classes


def merged_classes(ctx: Context) -> set[str]:
    """Classes whose Gateways are merged: the EnvoyProxy of the class's parametersRef says
    ``mergeGateways: true`` (Envoy Gateway reads it only there), or ``--merge-gateways``."""
    out = set()
    for o in ctx.kind(GATEWAY_GROUP, "GatewayClass"):
        pref = o.model.spec.parameters_ref  # type: ignore[union-attr]
        ep = ctx.get(ENVOY_GROUP, "EnvoyProxy", pref.namespace or "default", pref.name) if pref is not None else None
        if ctx.options.merge_gateways or (ep is not None and ep.model is not None and ep.model.spec.merge_gateways):  # type: ignore[union-attr]
            out.add(o.name)
    return out


def envoyproxy_access_log(ctx: Context, gw: GatewayState, diags: Diagnostics) -> dict[str, Any] | None:
    """The ``telemetry.accessLog`` of the EnvoyProxy that applies to a Gateway: its own
    ``infrastructure.parametersRef``, else its class's; formats or sinks homeplane cannot
    honour are warnings on the EnvoyProxy."""
    from homeplane.observe.accesslog import settings_from_envoyproxy

    ref = gw.model.spec.infrastructure.parameters_ref if gw.model.spec.infrastructure else None
    ep = ctx.get(ENVOY_GROUP, "EnvoyProxy", gw.obj.namespace or "default", ref.name) if ref is not None and ref.name else None
    if ep is None:
        cls = next((o for o in ctx.kind(GATEWAY_GROUP, "GatewayClass") if o.name == gw.class_name), None)
        pref = cls.model.spec.parameters_ref if cls is not None else None  # type: ignore[union-attr]
        ep = ctx.get(ENVOY_GROUP, "EnvoyProxy", pref.namespace or "default", pref.name) if pref is not None else None
    if ep is None or ep.model is None:
        return None
    telemetry = ep.model.spec.telemetry  # type: ignore[union-attr]
    access = (telemetry or {}).get("accessLog") if isinstance(telemetry, dict) else None
    if not isinstance(access, dict):
        return None
    compiled = settings_from_envoyproxy(telemetry)
    for problem in compiled[1] if compiled else []:
        diags.warning(f"EnvoyProxy {ep.namespace}/{ep.name}: {problem}", file=ep.source.file, line=ep.source.line,
                      kind="EnvoyProxy", namespace=ep.namespace, name=ep.name, code="AccessLogUnsupported")
    return access


def _parameters_problem(ctx: Context, o: Obj, gw: Gateway, merged: bool) -> str:
    """Envoy Gateway's checks of a Gateway's infrastructure.parametersRef (with its messages)."""
    ref = gw.spec.infrastructure.parameters_ref if gw.spec.infrastructure else None
    if ref is None:
        return ""
    if merged:
        return "infrastructure.parametersref must be nil when MergeGateways feature is enabled by gatewayclass"
    if (ref.group, ref.kind) != (ENVOY_GROUP, "EnvoyProxy") or not ref.name:
        return f"unsupported parametersRef for gateway {o.namespace}/{o.name}"
    if ctx.get(ENVOY_GROUP, "EnvoyProxy", o.namespace or "default", ref.name) is None:
        return f"failed to find envoyproxy {o.namespace}/{ref.name} for Gateway {o.name}: not found"
    return ""


def process_gateways(ctx: Context, classes: dict[str, bool], diags: Diagnostics) -> list[GatewayState]:
    known_classes = {o.name for o in ctx.kind(GATEWAY_GROUP, "GatewayClass")}
    merging = merged_classes(ctx)
    states: list[GatewayState] = []
    for o in ctx.kind(GATEWAY_GROUP, "Gateway"):
        gw = o.model
        assert isinstance(gw, Gateway)
        cls = gw.spec.gateway_class_name
        if cls not in known_classes:
            # Home-ops repos often let the Envoy Gateway chart create the class; serve it.
            diags.info(
                f"GatewayClass {cls!r} is not in the manifests; assuming it is served by homeplane "
                "(as a class installed by the Envoy Gateway Helm chart would be)",
                file=o.source.file,
                line=o.source.line,
                document=o.source.document,
                kind="Gateway",
                namespace=o.namespace,
                name=o.name,
                field="spec.gatewayClassName",
                code="GatewayClassAssumed",
            )
        elif cls not in classes:
            continue  # another controller's class
        state = GatewayState(o, gw, cls, merged=ctx.options.merge_gateways or cls in merging)
        state.listeners = [ListenerState(state, spec, i) for i, spec in enumerate(gw.spec.listeners)]
        state.invalid_parameters = _parameters_problem(ctx, o, gw, state.merged)
        state.addresses = requested_addresses(gw)
        lb = ctx.options.lb
        if lb is not None:
            # the address LB IPAM gave the Gateway's generated LoadBalancer Service
            got = lb.services.get(gateway_service_key(o.namespace or "", o.name))
            if got is not None and got.addresses:
                state.addresses = list(got.addresses)
        if cls in classes and not classes[cls]:
            for ls in state.listeners:
                ls.accepted = st.cond(st.ACCEPTED, False, st.R_INVALID, f"GatewayClass {cls} is not accepted")
        elif state.invalid_parameters:
            for ls in state.listeners:
                ls.accepted = st.cond(st.ACCEPTED, False, st.R_INVALID, f"Gateway is not accepted: {state.invalid_parameters}")
        else:
            for ls in state.listeners:
                _validate_listener(ctx, state, ls)
            _detect_conflicts(state)
        states.append(state)
    _detect_merged_conflicts([s for s in states if s.merged and not s.invalid_parameters])
    return states


def _detect_merged_conflicts(gateways: list[GatewayState]) -> None:
    """Listeners of merged Gateways share ports: incompatible protocols on a port conflict, and
    a (protocol, hostname, port) may be claimed once - by the oldest Gateway (creation time,
    then namespace/name), as Envoy Gateway orders them."""
    by_class: dict[str, list[GatewayState]] = {}
    for g in gateways:
        by_class.setdefault(g.class_name, []).append(g)
    for group in by_class.values():
        group.sort(key=lambda g: age_key(g.obj))
        ports: dict[int, list[ListenerState]] = {}
        for g in group:
            for ls in g.listeners:
                if ls.accepted.status is True and not ls.conflicted.status:
                    ports.setdefault(ls.spec.port, []).append(ls)
        for port, listeners in ports.items():
            families = {_FAMILY.get(ls.spec.protocol, ls.spec.protocol) for ls in listeners} - {"udp"}
            if len(families) > 1:
                names = ", ".join(f"{ls.gateway.obj.namespace}/{ls.gateway.obj.name}/{ls.name}" for ls in listeners)
                for ls in listeners:
                    if ls.spec.protocol != "UDP":
                        ls.conflicted = st.cond(
                            st.CONFLICTED, True, st.R_PROTOCOL_CONFLICT,
                            f"All listeners for a given port must use a compatible protocol, conflicting listeners: {names}",
                        )
                continue
            claimed: dict[tuple[str, str], ListenerState] = {}
            for ls in listeners:
                key = (ls.spec.protocol, (ls.spec.hostname or "").lower())
                if key in claimed:
                    ls.conflicted = st.cond(
                        st.CONFLICTED, True, st.R_HOSTNAME_CONFLICT,
                        "Port, protocol and hostname tuple must be unique for every listener "
                        f"(already the one of listener {claimed[key].name} of Gateway {claimed[key].gateway.obj.namespace}/{claimed[key].gateway.obj.name})",
                    )
                else:
                    claimed[key] = ls


def requested_addresses(gw: Gateway) -> list[str]:
    """What a Gateway asks for: ``spec.addresses`` and ``lbipam.cilium.io/ips``."""
    out = [a.value for a in gw.spec.addresses if a.type in ("IPAddress", "")]
    infra = gw.spec.infrastructure
    ann = dict(infra.annotations) if infra else {}
    for ip in ann.get(LBIPAM_IPS, "").split(","):
        if ip.strip():
            out.append(ip.strip())
    return list(dict.fromkeys(out))


def _validate_listener(ctx: Context, gw: GatewayState, ls: ListenerState) -> None:
    spec = ls.spec
    proto = spec.protocol
    if proto not in SERVED_PROTOCOLS:
        ls.accepted = st.cond(
            st.ACCEPTED,
            False,
            st.R_UNSUPPORTED_PROTOCOL,
            f"Protocol {proto} is not served by homeplane yet (served: {', '.join(SERVED_PROTOCOLS)})",
        )
        ls.supported_kinds = []
        return
    # Route kinds (a TLS listener that terminates carries TCPRoutes, as in Envoy Gateway)
    kinds = ROUTE_KINDS[proto]
    if proto == "TLS" and (spec.tls is None or spec.tls.mode == "Terminate"):
        kinds = ((GATEWAY_GROUP, "TCPRoute"),)
    allowed = spec.allowed_routes.kinds
    if allowed:
        supported = [(k.group, k.kind) for k in allowed if (k.group, k.kind) in kinds]
        bad = [f"{k.group}/{k.kind}" for k in allowed if (k.group, k.kind) not in kinds]
        if bad:
            ls.resolved = st.cond(
                st.RESOLVED_REFS, False, st.R_INVALID_ROUTE_KINDS, f"Route kinds not supported on {proto}: {', '.join(bad)}"
            )
        ls.supported_kinds = supported
    else:
        ls.supported_kinds = list(kinds)
    if proto in ("HTTP", "TCP", "UDP"):
        if spec.tls is not None:
            ls.accepted = st.cond(st.ACCEPTED, False, st.R_UNSUPPORTED_VALUE, f"tls must not be set on a {proto} listener")
        return
    if proto == "TLS" and spec.tls is not None and spec.tls.mode == "Passthrough":
        return  # no certificates: the backend terminates
    # HTTPS, and TLS terminated here
    tls = spec.tls
    if tls is None or not tls.certificate_refs:
        ls.resolved = st.cond(
            st.RESOLVED_REFS, False, st.R_INVALID_CERTIFICATE_REF, f"An {proto} listener that terminates TLS needs tls.certificateRefs"
        )
        return
    if tls.mode != "Terminate":
        ls.accepted = st.cond(
            st.ACCEPTED, False, st.R_UNSUPPORTED_VALUE, "tls.mode Passthrough is only valid on TLS listeners"
        )
        return
    problems: list[tuple[str, str]] = []
    for i, ref in enumerate(tls.certificate_refs):
        ns = ref.namespace or gw.obj.namespace or "default"
        where = f"tls.certificateRefs[{i}]"
        if (ref.group, ref.kind) != ("", "Secret"):
            problems.append((st.R_INVALID_CERTIFICATE_REF, f"{where}: unsupported kind {ref.group or 'core'}/{ref.kind}"))
            continue
        if not ctx.ref_granted(GATEWAY_GROUP, "Gateway", gw.obj.namespace or "", "", "Secret", ns, ref.name):
            problems.append(
                (st.R_REF_NOT_PERMITTED, f"{where}: Secret {ns}/{ref.name} is in another namespace and no ReferenceGrant allows it")
            )
            continue
        secret = ctx.model("", "Secret", ns, ref.name, Secret)
        if secret is None:
            problems.append((st.R_INVALID_CERTIFICATE_REF, f"{where}: Secret {ns}/{ref.name} does not exist"))
            continue
        try:
            ls.certs.append(load_tls_secret(secret, ir.Ref("Secret", ns, ref.name)))
        except CertificateError as e:
            problems.append((st.R_INVALID_CERTIFICATE_REF, f"{where}: {e}"))
    if problems:
        # With some usable certificates the listener still serves (see ListenerState.ready).
        ls.resolved = st.cond(st.RESOLVED_REFS, False, problems[0][0], "; ".join(m for _, m in problems))


_FAMILY = {"HTTP": "http", "HTTPS": "tls", "TLS": "tls", "TCP": "tcp", "UDP": "udp"}


def _detect_conflicts(gw: GatewayState) -> None:
    # Every listener claims its port, served or not (a TCP listener still owns port 22).
    by_port: dict[int, list[ListenerState]] = {}
    for ls in gw.listeners:
        by_port.setdefault(ls.spec.port, []).append(ls)
    for port, group in by_port.items():
        families = {_FAMILY.get(ls.spec.protocol, ls.spec.protocol) for ls in group}
        tcp_families = families - {"udp"}
        if len(tcp_families) > 1:
            for ls in group:
                if ls.spec.protocol != "UDP":
                    ls.conflicted = st.cond(
                        st.CONFLICTED,
                        True,
                        st.R_PROTOCOL_CONFLICT,
                        f"Port {port} is used by listeners of incompatible protocols ({', '.join(sorted({x.spec.protocol for x in group}))})",
                    )
            continue
        seen: dict[tuple[str, str], list[ListenerState]] = {}
        for ls in group:
            seen.setdefault((ls.spec.protocol, (ls.spec.hostname or "").lower()), []).append(ls)
        for (_, host), dup in seen.items():
            if len(dup) > 1:
                for ls in dup:
                    ls.conflicted = st.cond(
                        st.CONFLICTED,
                        True,
                        st.R_HOSTNAME_CONFLICT,
                        f"Listeners {', '.join(x.name for x in dup)} share port {port} and hostname {host or '(any)'}",
                    )


def gateway_status(gw: GatewayState) -> dict:
    gen = generation(gw.obj)
    invalid = [ls for ls in gw.listeners if not ls.ready]
    valid = [ls for ls in gw.listeners if ls.ready]
    if gw.invalid_parameters:
        accepted = st.cond(st.ACCEPTED, False, st.R_INVALID_PARAMETERS, gw.invalid_parameters, gen)
    elif not invalid:
        accepted = st.cond(st.ACCEPTED, True, st.R_ACCEPTED, "The Gateway has been scheduled by homeplane", gen)
    elif valid:
        accepted = st.cond(
            st.ACCEPTED, True, st.R_LISTENERS_NOT_VALID, f"Some listeners are not valid: {', '.join(x.name for x in invalid)}", gen
        )
    else:
        accepted = st.cond(st.ACCEPTED, False, st.R_LISTENERS_NOT_VALID, "No listener is valid", gen)
    programmed = (
        st.cond(st.PROGRAMMED, True, st.R_PROGRAMMED, "Sending translated listener configuration to the data plane", gen)
        if valid
        else st.cond(st.PROGRAMMED, False, st.R_INVALID, "No valid listener to program", gen)
    )
    return {
        "addresses": [{"type": "IPAddress", "value": a} for a in gw.addresses],
        "conditions": st.conditions_json([accepted, programmed]),
        "listeners": [
            {
                "name": ls.name,
                "supportedKinds": [{"group": g, "kind": k} for g, k in ls.supported_kinds],
                "attachedRoutes": len(ls.routes),
                "conditions": st.conditions_json(ls.conditions()),
            }
            for ls in gw.listeners
        ],
    }
