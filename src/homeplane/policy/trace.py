"""``homeplane policy trace`` and ``policy check``: the verdict on one connection with each policy
and rule that decided it (as ``cilium policy trace`` shows), and the selectors that match nothing.

Who is who on the command line:

- ``NS/SERVICE`` — the pods behind a Service; as a destination ``NS/SERVICE:PORT[/PROTO]``, where
  PORT is the Service's port (translated to the pods' port) or else a port of the pods;
- ``gateway:NS/NAME`` — a Gateway's Envoy proxy pods; ``dns`` — homeplane's DNS server (kube-dns);
- ``pod:NS:KEY=VALUE,…`` — a pod with those labels (one the repo does not run yet);
- ``world``, ``host``, or an address — a pod if a Service's endpoint has it, else the host or
  the world.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from homeplane.policy.identity import Identity, host, world
from homeplane.policy.verdict import Decision, PolicySet


class PolicyTraceError(ValueError):
    pass


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise PolicyTraceError(f"{part!r}: a label is KEY=VALUE")
        out[k] = v
    return out


def resolve(ps: PolicySet, text: str) -> Identity:
    ids = ps.identities
    if text == "world":
        return world("0.0.0.0")
    if text == "host":
        return host()
    if text == "dns" and ids.dns is not None:
        return ids.dns
    if text.startswith("gateway:"):
        key = text[len("gateway:"):]
        if key not in ids.gateways:
            raise PolicyTraceError(f"no Gateway {key} in the manifests (have: {', '.join(sorted(ids.gateways)) or 'none'})")
        return ids.gateways[key]
    if text.startswith("pod:"):
        ns, _, labels = text[4:].partition(":")
        if not ns:
            raise PolicyTraceError("pod:NAMESPACE:KEY=VALUE,… needs a namespace")
        lab = _labels(labels)
        return Identity("pod", f"pod {ns} {labels}", ns, lab, ids.ns_labels(ns))
    try:
        ipaddress.ip_address(text)
        return ids.of_address(text)
    except ValueError:
        pass
    ns, sep, name = text.partition("/")
    if not sep or not name:
        raise PolicyTraceError(f"{text!r}: expected NS/SERVICE, gateway:NS/NAME, pod:NS:LABELS, world, host or an address")
    ident = ids.service_pods.get((ns, name))
    if ident is None:
        raise PolicyTraceError(f"no Service {ns}/{name} with pods (a selector or endpoints) in the manifests")
    return ident


@dataclass
class TraceResult:
    src: Identity
    dst: Identity
    port: int
    proto: str
    decision: Decision
    request: tuple[str, str] | None = None  # (method, path) when an HTTP request was traced
    request_allowed: bool | None = None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed if self.request_allowed is None else self.request_allowed

    def render(self) -> list[str]:
        lines = [f"From: {self.src.name}", f"  labels: {_show(self.src)}", f"To:   {self.dst.name} port {self.port}/{self.proto}",
                 f"  labels: {_show(self.dst)}", ""]
        for s in self.decision.steps:
            lines.append(f"{s.direction.capitalize():8} {'ALLOWED' if s.allowed else 'DENIED'}: {s.text}")
        if self.decision.http is not None and self.decision.allowed:
            for group in self.decision.http:
                lines.append("L7 HTTP rules (a request must match one): " + " | ".join(str(r) for r in group))
        if self.request is not None:
            lines.append(f"Request {self.request[0]} {self.request[1]}: {'allowed' if self.request_allowed else 'denied (403 Access denied)'}")
        lines.append("")
        lines.append(f"Final verdict: {'ALLOWED' if self.allowed else 'DENIED'}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.src.name, "to": self.dst.name, "port": self.port, "protocol": self.proto,
            "verdict": "ALLOWED" if self.allowed else "DENIED",
            "steps": [{"direction": s.direction, "allowed": s.allowed, "reason": s.text,
                       "policy": str(s.rule.policy) if s.rule else None, "rule": s.rule.section if s.rule else None,
                       "isolatedBy": list(s.policies)} for s in self.decision.steps],
            "http": [[str(r) for r in g] for g in self.decision.http] if self.decision.http is not None else None,
            **({"request": {"method": self.request[0], "path": self.request[1], "allowed": self.request_allowed}}
               if self.request else {}),
        }


def _show(ident: Identity) -> str:
    labels = ident.cilium_labels()
    return ", ".join(f"{k}={v}" if v else k for k, v in sorted(labels.items())) or "-"


def _destination(ps: PolicySet, snapshot: Any, text: str) -> tuple[Identity, int, str]:
    target, proto = text, "TCP"
    head, slash, tail = text.rpartition("/")
    if slash and tail.upper() in ("TCP", "UDP", "SCTP"):
        target, proto = head, tail.upper()
    who, colon, port_text = target.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PolicyTraceError(f"{text!r}: the destination needs a port: NS/SERVICE:PORT[/PROTO]")
    dst = resolve(ps, who)
    port = int(port_text)
    svc = next(iter(dst.services), None) if dst.kind == "pod" and dst.address is None else None
    if svc is not None and snapshot is not None:
        port = _target_port(snapshot, svc, port, proto)
    return dst, port, proto


def _target_port(snapshot: Any, svc: tuple[str, str], port: int, proto: str) -> int:
    """The pods' port behind a Service's port (the port itself when it is not the Service's)."""
    s = snapshot.service(*svc)
    for p in s.ports if s else ():
        if p.port == port and p.protocol == proto:
            pool = snapshot.pools.get(p.pool)
            if pool and pool.endpoints:
                return pool.endpoints[0].port
            if isinstance(p.target_port, int):
                return p.target_port
    return port


def trace(snapshot: Any, source: str, destination: str, method: str | None = None, path: str | None = None,
          headers: dict[str, str] | None = None, host_name: str = "") -> TraceResult:
    ps: PolicySet | None = snapshot.network_policy
    if ps is None:
        raise PolicyTraceError("the manifests hold no NetworkPolicy or Cilium network policy: everything is allowed")
    src = resolve(ps, source)
    dst, port, proto = _destination(ps, snapshot, destination)
    d = ps.decide(src, dst, port, proto)
    res = TraceResult(src, dst, port, proto, d)
    if path is not None or method is not None:
        m, p = (method or "GET").upper(), path or "/"
        res.request = (m, p)
        res.request_allowed = d.allows_request(m, p, host_name, {k.lower(): v for k, v in (headers or {}).items()})
    return res


def check(ps: PolicySet) -> dict[str, Any]:
    """Per policy: whom it selects, what it cannot enforce here, and selectors matching nothing."""
    pods = ps.identities.all_pods()
    out: dict[str, Any] = {}
    for s in ps.subjects:
        entry = out.setdefault(str(s.policy), {"selects": [], "problems": [], "matchesNothing": []})
        entry["selects"] += [p.name for p in pods if s.selects(p) and p.name not in entry["selects"]]
        entry["problems"] += [p for p in s.problems if p not in entry["problems"]]
    for where, what in ps.unselected():
        key = where.split(" ", 1)[0]
        out.setdefault(key, {"selects": [], "problems": [], "matchesNothing": []})["matchesNothing"].append(
            (where.split(" ", 1)[1] + ": " if " " in where else "") + what
        )
    for policy, text in ps.problems:
        if text.startswith("not enforced:"):
            out.setdefault(policy, {"selects": [], "problems": [], "matchesNothing": []})["problems"].append(text)
    return out
