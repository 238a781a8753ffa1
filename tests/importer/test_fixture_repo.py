"""A small Flux repository of our own (tests/fixtures/fluxrepo) exercising the edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeplane.api.loader import LoadResult
from homeplane.importer.kustomize import kustomize_hash
from homeplane.importer.repo import is_flux_repo, load_repo
from homeplane.translate import translate

REPO = Path(__file__).resolve().parent.parent / "fixtures" / "fluxrepo" / "kubernetes"


@pytest.fixture(scope="module")
def loaded() -> LoadResult:
    return load_repo(REPO, {"SECRET_DOMAIN": "home.test"})


def obj(r: LoadResult, kind: str, ns: str | None, name: str):
    found = [o for o in r.objects if o.kind == kind and o.namespace == ns and o.name == name]
    assert found, f"{kind} {ns}/{name} not found; have {[(o.kind, o.namespace, o.name) for o in r.objects]}"
    return found[0]


def test_detected_as_flux_repo() -> None:
    assert is_flux_repo(REPO)


def test_namespace_component_and_kustomize_namespace(loaded: LoadResult) -> None:
    # components/namespace has "name: _": the kustomization's namespace renames it
    names = sorted(o.name for o in loaded.objects if o.kind == "Namespace")
    assert names == ["media", "network"]
    # common component objects land in each namespace
    assert obj(loaded, "ConfigMap", "network", "cluster-settings").raw["data"]["GATEWAY_IP"] == "10.0.10.20"


def test_substitution_sources_and_precedence(loaded: LoadResult) -> None:
    gw = obj(loaded, "Gateway", "network", "envoy-internal")
    # GATEWAY_IP from the cluster-settings ConfigMap (substituteFrom), SECRET_DOMAIN from --set
    # because the cluster-secrets Secret is SOPS-encrypted
    assert gw.model.spec.infrastructure.annotations["lbipam.cilium.io/ips"] == "10.0.10.20"
    assert gw.model.spec.listeners[0].hostname == "*.home.test"
    assert gw.annotations["external-dns.alpha.kubernetes.io/target"] == "internal.home.test"


def test_component_with_postbuild_variable_and_nested_defaults(loaded: LoadResult) -> None:
    sp = obj(loaded, "SecurityPolicy", "media", "jellyfin-auth")
    assert sp.model.spec.all_target_refs()[0].name == "jellyfin"
    assert sp.model.spec.authorization.rules[0].principal.client_cidrs == ["192.168.0.0/16"]


def test_generators_hash_and_substitution_opt_out(loaded: LoadResult) -> None:
    scripts = [o for o in loaded.objects if o.kind == "ConfigMap" and o.name.startswith("jellyfin-scripts-")]
    assert len(scripts) == 1
    cm = scripts[0]
    expected = kustomize_hash({"kind": "ConfigMap", "metadata": {"name": "jellyfin-scripts"}, "data": cm.raw["data"]})
    assert cm.name == f"jellyfin-scripts-{expected}"
    assert cm.raw["data"]["start.sh"] == '#!/bin/sh\necho "${HOME}"\n'  # generatorOptions disabled substitution
    assert obj(loaded, "ConfigMap", "media", "jellyfin-values").name == "jellyfin-values"  # disableNameSuffixHash


def test_kustomize_hash_matches_known_vectors() -> None:
    # name suffixes kustomize produces for the Kubernetes documentation's examples
    assert kustomize_hash({"kind": "ConfigMap", "metadata": {"name": "example-configmap-2"}, "data": {"FOO": "Bar"}}) == "g2hdhfc6tk"
    assert (
        kustomize_hash({"kind": "ConfigMap", "metadata": {"name": "example-configmap-1"}, "data": {"application.properties": "FOO=Bar\n"}})
        == "8mbdf7882g"
    )


def test_app_template_rendering_with_patches_and_values_from(loaded: LoadResult) -> None:
    svc = obj(loaded, "Service", "media", "jellyfin")
    ports = {p.name: (p.port, p.protocol) for p in svc.model.spec.ports}
    assert ports == {"discovery": (7359, "UDP"), "http": (8096, "TCP")}  # http comes from valuesFrom
    assert svc.model.spec.type == "LoadBalancer" and svc.model.spec.external_traffic_policy == "Local"
    assert svc.annotations["lbipam.cilium.io/ips"] == "10.0.10.62"  # strategic-merge patch + ${VAR:=default}
    assert svc.model.spec.selector == {
        "app.kubernetes.io/name": "jellyfin",
        "app.kubernetes.io/instance": "jellyfin",
        "app.kubernetes.io/controller": "jellyfin",
    }
    route = obj(loaded, "HTTPRoute", "media", "jellyfin")  # one enabled route: no "-app" suffix
    spec = route.model.spec
    assert spec.hostnames == ["jellyfin.home.test", "media-media.home.test"]
    assert spec.parent_refs[0].section_name == "http"  # the JSON 6902 patch
    ref = spec.rules[0].backend_refs[0]
    assert (ref.name, ref.port, ref.namespace) == ("jellyfin", 8096, "media")  # port by name
    assert route.annotations["homeplane.dev/rendered-from"] == "HelmRelease/media/jellyfin"
    assert not [o for o in loaded.objects if o.kind == "HTTPRoute" and "discovery" in o.name]  # enabled: false


def test_translation_of_the_imported_repo(loaded: LoadResult) -> None:
    tr = translate(loaded.objects)
    p = tr.status[("gateway.networking.k8s.io", "HTTPRoute", "media", "jellyfin")]["parents"][0]
    assert {c["type"]: c["status"] for c in p["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True"}


def test_depends_on_report(loaded: LoadResult) -> None:
    msgs = [(d.code, d.message) for d in loaded.diagnostics]
    assert ("DependencyNotFound", "Kustomization media/jellyfin depends on media/missing-operator, which is not in the repository") in msgs
    assert any(c == "DependencyCycle" and "media/cycle-a -> media/cycle-b -> media/cycle-a" in m for c, m in msgs)
    # gateway exists: no complaint about it
    assert not any("network/gateway" in m for c, m in msgs if c == "DependencyNotFound")


def test_no_unresolved_placeholders_in_served_objects(loaded: LoadResult) -> None:
    import json

    for o in loaded.objects:
        if o.served and not (o.kind == "ConfigMap" and o.name.startswith("jellyfin-scripts")):
            assert "${" not in json.dumps(o.raw), (o.kind, o.name)
