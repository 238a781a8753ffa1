"""NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy in one form.

Each policy becomes :class:`Subject`\\ s (who it applies to, and whether it puts them in default
deny for ingress and egress) holding :class:`Entry`\\ s (one allow or deny rule: peers, ports,
L7 rules). The two APIs differ in ways that matter and are kept here, not in the evaluator:

- Kubernetes: a policy isolates its pods for the directions in ``policyTypes`` (Ingress always,
  Egress when it has egress rules, if unset); an empty rule ``{}`` allows everything; peers
  without ``namespaceSelector`` are in the policy's namespace.
- Cilium: a rule isolates its endpoints for a direction when it has ``ingress``/``ingressDeny``
  (``egress``/``egressDeny``) rules, unless ``enableDefaultDeny`` says false; an empty rule
  ``{}`` allows nothing (the default-deny idiom); a rule with only ``toPorts`` allows every peer
  on those ports; endpoint selectors of a namespaced policy stay in its namespace unless they
  name ``k8s:io.kubernetes.pod.namespace``; deny rules win over allow rules.

What homeplane cannot enforce where it sits (host policies, FQDN egress of pods, Kafka rules …)
is listed in :attr:`Subject.problems`, never silently dropped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

import re2

from homeplane.api.models.base import LabelSelector
from homeplane.api.models.cilium import CiliumNetworkPolicy, CiliumPolicyRule, PeerRule, PortRule
from homeplane.api.models.networking import NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort
from homeplane.translate.snapshot import Ref

Direction = Literal["ingress", "egress"]
ENTITIES = frozenset(
    ("all", "world", "world-ipv4", "world-ipv6", "host", "remote-node", "cluster", "init", "health", "unmanaged",
     "kube-apiserver", "ingress")
)


@dataclass(frozen=True)
class PortSpec:
    port: int | None  # None: every port
    end: int | None = None
    name: str | None = None  # a named port, resolved against the destination
    protocol: str = "TCP"  # TCP UDP SCTP ANY

    def matches(self, port: int, proto: str, named: dict[str, int] | Any) -> bool:
        if self.protocol != "ANY" and self.protocol != proto:
            return False
        if self.name is not None:
            return named.get(self.name) == port
        if self.port is None:
            return True
        return self.port <= port <= (self.end or self.port)

    def __str__(self) -> str:
        p = self.name or ("*" if self.port is None else f"{self.port}" + (f"-{self.end}" if self.end else ""))
        return f"{p}/{self.protocol}"


@dataclass(frozen=True)
class HTTPRule:
    """Cilium's L7 HTTP rule: RE2 patterns matched against the whole method, path and host. The
    path is the request's ``:path``, query included, as Cilium's Envoy matches it."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()  # (lower-case name, value or None: present)

    def matches(self, method: str, path: str, host: str, headers: dict[str, str]) -> bool:
        if self.method and not re2.fullmatch(self.method, method):
            return False
        if self.path and not re2.fullmatch(self.path, path):
            return False
        if self.host and not re2.fullmatch(self.host, host):
            return False
        for name, value in self.headers:
            have = headers.get(name)
            if have is None or (value is not None and have != value):
                return False
        return True

    def __str__(self) -> str:
        parts = [f"method={self.method}" if self.method else "", f"path={self.path}" if self.path else "",
                 f"host={self.host}" if self.host else ""]
        parts += [f"header {n}" + (f"={v}" if v is not None else "") for n, v in self.headers]
        return " ".join(p for p in parts if p) or "any request"


@dataclass(frozen=True)
class DNSRule:
    """Cilium's DNS proxy rule: ``matchName`` (the name itself) or ``matchPattern`` (``*`` for any
    run of name characters within a label; ``*`` alone for every name), case-insensitive."""

    text: str
    regex: str

    @classmethod
    def build(cls, match_name: str | None, match_pattern: str | None) -> "DNSRule":
        if match_name:
            name = match_name.lower().rstrip(".")
            return cls(f"matchName {match_name}", re2.escape(name))
        pattern = (match_pattern or "").lower().rstrip(".")
        if pattern in ("*", ""):
            return cls(f"matchPattern {match_pattern}", ".*")
        return cls(f"matchPattern {match_pattern}", "[-a-z0-9_]*".join(re2.escape(p) for p in pattern.split("*")))

    def matches(self, name: str) -> bool:
        return re2.fullmatch(self.regex, name.lower().rstrip(".")) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Peer:
    """One peer of a rule. ``kind``: endpoints, entities, cidr, service, fqdn, none."""

    kind: str
    text: str
    selector: LabelSelector | None = None  # endpoints: the pod selector (None: every pod)
    ns_selector: LabelSelector | None = None  # Kubernetes namespaceSelector
    namespace: str | None = None  # the namespace the selector is confined to
    cilium: bool = False  # Cilium label semantics (k8s:/reserved: sources, derived namespace labels)
    entities: frozenset[str] = frozenset()
    cidrs: tuple[tuple[Any, tuple[Any, ...]], ...] = ()  # (network, excepted networks)
    service: tuple[str, str] | None = None


@dataclass(frozen=True)
class Entry:
    policy: Ref
    index: int  # the rule's place in its section
    direction: Direction
    deny: bool
    peers: tuple[Peer, ...]  # what the rule allows or denies
    any_peer: bool  # True: every peer (Kubernetes "from" unset, Cilium L4-only rule)
    ports: tuple[PortSpec, ...]  # empty: every port
    http: tuple[HTTPRule, ...] | None = None  # None: no L7 restriction
    requires: tuple[LabelSelector, ...] = ()  # Cilium fromRequires/toRequires
    dns: tuple[DNSRule, ...] | None = None  # Cilium's DNS proxy rules (egress to a DNS server)

    @property
    def l7(self) -> bool:
        return self.http is not None or self.dns is not None

    @property
    def section(self) -> str:
        return f"{self.direction}{'Deny' if self.deny else ''}[{self.index}]"

    def __str__(self) -> str:
        peers = "any peer" if self.any_peer else (", ".join(p.text for p in self.peers) or "no peer")
        ports = ", ".join(str(p) for p in self.ports) or "any port"
        http = f"; HTTP {' | '.join(str(h) for h in self.http)}" if self.http is not None else ""
        dns = f"; DNS {' | '.join(str(d) for d in self.dns)}" if self.dns is not None else ""
        return f"{'deny' if self.deny else 'allow'} {peers} on {ports}{http}{dns}"


@dataclass(frozen=True)
class Subject:
    """Who one policy (or one rule of a Cilium policy with several) applies to."""

    policy: Ref
    flavor: Literal["k8s", "cilium"]
    namespace: str | None  # None: cluster-wide
    selector: LabelSelector
    deny_ingress: bool  # puts its pods in default deny for ingress
    deny_egress: bool
    entries: tuple[Entry, ...] = ()
    problems: tuple[str, ...] = ()
    host_policy: bool = False  # a nodeSelector rule: applies to nodes, not pods

    def selects(self, ident: Any) -> bool:
        if self.host_policy or ident.kind != "pod":
            return False
        if self.namespace is not None and ident.namespace != self.namespace:
            return False
        if self.flavor == "k8s":
            return self.selector.matches(dict(ident.labels))
        return cilium_selector_matches(self.selector, ident.cilium_labels())


# --- Cilium label semantics ------------------------------------------------------------------


def _cilium_key(key: str) -> str:
    """``k8s:app`` and ``any:app`` select the label ``app``; ``reserved:host`` stays as it is."""
    for prefix in ("k8s:", "any:", "container:"):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def cilium_selector_matches(sel: LabelSelector, labels: dict[str, str]) -> bool:
    norm = LabelSelector.model_construct(
        match_labels={_cilium_key(k): v for k, v in sel.match_labels.items()},
        match_expressions=[e.model_copy(update={"key": _cilium_key(e.key)}) for e in sel.match_expressions],
    )
    return norm.matches(labels)


def _names_namespace(sel: LabelSelector) -> bool:
    keys = [_cilium_key(k) for k in sel.match_labels] + [_cilium_key(e.key) for e in sel.match_expressions]
    return "io.kubernetes.pod.namespace" in keys


def _selector_text(sel: LabelSelector | None) -> str:
    if sel is None:
        return "*"
    parts = [f"{k}={v}" for k, v in sel.match_labels.items()]
    parts += [f"{e.key} {e.operator}{' (' + ','.join(e.values) + ')' if e.values else ''}" for e in sel.match_expressions]
    return ",".join(parts) or "{}"


def _network(text: str) -> Any:
    return ipaddress.ip_network(text, strict=False)


# --- Kubernetes NetworkPolicy ------------------------------------------------------------------


def _k8s_ports(ports: list[NetworkPolicyPort]) -> tuple[PortSpec, ...]:
    out = []
    for p in ports:
        if p.port is None:
            out.append(PortSpec(None, protocol=p.protocol))
        elif isinstance(p.port, str) and not p.port.isdigit():
            out.append(PortSpec(None, name=p.port, protocol=p.protocol))
        else:
            out.append(PortSpec(int(p.port), p.end_port, protocol=p.protocol))
    return tuple(out)


def _k8s_peer(p: NetworkPolicyPeer, ns: str) -> Peer:
    if p.ip_block is not None:
        net = _network(p.ip_block.cidr)
        text = f"ipBlock {p.ip_block.cidr}" + (f" except {','.join(p.ip_block.except_)}" if p.ip_block.except_ else "")
        return Peer("cidr", text, cidrs=((net, tuple(_network(x) for x in p.ip_block.except_)),))
    if p.namespace_selector is not None:
        text = f"pods {_selector_text(p.pod_selector)} in namespaces {_selector_text(p.namespace_selector)}"
        return Peer("endpoints", text, selector=p.pod_selector, ns_selector=p.namespace_selector)
    return Peer("endpoints", f"pods {_selector_text(p.pod_selector)} in {ns}", selector=p.pod_selector, namespace=ns)


def from_network_policy(np: NetworkPolicy) -> Subject:
    ns = np.metadata.namespace or "default"
    ref = Ref("NetworkPolicy", ns, np.metadata.name or "")
    types = np.spec.effective_policy_types()
    entries: list[Entry] = []
    problems: list[str] = []
    if "Ingress" in types:
        for i, r in enumerate(np.spec.ingress):
            peers = tuple(_k8s_peer(p, ns) for p in r.from_)
            entries.append(Entry(ref, i, "ingress", False, peers, not r.from_, _k8s_ports(r.ports)))
    if "Egress" in types:
        for i, r in enumerate(np.spec.egress):
            peers = tuple(_k8s_peer(p, ns) for p in r.to)
            entries.append(Entry(ref, i, "egress", False, peers, not r.to, _k8s_ports(r.ports)))
    if any(p.protocol == "SCTP" for e in entries for p in e.ports):
        problems.append("SCTP ports: homeplane carries no SCTP; those rules never match")
    return Subject(ref, "k8s", ns, np.spec.pod_selector, "Ingress" in types, "Egress" in types, tuple(entries), tuple(problems))


# --- Cilium --------------------------------------------------------------------------------------


def _cilium_ports(rule: PortRule, problems: list[str], where: str
                  ) -> tuple[tuple[PortSpec, ...], tuple[HTTPRule, ...] | None, tuple[DNSRule, ...] | None]:
    ports = []
    for p in rule.ports:
        proto = p.protocol if p.protocol in ("TCP", "UDP", "SCTP", "ANY") else None
        if proto is None:
            problems.append(f"{where}: protocol {p.protocol} is not carried by homeplane; the port never matches")
            continue
        text = str(p.port or "0")
        if text.isdigit():
            ports.append(PortSpec(None if int(text) == 0 else int(text), p.end_port, protocol=proto))
        else:
            ports.append(PortSpec(None, name=text, protocol=proto))
    http: tuple[HTTPRule, ...] | None = None
    rules = rule.rules
    if rules is not None and rules.http is not None:
        out = []
        for h in rules.http:
            headers: list[tuple[str, str | None]] = []
            for line in h.headers:
                name, sep, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip() if sep else None))
            for hm in h.header_matches:
                if hm.secret is not None or hm.mismatch is not None:
                    problems.append(f"{where}: headerMatches with secret or mismatch actions are not supported; matched by value only")
                headers.append((hm.name.lower(), hm.value))
            out.append(HTTPRule(h.method or None, h.path or None, h.host or None, tuple(headers)))
        http = tuple(out) or (HTTPRule(),)
    for other in ("kafka", "l7proto", "l7"):
        if rules is not None and getattr(rules, other):
            problems.append(f"{where}: {other} rules are not enforced by homeplane; the port is allowed without them")
    dns: tuple[DNSRule, ...] | None = None
    if rules is not None and rules.dns is not None:
        dns = tuple(DNSRule.build(d.match_name, d.match_pattern) for d in rules.dns)
        if any(d.regex == ".*" for d in dns):
            dns = None  # matchPattern "*": every name, no restriction
    for key in ("terminating_tls", "originating_tls", "listener"):
        if getattr(rule, key):
            problems.append(f"{where}: {key} is not supported")
    return tuple(ports), http, dns


@dataclass(frozen=True)
class CIDRGroup:
    """A CiliumCIDRGroup: named address blocks that policies refer to (cidrGroupRef/Selector)."""

    name: str
    labels: dict[str, str]
    cidrs: tuple[str, ...]


def _cilium_peers(r: PeerRule, direction: Direction, ns: str | None, problems: list[str], where: str,
                  groups: list[CIDRGroup]) -> tuple[Peer, ...]:
    side = "from" if direction == "ingress" else "to"
    peers: list[Peer] = []
    for sel in getattr(r, f"{side}_endpoints"):
        confined = ns if ns is not None and not _names_namespace(sel) else None
        text = f"endpoints {_selector_text(sel)}" + (f" in {confined}" if confined else "")
        peers.append(Peer("endpoints", text, selector=sel, namespace=confined, cilium=True))
    entities = getattr(r, f"{side}_entities")
    if entities:
        unknown = [e for e in entities if e not in ENTITIES]
        if unknown:
            problems.append(f"{where}: unknown entities {', '.join(unknown)}")
        peers.append(Peer("entities", f"entities {','.join(entities)}", entities=frozenset(entities)))
    cidrs = [(_network(c), ()) for c in getattr(r, f"{side}_cidr")]
    for cs in getattr(r, f"{side}_cidr_set"):
        excepts = tuple(_network(x) for x in cs.except_)
        if cs.cidr is not None:
            cidrs.append((_network(cs.cidr), excepts))
            continue
        found = [g for g in groups if (cs.cidr_group_ref and g.name == cs.cidr_group_ref)
                 or (cs.cidr_group_selector is not None and cs.cidr_group_selector.matches(g.labels))]
        if not found:
            what = cs.cidr_group_ref or _selector_text(cs.cidr_group_selector)
            problems.append(f"{where}: CiliumCIDRGroup {what} is not in the manifests; the entry matches nothing")
        for g in found:
            for c in g.cidrs:
                try:
                    cidrs.append((_network(c), excepts))
                except ValueError:
                    problems.append(f"{where}: CiliumCIDRGroup {g.name}: {c!r} is not a CIDR; left out")
    for net, exc in cidrs:
        text = f"cidr {net}" + (f" except {','.join(map(str, exc))}" if exc else "")
        peers.append(Peer("cidr", text, cidrs=((net, exc),)))
    if direction == "egress":
        for svc in r.to_services:
            k8s = svc.k8s_service
            if k8s is not None and k8s.service_name:
                target = (k8s.namespace or ns or "default", k8s.service_name)
                peers.append(Peer("service", f"service {target[0]}/{target[1]}", service=target))
            else:
                problems.append(f"{where}: toServices by selector is not supported; the entry matches nothing")
                peers.append(Peer("none", "toServices (unsupported)"))
        for f in r.to_fqd_ns:
            problems.append(f"{where}: toFQDNs ({f.match_name or f.match_pattern}) is pod egress to the internet, which does not pass through homeplane")
            peers.append(Peer("none", f"fqdn {f.match_name or f.match_pattern}"))
    for key in (f"{side}_groups", f"{side}_nodes"):
        if getattr(r, key):
            problems.append(f"{where}: {key.replace('_', ' ')} is not supported; the entry matches nothing")
            peers.append(Peer("none", key))
    return tuple(peers)


def _cilium_section(ref: Ref, rules: list[PeerRule], direction: Direction, deny: bool, ns: str | None,
                    problems: list[str], prefix: str, groups: list[CIDRGroup]) -> list[Entry]:
    out: list[Entry] = []
    side = "from" if direction == "ingress" else "to"
    for i, r in enumerate(rules):
        where = f"{prefix}{direction}{'Deny' if deny else ''}[{i}]"
        peers = _cilium_peers(r, direction, ns, problems, where, groups)
        requires = tuple(getattr(r, f"{side}_requires"))
        if r.icmps:
            problems.append(f"{where}: ICMP rules are not carried by homeplane")
        port_rules = list(r.to_ports)
        # an entry with neither peers nor ports selects nothing (Cilium's "- {}" default-deny idiom);
        # with ports only it allows every peer on them
        l3_given = bool(peers) or any(getattr(r, k) for k in (f"{side}_endpoints", f"{side}_entities"))
        if not port_rules:
            if l3_given:
                out.append(Entry(ref, i, direction, deny, peers, False, (), None, requires))
            continue
        for pr in port_rules:
            ports, http, dns = _cilium_ports(pr, problems, where)
            if deny and (http is not None or dns is not None):
                problems.append(f"{where}: deny rules cannot carry L7 rules (Cilium refuses them); L7 part ignored")
                http = dns = None
            if not ports and not pr.ports:
                ports = ()
            elif not ports:
                continue  # every port of it was unusable
            out.append(Entry(ref, i, direction, deny, peers, not l3_given, ports, http, requires, dns))
    return out


def from_cilium_policy(cnp: CiliumNetworkPolicy, clusterwide: bool, groups: list[CIDRGroup] | None = None) -> list[Subject]:
    groups = groups or []
    kind = "CiliumClusterwideNetworkPolicy" if clusterwide else "CiliumNetworkPolicy"
    ns = None if clusterwide else (cnp.metadata.namespace or "default")
    ref = Ref(kind, ns, cnp.metadata.name or "")
    rules: list[CiliumPolicyRule] = cnp.rules()
    out: list[Subject] = []
    for n, rule in enumerate(rules):
        problems: list[str] = []
        prefix = f"specs[{n}]." if cnp.specs and (cnp.spec is None or n > 0) else "spec."
        host_policy = rule.endpoint_selector is None and rule.node_selector is not None
        if host_policy:
            problems.append(f"{prefix}nodeSelector: host policies apply to the machine's own firewall, which homeplane does not manage")
        section_ref = ref if len(rules) == 1 else Ref(kind, ns, ref.name, f"specs[{n}]")
        entries = (
            _cilium_section(section_ref, rule.ingress, "ingress", False, ns, problems, prefix, groups)
            + _cilium_section(section_ref, rule.ingress_deny, "ingress", True, ns, problems, prefix, groups)
            + _cilium_section(section_ref, rule.egress, "egress", False, ns, problems, prefix, groups)
            + _cilium_section(section_ref, rule.egress_deny, "egress", True, ns, problems, prefix, groups)
        )
        dd = rule.enable_default_deny
        deny_in = bool(rule.ingress or rule.ingress_deny) and not (dd is not None and dd.ingress is False)
        deny_eg = bool(rule.egress or rule.egress_deny) and not (dd is not None and dd.egress is False)
        selector = rule.endpoint_selector or rule.node_selector or LabelSelector()
        out.append(Subject(section_ref, "cilium", ns, selector, deny_in, deny_eg, tuple(entries), tuple(problems), host_policy))
    return out


@dataclass
class Compiled:
    subjects: list[Subject] = field(default_factory=list)
    errors: list[tuple[Ref, str]] = field(default_factory=list)  # policies that could not be read at all


def compile_policies(objects: list[Any]) -> Compiled:
    out = Compiled()
    groups = []
    for o in objects:
        if o.kind == "CiliumCIDRGroup" and o.group == "cilium.io":
            spec = o.raw.get("spec") or {}
            cidrs = tuple(str(c) for c in spec.get("externalCIDRs") or [] if isinstance(c, (str, int)))
            groups.append(CIDRGroup(o.name, o.labels, cidrs))
    for o in objects:
        if o.model is None:
            continue
        try:
            if isinstance(o.model, NetworkPolicy) and o.kind == "NetworkPolicy":
                out.subjects.append(from_network_policy(o.model))
            elif isinstance(o.model, CiliumNetworkPolicy):
                out.subjects.extend(from_cilium_policy(o.model, o.kind == "CiliumClusterwideNetworkPolicy", groups))
        except Exception as e:  # noqa: BLE001 - whatever it is, the policy is reported, never a crash
            out.errors.append((Ref(o.kind, o.namespace, o.name), f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)))
    return out
