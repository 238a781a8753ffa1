"""Load + translate in one call, shared by ``check``, ``get`` and ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from homeplane.api.loader import LoadOptions, LoadResult, load_paths
from homeplane.importer.endpoints import endpoint_slices
from homeplane.importer.repo import is_flux_repo, load_repo
from homeplane.report import build_report
from homeplane.translate import TranslateOptions, Translation, translate


@dataclass(frozen=True)
class Inputs:
    paths: tuple[Path, ...]
    # None: no substitution. Otherwise Flux post-build substitution with these values.
    variables: Mapping[str, str] | None = field(default_factory=dict)
    strict: bool = False
    default_namespace: str = "default"
    translate: TranslateOptions = field(default_factory=TranslateOptions)
    # "auto": a tree with Flux Kustomizations is imported as a Flux repo, anything else read as plain manifests
    mode: str = "auto"
    endpoints: Path | None = None


@dataclass
class Result:
    load: LoadResult
    translation: Translation
    _report: dict[str, Any] | None = None

    @property
    def report(self) -> dict[str, Any]:
        if self._report is None:
            self._report = build_report(
                self.load.objects, self.load.diagnostics, self.translation, len(self.load.files)
            )
        return self._report

    @property
    def ok(self) -> bool:
        return self.report["summary"]["errors"] == 0


def run_pipeline(inputs: Inputs, version: int = 1) -> Result:
    base = inputs.paths[0] if len(inputs.paths) == 1 and inputs.paths[0].is_dir() else None
    if inputs.mode == "flux" or (inputs.mode == "auto" and base is not None and is_flux_repo(base)):
        assert base is not None, "a Flux repository is one folder"
        load = load_repo(base, dict(inputs.variables or {}), inputs.endpoints, inputs.default_namespace)
        return Result(load, translate(load.objects, inputs.translate, version=version))
    load = load_paths(
        inputs.paths,
        LoadOptions(
            variables=inputs.variables,
            strict=inputs.strict,
            default_namespace=inputs.default_namespace,
            relative_to=base,
        ),
    )
    if inputs.endpoints is not None:
        _add_endpoints(load, inputs.endpoints)
    return Result(load, translate(load.objects, inputs.translate, version=version))


def _add_endpoints(load: LoadResult, path: Path) -> None:
    """The --endpoints overlay for plain manifests (a Flux import applies it itself)."""
    from homeplane.api.loader import add_object
    from homeplane.importer.docs import Doc

    docs = [Doc(o.raw, o.source.file) for o in load.objects if o.kind == "Service"]
    for d in endpoint_slices(path, docs, load.diagnostics):
        add_object(d.data, d.file, LoadOptions(variables=None), load, d.document, d.line)
