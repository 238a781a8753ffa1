"""Loading: YAML features real repos use, diagnostics with file/line, bad input never hides good input."""

from __future__ import annotations

from pathlib import Path

from homeplane.api.loader import LoadOptions, load_paths
from homeplane.api.models.core import Service
from homeplane.api.models.gateway import Gateway, HTTPRoute
from tests.conftest import load


def test_reused_anchor_merge_keys_and_alias_keys() -> None:
    r = load(
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: &name demo
          namespace: &name apps        # an anchor name reused in one document (YAML 1.2 allows it)
          labels:
            app: *name
        data:
          <<: &common
            a: "1"
            b: "2"
          b: "3"
          ? *name
          : "alias used as a key"
        """
    )
    assert not r.diagnostics.errors, [str(d) for d in r.diagnostics]
    (obj,) = r.objects
    assert obj.name == "demo" and obj.namespace == "apps"
    assert obj.labels == {"app": "apps"}
    assert obj.model.data == {"a": "1", "b": "3", "apps": "alias used as a key"}


def test_substitution_happens_before_yaml_typing() -> None:
    r = load(
        """\
        apiVersion: v1
        kind: Service
        metadata:
          name: web
        spec:
          ports:
            - port: ${PORT}
        """,
        variables={"PORT": "8080"},
    )
    svc = r.objects[0].model
    assert isinstance(svc, Service)
    assert svc.spec.ports[0].port == 8080
    assert r.objects[0].raw["spec"]["ports"][0]["port"] == 8080  # typed as int by YAML, not "8080"


def test_substitution_opt_out_annotation() -> None:
    r = load(
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: script
          annotations:
            kustomize.toolkit.fluxcd.io/substitute: disabled
        data:
          run.sh: echo ${HOME}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: other
        data:
          host: ${HOME}
        """,
        variables={"HOME": "/root"},
    )
    by_name = {o.name: o for o in r.objects}
    assert by_name["script"].model.data["run.sh"] == "echo ${HOME}"
    assert by_name["other"].model.data["host"] == "/root"


def test_unset_variable_warns_with_line() -> None:
    r = load(
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: cm
        data:
          host: app.${SECRET_DOMAIN}
        """,
        variables={},
    )
    (w,) = r.diagnostics.warnings
    assert w.code == "VariableNotSet" and w.line == 6 and "SECRET_DOMAIN" in w.message


def test_bad_substitution_skips_only_that_document() -> None:
    r = load(
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: good
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: bad
        data:
          x: ${UNCLOSED
        """,
        variables={},
    )
    assert [o.name for o in r.objects] == ["good"]
    (e,) = r.diagnostics.errors
    assert e.code == "SubstitutionFailed" and e.line == 11 and e.document == 1


def test_yaml_syntax_error_names_file_and_line_and_later_documents_still_load() -> None:
    r = load(
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: first
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: [broken
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: third
        """,
        filename="apps/cm.yaml",
    )
    assert sorted(o.name for o in r.objects) == ["first", "third"]
    (e,) = r.diagnostics.errors
    assert e.file == "apps/cm.yaml" and e.document == 1 and e.code == "YAMLSyntax"
    assert e.line in (9, 10)
    assert "apps/cm.yaml:" in str(e)


def test_schema_error_points_at_field_and_line() -> None:
    r = load(
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata:
          name: gw
          namespace: network
        spec:
          gatewayClassName: envoy
          listeners:
            - name: http
              protocol: HTTP
              port: 99999
        """
    )
    (e,) = r.diagnostics.errors
    assert e.field == "spec.listeners[0].port"
    assert e.line == 11
    assert e.kind == "Gateway" and e.namespace == "network" and e.name == "gw"
    assert r.objects == []


def test_unknown_fields_are_warnings_and_object_still_loads() -> None:
    r = load(
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata:
          name: r
        spec:
          hostnamez: [a.example]
          rules:
            - backendRefs:
                - name: svc
                  port: 80
                  wieght: 5
        """
    )
    assert not r.diagnostics.errors
    fields = sorted(d.field for d in r.diagnostics.warnings)
    assert fields == ["spec.hostnamez", "spec.rules[0].backendRefs[0].wieght"]
    assert {d.line for d in r.diagnostics.warnings} == {6, 11}
    assert isinstance(r.objects[0].model, HTTPRoute)


def test_not_served_kinds_are_kept_and_counted() -> None:
    r = load(
        """\
        apiVersion: helm.toolkit.fluxcd.io/v2
        kind: HelmRelease
        metadata:
          name: app
        spec:
          chart: {}
        """
    )
    (o,) = r.objects
    assert not o.served and o.kind == "HelmRelease" and o.namespace == "default"


def test_unsupported_version_of_served_kind_is_a_warning() -> None:
    r = load(
        """\
        apiVersion: gateway.networking.k8s.io/v9
        kind: Gateway
        metadata:
          name: future
        spec: {}
        """
    )
    assert r.diagnostics.warnings[0].code == "UnsupportedVersion"
    assert not r.objects[0].served


def test_documents_that_are_not_objects() -> None:
    r = load(
        """\
        - just
        - a list
        ---
        kind: Service
        metadata:
          name: no-api-version
        ---
        foo: bar
        """
    )
    codes = [(d.severity.value, d.code) for d in r.diagnostics]
    assert ("error", "NotAnObject") in codes  # a list, and an object without apiVersion
    assert ("info", "NotAnObject") in codes  # plain YAML beside manifests (no apiVersion/kind at all)
    assert r.objects == []


def test_list_kind_is_expanded() -> None:
    r = load(
        """\
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Namespace
            metadata:
              name: a
          - apiVersion: v1
            kind: Namespace
            metadata:
              name: b
        """
    )
    assert [o.name for o in r.objects] == ["a", "b"]
    assert all(o.namespace is None for o in r.objects)


def test_folder_loading_skips_hidden_and_non_yaml(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: hidden\n")
    (tmp_path / "apps" / "ns.yml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shown\n")
    (tmp_path / "apps" / "template.yaml.j2").write_text("{{ nope")
    (tmp_path / "apps" / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    r = load_paths([tmp_path], LoadOptions())
    assert [o.name for o in r.objects] == ["shown"]
    (e,) = r.diagnostics.errors
    assert e.code == "FileNotUTF8" and e.file == "apps/binary.yaml"


def test_gateway_defaults_from_model() -> None:
    r = load(
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: gw}
        spec:
          gatewayClassName: envoy
          listeners:
            - {name: http, protocol: HTTP, port: 80}
        """
    )
    gw = r.objects[0].model
    assert isinstance(gw, Gateway)
    assert gw.spec.listeners[0].allowed_routes.namespaces.from_ == "Same"
