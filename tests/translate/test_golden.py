"""Golden tests for translate, in Envoy Gateway's style: ``testdata/<case>.in.yaml`` (manifests)
-> ``<case>.out.yaml`` (the check report: statuses, routes, policies, diagnostics - what
``homeplane check -o json`` prints). ``pytest --update-golden`` rewrites the outputs; review the
diff. Add a case by adding an ``.in.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homeplane.pipeline import Inputs, run_pipeline

CASES = sorted((Path(__file__).parent / "testdata").glob("*.in.yaml"))


def report_of(case: Path) -> dict[str, Any]:
    result = run_pipeline(Inputs(paths=(case,), variables={}, mode="plain"))
    report = dict(result.report)
    report.pop("homeplaneVersion")
    report.pop("snapshot")  # its digest changes with every input byte, comments included
    return report


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name.removesuffix(".in.yaml"))
def test_translate(case: Path, golden) -> None:  # type: ignore[no-untyped-def]
    golden(case.with_name(case.name.replace(".in.yaml", ".out.yaml")), report_of(case))
