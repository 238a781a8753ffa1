"""Envoy Gateway policy attachment: SecurityPolicy, ClientTrafficPolicy, BackendTrafficPolicy,
EnvoyExtensionPolicy.

Policies target Gateways (optionally one listener via ``sectionName``) or
HTTPRoutes (optionally one named rule) through ``targetRefs`` and
``targetSelectors``, in their own namespace. As in Envoy Gateway:

* two policies of one kind on the same target: the older one wins (creation
  time, then namespace/name); the other gets ``Accepted=False, Conflicted``;
* a more specific attachment overrides a broader one (rule > route > listener
  > gateway); the broader policy is told so with an ``Overridden`` condition;
* a SecurityPolicy that is invalid (e.g. its extAuth Service is in another
  namespace without a ReferenceGrant) is not accepted, and the routes it
  targets fail closed (HTTP 500) rather than being served unprotected; so do
  those of an EnvoyExtensionPolicy whose Lua script cannot load (EG: Lua has no
  fail-open option) or that asks for Wasm, ext_proc or dynamic modules.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field, replace
from typing import Any

from homeplane.api.models.base import LabelSelector
from homeplane.api.models.core import ConfigMap, Secret
from homeplane.api.models.envoy import ENVOY_GROUP, SecurityPolicy
from homeplane.api.models.gateway import GATEWAY_GROUP, HTTPRoute
from homeplane.api.objects import Obj
from homeplane.translate import snapshot as ir
from homeplane.translate import status as st
from homeplane.translate.context import Context, age_key, generation
from homeplane.translate.gateways import GatewayState, ListenerState
from homeplane.translate.lower import lower_backend_traffic, lower_client_traffic
from homeplane.translate.security import lower_security
from homeplane.translate.routes import resolve_backend_ref

# (kind, namespace, name, section)
Target = tuple[str, str, str, str | None]


@dataclass
class PolicyState:
    obj: Obj
    targets: list[Target] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    invalid: str = ""
    conflicted_on: list[str] = field(default_factory=list)
    overridden_on: list[str] = field(default_factory=list)
    ext_auth_pool: str | None = None
    htpasswd: bytes | None = None
    jwks: dict[str, str] = field(default_factory=dict)  # jwt provider -> key set from a ConfigMap
    lua: list[tuple[str, str, str]] = field(default_factory=list)  # EnvoyExtensionPolicy: (name, source, filterContext)
    api_keys: dict[str, bytes] = field(default_factory=dict)  # apiKeyAuth: client id -> key
    lowered: Any = None  # ClientTrafficPolicy / BackendTrafficPolicy: its settings (translate/lower.py)
    http3: dict[str, str] = field(default_factory=dict)  # ClientTrafficPolicy http3: listener -> "" (served) or why not

    @property
    def ref(self) -> ir.Ref:
        return ir.Ref(self.obj.kind, self.obj.namespace, self.obj.name)


@dataclass
class Attachments:
    """Winning policy per target, for one policy kind."""

    by_target: dict[Target, PolicyState] = field(default_factory=dict)

    def lookup(self, *targets: Target) -> PolicyState | None:
        for t in targets:
            p = self.by_target.get(t)
            if p is not None:
                return p
        return None


def _collect_targets(ctx: Context, p: PolicyState, allowed_kinds: tuple[str, ...]) -> None:
    o = p.obj
    spec = o.model.spec  # type: ignore[union-attr]
    ns = o.namespace or ""
    for ref in spec.all_target_refs():
        if ref.group != GATEWAY_GROUP or ref.kind not in allowed_kinds:
            p.invalid = f"targetRef kind {ref.group}/{ref.kind} is not supported (supported: {', '.join(allowed_kinds)})"
            continue
        if ctx.get(GATEWAY_GROUP, ref.kind, ns, ref.name) is None:
            p.missing.append(f"{ref.kind} {ns}/{ref.name}")
            continue
        p.targets.append((ref.kind, ns, ref.name, ref.section_name))
    for sel in spec.target_selectors:
        if sel.group != GATEWAY_GROUP or sel.kind not in allowed_kinds:
            p.invalid = f"targetSelector kind {sel.group}/{sel.kind} is not supported"
            continue
        selector = LabelSelector(matchLabels=sel.match_labels, matchExpressions=sel.match_expressions)
        for cand in ctx.kind(GATEWAY_GROUP, sel.kind):
            if cand.namespace == ns and selector.matches(cand.labels):
                p.targets.append((sel.kind, ns, cand.name, None))
    p.targets = list(dict.fromkeys(p.targets))


def _validate_security(ctx: Context, p: PolicyState) -> None:
    sp = p.obj.model
    assert isinstance(sp, SecurityPolicy)
    ns = p.obj.namespace or ""
    spec = sp.spec
    if spec.ext_auth is not None and spec.ext_auth.http is not None:
        refs = spec.ext_auth.http.all_backend_refs()
        if not refs:
            p.invalid = "extAuth.http needs backendRefs"
        for ref in refs[:1]:
            res = resolve_backend_ref(ctx, ENVOY_GROUP, "SecurityPolicy", ns, ref)
            if res.pool is None:
                p.invalid = f"extAuth: {res.message}"
            p.ext_auth_pool = res.pool
    elif spec.ext_auth is not None and spec.ext_auth.grpc is not None:
        p.invalid = "extAuth.grpc is not supported by homeplane yet; use extAuth.http"
    if spec.basic_auth is not None:
        users = spec.basic_auth.users
        uns = users.namespace or ns
        if not ctx.ref_granted(ENVOY_GROUP, "SecurityPolicy", ns, "", "Secret", uns, users.name):
            p.invalid = f"basicAuth: Secret {uns}/{users.name} not permitted by any ReferenceGrant"
        else:
            secret = ctx.model("", "Secret", uns, users.name, Secret)
            if secret is None:
                p.invalid = f"basicAuth: Secret {uns}/{users.name} not found"
            elif secret.value(".htpasswd") is None:
                p.invalid = f"basicAuth: Secret {uns}/{users.name} has no .htpasswd key"
            else:
                p.htpasswd = secret.value(".htpasswd")
    if spec.jwt is not None:
        for prov in spec.jwt.providers:
            local = prov.local_jwks or {}
            if prov.remote_jwks is None and not local:
                p.invalid = p.invalid or f"jwt: provider {prov.name} needs remoteJWKS or localJWKS"
            if local.get("type") == "ValueRef":
                ref = local.get("valueRef") or {}
                cm = ctx.model("", "ConfigMap", ns, str(ref.get("name", "")), ConfigMap)
                if ref.get("kind", "ConfigMap") != "ConfigMap" or cm is None or "jwks" not in cm.data:
                    p.invalid = p.invalid or f"jwt: provider {prov.name}: ConfigMap {ns}/{ref.get('name')} with key jwks not found"
                else:
                    p.jwks[prov.name] = cm.data["jwks"]
    if spec.authorization is not None:
        p.invalid = p.invalid or _authorization_problem(spec)
    if spec.oidc is not None:
        p.invalid = p.invalid or "oidc is not supported by homeplane yet"
    if spec.api_key_auth is not None:
        for ref in spec.api_key_auth.credential_refs:
            sns = ref.namespace or ns
            if ref.kind != "Secret" or ref.group not in ("", "core"):
                p.invalid = p.invalid or f"apiKeyAuth: credentialRefs: {ref.kind} is not supported; use a Secret"
            elif not ctx.ref_granted(ENVOY_GROUP, "SecurityPolicy", ns, "", "Secret", sns, ref.name):
                p.invalid = p.invalid or f"apiKeyAuth: Secret {sns}/{ref.name} not permitted by any ReferenceGrant"
            elif (secret := ctx.model("", "Secret", sns, ref.name, Secret)) is None:
                p.invalid = p.invalid or f"apiKeyAuth: Secret {sns}/{ref.name} not found"
            else:
                for client in [*secret.data, *secret.string_data]:
                    value = secret.value(client)
                    if value:
                        p.api_keys.setdefault(client, value)  # a client id in two Secrets: the first one
        for i, src in enumerate(spec.api_key_auth.extract_from):
            if sum(bool(x) for x in (src.headers, src.params, src.cookies)) != 1:
                p.invalid = p.invalid or f"apiKeyAuth: extractFrom[{i}]: exactly one of headers, params or cookies must be set"


def _validate_extension(ctx: Context, p: PolicyState) -> None:
    """Lua scripts from the policy or a ConfigMap in its namespace (key ``lua``, else the first
    one), loaded once to find syntax errors and missing hooks, as EG validates them."""
    from homeplane.lua import check  # the same loader the data plane runs

    spec = p.obj.model.spec  # type: ignore[union-attr]
    ns = p.obj.namespace or ""
    for what, items in (("wasm", spec.wasm), ("extProc", spec.ext_proc), ("dynamicModule", spec.dynamic_module)):
        if items:
            p.invalid = p.invalid or f"{what} is not supported by homeplane"
    for i, lua in enumerate(spec.lua):
        name = f"{ns}/{p.obj.name}/lua/{i}"
        if lua.type == "Inline":
            source = lua.inline or ""
        else:
            ref = lua.value_ref
            assert ref is not None
            cm = ctx.model("", "ConfigMap", ns, ref.name, ConfigMap) if ref.kind == "ConfigMap" and ref.group in ("", "v1") else None
            if cm is None or not cm.data:
                p.invalid = p.invalid or f"lua[{i}]: ConfigMap {ns}/{ref.name} not found or empty"
                continue
            source = cm.data.get("lua", next(iter(cm.data.values())))
        problem = check(source)
        if problem:
            p.invalid = p.invalid or f"lua[{i}]: {problem}"
            continue
        p.lua.append((name, source, json.dumps(lua.filter_context or {}, sort_keys=True)))


def _authorization_problem(spec: Any) -> str | None:
    """What makes authorization rules unusable (the policy then fails closed), as EG's CEL rules
    and translator would say it."""
    providers = {prov.name for prov in spec.jwt.providers} if spec.jwt is not None else set()
    for i, rule in enumerate(spec.authorization.rules):
        where = f"authorization.rules[{i}]" + (f" ({rule.name})" if rule.name else "")
        pr = rule.principal
        if not (pr.client_cidrs or pr.jwt is not None or pr.headers):
            return f"{where}: at least one of clientCIDRs, jwt, or headers must be specified"
        for cidr in pr.client_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                return f"{where}: clientCIDRs: {cidr!r} is not a CIDR"
        if pr.jwt is not None:
            if not (pr.jwt.claims or pr.jwt.scopes):
                return f"{where}: jwt: at least one of claims or scopes must be specified"
            if pr.jwt.provider not in providers:
                return f"{where}: jwt provider {pr.jwt.provider!r} is not configured in this SecurityPolicy's jwt"
    return None


def _resolve(states: list[PolicyState]) -> Attachments:
    """Older policy wins each target; later ones are marked conflicted on it."""
    att = Attachments()
    for p in sorted(states, key=lambda s: age_key(s.obj)):
        for t in p.targets:
            if t in att.by_target:
                winner = att.by_target[t]
                p.conflicted_on.append(f"{t[0]} {t[1]}/{t[2]}{'#' + t[3] if t[3] else ''} (already targeted by {winner.obj.namespace}/{winner.obj.name})")
                continue
            att.by_target[t] = p
    return att


@dataclass
class PolicyResult:
    security: Attachments
    client: Attachments
    backend: Attachments
    states: list[PolicyState]
    extension: Attachments = field(default_factory=Attachments)


def process_policies(ctx: Context, gateways: list[GatewayState]) -> PolicyResult:
    sec = [PolicyState(o) for o in ctx.kind(ENVOY_GROUP, "SecurityPolicy")]
    ctp = [PolicyState(o) for o in ctx.kind(ENVOY_GROUP, "ClientTrafficPolicy")]
    btp = [PolicyState(o) for o in ctx.kind(ENVOY_GROUP, "BackendTrafficPolicy")]
    for p in sec:
        _collect_targets(ctx, p, ("Gateway", "HTTPRoute"))
    for p in btp:
        _collect_targets(ctx, p, ("Gateway", "HTTPRoute", "TCPRoute", "UDPRoute", "TLSRoute"))
    for p in ctp:
        _collect_targets(ctx, p, ("Gateway",))
    for p in ctp + btp:
        lower = lower_client_traffic if p.obj.kind == "ClientTrafficPolicy" else lower_backend_traffic
        p.lowered, problems = lower(p.obj.model.spec)  # type: ignore[union-attr]
        if problems:
            p.invalid = "; ".join(problems)
    eep = [PolicyState(o) for o in ctx.kind(ENVOY_GROUP, "EnvoyExtensionPolicy")]
    for p in eep:
        _collect_targets(ctx, p, ("Gateway", "HTTPRoute"))
        _validate_extension(ctx, p)
    for p in sec:
        _validate_security(ctx, p)
        p.lowered, problems = lower_security(
            p.obj.model.spec, p.ext_auth_pool, ir.PrivateBytes(p.htpasswd) if p.htpasswd else None,  # type: ignore[union-attr]
            p.jwks, {c: ir.PrivateBytes(k) for c, k in p.api_keys.items()},
        )
        if problems and not p.invalid:
            p.invalid = "; ".join(problems)
    result = PolicyResult(_resolve(sec), _resolve(ctp), _resolve(btp), sec + ctp + btp + eep, _resolve(eep))
    _apply_to_gateways(result, gateways)
    return result


def finish_policies(ctx: Context, result: PolicyResult) -> None:
    """Write policy status; call after every rule went through :func:`effective_rule`,
    which records where a broader policy is overridden."""
    for p in result.states:
        ctx.set_status(p.obj, _policy_status(ctx, p))


def _apply_to_gateways(result: PolicyResult, gateways: list[GatewayState]) -> None:
    for gw in gateways:
        gns, gname = gw.obj.namespace or "", gw.obj.name
        for ls in gw.listeners:
            ctp = result.client.lookup(("Gateway", gns, gname, ls.name), ("Gateway", gns, gname, None))
            if ctp is not None and not ctp.invalid:  # an invalid one is reported and not applied
                ls.client_traffic = ir.ClientTrafficIR(ctp.ref, ctp.lowered)
                if ctp.lowered.http3:
                    where = f"{gns}/{gname}/{ls.name}"
                    ctp.http3[where] = (
                        "" if ls.spec.protocol == "HTTPS" and ls.certs and ls.ready
                        else f"listener {where} is {ls.spec.protocol}, not HTTPS" if ls.spec.protocol != "HTTPS"
                        else f"listener {where} has no usable certificate yet"
                    )
                broad = result.client.by_target.get(("Gateway", gns, gname, None))
                if broad is not None and broad is not ctp:
                    broad.overridden_on.append(f"listener {ls.name} of Gateway {gns}/{gname} (by {ctp.obj.name})")


def effective_rule(
    result: PolicyResult, gw: GatewayState, ls: ListenerState, rule: ir.RouteRule
) -> ir.RouteRule:
    """The rule with the SecurityPolicy and BackendTrafficPolicy in effect on this listener."""
    rns, rname = rule.route.namespace or "", rule.route.name
    gns, gname = gw.obj.namespace or "", gw.obj.name
    keys: list[Target] = []
    if rule.rule_name:
        keys.append(("HTTPRoute", rns, rname, rule.rule_name))
    keys += [("HTTPRoute", rns, rname, None), ("Gateway", gns, gname, ls.name), ("Gateway", gns, gname, None)]
    changes: dict[str, Any] = {}
    sp = result.security.lookup(*keys)
    if sp is not None:
        _note_override(result.security, sp, keys, rule)
        valid = not sp.invalid
        changes["security"] = ir.SecurityIR(sp.ref, sp.lowered, valid, sp.invalid)
        if not valid and rule.direct_status is None:
            changes["direct_status"] = 500
            changes["direct_reason"] = f"SecurityPolicy {sp.obj.namespace}/{sp.obj.name} is invalid: {sp.invalid}"
    bp = result.backend.lookup(*keys)
    if bp is not None:
        _note_override(result.backend, bp, keys, rule)
        if not bp.invalid:
            changes["backend_traffic"] = ir.BackendTrafficIR(bp.ref, bp.lowered)
    ep = result.extension.lookup(*keys)
    if ep is not None:
        _note_override(result.extension, ep, keys, rule)
        changes["extension"] = ir.ExtensionIR(ep.ref, tuple(ep.lua), not ep.invalid, ep.invalid)
        if ep.invalid and rule.direct_status is None and "direct_status" not in changes:
            changes["direct_status"] = 500
            changes["direct_reason"] = f"EnvoyExtensionPolicy {ep.obj.namespace}/{ep.obj.name} is invalid: {ep.invalid}"
    return replace(rule, **changes) if changes else rule


def effective_l4(result: PolicyResult, gw: GatewayState, ls: ListenerState, route: ir.L4Route) -> ir.L4Route:
    """A TCP/UDP/TLS route with the BackendTrafficPolicy in effect on this listener (the
    route's own over the Gateway's, as for HTTPRoutes)."""
    gns, gname = gw.obj.namespace or "", gw.obj.name
    keys: list[Target] = [
        (route.route.kind, route.route.namespace or "", route.route.name, None), ("Gateway", gns, gname, ls.name), ("Gateway", gns, gname, None),
    ]
    bp = result.backend.lookup(*keys)
    if bp is None:
        return route
    _note_override(result.backend, bp, keys, route)
    return route if bp.invalid else replace(route, backend_traffic=ir.BackendTrafficIR(bp.ref, bp.lowered))


def _note_override(att: Attachments, winner: PolicyState, keys: list[Target], rule: ir.RouteRule | ir.L4Route) -> None:
    idx = next(i for i, k in enumerate(keys) if att.by_target.get(k) is winner)
    for k in keys[idx + 1 :]:
        broader = att.by_target.get(k)
        if broader is not None and broader is not winner:
            note = f"{rule.route.kind} {rule.route.namespace}/{rule.route.name} (by {winner.obj.name})"
            if note not in broader.overridden_on:
                broader.overridden_on.append(note)


def _policy_status(ctx: Context, p: PolicyState) -> dict[str, Any]:
    gen = generation(p.obj)
    if p.invalid:
        accepted = st.cond(st.ACCEPTED, False, st.R_INVALID, p.invalid, gen)
    elif p.missing and not p.targets:
        accepted = st.cond(st.ACCEPTED, False, st.R_TARGET_NOT_FOUND, f"Target not found: {', '.join(p.missing)}", gen)
    elif p.conflicted_on and len(p.conflicted_on) >= len(p.targets):
        accepted = st.cond(st.ACCEPTED, False, st.R_CONFLICTED, "Conflicts on " + "; ".join(p.conflicted_on), gen)
    elif not p.targets:
        accepted = st.cond(st.ACCEPTED, False, st.R_TARGET_NOT_FOUND, "No target matches the policy's targetRefs/targetSelectors", gen)
    else:
        msg = "Policy has been accepted."
        if p.missing:
            msg += f" Targets not found: {', '.join(p.missing)}."
        accepted = st.cond(st.ACCEPTED, True, st.R_ACCEPTED, msg, gen)
    conditions = [accepted]
    if p.http3 and accepted.status is True:
        conditions.append(_http3_condition(p.http3, gen))
    if p.overridden_on:
        conditions.append(
            st.cond(st.OVERRIDDEN, True, st.R_OVERRIDDEN, "This policy is being overridden by other policies for: " + "; ".join(p.overridden_on), gen)
        )
    ancestors = []
    for anc in _ancestors(ctx, p):
        ancestors.append({"ancestorRef": anc, "controllerName": st.CONTROLLER_NAME, "conditions": st.conditions_json(conditions)})
    if not ancestors:
        ancestors.append({"ancestorRef": None, "controllerName": st.CONTROLLER_NAME, "conditions": st.conditions_json(conditions)})
    return {"ancestors": ancestors}


def _http3_condition(listeners: dict[str, str], gen: int | None) -> st.Condition:
    """Whether the HTTP/3 the policy asks for is served: on its HTTPS listeners that have a
    certificate (the QUIC listener needs one); the others are named with the reason."""
    served = [name for name, why in listeners.items() if not why]
    problems = [why for why in listeners.values() if why]
    if served:
        msg = "HTTP/3 (QUIC) served on " + ", ".join(served)
        return st.cond(st.PROGRAMMED, True, st.R_PROGRAMMED, msg + ("; not on: " + "; ".join(problems) if problems else ""), gen)
    no_https = all("not HTTPS" in why for why in problems)
    return st.cond(st.PROGRAMMED, False, "NoHTTPSListener" if no_https else "NoCertificate", "HTTP/3 not served: " + "; ".join(problems), gen)


def _ancestors(ctx: Context, p: PolicyState) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kind, ns, name, section in p.targets:
        if kind == "Gateway":
            ref = {"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": ns, "name": name}
            if section:
                ref["sectionName"] = section
            out.append(ref)
        else:
            route = ctx.model(GATEWAY_GROUP, kind, ns, name, HTTPRoute)
            for pref in route.spec.parent_refs if route else []:
                ref = {"group": pref.group, "kind": pref.kind, "namespace": pref.namespace or ns, "name": pref.name}
                if pref.section_name:
                    ref["sectionName"] = pref.section_name
                if ref not in out:
                    out.append(ref)
    return out


def attachments_summary(result: PolicyResult) -> tuple[ir.PolicyAttachment, ...]:
    out = []
    for p in result.states:
        targets = tuple(ir.Ref(k, ns, n, s) for k, ns, n, s in p.targets)
        ok = not p.invalid and bool(p.targets) and not (p.conflicted_on and len(p.conflicted_on) >= len(p.targets))
        msg = p.invalid or ("; ".join(p.conflicted_on) if p.conflicted_on else "") or (
            f"targets not found: {', '.join(p.missing)}" if p.missing else ""
        )
        if ok and p.http3 and all(p.http3.values()):
            msg = _http3_condition(p.http3, None).message
        out.append(ir.PolicyAttachment(p.ref, targets, ok, msg))
    return tuple(out)

