"""external-dns's Endpoint: one DNS name, one record type, its targets, TTL and labels.

The field names and the JSON form are external-dns's (``dnsName``, ``targets``,
``recordType``, ``setIdentifier``, ``recordTTL``, ``labels``, ``providerSpecific``),
which is also the webhook provider protocol's wire format.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from functools import cmp_to_key
from typing import Any

OWNER = "owner"
RESOURCE = "resource"
OWNED_RECORD = "ownedRecord"

A, AAAA, CNAME, TXT = "A", "AAAA", "CNAME", "TXT"
# the types the TXT registry's names can carry (external-dns's supported records)
SUPPORTED_TYPES = ("A", "AAAA", "CNAME", "NS", "MX", "PTR", "SRV", "NAPTR", "TXT", "DNAME")
DEFAULT_MANAGED = (A, AAAA, CNAME)


@dataclass(frozen=True)
class Endpoint:
    dns_name: str
    record_type: str
    targets: tuple[str, ...]
    ttl: int = 0  # 0: not configured (the provider's default)
    set_identifier: str = ""
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    provider_specific: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (normalize(self.dns_name), self.record_type, self.set_identifier)

    def prop(self, name: str) -> str | None:
        for k, v in self.provider_specific:
            if k == name:
                return v
        return None

    def with_prop(self, name: str, value: str) -> Endpoint:
        props = tuple((k, v) for k, v in self.provider_specific if k != name) + ((name, value),)
        return replace(self, provider_specific=props)

    def with_labels(self, **labels: str) -> Endpoint:
        return replace(self, labels={**self.labels, **labels})

    def owned_by(self, owner: str) -> bool:
        return self.labels.get(OWNER, "") == owner

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"dnsName": self.dns_name, "targets": list(self.targets), "recordType": self.record_type}
        if self.set_identifier:
            doc["setIdentifier"] = self.set_identifier
        if self.ttl:
            doc["recordTTL"] = self.ttl
        if self.labels:
            doc["labels"] = dict(self.labels)
        if self.provider_specific:
            doc["providerSpecific"] = [{"name": k, "value": v} for k, v in self.provider_specific]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Endpoint:
        if not isinstance(doc, dict) or not isinstance(doc.get("dnsName"), str):
            raise ValueError(f"not an endpoint: {doc!r}")
        return cls(
            dns_name=doc["dnsName"].rstrip("."),
            record_type=str(doc.get("recordType") or A),
            targets=tuple(str(t) for t in doc.get("targets") or ()),
            ttl=int(doc.get("recordTTL") or 0),
            set_identifier=str(doc.get("setIdentifier") or ""),
            labels={str(k): str(v) for k, v in (doc.get("labels") or {}).items()},
            provider_specific=tuple((str(p.get("name")), str(p.get("value", ""))) for p in doc.get("providerSpecific") or ()),
        )

    def __str__(self) -> str:
        ttl = f" ttl={self.ttl}" if self.ttl else ""
        sid = f" set={self.set_identifier}" if self.set_identifier else ""
        return f"{self.dns_name} {self.record_type} {','.join(self.targets)}{ttl}{sid}"


def normalize(name: str) -> str:
    """A DNS name in canonical form for comparisons: lower case, no trailing dot."""
    return name.strip().lower().rstrip(".")


def suitable_type(target: str) -> str:
    try:
        return A if ipaddress.ip_address(target).version == 4 else AAAA
    except ValueError:
        return CNAME


def _ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def same_targets(a: tuple[str, ...] | list[str], b: tuple[str, ...] | list[str]) -> bool:
    """external-dns's Targets.Same: same length, equal after sorting, names case-insensitive,
    IPv6 addresses compared parsed (they can be written shorter)."""
    if len(a) != len(b):
        return False
    for x, y in zip(sorted(a), sorted(b)):
        if x.lower() == y.lower():
            continue
        ix, iy = _ip(x), _ip(y)
        if ix is None or iy is None or ix != iy:
            return False
    return True


def _target_cmp(x: str, y: str) -> int:
    ix, iy = _ip(x), _ip(y)
    if ix is not None and iy is not None and ix.version == iy.version:
        return -1 if ix < iy else (1 if ix > iy else 0)
    if ix is not None and iy is None:
        return -1  # addresses sort before names (an A record wins over a CNAME)
    if ix is None and iy is not None:
        return 1
    if ix is not None and iy is not None:
        return -1 if ix.version < iy.version else 1
    return -1 if x < y else (1 if x > y else 0)


def targets_less(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """external-dns's Targets.IsLess: fewer targets first, then the first differing target,
    addresses before names."""
    if len(a) != len(b):
        return len(a) < len(b)
    for x, y in zip(sorted(a), sorted(b)):
        if x != y:
            return _target_cmp(x, y) < 0
    return False


def compare_endpoints(a: Endpoint, b: Endpoint) -> int:
    return -1 if targets_less(a.targets, b.targets) else (1 if targets_less(b.targets, a.targets) else 0)


endpoint_sort_key = cmp_to_key(compare_endpoints)


def endpoints_for_hostname(
    hostname: str, targets: list[str], ttl: int, props: tuple[tuple[str, str], ...], set_identifier: str, resource: str
) -> list[Endpoint]:
    """One endpoint per record type the targets need (A, AAAA, CNAME), as external-dns makes them."""
    by_type: dict[str, list[str]] = {}
    for t in targets:
        by_type.setdefault(suitable_type(t), []).append(t)
    out = []
    for rt in (A, AAAA, CNAME):
        if by_type.get(rt):
            labels = {RESOURCE: resource} if resource else {}
            out.append(Endpoint(normalize(hostname), rt, tuple(by_type[rt]), ttl, set_identifier, labels, props))
    return out


def merge_endpoints(endpoints: list[Endpoint]) -> list[Endpoint]:
    """external-dns's MergeEndpoints: endpoints with the same name, type, set identifier and TTL
    become one with the sorted union of their targets (CNAMEs only when the target is the same:
    a name has one canonical name)."""
    merged: dict[tuple, Endpoint] = {}
    for ep in endpoints:
        key: tuple = (ep.dns_name, ep.record_type, ep.set_identifier, ep.ttl)
        if ep.record_type in (CNAME, "DNAME"):
            if not ep.targets:
                continue
            key += (ep.targets[0],)
        have = merged.get(key)
        merged[key] = ep if have is None else replace(have, targets=have.targets + ep.targets)
    return [replace(ep, targets=tuple(sorted(set(ep.targets)))) for ep in merged.values()]


class DomainFilter:
    """``--domain-filter`` / ``--exclude-domains``: a name matches a filter when it is the filter
    or below it (a filter starting with "." matches only names below it); no filters match all."""

    def __init__(self, include: list[str] | tuple[str, ...] = (), exclude: list[str] | tuple[str, ...] = (),
                 regex_include: str = "", regex_exclude: str = ""):
        import re

        self.include = tuple(normalize(f) if not f.startswith(".") else "." + normalize(f[1:]) for f in include if f)
        self.exclude = tuple(normalize(f) if not f.startswith(".") else "." + normalize(f[1:]) for f in exclude if f)
        # --regex-domain-filter / --regex-domain-exclusion: when set, they replace the lists
        self.regex_include = re.compile(regex_include) if regex_include else None
        self.regex_exclude = re.compile(regex_exclude) if regex_exclude else None

    @staticmethod
    def _any(filters: tuple[str, ...], name: str) -> bool:
        for f in filters:
            if f.startswith("."):
                if name.endswith(f):
                    return True
            elif name == f or name.endswith("." + f):
                return True
        return False

    def match(self, name: str) -> bool:
        n = normalize(name)
        if self.regex_include is not None or self.regex_exclude is not None:
            if self.regex_exclude is not None and self.regex_exclude.search(n):
                return False
            return self.regex_include is None or bool(self.regex_include.search(n))
        return (not self.include or self._any(self.include, n)) and not self._any(self.exclude, n)
