"""Indexes over the loaded objects that every translation step shares.

Built once per translation (Envoy Gateway's TranslatorContext idea): lookups by
key and kind, namespace labels, ReferenceGrant checks, and the status being
computed for each object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, TypeVar

from homeplane.api.models.base import Resource
from homeplane.api.models.gateway import ReferenceGrant
from homeplane.api.objects import Obj, ObjectKey
from homeplane.ipam.lbipam import LBResult
from homeplane.translate.status import DEFAULT_CONTROLLERS

M = TypeVar("M", bound=Resource)


@dataclass(frozen=True)
class TranslateOptions:
    # GatewayClasses whose controllerName is in this list are served by homeplane.
    controller_names: tuple[str, ...] = DEFAULT_CONTROLLERS
    # Controller state: ClusterIPs allocated by the IPAM controller, (namespace, name) -> address,
    # and why a Service got none.
    cluster_ips: Mapping[tuple[str, str], str] = field(default_factory=dict)
    cluster_ip_problems: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # LB IPAM's result, when the IPAM controller ran
    lb: LBResult | None = None
    # where each Gateway listens on this machine ("ns/name" -> address), when decided
    bindings: Mapping[str, str] = field(default_factory=dict)
    # Envoy Gateway's merged gateways for every class (--merge-gateways), whatever EnvoyProxy says
    merge_gateways: bool = False


@dataclass
class Context:
    objects: list[Obj]
    options: TranslateOptions
    by_key: dict[ObjectKey, Obj] = field(default_factory=dict)
    by_kind: dict[tuple[str, str], list[Obj]] = field(default_factory=dict)
    status: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for o in self.objects:
            if not o.served:
                continue
            self.by_key.setdefault(o.key, o)
            self.by_kind.setdefault((o.group, o.kind), []).append(o)
        for objs in self.by_kind.values():
            objs.sort(key=lambda o: (o.namespace or "", o.name))
        self._grants = [o for o in self.kind("gateway.networking.k8s.io", "ReferenceGrant")]

    def kind(self, group: str, kind: str) -> list[Obj]:
        return self.by_kind.get((group, kind), [])

    def get(self, group: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        return self.by_key.get((group, kind, namespace, name))

    def model(self, group: str, kind: str, namespace: str | None, name: str, cls: type[M]) -> M | None:
        o = self.get(group, kind, namespace, name)
        return o.model if o is not None and isinstance(o.model, cls) else None  # type: ignore[return-value]

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        labels = {"kubernetes.io/metadata.name": namespace}
        ns = self.get("", "Namespace", None, namespace)
        if ns is not None:
            labels.update(ns.labels)
        return labels

    def ref_granted(
        self,
        from_group: str,
        from_kind: str,
        from_namespace: str,
        to_group: str,
        to_kind: str,
        to_namespace: str,
        to_name: str,
    ) -> bool:
        """True when a ReferenceGrant in the target namespace allows the reference."""
        if from_namespace == to_namespace:
            return True
        for o in self._grants:
            if o.namespace != to_namespace:
                continue
            grant = o.model
            assert isinstance(grant, ReferenceGrant)
            if not any(f.group == from_group and f.kind == from_kind and f.namespace == from_namespace for f in grant.spec.from_):
                continue
            if any(t.group == to_group and t.kind == to_kind and (t.name is None or t.name == to_name) for t in grant.spec.to):
                return True
        return False

    def set_status(self, obj: Obj, status: dict[str, Any]) -> None:
        self.status[obj.key] = status


def age_key(obj: Obj) -> tuple[str, str, str]:
    """Sort key for "oldest first": creationTimestamp when the manifest has one, then namespace/name.

    Manifests in Git rarely carry creationTimestamp, so ties fall through to the
    alphabetical {namespace}/{name} order that Gateway API names as the next rule.
    """
    meta = obj.model.metadata if obj.model is not None else None
    ts = meta.creation_timestamp if meta is not None and meta.creation_timestamp else "~"
    return (ts, obj.namespace or "", obj.name)


def generation(obj: Obj) -> int | None:
    return obj.model.metadata.generation if obj.model is not None else None


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
