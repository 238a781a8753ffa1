"""A Flux repository whose kustomize and Flux Kustomization fields have the wrong shapes never
stops the import: each is an error naming the file and field, and the rest is built."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeplane.importer.repo import load_repo

VALUES = st.sampled_from(["x", "5", "~", "[]", "{}", "[a, {b: c}]", "{path: ./apps}", "./apps", "[./apps, 7]", "true",
                          "'${VAR}'", "[{patch: '[]', target: {kind: X}}]", "[{op: add}]", "[{name: n, literals: [5, a=b]}]"])
KUSTOMIZE = st.sampled_from(["resources", "components", "patches", "namespace", "namePrefix", "configMapGenerator",
                             "secretGenerator", "labels", "commonLabels", "patchesStrategicMerge", "patchesJson6902",
                             "generatorOptions", "images", "replacements", "helmCharts", "commonAnnotations"])
FLUX = st.sampled_from(["postBuild", "patches", "components", "targetNamespace", "dependsOn", "decryption", "commonMetadata", "namePrefix"])


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(KUSTOMIZE, VALUES), max_size=5), st.lists(st.tuples(FLUX, VALUES), max_size=4))
def test_wrong_shapes_are_reported_not_raised(tmp_path: Path, kustomize: list, flux: list) -> None:
    root = tmp_path / f"r{abs(hash((tuple(kustomize), tuple(flux))))}"
    (root / "kubernetes/flux/cluster").mkdir(parents=True)
    (root / "kubernetes/apps").mkdir(parents=True)
    spec = "\n".join(f"  {k}: {v}" for k, v in flux)
    (root / "kubernetes/flux/cluster/ks.yaml").write_text(
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: apps, namespace: flux-system}\n"
        f"spec:\n  path: ./kubernetes/apps\n{spec}\n"
    )
    body = "\n".join(f"{k}: {v}" for k, v in kustomize)
    (root / "kubernetes/apps/kustomization.yaml").write_text(f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n{body}\n")
    result = load_repo(root / "kubernetes", {"VAR": "v"})
    for d in result.diagnostics:
        if d.code == "InvalidField":
            assert d.file and d.field and d.line


def test_a_wrong_shape_names_its_field(tmp_path: Path) -> None:
    (tmp_path / "kubernetes/flux/cluster").mkdir(parents=True)
    (tmp_path / "kubernetes/apps").mkdir(parents=True)
    (tmp_path / "kubernetes/flux/cluster/ks.yaml").write_text(
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: apps, namespace: flux-system}\n"
        "spec:\n  path: ./kubernetes/apps\n  dependsOn: [not-a-map]\n"
    )
    (tmp_path / "kubernetes/apps/kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: true\n"
    )
    (tmp_path / "kubernetes/apps/cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    result = load_repo(tmp_path / "kubernetes", {})
    bad = {(d.file, d.field, d.line) for d in result.diagnostics if d.code == "InvalidField"}
    assert bad == {("kubernetes/apps/kustomization.yaml", "resources", 3), ("kubernetes/flux/cluster/ks.yaml", "spec.dependsOn", 6)}
