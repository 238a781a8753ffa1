"""Objects in flight through a build: data plus where they came from."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Doc:
    data: dict[str, Any]
    file: str
    document: int = 0
    line: int = 1
    positions: dict[tuple, int] = field(default_factory=dict)
    # SOPS-encrypted ones: their file as written and, when it holds several documents, this
    # one's place in it (sops authenticates what it encrypted as a whole)
    sops_source: tuple[str, int | None] | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))

    @property
    def api_version(self) -> str:
        return str(self.data.get("apiVersion", ""))

    @property
    def group(self) -> str:
        av = self.api_version
        return av.rsplit("/", 1)[0] if "/" in av else ""

    @property
    def meta(self) -> dict[str, Any]:
        m = self.data.get("metadata")
        if not isinstance(m, dict):
            m = self.data["metadata"] = {}
        return m

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def namespace(self) -> str | None:
        ns = self.meta.get("namespace")
        return str(ns) if ns else None

    def copy(self) -> "Doc":
        return Doc(copy.deepcopy(self.data), self.file, self.document, self.line, self.positions, self.sops_source)


def is_flux_kustomization(d: Doc) -> bool:
    return d.kind == "Kustomization" and d.group == "kustomize.toolkit.fluxcd.io"


def is_kustomize_file(d: Doc) -> bool:
    return d.kind in ("Kustomization", "Component") and d.group.startswith("kustomize.config.k8s.io")
