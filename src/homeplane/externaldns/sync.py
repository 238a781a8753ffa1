"""One external-dns loop iteration for an instance: desired records, current records, changes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from homeplane.externaldns.config import Instance
from homeplane.externaldns.endpoint import Endpoint
from homeplane.externaldns.plan import Changes, calculate, unowned_conflicts
from homeplane.externaldns.providers import provider_kind
from homeplane.externaldns.providers.base import Provider
from homeplane.externaldns.registry import NameMapper, TXTRegistry
from homeplane.externaldns.sources import SourceInput, desired_endpoints


def registry_for(inst: Instance) -> TXTRegistry:
    return TXTRegistry(inst.owner, NameMapper(inst.txt_prefix, inst.txt_suffix, inst.txt_wildcard), inst.managed)


@dataclass
class PlanResult:
    instance: Instance
    desired: list[Endpoint]
    registry: list[Endpoint]  # the TXT records the desired ones bring
    problems: list[str] = field(default_factory=list)
    current: list[Endpoint] | None = None  # None: the provider was not asked
    changes: Changes | None = None  # with the registry's TXT records
    blocked: list[tuple[Endpoint, Endpoint]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        def rec(e: Endpoint) -> dict[str, Any]:
            d: dict[str, Any] = {"name": e.dns_name, "type": e.record_type, "targets": list(e.targets)}
            if e.ttl:
                d["ttl"] = e.ttl
            proxied = next((v for k, v in e.provider_specific if k.endswith("/cloudflare-proxied")), None)
            if proxied is not None:
                d["proxied"] = proxied == "true"
            if e.set_identifier:
                d["setIdentifier"] = e.set_identifier
            if e.labels.get("resource"):
                d["resource"] = e.labels["resource"]
            return d

        doc: dict[str, Any] = {
            "instance": self.instance.to_json(),
            "records": [rec(e) for e in sorted(self.desired, key=lambda e: (e.dns_name, e.record_type))],
            "registry": [rec(e) for e in sorted(self.registry, key=lambda e: (e.dns_name, e.record_type))],
            "problems": list(self.problems),
        }
        if self.changes is not None:
            doc["changes"] = {
                "create": [rec(e) for e in self.changes.create],
                "update": [{"old": rec(o), "new": rec(n)} for o, n in zip(self.changes.update_old, self.changes.update_new)],
                "delete": [rec(e) for e in self.changes.delete],
            }
        if self.blocked:
            doc["blocked"] = [
                {"record": rec(d), "heldBy": c.labels.get("owner") or "(no registry record: not managed by external-dns)",
                 "existing": rec(c)} for d, c in self.blocked
            ]
        if self.error:
            doc["error"] = self.error
        return doc


def desired(inst: Instance, src: SourceInput, provider: Provider | None) -> tuple[list[Endpoint], list[str]]:
    eps, problems = desired_endpoints(inst, src)
    problems = list(inst.problems) + problems
    eps = [retain_provider_properties(e, provider_kind(inst)) for e in eps]
    if provider is not None:
        eps = provider.adjust_endpoints(eps)
        return _in_scope(inst, eps, provider), problems
    else:
        if provider_kind(inst) == "cloudflare":
            from homeplane.externaldns.providers.cloudflare import offline_adjust

            eps = offline_adjust(inst, eps)
    return _in_scope(inst, eps), problems


def retain_provider_properties(ep: Endpoint, kind: str) -> Endpoint:
    """external-dns's RetainProviderProperties: properties meant for another provider (a name
    with "/" not under ``<provider>/``) are dropped, so a record shared by a Cloudflare and a
    UniFi instance does not look changed to UniFi on every loop. (Cloudflare's properties are
    annotation keys: for Cloudflare only those are kept.)"""
    if not ep.provider_specific:
        return ep
    if kind == "cloudflare":
        keep = tuple((k, v) for k, v in ep.provider_specific if "/cloudflare-" in k)
    else:
        name = "webhook" if kind == "unifi" else kind
        keep = tuple((k, v) for k, v in ep.provider_specific if "/" not in k or k.startswith(name + "/"))
    return replace(ep, provider_specific=tuple(sorted(keep)))


def _in_scope(inst: Instance, eps: list[Endpoint], provider: Provider | None = None) -> list[Endpoint]:
    df = inst.domain_filter
    pdf = getattr(provider, "domain_filter", None)
    return [e for e in eps if df.match(e.dns_name) and (pdf is None or pdf.match(e.dns_name))
            and e.record_type in inst.managed and e.record_type not in inst.exclude_types]


async def plan(inst: Instance, src: SourceInput, provider: Provider | None) -> tuple[PlanResult, TXTRegistry]:
    """Desired records, and when a provider is given, its current records and the changes."""
    reg = registry_for(inst)
    eps, problems = desired(inst, src, provider)
    if inst.fatal:
        result = PlanResult(inst, eps, [reg.txt_for(e.with_labels(owner=inst.owner)) for e in eps], problems + list(inst.fatal))
        result.error = "not synced: " + "; ".join(inst.fatal)
        return result, reg
    if provider is not None and getattr(provider, "domain_filter", None) is None and hasattr(provider, "negotiate"):
        await provider.negotiate()  # a webhook's own domain filter, before anything is planned
    adjust_remote = getattr(provider, "adjust_remote", None)
    if adjust_remote is not None:  # a webhook adjusts on its side
        eps = _in_scope(inst, await adjust_remote(eps), provider)
    owned = [e.with_labels(owner=inst.owner) for e in eps]
    result = PlanResult(inst, eps, [reg.txt_for(e) for e in owned], problems)
    if provider is None:
        return result, reg
    pdf = getattr(provider, "domain_filter", None)
    current = [c for c in reg.records(await provider.records()) if pdf is None or pdf.match(c.dns_name)]
    result.current = current
    ch = calculate(current, eps, inst.owner, inst.policy, inst.domain_filter, inst.managed, inst.exclude_types)
    result.changes = reg.apply(ch)
    result.blocked = [
        (d, c) for d, c in unowned_conflicts(
            [c for c in current if inst.domain_filter.match(c.dns_name) and c.record_type in inst.managed], eps, inst.owner)
    ]
    return result, reg


async def sync(inst: Instance, src: SourceInput, provider: Provider) -> PlanResult:
    """Plan and apply once."""
    result, _ = await plan(inst, src, provider)
    if result.changes:
        await provider.apply_changes(result.changes)
    return result
