"""Generated manifests with the YAML constructs real repos use (and some they should not):
``check``, ``get`` and the loader behind ``run`` never raise - every problem is a diagnostic
with a file and a line."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeplane.api.loader import LoadOptions, LoadResult, load_text
from homeplane.api.registry import SERVED_KINDS
from homeplane.pipeline import Inputs, run_pipeline
from homeplane.tables import rows_for

KINDS = [("v1", "Service"), ("v1", "ConfigMap"), ("gateway.networking.k8s.io/v1", "HTTPRoute"),
         ("gateway.networking.k8s.io/v1", "Gateway"), ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
         ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"), ("cilium.io/v2alpha1", "CiliumLoadBalancerIPPool")]

scalars = st.one_of(
    st.sampled_from(["80", "yes", "~", "null", "0x1F", "1.10", "'quoted'", '"dq \\u00e9"', "${VAR}", "${VAR:-d}", "${BAD",
                     "!!str 12", "!!int x", "!Ref thing", "*a", "&b v", "|\n    block", "[a, b]", "{k: v}", "", "-", "?",
                     "2024-01-01", "x" * 3000]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
keys = st.one_of(st.sampled_from(["name", "spec", "ports", "<<", "*a", "? [x]", "dup", "dup", "hostnames", "rules"]),
                 st.from_regex(r"[a-zA-Z][a-zA-Z0-9]{0,8}", fullmatch=True))


@st.composite
def documents(draw: st.DrawFn) -> str:
    api, kind = draw(st.sampled_from(KINDS))
    lines = [f"apiVersion: {api}", f"kind: {kind}", "metadata:", f"  name: {draw(st.sampled_from(['x', '&a anchored', '*a', '']))}"]
    if draw(st.booleans()):
        lines.append("  namespace: apps")
    lines.append("spec:")
    for _ in range(draw(st.integers(0, 6))):
        indent = "  " * draw(st.integers(1, 3))
        lines.append(f"{indent}{draw(keys)}: {draw(scalars)}")
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text


@st.composite
def files(draw: st.DrawFn) -> str:
    docs = draw(st.lists(documents(), min_size=1, max_size=4))
    sep = draw(st.sampled_from(["---\n", "--- \n", "...\n---\n"]))
    text = sep.join(docs)
    if draw(st.booleans()):
        text = "\ufeff" + text
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]  # a file cut anywhere
    return text


@settings(max_examples=250, deadline=None, derandomize=True)
@given(files())
def test_the_loader_never_raises(text: str) -> None:
    r = LoadResult()
    load_text(text, "fuzz.yaml", LoadOptions(variables={"VAR": "v"}), r)
    for d in r.diagnostics:
        assert d.file == "fuzz.yaml" and (d.line is None or d.line >= 1)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files())
def test_check_and_get_never_raise(tmp_path: Path, text: str) -> None:
    f = tmp_path / "fuzz.yaml"
    f.write_text(text, encoding="utf-8")
    result = run_pipeline(Inputs(paths=(f,), variables={"VAR": "v"}))
    report = result.report  # what check prints
    assert report["summary"]["files"] == 1
    for info in SERVED_KINDS:  # what get shows, for every kind
        objs = [o for o in result.load.objects if o.served and (o.group, o.kind) == (info.group, info.kind)]
        rows_for(info.kind, objs, result, wide=True)
