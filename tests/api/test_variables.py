from __future__ import annotations

import base64
from pathlib import Path

import pytest

from homeplane.api.variables import VariablesError, load_vars_file, parse_dotenv, parse_set


def test_dotenv() -> None:
    text = '# comment\nexport A=1\nB="two words"\nC=\'single\'\nD=value # trailing\n\nE=\n'
    assert parse_dotenv(text) == {"A": "1", "B": "two words", "C": "single", "D": "value", "E": ""}


def test_dotenv_bad_line_names_line() -> None:
    with pytest.raises(VariablesError, match=":2:"):
        parse_dotenv("A=1\nnot a pair\n", "vars.env")


def test_set_validates_names() -> None:
    assert parse_set(["SECRET_DOMAIN=example.com", "X=a=b"]) == {"SECRET_DOMAIN": "example.com", "X": "a=b"}
    with pytest.raises(VariablesError, match="invalid"):
        parse_set(["1BAD=x"])
    with pytest.raises(VariablesError, match="NAME=VALUE"):
        parse_set(["novalue"])


def test_cluster_secrets_yaml(tmp_path: Path) -> None:
    f = tmp_path / "cluster-secrets.yaml"
    f.write_text(
        f"""\
apiVersion: v1
kind: Secret
metadata:
  name: cluster-secrets
  namespace: flux-system
stringData:
  SECRET_DOMAIN: home.example
data:
  SECRET_TZ: {base64.b64encode(b"Europe/Paris").decode()}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cluster-settings
data:
  CLUSTER_CIDR: 10.42.0.0/16
"""
    )
    assert load_vars_file(f) == {"SECRET_DOMAIN": "home.example", "SECRET_TZ": "Europe/Paris", "CLUSTER_CIDR": "10.42.0.0/16"}


def test_bad_base64_in_secret(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  X: '!!!'\n")
    with pytest.raises(VariablesError, match="base64"):
        load_vars_file(f)
