"""A loaded object: its identity, typed model (for served kinds), raw data and origin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeplane.api.diagnostics import SourceRef
from homeplane.api.models.base import Resource

ObjectKey = tuple[str, str, str | None, str]  # (group, kind, namespace, name)


@dataclass(frozen=True, eq=False)
class Obj:
    group: str
    version: str
    kind: str
    namespace: str | None
    name: str
    raw: dict[str, Any]
    source: SourceRef
    model: Resource | None = None  # None for kinds homeplane does not serve
    positions: dict[tuple, int] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> ObjectKey:
        return (self.group, self.kind, self.namespace, self.name)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def served(self) -> bool:
        return self.model is not None

    @property
    def labels(self) -> dict[str, str]:
        meta = self.raw.get("metadata") or {}
        labels = meta.get("labels") if isinstance(meta, dict) else None
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

    @property
    def annotations(self) -> dict[str, str]:
        meta = self.raw.get("metadata") or {}
        ann = meta.get("annotations") if isinstance(meta, dict) else None
        return {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}

    def line_of(self, path: tuple) -> int | None:
        p = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.source.line

    def ref(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"
