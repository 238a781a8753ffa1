"""``homeplane trace URL``: the path of one request, step by step, with the object behind each
decision — DNS answer, tunnel or direct, Gateway and listener (SNI, certificate), route and rule,
policies, backend and endpoint, network policy.

Pure: it reads a Snapshot and runs the gateway's own tables on the request (``compile_gateway``
and ``PortTable.route``, path normalization, ``redirect_location``, ``compile_authorization``),
homeplane's DNS responder on the name, and the tunnel's ingress rules on the hostname, so what it
says is what the data planes do. The caller gives what lives outside the Snapshot: the DNS zones
homeplane serves, the records external-dns publishes, and (live) the endpoints' health.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from homeplane.gateway.policies.authz import compile_authorization
from homeplane.gateway.routing import paths
from homeplane.gateway.routing.filters import redirect_location
from homeplane.gateway.routing.router import PortTable, compile_gateway, normalize_host
from homeplane.translate import snapshot as ir

# where a request comes from when --from names a place rather than an address (RFC 5737 / 1918)
PLACES = {"internet": "203.0.113.10", "lan": "192.168.1.10"}
PUBLIC_PROVIDERS = frozenset({"cloudflare", "aws", "google", "azure", "digitalocean", "ovh", "hetzner", "gandi", "linode"})
TUNNEL_SUFFIX = ".cfargotunnel.com"

FORWARDED, REDIRECTED, ANSWERED, DENIED, NOT_FOUND, UNREACHABLE, FAILED = (
    "FORWARDED", "REDIRECTED", "ANSWERED", "DENIED", "NOT_FOUND", "UNREACHABLE", "FAILED")


class TraceError(ValueError):
    pass


@dataclass
class Step:
    layer: str
    decision: str
    by: str = ""  # the object that made the decision ("HTTPRoute downloads/sonarr")
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "decision": self.decision, "by": self.by or None, "details": self.details}


@dataclass
class Trace:
    method: str
    url: str
    source: str
    client_ip: str
    steps: list[Step] = field(default_factory=list)
    internet: bool = False  # the client is on the internet (public DNS, no private addresses)
    outcome: str = ""
    status: int | None = None
    summary: str = ""

    def add(self, layer: str, decision: str, by: str = "", details: Iterable[str] = ()) -> Step:
        s = Step(layer, decision, by, list(details))
        self.steps.append(s)
        return s

    def end(self, outcome: str, summary: str, status: int | None = None) -> Trace:
        self.outcome, self.summary, self.status = outcome, summary, status
        return self

    def to_json(self) -> dict[str, Any]:
        return {"request": {"method": self.method, "url": self.url, "from": self.source, "clientIP": self.client_ip},
                "steps": [s.to_json() for s in self.steps], "outcome": self.outcome, "status": self.status,
                "summary": self.summary}

    def render(self) -> list[str]:
        out = [f"{self.method} {self.url} from {self.source} ({self.client_ip})"]
        for i, s in enumerate(self.steps, 1):
            out.append(f"{i:>2}  {s.layer:<15} {s.decision}" + (f"  [{s.by}]" if s.by else ""))
            out += [f"{'':<19}{d}" for d in s.details]
        out.append(f"=> {self.outcome}" + (f" {self.status}" if self.status else "") + f": {self.summary}")
        return out


@dataclass(frozen=True)
class Published:
    """A record an external-dns instance publishes."""

    instance: str
    provider: str
    name: str
    type: str
    targets: tuple[str, ...]
    resource: str = ""

    @property
    def public(self) -> bool:
        return self.provider in PUBLIC_PROVIDERS


@dataclass
class Context:
    """What the trace reads besides the Snapshot."""

    snapshot: ir.Snapshot
    zones: Any = None  # dns.zones.ZoneData homeplane's DNS serves (None: no DNS here)
    published: tuple[Published, ...] = ()
    ingress: Any = None  # tunnel.ingress.Ingress, when a tunnel carries public traffic
    ingress_origin: str = ""
    cluster_domain: str = "cluster.local"
    health: Callable[[str], Mapping[str, bool]] | None = None  # pool -> {"ip:port": available} (live)
    network_policies: int = 0  # NetworkPolicies / CiliumNetworkPolicies in the manifests
    # (gateway "ns/name", listener name) -> why the listener is not served (its false conditions)
    listener_problems: Mapping[tuple[str, str], list[str]] = field(default_factory=dict)


def client_address(source: str) -> str:
    if source in PLACES:
        return PLACES[source]
    try:
        net = ipaddress.ip_network(source, strict=False)
    except ValueError:
        raise TraceError(f"--from {source!r}: internet, lan, an address or a CIDR") from None
    return str(net.network_address if net.num_addresses == 1 else next(net.hosts()))


def trace(ctx: Context, url: str, method: str = "GET", headers: Iterable[tuple[str, str]] = (), source: str = "lan") -> Trace:
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        hostname = parts.hostname
    except ValueError as e:
        raise TraceError(f"{url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise TraceError(f"{url!r}: an http:// or https:// URL with a host name")
    host = hostname.lower().rstrip(".")
    if _literal(host) is None:
        from homeplane.tunnel.wire import valid_hostname

        try:  # a name as it goes on the wire (IDNA), each label checked as DNS would
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise TraceError(f"{url!r}: {hostname!r} is not a valid host name ({e})") from None
        if not valid_hostname(host):
            raise TraceError(f"{url!r}: {hostname!r} is not a valid host name")
    try:
        port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TraceError(f"{url!r}: the port is not a number from 0 to 65535") from None
    t = Trace(method.upper(), url, source, client_address(source))
    internet = t.internet = source == "internet" or not _private(t.client_ip)
    address = _literal(host)
    if address is None:
        answer = _resolve(ctx, t, host, internet)
        if answer is None:
            return t
        if answer.startswith("tunnel:"):
            return _through_tunnel(ctx, t, host, parts, answer[7:])
        address = answer
    elif internet:
        t.add("DNS", f"{host} is an address: no lookup")
    headers = list(headers)
    vhost = next((v.strip().lower().rstrip(".") for k, v in headers if k.lower() == "host"), host)  # curl -H 'Host: …'
    return _at_address(ctx, t, address, port, parts.scheme, vhost, parts, [(k, v) for k, v in headers if k.lower() != "host"])


# --- DNS ------------------------------------------------------------------------------------------


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
                                                  "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128"))


def _private(ip: str) -> bool:
    """A home or link address (RFC 1918, CGNAT, ULA, loopback, link-local). The documentation
    ranges (RFC 5737, where ``--from internet`` comes from) count as the internet here, though
    Python's ``is_private`` says otherwise."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(a.version == n.version and a in n for n in _PRIVATE)


def _records_for(published: Iterable[Published], name: str) -> list[Published]:
    exact = [r for r in published if r.name == name and r.type in ("A", "AAAA", "CNAME")]
    if exact:
        return exact
    parent = name.split(".", 1)[1] if "." in name else ""
    return [r for r in published if r.name == f"*.{parent}" and r.type in ("A", "AAAA", "CNAME")]


def _resolve(ctx: Context, t: Trace, host: str, internet: bool) -> str | None:
    """The address the client reaches for ``host`` ("tunnel:TARGET" for a tunnel), or None
    (the trace ends)."""
    if not internet and ctx.zones is not None:
        found = _homeplane_dns(ctx, t, host)
        if found is not None:
            return found
    candidates = [r for r in ctx.published if r.public] if internet else sorted(ctx.published, key=lambda r: r.public)
    name, chain = host, []
    for _ in range(8):  # CNAME chains within the published records
        recs = _records_for(candidates, name)
        if not recs:
            break
        r = recs[0]
        chain.append(r)
        target = r.targets[0] if r.targets else ""
        if r.type != "CNAME":
            t.add("DNS", f"{host} {r.type} {', '.join(r.targets)}", f"external-dns {r.instance} ({r.provider})",
                  [f"{c.name} {c.type} {', '.join(c.targets)}" + (f" (from {c.resource})" if c.resource else "") for c in chain])
            return target
        if target.endswith(TUNNEL_SUFFIX):
            t.add("DNS", f"{host} → {target}: the tunnel", f"external-dns {r.instance} ({r.provider})",
                  [f"{c.name} CNAME {', '.join(c.targets)}" + (f" (from {c.resource})" if c.resource else "") for c in chain])
            return "tunnel:" + target
        name = target.rstrip(".").lower()
    where = "the public DNS" if internet else "homeplane's DNS or the records external-dns publishes"
    if chain:
        t.add("DNS", f"{host}: the chain ends at {name}, which nothing here answers", chain[-1].instance,
              [f"{c.name} CNAME {', '.join(c.targets)}" for c in chain])
    else:
        t.add("DNS", f"{host}: no record in {where}",
              details=[f"published names: {', '.join(sorted({r.name for r in candidates})[:8]) or 'none'}"])
    t.end(UNREACHABLE, f"{host} does not resolve" + (" from the internet" if internet else ""))
    return None


def _homeplane_dns(ctx: Context, t: Trace, host: str) -> str | None:
    import dns.exception
    import dns.message
    import dns.rcode

    from homeplane.dns.responder import FORWARD, Responder

    try:
        query = dns.message.make_query(host, "A")
    except dns.exception.DNSException as e:
        raise TraceError(f"{host!r} is not a valid DNS name: {e}") from None
    resp = Responder(ctx.zones).respond(query.to_wire(), "tcp")
    if resp is FORWARD or not isinstance(resp, bytes):
        return None
    msg = dns.message.from_wire(resp)
    zone = ctx.zones.zone_for(host.encode() + b".") or ctx.zones.zone_for(host.encode())
    apex = zone.apex.decode().rstrip(".") if zone is not None else "?"
    ips = [rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype == 1]
    if not ips:
        t.add("DNS", f"{host}: {dns.rcode.to_text(msg.rcode())} from homeplane's DNS", f"zone {apex}")
        t.end(UNREACHABLE, f"{host} has no address in homeplane's zone {apex}")
        return None
    t.add("DNS", f"{host} A {', '.join(ips)}", f"homeplane DNS, zone {apex}")
    return ips[0]


# --- tunnel ---------------------------------------------------------------------------------------


def _through_tunnel(ctx: Context, t: Trace, host: str, parts: Any, target: str) -> Trace:
    if ctx.ingress is None:
        t.add("Tunnel", f"{target}: no tunnel ingress rules in the manifests")
        return t.end(UNREACHABLE, "the name points at a tunnel this configuration does not define")
    rule = ctx.ingress.match(host, parts.path or "/")
    by = f"ingress rule {rule.index + 1}" + (f" ({ctx.ingress_origin})" if ctx.ingress_origin else "")
    what = f"hostname {rule.hostname}" if rule.hostname else "the catch-all"
    if rule.scheme == "http_status":
        t.add("Tunnel", f"{what} answers {rule.status}", by)
        return t.end(ANSWERED, f"the tunnel's rule answers {rule.status}", rule.status)
    t.add("Tunnel", f"{what} → {rule.service}", by, ["the edge forwards the connection to the connector; no port is open at home"])
    from homeplane.tunnel.local import service_name

    svc = service_name(rule.host, ctx.cluster_domain)
    gw = ctx.snapshot.gateway(*svc) if svc else None
    if gw is not None:
        t.add("Gateway", f"in-process origin: Gateway {gw.key}", f"Gateway {gw.key}",
              ["the client's address is the peer the Gateway sees"])
        scheme = "https" if rule.scheme == "https" else "http"
        return _gateway(ctx, t, gw, rule.port or (443 if scheme == "https" else 80), scheme, host, parts, ())
    t.add("Origin", f"{rule.service} (not a Gateway of these manifests)")
    return t.end(FORWARDED, f"to {rule.service} through the tunnel")


# --- addresses, gateways ----------------------------------------------------------------------------


def _at_address(ctx: Context, t: Trace, address: str, port: int, scheme: str, host: str, parts: Any,
                headers: Iterable[tuple[str, str]]) -> Trace:
    for gw in ctx.snapshot.gateways:
        # its own addresses, or where it listens on this machine (homeplane's DNS answers that)
        if address in gw.addresses or address == gw.bind_address:
            if _private(address) and t.internet:
                t.add("Network", f"{address} is a private address: not reachable from the internet")
                return t.end(UNREACHABLE, f"{address} is private; publish the route through the tunnel or a public address")
            t.add("Gateway", f"{address}:{port} is Gateway {gw.key}", f"Gateway {gw.key}", [f"class {gw.class_name}"])
            return _gateway(ctx, t, gw, port, scheme, host, parts, headers)
    for svc in ctx.snapshot.services:
        if address in svc.lb_ips or address == svc.cluster_ip:
            sp = next((p for p in svc.ports if p.port == port), None)
            kind = "LoadBalancer IP" if address in svc.lb_ips else "ClusterIP"
            if sp is None:
                t.add("Service", f"{address} is the {kind} of Service {_ref(svc.ref)}, which has no port {port}", f"Service {_ref(svc.ref)}")
                return t.end(UNREACHABLE, f"nothing listens on {address}:{port}")
            t.add("Service", f"{address}:{port} is the {kind} of Service {_ref(svc.ref)} (L4, Maglev)", f"Service {_ref(svc.ref)}")
            return _endpoints(ctx, t, sp.pool, "Maglev (consistent hash of the connection)")
    t.add("Network", f"no Gateway or Service here has the address {address}")
    return t.end(UNREACHABLE, f"{address} is not served by homeplane")


def _ref(ref: ir.Ref) -> str:
    return f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name


def _gateway(ctx: Context, t: Trace, gw: ir.Gateway, port: int, scheme: str, host: str, parts: Any,
             headers: Iterable[tuple[str, str]]) -> Trace:
    tables = compile_gateway(gw)
    table: PortTable | None = tables.get(port)
    if table is None:
        ports = ", ".join(f"{p}/{tb.protocol}" for p, tb in sorted(tables.items())) or "none"
        idle = [ls for ls in gw.listeners if ls.port == port and not ls.ready]
        if idle:
            t.add("Listener", f"the listeners on port {port} are not served: " + ", ".join(ls.name for ls in idle), f"Gateway {gw.key}",
                  [f"{ls.name}: {p}" for ls in idle for p in ctx.listener_problems.get((gw.key, ls.name), ["not ready"])])
            return t.end(UNREACHABLE, f"nothing listens on port {port} until the listeners are ready")
        t.add("Listener", f"Gateway {gw.key} has no ready HTTP(S) listener on port {port} (it has: {ports})", f"Gateway {gw.key}")
        return t.end(UNREACHABLE, f"connection refused on port {port}")
    hbytes = host.encode()
    if table.protocol == "HTTPS":
        lt = table.listener_for(hbytes)
        if lt is None:
            names = ", ".join(ls.listener.hostname or "*" for ls in table.listeners)
            t.add("Listener", f"no HTTPS listener on port {port} takes SNI {host} (listeners: {names})", f"Gateway {gw.key}")
            return t.end(FAILED, "the TLS handshake fails: no listener for this SNI")
        ls = lt.listener
        cert = _certificate(ls, host)
        t.add("Listener", f"{ls.name} (port {port}, HTTPS, hostname {ls.hostname or '*'}), SNI {host}", f"Gateway {gw.key}",
              [cert] + _client_traffic(ls))
        if scheme == "http":
            t.add("TLS", "the client speaks plain HTTP to a TLS port")
            return t.end(FAILED, "plain HTTP on an HTTPS listener: the connection is closed")
    else:
        lt = table.listener_for(hbytes)
        if lt is None:
            t.add("Listener", f"no listener on port {port} takes host {host}", f"Gateway {gw.key}")
            return t.end(NOT_FOUND, "no route (NR)", 404)
        ls = lt.listener
        t.add("Listener", f"{ls.name} (port {port}, {table.protocol}, hostname {ls.hostname or '*'})", f"Gateway {gw.key}",
              _client_traffic(ls))
        if scheme == "https":
            t.add("TLS", "the client starts TLS on a plain HTTP port")
            return t.end(FAILED, "TLS on an HTTP listener: the handshake fails")
    return _route(ctx, t, table, lt, port, scheme, host, parts, headers)


def _certificate(ls: ir.Listener, host: str) -> str:
    best = None
    for c in ls.tls_certs:
        if any(n == host or (n.startswith("*.") and host.endswith(n[1:]) and host.count(".") == n.count(".")) for n in c.dns_names):
            best = c
            break
    best = best or (ls.tls_certs[0] if ls.tls_certs else None)
    if best is None:
        return "certificate: none (the listener has no certificate)"
    names = ", ".join(best.dns_names) or "no names"
    return f"certificate: Secret {_ref(best.secret)} ({names}" + (f"; expires {best.not_after}" if best.not_after else "") + ")"


def _client_traffic(ls: ir.Listener) -> list[str]:
    ct = ls.client_traffic
    if ct is None:
        return []
    s = ct.settings
    bits = [f"ClientTrafficPolicy {_ref(ct.policy)}"]
    if s.xff_enabled or s.xff_hops:
        bits.append("client address from X-Forwarded-For")
    if s.http3:
        bits.append("HTTP/3 advertised")
    if s.proxy_protocol:
        bits.append("PROXY protocol expected")
    return ["; ".join(bits)]


def _describe_match(m: ir.Match) -> str:
    out = [f"{m.path_type} {m.path}"]
    if m.method:
        out.append(f"method {m.method}")
    out += [f"header {n} {'~' if typ == 'RegularExpression' else '='} {v}" for typ, n, v in m.headers]
    out += [f"query {n} {'~' if typ == 'RegularExpression' else '='} {v}" for typ, n, v in m.query]
    return ", ".join(out)


def _route(ctx: Context, t: Trace, table: PortTable, lt: Any, port: int, scheme: str, host: str, parts: Any,
           headers: Iterable[tuple[str, str]]) -> Trace:
    raw_path = (parts.path or "/").encode()
    ls = lt.listener
    st = ls.client_traffic.settings if ls.client_traffic else None
    settings = paths.PathSettings(st.escaped_slashes, st.merge_slashes) if st else paths.DEFAULT
    path, verdict = paths.normalize(raw_path, settings)
    if verdict == paths.Verdict.REJECT:
        t.add("Path", f"{raw_path.decode()} is refused (a fragment, NUL or escaped slash the listener rejects)")
        return t.end(DENIED, "bad request", 400)
    if path != raw_path:
        t.add("Path", f"{raw_path.decode()} is normalized to {path.decode()}",
              details=["routing and policies see the normalized path (dot segments, escapes, slashes)"])
        if verdict == paths.Verdict.REDIRECT:
            return t.end(REDIRECTED, f"redirected to {path.decode()} (escaped slashes decoded)", 307)
    hdrs = {k.lower().encode(): v.encode() for k, v in headers}
    hdr_list = [(k.lower().encode(), v.encode()) for k, v in headers]
    query = (parts.query or "").encode()
    _, match = table.route(normalize_host(host.encode()), t.method.encode(), paths.match_path(path), hdrs, query, listener=lt)
    if match is None:
        vh = lt.vhost(host.encode())
        why = (f"host {host} has routes, but none of their matches takes {t.method} {path.decode()}" if vh is not None
               else f"no route on listener {ls.name} has hostname {host}")
        names = sorted({v.hostname for v in ls.vhosts})[:8]
        t.add("Route", why, details=[f"hostnames on this listener: {', '.join(names) or 'none'}"])
        return t.end(NOT_FOUND, "no route (NR)", 404)
    rule: ir.RouteRule = match.rule
    rname = f" ({rule.rule_name})" if rule.rule_name else ""
    t.add("Route", f"rule {rule.rule_index}{rname}, match {rule.match_index}: {_describe_match(rule.match)}",
          f"{rule.route.kind} {_ref(rule.route)}")
    return _rule(ctx, t, rule, port, scheme, host, path.decode(), parts.query or "", hdr_list)


def _rule(ctx: Context, t: Trace, rule: ir.RouteRule, port: int, scheme: str, host: str, path: str, query: str,
          headers: list[tuple[bytes, bytes]]) -> Trace:
    sec = rule.security
    if sec is not None:
        denied = _security(t, sec, headers)
        if denied is not None:
            return denied
    if rule.extension is not None:
        t.add("Policy", f"Lua: {', '.join(n for n, _, _ in rule.extension.lua) or 'scripts'} run on the request",
              f"EnvoyExtensionPolicy {_ref(rule.extension.policy)}")
    if rule.direct_status is not None:
        t.add("Rule", f"answers {rule.direct_status} by itself: {rule.direct_reason}", f"{rule.route.kind} {_ref(rule.route)}")
        return t.end(ANSWERED if rule.direct_status < 500 else FAILED, rule.direct_reason or "direct answer", rule.direct_status)
    f = rule.filters
    if f.redirect is not None:
        prefix = rule.match.path if rule.match.path_type == "PathPrefix" else None
        loc = redirect_location(f.redirect, scheme, host, port, path, query, prefix)
        t.add("Filter", f"RequestRedirect {f.redirect.status_code} to {loc}", f"{rule.route.kind} {_ref(rule.route)}")
        return t.end(REDIRECTED, f"Location: {loc}", f.redirect.status_code)
    if f.direct is not None:
        t.add("Filter", f"directResponse {f.direct.status}", f"{rule.route.kind} {_ref(rule.route)}")
        return t.end(ANSWERED, "answered by the route's directResponse filter", f.direct.status)
    if f.rewrite is not None:
        rw = f.rewrite
        what = [f"host → {rw.hostname}"] if rw.hostname else []
        if rw.path_type:
            what.append(f"path {rw.path_type} {rw.path_value}")
        t.add("Filter", f"URLRewrite: {', '.join(what)}", f"{rule.route.kind} {_ref(rule.route)}")
    if f.request_headers is not None:
        h = f.request_headers
        t.add("Filter", "RequestHeaderModifier: " + ", ".join(
            [f"set {k}" for k, _ in h.set] + [f"add {k}" for k, _ in h.add] + [f"remove {k}" for k in h.remove]))
    for m in f.mirrors:
        t.add("Filter", f"RequestMirror: a copy goes to {m.pool} ({m.percent:g} %)")
    bt = rule.backend_traffic
    if bt is not None:
        s = bt.settings
        bits = [f"load balancing {s.lb_policy}"]
        if s.retry and s.retry.num_retries:
            bits.append(f"{s.retry.num_retries} retries on {', '.join(sorted(s.retry.triggers)) or 'errors'}")
        if s.request_timeout:
            bits.append(f"timeout {s.request_timeout:g} s")
        if s.compression:
            bits.append(f"compression {', '.join(s.compression)}")
        t.add("Policy", "; ".join(bits), f"BackendTrafficPolicy {_ref(bt.policy)}")
    elif rule.retry and rule.retry.num_retries:
        t.add("Policy", f"the rule retries {rule.retry.num_retries} times", f"{rule.route.kind} {_ref(rule.route)}")
    valid = [b for b in rule.backends if b.pool is not None and b.weight > 0]
    total = sum(b.weight for b in valid)
    details = [f"{b.ref.kind} {_ref(b.ref)}: weight {b.weight}" + (f" ({b.invalid_reason})" if b.invalid_reason else "")
               for b in rule.backends]
    if not valid:
        t.add("Backend", "no valid backend", f"{rule.route.kind} {_ref(rule.route)}", details)
        return t.end(FAILED, "no valid backend: the rule answers 500", 500)
    chosen = max(valid, key=lambda b: b.weight)
    share = f"{chosen.weight}/{total}" if len(valid) > 1 else "all"
    t.add("Backend", f"{chosen.ref.kind} {_ref(chosen.ref)} takes {share} of the requests", f"{rule.route.kind} {_ref(rule.route)}",
          details if len(rule.backends) > 1 else [])
    lb = bt.settings.lb_policy if bt is not None else "LeastRequest"
    target = path + (f"?{query}" if query else "")
    request = (host, target, {k.decode("latin-1"): v.decode("latin-1") for k, v in headers})
    return _endpoints(ctx, t, chosen.pool or "", f"{lb} over the ready endpoints", chosen.ref, request)


def _security(t: Trace, sec: ir.SecurityIR, headers: list[tuple[bytes, bytes]]) -> Trace | None:
    by = f"SecurityPolicy {_ref(sec.policy)}"
    if not sec.valid:
        t.add("Policy", f"the policy is invalid: {sec.message}", by, ["its routes fail closed"])
        return t.end(FAILED, "the SecurityPolicy is invalid: 500", 500)
    s = sec.settings
    if s.cors is not None:
        origins = "any origin" if s.cors.any_origin else ", ".join(s.cors.origins)
        t.add("Policy", f"CORS: {origins}", by)
    has = {n for n, _ in headers}
    if s.api_key is not None:
        t.add("Policy", "API key required (" + ", ".join(f"{k} {n}" for k, n in s.api_key.sources) + ")", by)
    if s.basic_auth is not None:
        if b"authorization" not in has:
            t.add("Policy", "basic auth: no Authorization header", by)
            return t.end(DENIED, "401: basic auth asks for credentials", 401)
        t.add("Policy", "basic auth: the Authorization header is checked against the htpasswd Secret", by)
    if s.jwt is not None:
        names = ", ".join(p.name for p in s.jwt.providers)
        if b"authorization" not in has and not s.jwt.optional:
            t.add("Policy", f"JWT ({names}): no bearer token", by)
            return t.end(DENIED, "401: a JWT is required", 401)
        t.add("Policy", f"JWT ({names}): the token is verified", by)
    if s.ext_auth is not None:
        ea = s.ext_auth
        t.add("Policy", f"forward auth: asks {ea.pool}{ea.path} first", by,
              ["a 2xx answer lets the request through (with "
               + (", ".join(ea.headers_to_backend) or "no headers") + " copied to it); any other answer goes to the client",
               f"timeout {ea.timeout:g} s" + (", fail open" if ea.fail_open else ", fail closed")])
    if s.authorization is not None:
        authz = compile_authorization(s.authorization)
        for i, r in enumerate(authz.rules):
            if r.jwt is not None:
                continue  # needs a verified token: not decidable here
            if r.matches(t.client_ip, t.method.encode(), headers, None):
                verb = "allows" if r.allow else "denies"
                t.add("Policy", f"authorization rule {i} {verb} {t.client_ip}", by)
                if not r.allow:
                    return t.end(DENIED, f"403: authorization rule {i} denies it", 403)
                return None
        verb = "allows" if authz.default_allow else "denies"
        t.add("Policy", f"authorization: no rule matches {t.client_ip}; the default {verb}", by)
        if not authz.default_allow:
            return t.end(DENIED, "403: authorization's default action is Deny", 403)
    return None


def _endpoints(ctx: Context, t: Trace, pool_name: str, how: str, ref: ir.Ref | None = None,
               request: tuple[str, str, dict[str, str]] | None = None) -> Trace:
    pool = ctx.snapshot.pools.get(pool_name)
    if pool is None:
        t.add("Endpoint", f"no backend pool {pool_name}")
        return t.end(FAILED, "no healthy upstream (UH)", 503)
    gateway = pool_name.split("@", 1)[1] if "@" in pool_name else None
    if pool.policy_denied:
        t.add("Network policy", f"{len(pool.policy_denied)} of {len(pool.policy_denied) + len(pool.endpoints)} endpoints "
              f"refused to Gateway {gateway}", f"homeplane policy trace --from gateway:{gateway}",
              [f"{ep}: {why}" for ep, why in pool.policy_denied])
        if not pool.endpoints:
            return t.end(DENIED, "503: network policy lets the gateway reach none of the endpoints", 503)
    if pool.policy_http is not None and request is not None:
        host, target, headers = request
        ok = all(any(r.matches(t.method, target, host, headers) for r in group) for group in pool.policy_http)
        rules = " | ".join(str(r) for group in pool.policy_http for r in group)
        t.add("Network policy", f"L7 HTTP rules {'allow' if ok else 'refuse'} {t.method} {target}", f"Gateway {gateway}", [rules])
        if not ok:
            return t.end(DENIED, "403 Access denied: the network policy's HTTP rules refuse the request", 403)
    ready = list(pool.ready_endpoints)
    health = ctx.health(pool_name) if ctx.health is not None else None
    names = [f"{e.address}:{e.port}" for e in ready]
    live = [n for n in names if health is None or health.get(n, True)]
    details = []
    if health is not None:
        details.append("health: " + ", ".join(f"{n} {'up' if health.get(n, True) else 'down'}" for n in names))
    not_ready = len(pool.endpoints) - len(ready)
    if not_ready:
        details.append(f"{not_ready} endpoints not ready")
    if not live:
        t.add("Endpoint", f"no ready endpoint in {pool_name}", pool.source.kind + " " + _ref(pool.source), details)
        return t.end(FAILED, "no healthy upstream (UH)", 503)
    pick = live[0] if len(live) == 1 else f"one of {', '.join(live)}"
    t.add("Endpoint", f"{pick} ({how})", f"{pool.source.kind} {_ref(pool.source)}", details)
    if ctx.snapshot.network_policy is None:
        t.add("Network policy", "none in the manifests")
    elif not pool.policy_denied and pool.policy_http is None:
        t.add("Network policy", "the gateway may reach every endpoint", details=[f"{ctx.network_policies} policies in the manifests"])
    return t.end(FORWARDED, f"to {live[0] if len(live) == 1 else pool_name}", None)


# --- what the trace reads, from a pipeline result --------------------------------------------------

POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")


def context_from(result: Any, dns_config: Any = None, dns_domains: Iterable[str] = (), cluster_domain: str | None = None,
                 health: Callable[[str], Mapping[str, bool]] | None = None) -> Context:
    """A trace context for a loaded and translated repo (``pipeline.Result``): homeplane's DNS
    zones (``dns_config`` of a running DNS server, else the manifests' CoreDNS values with
    ``dns_domains``), the records each external-dns instance would publish, the tunnel's rules."""
    from homeplane.dns.config import DNSConfig, from_coredns_values
    from homeplane.dns.zones import compile_zones
    from homeplane.externaldns.config import instances
    from homeplane.externaldns.endpoint import RESOURCE
    from homeplane.externaldns.providers import provider_kind
    from homeplane.externaldns.sources import SourceInput, desired_endpoints

    snap = result.translation.snapshot
    cfg = dns_config
    if cfg is None:
        cfg = from_coredns_values(snap.extras["coredns"], DNSConfig()) if "coredns" in snap.extras else DNSConfig()
        if dns_domains:
            cfg.gateway_domains = list(dns_domains)
        if cluster_domain:
            cfg.cluster_domain = cluster_domain
    objects = result.load.objects
    src = SourceInput.from_result(result)
    published = []
    for inst in instances(objects):
        eps, _ = desired_endpoints(inst, src)
        kind = provider_kind(inst)
        published += [Published(inst.id, kind, e.dns_name.rstrip(".").lower(), e.record_type, tuple(e.targets), e.labels.get(RESOURCE, ""))
                      for e in eps]
    ingress, origin = None, ""
    found = [f for f in snap.extras.get("cloudflared", ()) if f.ingress is not None]
    if found:
        ingress, origin = found[0].ingress, found[0].origin
    elif "tunnelIngress" in snap.extras:
        ingress, origin = snap.extras["tunnelIngress"]
    problems = {}
    for g in result.report.get("gateways", ()):
        for ls in g.get("listeners", ()):
            bad = [f"{c['type']} {c.get('status')} {c.get('reason', '')}: {c.get('message', '')}" for c in ls.get("conditions", ())
                   if (c.get("status") != "True") != (c.get("type") == "Conflicted")]
            if bad:
                problems[(f"{g['namespace']}/{g['name']}", ls["name"])] = bad
    return Context(snap, compile_zones(snap, cfg), tuple(published), ingress, origin, cfg.cluster_domain, health,
                   sum(1 for o in objects if o.kind in POLICY_KINDS), problems)


def attach(admin: Any, current: Callable[[], Any], dns_config: Callable[[], Any], health: Callable[[str], Mapping[str, bool]]) -> None:
    """``GET /api/v1/trace?url=URL&from=lan&method=GET&header=Name:+value`` on the admin endpoint:
    the trace on the Snapshot being served, with the running DNS server's zones and the
    endpoints' health as the data plane sees it now."""
    import json
    from urllib.parse import parse_qs

    async def trace_api(method: str, target: str, _body: bytes, _headers: dict[str, str]) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        q = parse_qs(urlsplit(target).query)
        result = current()
        if result is None:
            return 503, "application/json", b'{"error": "no configuration applied yet"}\n'
        try:
            hdrs = [_header(h) for h in q.get("header", [])]
            ctx = context_from(result, dns_config=dns_config(), health=health)
            t = trace(ctx, q.get("url", [""])[-1], q.get("method", ["GET"])[-1], hdrs, q.get("from", ["lan"])[-1])
        except TraceError as e:
            return 400, "application/json", json.dumps({"error": str(e)}).encode() + b"\n"
        return 200, "application/json", json.dumps(t.to_json()).encode() + b"\n"

    admin.api_route("/api/v1/trace", trace_api)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise TraceError(f"header {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def from_json(doc: dict[str, Any]) -> Trace:
    """A trace a running instance answered, to render it here."""
    r = doc["request"]
    t = Trace(r["method"], r["url"], r["from"], r["clientIP"], outcome=doc["outcome"], status=doc.get("status"),
              summary=doc.get("summary", ""))
    t.steps = [Step(s["layer"], s["decision"], s.get("by") or "", s.get("details") or []) for s in doc["steps"]]
    return t


GOOD_OUTCOMES = frozenset({FORWARDED, REDIRECTED, ANSWERED, DENIED})
