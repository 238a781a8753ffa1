"""Golden tests for the gateway's compile step (gateway/compile.py): the translate cases'
Snapshots (tests/translate/testdata) compiled to port tables, route actions, listener settings
and clusters, as ``testdata/<case>.compiled.yaml``. ``pytest --update-golden`` rewrites them."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeplane.gateway.base import Settings
from homeplane.gateway.compile import BindPlan, compile_snapshot, summary
from homeplane.pipeline import Inputs, run_pipeline

CASES = sorted((Path(__file__).parents[1] / "translate" / "testdata").glob("*.in.yaml"))
OUT = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name.removesuffix(".in.yaml"))
def test_compile(case: Path, golden) -> None:  # type: ignore[no-untyped-def]
    snap = run_pipeline(Inputs(paths=(case,), variables={}, mode="plain")).translation.snapshot
    plan = compile_snapshot(snap, BindPlan(port_map={}, default_address="127.0.0.1"), Settings())
    golden(OUT / case.name.replace(".in.yaml", ".compiled.yaml"), summary(plan))
