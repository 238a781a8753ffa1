"""``homeplane status``: one screen on a running instance, as ``cilium status`` gives one.

Each component — configuration, gateways, routes, policies, Services, DNS, DNS automation,
certificates, tunnel, flows, leader — gets OK, warning, error or disabled, a count line, and the
problems that made it less than OK. Everything is read from the admin endpoint's ``/status``
(the same document the other tools read), so this is a pure function of that document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

OK, WARNING, ERROR, DISABLED = "OK", "warning", "error", "disabled"
_RANK = {DISABLED: 0, OK: 0, WARNING: 1, ERROR: 2}


@dataclass
class Component:
    name: str
    state: str
    detail: str
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "detail": self.detail, "problems": self.problems}


def _worst(states: Iterable[str]) -> str:
    return max(states, key=lambda s: _RANK[s], default=OK)


def _false(conditions: list[dict[str, Any]] | None, wanted: tuple[str, ...] = ("Accepted", "Programmed", "ResolvedRefs", "Ready")) -> list[str]:
    return [f"{c['type']}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".strip()
            for c in conditions or () if c.get("type") in wanted and c.get("status") != "True"]


def summarize(doc: dict[str, Any]) -> list[Component]:
    rt = doc.get("runtime") or {}
    out = [_configuration(doc, rt), _gateways(doc, rt), _routes(doc), _policies(doc), _network_policy(doc), _services(doc), _dns(rt),
           _dns_automation(rt), _certificates(doc, rt), _tunnel(rt), _flows(rt), _leader(rt)]
    return out


def overall(components: list[Component]) -> str:
    return _worst(c.state for c in components)


def _configuration(doc: dict[str, Any], rt: dict[str, Any]) -> Component:
    s = doc.get("summary") or {}
    errors, warnings = s.get("errors", 0), s.get("warnings", 0)
    problems = [f"{d.get('severity')}: {d.get('message')}" + (f" ({d['file']})" if d.get("file") else "")
                for d in doc.get("diagnostics") or () if d.get("severity") == "error"]
    state = ERROR if errors else WARNING if warnings else OK
    rejected = rt.get("rejected")
    if rejected:
        state = ERROR
        problems.insert(0, f"a change was rejected at {rejected.get('time')} ({rejected.get('reason')}); still serving "
                           f"snapshot {rt.get('servingVersion')}: "
                           + "; ".join(d.get("message", "") for d in rejected.get("diagnostics") or ()))
    not_served = s.get("notServed") or {}
    detail = (f"snapshot {rt.get('servingVersion', (doc.get('snapshot') or {}).get('version'))}, {s.get('objects', 0)} objects "
              f"from {s.get('files', 0)} files, {errors} errors, {warnings} warnings"
              + (f", {sum(not_served.values())} not served" if not_served else ""))
    return Component("Configuration", state, detail, problems)


def _gateways(doc: dict[str, Any], rt: dict[str, Any]) -> Component:
    gws = doc.get("gateways") or []
    if not gws:
        return Component("Gateways", DISABLED, "no Gateways in the manifests")
    problems = []
    programmed = sum(1 for g in gws if g.get("programmed"))
    for g in gws:
        ref = f"{g.get('namespace')}/{g.get('name')}"
        problems += [f"{ref}: {p}" for p in _false(g.get("conditions"))]
        for ls in g.get("listeners") or ():
            problems += [f"{ref} listener {ls.get('name')}: {p}" for p in _false(ls.get("conditions"))]
    bound = rt.get("listeners") or []
    h3 = sum(1 for b in bound if (b.get("http3") or {}).get("listening"))
    listeners = sum(len(g.get("listeners") or ()) for g in gws)
    state = ERROR if programmed < len(gws) else WARNING if problems else OK
    detail = f"{programmed}/{len(gws)} programmed, {listeners} listeners on {len(bound)} sockets" + (f" ({h3} with HTTP/3)" if h3 else "")
    return Component("Gateways", state, detail, problems)


def _routes(doc: dict[str, Any]) -> Component:
    routes = doc.get("routes") or []
    if not routes:
        return Component("Routes", DISABLED, "no routes")
    problems = []
    accepted = 0
    for r in routes:
        parents = r.get("parents") or []
        ok = bool(parents) and all(p.get("accepted") and p.get("resolvedRefs", True) for p in parents)
        accepted += ok
        if not ok:
            why = "; ".join(
                f"{p.get('gateway')}: {p.get('reason')} {p.get('message', '')}".strip() if not p.get("accepted")
                else f"{p.get('gateway')}: ResolvedRefs False (a backend is missing or not allowed: see `homeplane describe`)"
                for p in parents if not (p.get("accepted") and p.get("resolvedRefs", True))) or "attached to no Gateway"
            problems.append(f"{r.get('namespace')}/{r.get('name')}: {why}")
    state = OK if accepted == len(routes) else WARNING if accepted else ERROR
    return Component("Routes", state, f"{accepted}/{len(routes)} accepted", problems)


def _policies(doc: dict[str, Any]) -> Component:
    pols = doc.get("policies") or []
    if not pols:
        return Component("Policies", DISABLED, "no policies")
    bad = [p for p in pols if not p.get("accepted")]
    problems = [f"{p.get('kind')} {p.get('namespace')}/{p.get('name')}: {p.get('message') or 'not accepted'}" for p in bad]
    return Component("Policies", WARNING if bad else OK, f"{len(pols) - len(bad)}/{len(pols)} accepted", problems)


def _network_policy(doc: dict[str, Any]) -> Component:
    np = doc.get("networkPolicies") or {}
    pols = np.get("policies") or []
    if not pols:
        return Component("Network policy", DISABLED, "no policies")
    refused = [p for p in pols if any(x.startswith("not enforced:") for x in p.get("problems") or [])]
    partial = [p for p in pols if p.get("problems") and p not in refused]
    problems = [f"{p['policy']}: {'; '.join(p['problems'])}" for p in refused + partial]
    views = np.get("gatewayViews") or []
    closed = sum(1 for v in views if not v.get("endpoints"))
    state = ERROR if refused else WARNING if partial else OK
    return Component("Network policy", state, f"{len(pols) - len(refused)}/{len(pols)} enforced, {len(views)} gateway backend "
                     f"views narrowed ({closed} closed)", problems)


def _services(doc: dict[str, Any]) -> Component:
    svcs = doc.get("services") or []
    lb = [s for s in svcs if s.get("type") == "LoadBalancer"]
    waiting = [s for s in lb if not s.get("loadBalancerIPs")]
    problems = [f"{s.get('namespace')}/{s.get('name')}: LoadBalancer without an address (no pool matches?)" for s in waiting]
    return Component("Services", WARNING if waiting else OK,
                     f"{len(svcs)} Services, {len(lb) - len(waiting)}/{len(lb)} LoadBalancers with an address", problems)


def _dns(rt: dict[str, Any]) -> Component:
    d = rt.get("dns")
    if not d:
        return Component("DNS", DISABLED, "not serving DNS (--dns)")
    listen = ", ".join(d.get("listen") or ()) or "nowhere"
    state = OK if d.get("listen") else ERROR
    return Component("DNS", state, f"on {listen}, {len(d.get('upstreams') or ())} upstreams, {d.get('cacheEntries', 0)} cached answers",
                     [] if d.get("listen") else ["no DNS socket is open"])


def _dns_automation(rt: dict[str, Any]) -> Component:
    e = rt.get("externalDNS")
    if not e:
        return Component("DNS automation", DISABLED, "no external-dns in the manifests")
    problems, running, changes, failing = [], 0, 0, 0
    for name, s in e.items():
        if s.get("notRunning"):  # configured without what it needs (credentials): said, not failing
            problems.append(s["notRunning"])
            continue
        running += 1
        changes += s.get("changesApplied", 0)
        if s.get("lastError"):
            failing += 1
            problems.append(f"{name}: {s['lastError']} ({s.get('failures', 1)} failures in a row)")
    state = ERROR if failing else WARNING if problems else OK
    return Component("DNS automation", state, f"{running}/{len(e)} providers syncing, {changes} changes applied", problems)


def _certificates(doc: dict[str, Any], rt: dict[str, Any]) -> Component:
    certs = rt.get("certificates")
    if certs is None:
        n = len(doc.get("certificates") or ())
        return Component("Certificates", DISABLED, f"{n} Certificates, not issued here (--no-certificates?)")
    ready, problems = 0, []
    for name, c in certs.items():
        bad = _false(c.get("conditions"), ("Ready",))
        if bad:
            problems += [f"{name}: {p}" for p in bad]
        else:
            ready += 1
    state = OK if not problems else WARNING if ready else ERROR
    return Component("Certificates", state, f"{ready}/{len(certs)} ready", problems)


def _tunnel(rt: dict[str, Any]) -> Component:
    t = rt.get("tunnel")
    if not t:
        return Component("Tunnel", DISABLED, "no tunnel (--tunnel-edge)")
    conns = t.get("connections") or []
    up = [c for c in conns if c.get("state") == "connected"]
    problems = [f"connection {c.get('index')} to {c.get('edge')}: {c.get('state')}" + (f" ({c['lastError']})" if c.get("lastError") else "")
                for c in conns if c.get("state") != "connected"]
    state = OK if len(up) == len(conns) and conns else WARNING if up else ERROR
    return Component("Tunnel", state, f"{len(up)}/{len(conns)} connections up, {t.get('activeStreams', 0)} streams, "
                                      f"{len(t.get('rules') or ())} ingress rules", problems)


def _flows(rt: dict[str, Any]) -> Component:
    f = rt.get("flows")
    if not f:
        return Component("Flows", DISABLED, "no flow ring (--flows 0)")
    return Component("Flows", OK, f"{f.get('stored', 0)}/{f.get('capacity', 0)} kept, {f.get('seen', 0)} seen")


def _leader(rt: dict[str, Any]) -> Component:
    ld = rt.get("leader")
    if not ld:
        return Component("Controllers", DISABLED, "no election")
    who = "this node" if ld.get("isLeader") else f"{ld.get('leader') or 'nobody'}"
    state = OK if ld.get("leader") else WARNING
    store = "shared store" if ld.get("shared") else "local store"
    return Component("Controllers", state, f"led by {who} (node {ld.get('node')}, {store}, lease {ld.get('leaseSeconds')} s)",
                     [] if ld.get("leader") else ["no node holds the controller lease"])


def render(components: list[Component], doc: dict[str, Any], color: bool = False) -> list[str]:
    lines = [f"homeplane {doc.get('homeplaneVersion', '?')}: {overall(components)}"]
    for c in components:
        lines.append(f"{c.name + ':':<17} {c.state:<9} {c.detail}")
        for p in c.problems[:10]:
            lines.append(f"{'':<17} {'':<9} - {p}")
        if len(c.problems) > 10:
            lines.append(f"{'':<17} {'':<9} … and {len(c.problems) - 10} more")
    return lines
