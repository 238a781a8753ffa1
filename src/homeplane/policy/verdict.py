"""The verdict on one connection (and, where L7 rules apply, one HTTP request), with its reasons.

A connection from ``src`` to ``dst`` on ``port/proto`` passes when the source's egress policies
and the destination's ingress policies both let it; each side, as Cilium computes it:

1. a deny rule that matches drops it (deny wins over every allow);
2. a pod no policy puts in default deny for that direction is open;
3. otherwise an allow rule must match peer and port; when every matching rule carries L7 HTTP
   rules, the connection is allowed for requests those rules allow (Cilium's proxy answers the
   others 403).

Cilium lets the host reach its own endpoints whatever the policies (``allow-localhost``); so does
this. The host and the world have no policies of their own here (no host firewall).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from homeplane.policy.identity import Identities, Identity
from homeplane.policy.rules import DNSRule, Entry, HTTPRule, Peer, Subject, cilium_selector_matches

ACCESS_DENIED = b"Access denied\r\n"  # the body Cilium's proxy sends with its 403


@dataclass(frozen=True)
class Step:
    direction: str  # ingress | egress
    allowed: bool
    text: str
    rule: Entry | None = None
    policies: tuple[str, ...] = ()  # the policies that put the pod in default deny


@dataclass(frozen=True)
class Decision:
    allowed: bool
    steps: tuple[Step, ...]
    # L7: allowed only for requests that match a rule of every group (one group per side that has
    # L7 rules); None: every request
    http: tuple[tuple[HTTPRule, ...], ...] | None = None
    dns: tuple[tuple[DNSRule, ...], ...] | None = None  # the same for DNS queries (Cilium's DNS proxy)

    @property
    def verdict(self) -> str:
        if not self.allowed:
            return "DROPPED"
        return "REDIRECTED" if self.http is not None or self.dns is not None else "FORWARDED"

    def allows_query(self, name: str) -> bool:
        return self.allowed and (self.dns is None or all(any(r.matches(name) for r in group) for group in self.dns))

    def allows_request(self, method: str, path: str, host: str, headers: dict[str, str]) -> bool:
        return self.allowed and (
            self.http is None or all(any(h.matches(method, path, host, headers) for h in group) for group in self.http)
        )


def peer_matches(peer: Peer, who: Identity, ids: Identities | None = None) -> bool:
    if peer.kind == "endpoints":
        if who.kind != "pod":
            # a selector naming reserved: labels selects the host or the world
            return peer.cilium and peer.selector is not None and any(
                k.startswith("reserved:") for k in peer.selector.match_labels
            ) and cilium_selector_matches(peer.selector, who.cilium_labels())
        if peer.namespace is not None and who.namespace != peer.namespace:
            return False
        if peer.ns_selector is not None and not peer.ns_selector.matches(dict(who.ns_labels)):
            return False
        if peer.selector is None:
            return True
        if peer.cilium:
            return cilium_selector_matches(peer.selector, who.cilium_labels())
        return peer.selector.matches(dict(who.labels))
    if peer.kind == "entities":
        ents = peer.entities
        if "all" in ents:
            return True
        if who.kind == "world":
            fam = who.family
            return "world" in ents or (fam == 4 and "world-ipv4" in ents) or (fam == 6 and "world-ipv6" in ents)
        if who.kind == "host":
            return "host" in ents or "cluster" in ents
        return "cluster" in ents
    if peer.kind == "cidr":
        # CIDR rules select addresses outside the cluster (Cilium: not its endpoints nor the host)
        if who.kind != "world" or not who.address:
            return False
        try:
            ip = ipaddress.ip_address(who.address)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net and not any(ip in x for x in exc if x.version == ip.version)
                   for net, exc in peer.cidrs)
    if peer.kind == "service":
        return who.kind == "pod" and peer.service in who.services
    return False


def _entry_matches(e: Entry, peer: Identity, port: int, proto: str, named: dict[str, int], ids: Identities) -> bool:
    if not (e.any_peer or any(peer_matches(p, peer, ids) for p in e.peers)):
        return False
    if e.requires and not (peer.kind == "pod" and all(cilium_selector_matches(r, peer.cilium_labels()) for r in e.requires)):
        return False
    return not e.ports or any(p.matches(port, proto, named) for p in e.ports)


@dataclass
class PolicySet:
    """The compiled network policies of one configuration with the identities they speak of.
    Pure and immutable once built; data planes ask :meth:`decide`."""

    subjects: tuple[Subject, ...]
    identities: Identities
    problems: tuple[tuple[str, str], ...] = ()  # (policy, what is not enforced)
    _selecting: dict[Any, tuple[Subject, ...]] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return not self.subjects

    def selecting(self, who: Identity) -> tuple[Subject, ...]:
        key = (who.kind, who.namespace, frozenset(who.labels.items()))
        hit = self._selecting.get(key)
        if hit is None:
            hit = tuple(s for s in self.subjects if s.selects(who))
            if len(self._selecting) < 4096:
                self._selecting[key] = hit
        return hit

    def side(self, direction: str, subject: Identity, peer: Identity, port: int, proto: str,
             dst: Identity) -> tuple[Step, tuple[HTTPRule, ...] | None, tuple[DNSRule, ...] | None]:
        """The verdict of ``subject``'s ``direction`` policies on traffic with ``peer``."""
        if subject.kind != "pod":
            return Step(direction, True, f"{subject.name} has no {direction} policies"), None, None
        if direction == "ingress" and peer.kind == "host":
            return Step(direction, True, "the host may always reach its endpoints (Cilium's allow-localhost)"), None, None
        subjects = self.selecting(subject)
        named = dict(dst.ports)
        entries = [e for s in subjects for e in s.entries if e.direction == direction]
        for e in entries:
            if e.deny and _entry_matches(e, peer, port, proto, named, self.identities):
                return Step(direction, False, f"denied by {e.policy} {e.section}: {e}", e), None, None
        isolating = tuple(str(s.policy) for s in subjects if (s.deny_ingress if direction == "ingress" else s.deny_egress))
        allows = [e for e in entries if not e.deny and _entry_matches(e, peer, port, proto, named, self.identities)]
        if not isolating and not (allows and all(e.l7 for e in allows)):
            # (L7 rules restrict even where a policy turned default deny off, as in Cilium)
            what = "no policy selects it" if not subjects else "its policies do not enable default deny"
            return Step(direction, True, f"{subject.name}: {direction} open ({what})"), None, None
        if not allows:
            return Step(direction, False, f"default deny for {subject.name} ({', '.join(isolating)}); no rule allows "
                        f"{peer.name} on {port}/{proto}", None, isolating), None, None
        plain = next((e for e in allows if not e.l7), None)
        if plain is not None:
            return Step(direction, True, f"allowed by {plain.policy} {plain.section}: {plain}", plain, isolating), None, None
        # every matching rule carries L7 rules: a request must pass one of them (an entry with
        # DNS rules only leaves HTTP open, and the other way round)
        http = None if any(e.http is None for e in allows) else tuple(h for e in allows for h in e.http or ())
        dns = None if any(e.dns is None for e in allows) else tuple(d for e in allows for d in e.dns or ())
        first = allows[0]
        what = "HTTP requests" if http is not None else "DNS queries"
        return Step(direction, True, f"allowed for some {what} by {first.policy} {first.section}: {first}",
                    first, isolating), http, dns

    def decide(self, src: Identity, dst: Identity, port: int, proto: str = "TCP") -> Decision:
        steps = []
        groups: list[tuple[HTTPRule, ...]] = []
        names: list[tuple[DNSRule, ...]] = []
        for direction, subject, peer in (("egress", src, dst), ("ingress", dst, src)):
            step, rules, dns = self.side(direction, subject, peer, port, proto, dst)
            steps.append(step)
            if not step.allowed:
                return Decision(False, tuple(steps))
            if rules is not None:
                groups.append(rules)
            if dns is not None:
                names.append(dns)
        return Decision(True, tuple(steps), tuple(groups) if groups else None, tuple(names) if names else None)

    def unselected(self) -> list[tuple[str, str]]:
        """(policy, selector) pairs that select nothing this configuration knows (``policy check``)."""
        pods = self.identities.all_pods()
        out = []
        for s in self.subjects:
            if s.host_policy:
                continue
            if not any(s.selects(p) for p in pods):
                out.append((str(s.policy), "its endpoint/pod selector matches no Service's pods and no gateway"))
            for e in s.entries:
                for p in e.peers:
                    if p.kind == "endpoints" and not any(peer_matches(p, who, self.identities) for who in pods):
                        out.append((f"{e.policy} {e.section}", f"{p.text} matches nothing"))
                    if p.kind == "service" and p.service not in {k for k in self.identities.service_pods}:
                        out.append((f"{e.policy} {e.section}", f"{p.text} is not in the manifests"))
        return out

