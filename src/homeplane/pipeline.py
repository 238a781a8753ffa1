"""Load + translate in one call, shared by ``check``, ``get`` and ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from homeplane.api.loader import LoadOptions, LoadResult, load_paths
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
    load = load_paths(
        inputs.paths,
        LoadOptions(
            variables=inputs.variables,
            strict=inputs.strict,
            default_namespace=inputs.default_namespace,
            relative_to=base,
        ),
    )
    return Result(load, translate(load.objects, inputs.translate, version=version))
