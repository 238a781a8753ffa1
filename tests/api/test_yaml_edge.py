"""YAML that real repos and attackers write: every construct loads or is one diagnostic with
file and line, and no document can make the loader expand without bound."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from homeplane.api.loader import LoadOptions, LoadResult, load_paths, load_text
from homeplane.api.yamlio import MAX_DOCUMENT_BYTES, dump, resolve_plain
from homeplane.api.yamlio import load as yaml_load

BOMB = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: lol, namespace: apps}
data:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
---
apiVersion: v1
kind: Namespace
metadata: {name: after-the-bomb}
"""


def load(text: str, **variables: str) -> LoadResult:
    r = LoadResult()
    load_text(text, "test.yaml", LoadOptions(variables=variables or None), r)
    return r


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_billion_laughs_is_one_diagnostic_and_the_rest_loads() -> None:
    before = _max_rss()
    r = load(BOMB)
    errs = r.diagnostics.errors
    assert len(errs) == 1 and errs[0].code == "YAMLTooLarge" and errs[0].line == 1 and "aliasing" in errs[0].message
    assert [o.name for o in r.objects] == ["after-the-bomb"]
    assert _max_rss() - before < 200 << 20  # the probe saw 6.5 GB before it was killed


def test_a_bomb_in_a_flux_repo_is_caught_too(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(BOMB)
    r = load_paths([tmp_path], LoadOptions())
    assert [d.code for d in r.diagnostics.errors] == ["YAMLTooLarge"]


def test_deep_nesting_and_huge_documents() -> None:
    deep = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: " + "[" * 5000 + "]" * 5000 + "\n"
    r = load(deep)
    assert [d.code for d in r.diagnostics.errors] == ["YAMLTooLarge"]
    big = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {k: " + "x" * (MAX_DOCUMENT_BYTES + 10) + "}\n"
    r = load(big)
    assert [d.code for d in r.diagnostics.errors] == ["YAMLTooLarge"] and "bytes" in r.diagnostics.errors[0].message


def test_aliases_shared_by_many_keys_are_fine() -> None:
    # ordinary reuse: a few aliases of a small map, well under the alias ratio
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\nx-extra:\n  base: &b {a: '1'}\n" + "".join(
        f"  k{i}: *b\n" for i in range(200)
    )
    r = load(text)
    assert not r.diagnostics.errors and r.objects[0].raw["x-extra"]["k199"] == {"a": "1"}


def test_real_repo_constructs() -> None:
    text = (
        "\ufeffapiVersion: helm.toolkit.fluxcd.io/v2\r\n"  # BOM and CRLF
        "kind: HelmRelease\r\n"
        "metadata: {name: &app authentik, namespace: security}\r\n"
        "spec:\r\n"
        "  values:\r\n"
        "    defaults: &defaults {replicas: 1, image: {tag: v1}}\r\n"
        "    controllers:\r\n"
        "      *app :\r\n"  # an alias as a key
        "        <<: *defaults\r\n"  # a merge key; explicit keys win
        "        replicas: 2\r\n"
        "    tagged: !!str 123\r\n"
        "    custom: !Ref something\r\n"
        "    number: 0x1F\r\n"
        "    word: yes\r\n"
        "    dup: first\r\n"
        "    dup: second\r\n"
        "    long: " + "y" * 100_000 + "\r\n"
    )
    r = load(text)
    assert not r.diagnostics.errors
    values = r.objects[0].raw["spec"]["values"]
    assert values["controllers"] == {"authentik": {"replicas": 2, "image": {"tag": "v1"}}}
    assert values["tagged"] == "123" and values["custom"] == "something" and values["number"] == 31 and values["word"] == "yes"
    assert values["dup"] == "second" and len(values["long"]) == 100_000
    dup = [d for d in r.diagnostics if d.code == "DuplicateKey"]
    assert len(dup) == 1 and dup[0].line == 16 and "dup" in dup[0].message


def test_anchor_names_reused_across_documents_and_within_one() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: &v one, y: *v, z: &v two, w: *v}\n---\n" \
           "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {x: &v three, y: *v}\n"
    r = load(text)
    assert not r.diagnostics.errors
    assert r.objects[0].raw["data"] == {"x": "one", "y": "one", "z": "two", "w": "two"}
    assert r.objects[1].raw["data"] == {"x": "three", "y": "three"}


def test_an_undefined_alias_is_a_syntax_error_with_its_line() -> None:
    r = load("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  x: *nowhere\n")
    assert [(d.code, d.line) for d in r.diagnostics.errors] == [("YAMLSyntax", 5)]


@pytest.mark.parametrize("text,value", [
    ("~", None), ("null", None), ("", None), ("true", True), ("False", False), ("yes", "yes"), ("on", "on"),
    ("12", 12), ("-3", -3), ("0o17", 15), ("0x1f", 31), ("1.5", 1.5), ("1e3", 1000.0), (".inf", float("inf")),
    ("1.10", 1.1), ("v1.2", "v1.2"), ("08", 8), ("2024-01-01", "2024-01-01"), ("+1", 1), ("1_000", "1_000"),
])
def test_yaml_1_2_core_schema(text: str, value: object) -> None:
    assert resolve_plain(text) == value if text else True


def test_dump_and_load_round_trip_the_values_flux_substitutes() -> None:
    data = {"a": "yes", "b": "${VAR}", "c": [1, {"d": None, "e": "12"}], "f": "x: y", "g": "multi\nline"}
    assert yaml_load(dump(data)) == data


def test_aliases_of_large_text_and_complex_keys() -> None:
    big = "x" * 1_000_000
    r = load(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata:\n  s: &S {big}\n  l: [{', '.join(['*S'] * 40)}]\n")
    assert [d.code for d in r.diagnostics.errors] == ["YAMLTooLarge"] and "bytes of text" in r.diagnostics.errors[0].message
    r = load("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  ? [a, b]\n  : v\n")
    assert [d.code for d in r.diagnostics.errors] == ["YAMLSyntax"] and "cannot be a key" in r.diagnostics.errors[0].message


def test_substitution_cannot_blow_a_document_up() -> None:
    nested = "${D//e/" * 28 + "x" + "}" * 28
    r = load(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{k: '{nested}'}}\n", D="example.com")
    assert [d.code for d in r.diagnostics.errors] == ["SubstitutionFailed"] and "larger than" in r.diagnostics.errors[0].message
    many = "${V}" * 20_000
    r = load(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{k: '{many}'}}\n", V="v" * 1000)
    assert [d.code for d in r.diagnostics.errors] == ["SubstitutionFailed"]
