"""Flux post-build substitution, case by case (cases follow Flux's envsubst semantics)."""

from __future__ import annotations

import pytest

from homeplane.api.substitute import SubstitutionError, substitute

VARS = {
    "var01": "abcdEFGH28ij",
    "path_name": "/home/bozo/ideas/thoughts.for.today",
    "stringZ": "abcABC123ABCabc",
    "filename": "bash.string.txt",
    "default_var": "foo1",
    "DOMAIN": "home.example",
    "EMPTY": "",
    "slashy": "foo/bar/baz",
}

CASES = [
    # plain and default forms
    ("${DOMAIN}", "home.example"),
    ("sonarr.${DOMAIN}", "sonarr.home.example"),
    ("${MISSING:-fallback}", "fallback"),
    ("${EMPTY:-fallback}", "fallback"),
    ("${DOMAIN:-fallback}", "home.example"),
    ("${MISSING:=assigned}", "assigned"),
    ("${MISSING=assigned}", "assigned"),
    ("${var=xyz}", "xyz"),
    # nested defaults
    ("${MISSING:-${DOMAIN}}", "home.example"),
    ("${A:-${B:-${DOMAIN}}}", "home.example"),
    ("foo: ${var=prefix${default_var}-suffix}", "foo: prefixfoo1-suffix"),
    ("${var=${var01^^}}", "ABCDEFGH28IJ"),
    # replacement
    ("${stringZ/abc/xyz}", "xyzABC123ABCabc"),
    ("${stringZ//abc/xyz}", "xyzABC123ABCxyz"),
    ("${stringZ/#abc/XYZ}", "XYZABC123ABCabc"),
    ("${stringZ/%abc/XYZ}", "abcABC123ABCXYZ"),
    ("${DOMAIN/./-}", "home-example"),
    (r"${slashy//\//-}", "foo-bar-baz"),
    ("${DOMAIN/./}", "homeexample"),
    # other operators
    ("${#var01}", "12"),
    ("${var01^}", "AbcdEFGH28ij"),
    ("${var01^^}", "ABCDEFGH28IJ"),
    ("${var01,,}", "abcdefgh28ij"),
    ("${path_name:11}", "ideas/thoughts.for.today"),
    ("${path_name:11:5}", "ideas"),
    ("${filename#*.}", "string.txt"),
    ("${filename##*.}", "txt"),
    ("${filename%.*}", "bash.string"),
    ("${filename%%.*}", "bash"),
    # escapes
    ("$${var01}", "${var01}"),
    ("$$", "$"),
    ("cost: $$5", "cost: $5"),
    ("some text ${var01}$${var$${var01}$var01${var01}", "some text abcdEFGH28ij${var${var01}$var01abcdEFGH28ij"),
    # things that only look like templates pass through untouched
    ("{{ .Release.Name }}.${DOMAIN}", "{{ .Release.Name }}.home.example"),
    ("$(VAR) and $VAR", "$(VAR) and $VAR"),
    ("%VAR% and %{VAR} and %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "%VAR% and %{VAR} and %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("no dollar at all", "no dollar at all"),
    ("trailing $", "trailing $"),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0] for c in CASES])
def test_expansion(text: str, expected: str) -> None:
    assert substitute(text, VARS).text == expected


def test_unset_variable_is_empty_and_reported() -> None:
    r = substitute("a-${NOPE}-b-${NOPE}-${DOMAIN}", VARS)
    assert r.text == "a--b--home.example"
    assert set(r.missing) == {"NOPE"}


def test_default_operators_do_not_report_missing() -> None:
    assert substitute("${NOPE:-x}", VARS).missing == []


def test_strict_mode_rejects_unset() -> None:
    with pytest.raises(SubstitutionError, match="NOPE"):
        substitute("${NOPE}", VARS, strict=True)
    assert substitute("${NOPE:-ok}", VARS, strict=True).text == "ok"


@pytest.mark.parametrize("bad", ["${unclosed", "${}", "${ DOMAIN}", "${DOMAIN:-x", "${DOMAIN!}"])
def test_malformed_expressions_raise_with_offset(bad: str) -> None:
    with pytest.raises(SubstitutionError) as e:
        substitute("prefix " + bad, VARS)
    assert e.value.offset == len("prefix ")
