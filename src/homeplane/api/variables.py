"""Variables for substitution: ``--set NAME=VALUE`` and ``--vars FILE``.

A vars file is either dotenv text (``NAME=value`` lines, ``#`` comments,
optional ``export`` and quotes) or YAML holding a Kubernetes Secret or
ConfigMap such as the ``cluster-secrets`` Secret of a Flux repo (``stringData``
and base64 ``data`` are both read) — SOPS-encrypted too, given an age key.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import TYPE_CHECKING

from homeplane.api.substitute import VAR_NAME_RE
from homeplane.api.yamlio import YamlSyntaxError, parse_chunk, split_documents

if TYPE_CHECKING:
    from homeplane.importer.sops import Decryptor


class VariablesError(ValueError):
    pass


def parse_set(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise VariablesError(f"--set {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        _check_name(name, f"--set {item!r}")
        out[name] = value
    return out


def _check_name(name: str, where: str) -> None:
    if not VAR_NAME_RE.match(name):
        raise VariablesError(f"{where}: variable name {name!r} is invalid, it must match {VAR_NAME_RE.pattern}")


def load_vars_file(path: Path, decryptor: Decryptor | None = None) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise VariablesError(f"{path}: cannot read: {e.strerror}") from None
    if _looks_like_k8s_yaml(text):
        return _from_k8s_yaml(text, str(path), decryptor)
    fmt = _sops_format(text)
    if fmt is not None:  # a SOPS-encrypted dotenv file, or a plain YAML map of variables
        from homeplane.importer.sops import DecryptError, Decryptor

        try:
            plain = (decryptor or Decryptor(())).decrypt({}, text, None, fmt)
        except DecryptError as e:
            raise VariablesError(f"{path}: SOPS-encrypted, cannot decrypt: {e}") from None
        out: dict[str, str] = {}
        for key, value in plain.items():
            if key == "sops" or key.startswith("sops_"):
                continue
            _check_name(str(key), f"{path}: key")
            out[str(key)] = str(value)
        return out
    return parse_dotenv(text, str(path))


def _sops_format(text: str) -> str | None:
    if "ENC[AES256_GCM," not in text:
        return None
    if any(line.startswith("sops_mac=") for line in text.splitlines()):
        return "dotenv"
    return "yaml" if any(line.rstrip() == "sops:" for line in text.splitlines()) else None


def _looks_like_k8s_yaml(text: str) -> bool:
    return any(line.startswith(("apiVersion:", "kind:")) for line in text.splitlines())


def _from_k8s_yaml(text: str, where: str, decryptor: Decryptor | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in split_documents(text):
        try:
            doc = parse_chunk(chunk)
        except YamlSyntaxError as e:
            raise VariablesError(f"{where}:{e.line}: {e}") from None
        data = doc.data if doc else None
        if not isinstance(data, dict) or data.get("kind") not in ("Secret", "ConfigMap"):
            continue
        if isinstance(data.get("sops"), dict):
            from homeplane.importer.sops import DecryptError, Decryptor

            try:
                data = (decryptor or Decryptor(())).decrypt(data, chunk.text)
            except DecryptError as e:
                raise VariablesError(f"{where}: SOPS-encrypted, cannot decrypt: {e}") from None
        for key, value in (data.get("data") or {}).items():
            if data["kind"] == "Secret":
                try:
                    value = base64.b64decode(str(value), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise VariablesError(f"{where}: data.{key} is not valid base64 text") from None
            _check_name(str(key), f"{where}: key")
            out[str(key)] = str(value)
        for key, value in (data.get("stringData") or {}).items():
            _check_name(str(key), f"{where}: key")
            out[str(key)] = str(value)
    return out


def parse_dotenv(text: str, where: str = "<vars>") -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("export "):
            s = s[len("export ") :].lstrip()
        if "=" not in s:
            raise VariablesError(f"{where}:{n}: expected NAME=VALUE, got {line!r}")
        name, value = s.split("=", 1)
        name = name.strip()
        _check_name(name, f"{where}:{n}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            if s.split("=", 1)[1].strip()[0] == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[name] = value
    return out
