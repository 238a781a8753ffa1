"""HTTPRoute processing: attach routes to listeners, resolve backends, compile rules.

For each parentRef the route is checked against the Gateway's listeners
(sectionName/port, allowed route kinds and namespaces, hostname intersection)
and gets an ``Accepted`` condition with the Gateway API reason. Backend refs are
resolved (cross-namespace needs a ReferenceGrant) and give ``ResolvedRefs``; a
rule whose backends are all invalid answers 500, as the spec requires. Rules
are then ordered per virtual host by the spec's precedence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from homeplane.api.diagnostics import Diagnostics
from homeplane.api.models.gateway import (
    GATEWAY_GROUP,
    BackendObjectReference,
    HeaderModifier,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteMatch,
    HTTPRouteRule,
    ParentReference,
    TCPRoute,
    TLSRoute,
    UDPRoute,
)
from homeplane.api.objects import Obj
from homeplane.api.units import parse_duration
from homeplane.translate import snapshot as ir
from homeplane.translate.security import CorsSettings
from homeplane.translate import status as st
from homeplane.translate.context import Context, age_key, generation
from homeplane.translate.gateways import AttachedRoute, GatewayState, ListenerState
from homeplane.translate.hostnames import intersect, specificity
from homeplane.translate.services import backend_pool_name, find_service_port, service_pool_name

ENVOY_GROUP = "gateway.envoyproxy.io"


@dataclass(frozen=True, slots=True)
class ResolvedBackend:
    pool: str | None
    reason: str = st.R_RESOLVED_REFS
    message: str = ""


def resolve_backend_ref(
    ctx: Context, from_group: str, from_kind: str, from_ns: str, ref: BackendObjectReference
) -> ResolvedBackend:
    """Resolve a backendRef to a pool name, or give the upstream reason it is invalid."""
    ns = ref.namespace or from_ns
    what = f"{ref.kind} {ns}/{ref.name}"
    if (ref.group, ref.kind) == ("", "Service"):
        if not ctx.ref_granted(from_group, from_kind, from_ns, "", "Service", ns, ref.name):
            return ResolvedBackend(
                None, st.R_REF_NOT_PERMITTED, f"Backend ref to {what} not permitted by any ReferenceGrant"
            )
        obj = ctx.get("", "Service", ns, ref.name)
        if obj is None:
            return ResolvedBackend(None, st.R_BACKEND_NOT_FOUND, f"Service {ns}/{ref.name} not found")
        if ref.port is None:
            return ResolvedBackend(None, st.R_PORT_NOT_FOUND, f"A port is required for a reference to {what}")
        if not find_service_port(obj, ref.port):
            return ResolvedBackend(None, st.R_PORT_NOT_FOUND, f"Port {ref.port} not found on {what}")
        return ResolvedBackend(service_pool_name(ns, ref.name, ref.port))
    if (ref.group, ref.kind) == (ENVOY_GROUP, "Backend"):
        if not ctx.ref_granted(from_group, from_kind, from_ns, ENVOY_GROUP, "Backend", ns, ref.name):
            return ResolvedBackend(
                None, st.R_REF_NOT_PERMITTED, f"Backend ref to {what} not permitted by any ReferenceGrant"
            )
        if ctx.get(ENVOY_GROUP, "Backend", ns, ref.name) is None:
            return ResolvedBackend(None, st.R_BACKEND_NOT_FOUND, f"Backend {ns}/{ref.name} not found")
        return ResolvedBackend(backend_pool_name(ns, ref.name))
    return ResolvedBackend(
        None, st.R_INVALID_KIND, f"Unsupported backend kind {ref.group or 'core'}/{ref.kind} (supported: Service, gateway.envoyproxy.io/Backend)"
    )


@dataclass
class _Compiled:
    rules: list[ir.RouteRule]
    resolved: st.Condition
    partially_invalid: list[str]


def _header_ops(m: HeaderModifier | None) -> ir.HeaderOps | None:
    if m is None:
        return None
    return ir.HeaderOps(
        set=tuple((h.name, h.value) for h in m.set),
        add=tuple((h.name, h.value) for h in m.add),
        remove=tuple(h.lower() for h in m.remove),
    )


def _compile_filters(
    ctx: Context, route: Obj, filters: list[HTTPRouteFilter], problems: list[str], ref_problems: list[tuple[str, str]]
) -> tuple[ir.Filters, str | None]:
    """Filters of a rule (or backendRef); returns (filters, reason the rule cannot be served)."""
    req = resp = None
    redirect = rewrite = None
    mirrors: list[ir.Mirror] = []
    cors: CorsSettings | None = None
    direct: ir.DirectResponse | None = None
    fatal: str | None = None
    for f in filters:
        if f.type == "RequestHeaderModifier":
            req = _header_ops(f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier":
            resp = _header_ops(f.response_header_modifier)
        elif f.type == "RequestRedirect" and f.request_redirect is not None:
            r = f.request_redirect
            redirect = ir.Redirect(
                scheme=r.scheme,
                hostname=r.hostname,
                port=r.port,
                path_type=r.path.type if r.path else None,
                path_value=(r.path.replace_full_path if r.path.type == "ReplaceFullPath" else r.path.replace_prefix_match)
                if r.path
                else None,
                status_code=r.status_code,
            )
        elif f.type == "URLRewrite" and f.url_rewrite is not None:
            u = f.url_rewrite
            rewrite = ir.Rewrite(
                hostname=u.hostname,
                path_type=u.path.type if u.path else None,
                path_value=(u.path.replace_full_path if u.path.type == "ReplaceFullPath" else u.path.replace_prefix_match)
                if u.path
                else None,
            )
        elif f.type == "CORS" and f.cors is not None:
            c = f.cors
            cors = CorsSettings(
                any_origin="*" in c.allow_origins, origins=tuple(o for o in c.allow_origins if o != "*"),
                allow_methods=tuple(c.allow_methods), allow_headers=tuple(c.allow_headers),
                expose_headers=tuple(c.expose_headers), max_age=float(c.max_age), credentials=bool(c.allow_credentials),
            )
        elif f.type == "RequestMirror" and f.request_mirror is not None:
            m = f.request_mirror
            res = resolve_backend_ref(ctx, GATEWAY_GROUP, "HTTPRoute", route.namespace or "", m.backend_ref)
            if res.pool is None:
                ref_problems.append((res.reason, f"requestMirror: {res.message}"))
            percent = 100.0
            if m.percent is not None:
                percent = float(m.percent)
            elif m.fraction is not None:
                percent = 100.0 * m.fraction.numerator / m.fraction.denominator
            mirrors.append(ir.Mirror(res.pool, percent))
        elif f.type == "ExtensionRef" and f.extension_ref is not None:
            found, problem = _extension_filter(ctx, route, f.extension_ref)
            direct = found or direct
            if problem:
                fatal = problem
                ref_problems.append(("InvalidKind" if "kind" in problem else "BackendNotFound", problem))
        else:
            fatal = f"filter type {f.type} is not supported by homeplane"
            problems.append(fatal)
    if redirect is not None and rewrite is not None:
        fatal = "RequestRedirect and URLRewrite cannot be used in the same rule"
        problems.append(fatal)
    return ir.Filters(req, resp, redirect, rewrite, tuple(mirrors), cors, direct), fatal


def _extension_filter(ctx: Context, route: Obj, ref: Any) -> tuple[ir.DirectResponse | None, str | None]:
    """An ``ExtensionRef`` to Envoy Gateway's HTTPRouteFilter (same namespace as the route)."""
    from homeplane.api.models.envoy import EnvoyHTTPRouteFilter

    group, kind = getattr(ref, "group", ""), getattr(ref, "kind", "")
    if (group, kind) != ("gateway.envoyproxy.io", "HTTPRouteFilter"):
        return None, f"extensionRef kind {group}/{kind} is not supported (gateway.envoyproxy.io/HTTPRouteFilter is)"
    f = ctx.model("gateway.envoyproxy.io", "HTTPRouteFilter", route.namespace, ref.name, EnvoyHTTPRouteFilter)
    if f is None:
        return None, f"HTTPRouteFilter {route.namespace}/{ref.name} not found"
    d = f.spec.direct_response
    if d is None:
        what = "urlRewrite" if f.spec.url_rewrite else ("credentialInjection" if f.spec.credential_injection else "nothing")
        return None, f"HTTPRouteFilter {route.namespace}/{ref.name}: {what} is not supported (directResponse is)"
    body = b""
    if d.body is not None:
        if d.body.type == "Inline":
            body = (d.body.inline or "").encode()
        elif d.body.value_ref is not None:
            from homeplane.api.models.core import ConfigMap

            cm = ctx.model("", "ConfigMap", route.namespace, d.body.value_ref.name, ConfigMap)
            if cm is None or not (cm.data or cm.binary_data):
                return None, f"HTTPRouteFilter {route.namespace}/{ref.name}: ConfigMap {d.body.value_ref.name} not found or empty"
            # as Envoy Gateway: the key response.body, else the first entry, else the first binaryData entry
            if "response.body" in cm.data:
                body = cm.data["response.body"].encode()
            elif cm.data:
                body = str(next(iter(cm.data.values()))).encode()
            else:
                import base64

                body = base64.b64decode(next(iter(cm.binary_data.values())))
    return ir.DirectResponse(d.status_code, body, d.content_type or ("text/plain" if body else "")), None


# Envoy Gateway's filters on a backendRef: header modifiers and a hostname rewrite; anything
# else makes the rule unservable (ResolvedRefs=False, UnsupportedRefValue; the rule answers 500)
_BACKEND_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite")


def _backend_filter_problem(filters: list[HTTPRouteFilter]) -> str | None:
    for f in filters:
        if f.type not in _BACKEND_FILTERS:
            return (
                f"filter {f.type} is not supported within a backendRef; only RequestHeaderModifier, "
                "ResponseHeaderModifier and URLRewrite (hostname) are"
            )
        if f.type == "URLRewrite" and f.url_rewrite is not None and f.url_rewrite.path is not None:
            return "URLRewrite path modifier is not supported within a backendRef"
    return None


def _compile_match(m: HTTPRouteMatch) -> tuple[ir.Match, str | None]:
    problem = None
    if m.path.type in ("Exact", "PathPrefix") and not m.path.value.startswith("/"):
        problem = f"path {m.path.value!r} must start with '/'"
    regexes = []
    if m.path.type == "RegularExpression":
        regexes.append(m.path.value)
    regexes += [h.value for h in m.headers if h.type == "RegularExpression"]
    regexes += [q.value for q in m.query_params if q.type == "RegularExpression"]
    for rx in regexes:
        try:
            re.compile(rx)
        except re.error as e:
            problem = f"invalid regular expression {rx!r}: {e}"
    return (
        ir.Match(
            path_type=m.path.type,
            path=m.path.value,
            method=m.method,
            headers=tuple((h.type, h.name.lower(), h.value) for h in m.headers),
            query=tuple((q.type, q.name, q.value) for q in m.query_params),
        ),
        problem,
    )


def compile_route(ctx: Context, obj: Obj) -> _Compiled:
    route = obj.model
    assert isinstance(route, HTTPRoute)
    ns = obj.namespace or ""
    ref_problems: list[tuple[str, str]] = []
    partially: list[str] = []
    out: list[ir.RouteRule] = []
    for i, rule in enumerate(route.spec.rules):
        out.extend(_compile_rule(ctx, obj, ns, i, rule, ref_problems, partially))
    gen = generation(obj)
    if ref_problems:
        resolved = st.cond(st.RESOLVED_REFS, False, ref_problems[0][0], "; ".join(m for _, m in ref_problems), gen)
    else:
        resolved = st.cond(st.RESOLVED_REFS, True, st.R_RESOLVED_REFS, "Resolved all the Object references for the Route", gen)
    return _Compiled(out, resolved, partially)


def _compile_rule(
    ctx: Context,
    obj: Obj,
    ns: str,
    i: int,
    rule: HTTPRouteRule,
    ref_problems: list[tuple[str, str]],
    partially: list[str],
) -> list[ir.RouteRule]:
    rule_problems: list[str] = []
    filters, fatal = _compile_filters(ctx, obj, rule.filters, rule_problems, ref_problems)
    backends: list[ir.WeightedBackend] = []
    for j, bref in enumerate(rule.backend_refs):
        res = resolve_backend_ref(ctx, GATEWAY_GROUP, "HTTPRoute", ns, bref)
        if res.pool is None:
            ref_problems.append((res.reason, f"rules[{i}].backendRefs[{j}]: {res.message}"))
        bfilters = None
        if bref.filters:
            unsupported = _backend_filter_problem(bref.filters)
            if unsupported:
                ref_problems.append((st.R_UNSUPPORTED_REF_VALUE, f"rules[{i}].backendRefs[{j}]: {unsupported}"))
                fatal = fatal or unsupported
            bfilters, bfatal = _compile_filters(ctx, obj, bref.filters, rule_problems, ref_problems)
            fatal = fatal or bfatal
        backends.append(
            ir.WeightedBackend(
                res.pool,
                bref.weight,
                ir.Ref(bref.kind, bref.namespace or ns, bref.name, str(bref.port) if bref.port else None),
                bfilters,
                None if res.pool else res.message,
            )
        )
    direct: int | None = None
    direct_reason = ""
    if fatal:
        direct, direct_reason = 500, fatal
    elif filters.direct is not None:
        direct, direct_reason = filters.direct.status, "directResponse (HTTPRouteFilter)"
    elif filters.redirect is None:
        valid_weight = sum(b.weight for b in backends if b.pool is not None)
        if not backends:
            direct, direct_reason = 500, "rule has no backendRefs"
        elif valid_weight == 0:
            invalid = [b for b in backends if b.pool is None]
            direct = 500
            direct_reason = "all backendRefs are invalid" if invalid else "all backendRefs have weight 0"
    timeout_req = timeout_be = None
    if rule.timeouts is not None:
        if rule.timeouts.request is not None:
            timeout_req = parse_duration(rule.timeouts.request)  # 0.0: explicitly disabled
        if rule.timeouts.backend_request is not None:
            timeout_be = parse_duration(rule.timeouts.backend_request)
        if timeout_req and timeout_be and timeout_be > timeout_req:
            rule_problems.append("timeouts.backendRequest must not be longer than timeouts.request")
            direct, direct_reason = 500, rule_problems[-1]
    retry = None
    if rule.retry is not None:
        # GEP-1731 as Envoy Gateway lowers it: attempts (2 by default) on connection errors and
        # the listed codes (503 by default), backoff the base interval
        r = rule.retry
        retry = ir.RetrySettings(
            num_retries=r.attempts if r.attempts is not None else 2,
            triggers=frozenset({"connect-failure", "refused-stream", "reset", "retriable-status-codes"}),
            status_codes=frozenset(r.codes or (503,)),
            backoff_base=parse_duration(r.backoff) if r.backoff else 0.025,
        )
    out: list[ir.RouteRule] = []
    for j, m in enumerate(rule.matches):
        match, problem = _compile_match(m)
        d, dr = direct, direct_reason
        if problem:
            rule_problems.append(f"matches[{j}]: {problem}")
            d, dr = 500, problem
        if filters.rewrite and filters.rewrite.path_type == "ReplacePrefixMatch" and match.path_type != "PathPrefix":
            rule_problems.append("URLRewrite ReplacePrefixMatch needs a PathPrefix match")
            d, dr = 500, rule_problems[-1]
        if filters.redirect and filters.redirect.path_type == "ReplacePrefixMatch" and match.path_type != "PathPrefix":
            rule_problems.append("RequestRedirect ReplacePrefixMatch needs a PathPrefix match")
            d, dr = 500, rule_problems[-1]
        out.append(
            ir.RouteRule(
                retry=retry,
                route=ir.Ref("HTTPRoute", ns, obj.name),
                rule_index=i,
                match_index=j,
                match=match,
                filters=filters,
                backends=tuple(backends),
                direct_status=d,
                direct_reason=dr,
                direct_body=filters.direct.body if filters.direct is not None and d == filters.direct.status and dr.startswith("directResponse") else b"",
                direct_content_type=filters.direct.content_type if filters.direct is not None and dr.startswith("directResponse") else "",
                timeout_request=timeout_req,
                timeout_backend_request=timeout_be,
                rule_name=rule.name,
            )
        )
    partially.extend(f"rules[{i}]: {p}" for p in dict.fromkeys(rule_problems))
    return out


def _namespace_allowed(ctx: Context, ls: ListenerState, route_ns: str) -> bool:
    ns_rule = ls.spec.allowed_routes.namespaces
    gw_ns = ls.gateway.obj.namespace
    if ns_rule.from_ == "All":
        return True
    if ns_rule.from_ == "Same":
        return route_ns == gw_ns
    if ns_rule.from_ == "Selector":
        return ns_rule.selector is not None and ns_rule.selector.matches(ctx.namespace_labels(route_ns))
    return False


def process_routes(ctx: Context, gateways: list[GatewayState], diags: Diagnostics) -> None:
    by_key = {(g.obj.namespace, g.obj.name): g for g in gateways}
    for obj in ctx.kind(GATEWAY_GROUP, "HTTPRoute"):
        route = obj.model
        assert isinstance(route, HTTPRoute)
        route_ns = obj.namespace or ""
        compiled = compile_route(ctx, obj)
        gen = generation(obj)
        parents = []
        for pref, gw_ns, gw in _our_parents(ctx, by_key, route_ns, route.spec.parent_refs):
            accepted = _attach(ctx, obj, gw, pref, route.spec.hostnames, lambda hosts: AttachedRoute(obj, hosts, compiled.rules), gen)
            conditions = [accepted, compiled.resolved]
            if compiled.partially_invalid:
                conditions.append(
                    st.cond("PartiallyInvalid", True, st.R_UNSUPPORTED_VALUE, "; ".join(compiled.partially_invalid), gen)
                )
            parents.append(_parent_status(pref, gw_ns, conditions))
        ctx.set_status(obj, {"parents": parents})


def _our_parents(
    ctx: Context, by_key: dict, route_ns: str, parent_refs: list[ParentReference]
) -> Iterator[tuple[ParentReference, str, GatewayState | None]]:
    """The parentRefs that name a Gateway homeplane serves (or a missing one, which gets a
    status); Gateways of other controllers are none of our business."""
    for pref in parent_refs:
        if (pref.group, pref.kind) != (GATEWAY_GROUP, "Gateway"):
            continue
        gw_ns = pref.namespace or route_ns
        gw = by_key.get((gw_ns, pref.name))
        if gw is None and ctx.get(GATEWAY_GROUP, "Gateway", gw_ns, pref.name) is not None:
            continue
        yield pref, gw_ns, gw


def _parent_status(pref: ParentReference, gw_ns: str, conditions: list[st.Condition]) -> dict:
    parent_ref: dict = {"group": pref.group, "kind": pref.kind, "namespace": gw_ns, "name": pref.name}
    if pref.section_name:
        parent_ref["sectionName"] = pref.section_name
    if pref.port:
        parent_ref["port"] = pref.port
    return {"parentRef": parent_ref, "controllerName": st.CONTROLLER_NAME, "conditions": st.conditions_json(conditions)}


def process_l4_routes(ctx: Context, gateways: list[GatewayState]) -> None:
    """TCPRoutes and UDPRoutes: the whole stream of a TCP/UDP listener goes to the route's
    backends (all rules' backendRefs, by weight). When several attach to one listener, the
    oldest is served; the others are attached but wait (their status says so). TLSRoutes:
    the same per SNI name, on TLS passthrough listeners (hostnames as for HTTPRoutes)."""
    by_key = {(g.obj.namespace, g.obj.name): g for g in gateways}
    for kind in ("TCPRoute", "UDPRoute", "TLSRoute"):
        for obj in ctx.kind(GATEWAY_GROUP, kind):
            route = obj.model
            assert isinstance(route, (TCPRoute, UDPRoute, TLSRoute))
            ns = obj.namespace or ""
            gen = generation(obj)
            backends = []
            problems: list[tuple[str, str]] = []
            for rule in route.spec.rules:
                for bref in rule.backend_refs:
                    res = resolve_backend_ref(ctx, GATEWAY_GROUP, kind, ns, bref)
                    if res.pool is None:
                        problems.append((res.reason, res.message))
                    backends.append(
                        ir.WeightedBackend(res.pool, bref.weight, ir.Ref(bref.kind, bref.namespace or ns, bref.name, str(bref.port) if bref.port else None), invalid_reason=res.message or None)
                    )
            resolved = (
                st.cond(st.RESOLVED_REFS, False, problems[0][0], "; ".join(m for _, m in problems), gen)
                if problems
                else st.cond(st.RESOLVED_REFS, True, st.R_RESOLVED_REFS, "Resolved all references", gen)
            )
            ref = ir.Ref(kind, ns, obj.name)
            hostnames = list(route.spec.hostnames) if isinstance(route, TLSRoute) else None
            parents = []
            for pref, gw_ns, gw in _our_parents(ctx, by_key, ns, route.spec.parent_refs):
                accepted = _attach(
                    ctx, obj, gw, pref, hostnames,
                    lambda hosts: AttachedRoute(obj, hosts, [], ir.L4Route(ref, tuple(backends), tuple(hosts))), gen,
                )
                parents.append(_parent_status(pref, gw_ns, [accepted, resolved]))
            ctx.set_status(obj, {"parents": parents})


def _attach(
    ctx: Context,
    obj: Obj,
    gw: GatewayState | None,
    pref: ParentReference,
    hostnames: list[str] | None,
    make: Callable[[list[str]], AttachedRoute],
    gen: int | None,
) -> st.Condition:
    """Attach a route to the listeners its parentRef selects; its Accepted condition for that
    parent. ``hostnames``: the route's (HTTPRoute), or None for kinds without (TCP/UDP)."""
    kind = (GATEWAY_GROUP, obj.kind)
    gw_ns = pref.namespace or obj.namespace
    if gw is None:
        return st.cond(st.ACCEPTED, False, st.R_NO_MATCHING_PARENT, f"Gateway {gw_ns}/{pref.name} not found", gen)
    candidates = gw.listeners
    if pref.section_name:
        candidates = [ls for ls in candidates if ls.name == pref.section_name]
    if pref.port:
        candidates = [ls for ls in candidates if ls.spec.port == pref.port]
    if not candidates:
        what = " and ".join(
            x for x in (f"sectionName {pref.section_name}" if pref.section_name else "", f"port {pref.port}" if pref.port else "") if x
        )
        return st.cond(st.ACCEPTED, False, st.R_NO_MATCHING_PARENT, f"No listener of Gateway {gw_ns}/{pref.name} has {what}", gen)
    allowed_any = False
    attached_any = False
    for ls in candidates:
        if not ls.accepts_routes:
            continue
        if kind not in ls.supported_kinds:
            continue
        if not _namespace_allowed(ctx, ls, obj.namespace or ""):
            continue
        allowed_any = True
        hosts = intersect(ls.spec.hostname, hostnames) if hostnames is not None else []
        if hostnames is not None and not hosts:
            continue
        attached_any = True
        if not any(a.route is obj for a in ls.routes):
            ls.routes.append(make(hosts))
    if attached_any:
        return st.cond(st.ACCEPTED, True, st.R_ACCEPTED, "Route is accepted", gen)
    if allowed_any:
        return st.cond(
            st.ACCEPTED, False, st.R_NO_MATCHING_LISTENER_HOSTNAME, "There were no hostnames that matched the listener hostname", gen
        )
    if not any(ls.accepts_routes for ls in candidates):
        return st.cond(st.ACCEPTED, False, st.R_NOT_ALLOWED_BY_LISTENERS, "No valid listener to attach to", gen)
    return st.cond(
        st.ACCEPTED, False, st.R_NOT_ALLOWED_BY_LISTENERS, "No listener allows this route (route kind or namespace not allowed)", gen
    )


_PATH_RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}


def precedence_key(rule: ir.RouteRule, route_age: tuple) -> tuple:
    """Gateway API precedence: exact path, longest prefix, method, headers, query, oldest route, name, rule order."""
    m = rule.match
    return (
        _PATH_RANK[m.path_type],
        -len(m.path),
        0 if m.method else 1,
        -len(m.headers),
        -len(m.query),
        route_age,
        rule.rule_index,
        rule.match_index,
    )


def build_vhosts(ls: ListenerState) -> tuple[ir.VirtualHost, ...]:
    entries: dict[str, list[tuple[tuple, ir.RouteRule]]] = {}
    for attached in ls.routes:
        if attached.l4 is not None:
            continue  # TCP/UDP/TLS routes have no virtual hosts
        age = age_key(attached.route)
        for host in attached.hostnames:
            bucket = entries.setdefault(host, [])
            for rule in attached.rules:
                bucket.append((precedence_key(rule, age), rule))
    vhosts = []
    for host in sorted(entries, key=lambda h: (specificity(h), h)):
        rules = tuple(r for _, r in sorted(entries[host], key=lambda kr: kr[0]))
        vhosts.append(ir.VirtualHost(host, rules))
    return tuple(vhosts)
