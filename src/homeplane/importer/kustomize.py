"""``kustomize build`` for the features home-ops repos use.

resources (files, folders, remote URLs reported as not loadable), components,
namespace, namePrefix/nameSuffix, labels/commonLabels, commonAnnotations,
configMapGenerator/secretGenerator (literals, files, envs, name hash or
``disableNameSuffixHash``, generatorOptions), patches (strategic merge and JSON
6902, inline or from files, with targets) and the legacy patchesStrategicMerge
/ patchesJson6902. A folder without a kustomization.yaml is built the way Flux
does: every manifest in the tree.

Transformations run in kustomize's order: patches, then namespace, prefix and
suffix, labels, annotations. Substitution is not kustomize's job: Flux runs it
after the build (see :mod:`homeplane.importer.flux`).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from homeplane.api import registry
from homeplane.api.diagnostics import Diagnostics, processing
from homeplane.api.variables import VariablesError, parse_dotenv
from homeplane.api.yamlio import YamlSyntaxError, load_all, parse_chunk, split_documents
from homeplane.importer.docs import Doc, is_kustomize_file
from homeplane.importer.shapes import conform_kustomization
from homeplane.importer.patches import PatchError, json6902, strategic_merge, target_matches

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomize_hash(obj: dict[str, Any]) -> str:
    """kustomize's name suffix for a generated ConfigMap or Secret."""
    kind = obj.get("kind")
    data: Any = obj.get("data") or ""
    if kind == "ConfigMap":
        m: dict[str, Any] = {"kind": "ConfigMap", "name": obj["metadata"]["name"], "data": data}
        if obj.get("binaryData"):
            m["binaryData"] = obj["binaryData"]
    else:
        m = {"kind": "Secret", "type": obj.get("type", ""), "name": obj["metadata"]["name"], "data": data}
        if obj.get("stringData"):
            m["stringData"] = obj["stringData"]
    # Go's json.Marshal: sorted keys, no spaces, HTML-safe escapes, UTF-8 kept.
    text = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    h = hashlib.sha256(text.encode()).hexdigest()[:10]
    return h.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


class Builder:
    def __init__(self, root: Path, diags: Diagnostics):
        self.root = root.resolve()
        self.diags = diags
        # Folders that are some Flux Kustomization's spec.path: a plain (generated)
        # build of a parent folder does not reach into them - they have an owner.
        self.owned: set[Path] = set()
        self._cache: dict[Path, tuple[list[Doc], list[Any]]] = {}
        self._reported: set[Path] = set()  # files whose problems have been reported
        self.quiet: Diagnostics | None = None  # the sink of a scan that reports nothing

    def rel(self, p: Path) -> str:
        try:
            return str(p.resolve().relative_to(self.root))
        except ValueError:
            return str(p)

    # --- reading ---------------------------------------------------------------------

    def read_file(self, path: Path) -> list[Doc]:
        """Parsed documents of a file (parsed once; callers get their own copies). The file's
        problems are reported the first time a build reads it, whoever parsed it first (the
        repository scan parses every file with its problems held back)."""
        key = path.resolve()
        if key not in self._cache:
            held = Diagnostics()
            real, self.diags = self.diags, held
            with processing(self.rel(path)):
                try:
                    docs = self._read(path)
                finally:
                    self.diags = real
            self._cache[key] = (docs, list(held))
        docs, problems = self._cache[key]
        if problems and self.diags is not self.quiet and key not in self._reported:
            self._reported.add(key)
            for d in problems:
                self.diags.add(d)
        return [d.copy() for d in docs]

    def report_problems(self, path: Path) -> None:
        """Report a file's parse problems now (once), whoever reads it later."""
        key = path.resolve()
        entry = self._cache.get(key)
        if entry is not None and entry[1] and key not in self._reported:
            self._reported.add(key)
            for d in entry[1]:
                self.diags.add(d)

    def _read(self, path: Path) -> list[Doc]:
        name = self.rel(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            self.diags.error(f"cannot read file: {e}", file=name, code="FileUnreadable")
            return []
        out = []
        chunks = split_documents(text)
        for chunk in chunks:
            try:
                doc = parse_chunk(chunk)
            except YamlSyntaxError as e:
                self.diags.error(str(e), file=name, line=e.line, document=chunk.index, code=e.code)
                continue
            if doc is None:
                continue
            for line, message in doc.warnings:
                self.diags.warning(message, file=name, line=line, document=chunk.index, code="DuplicateKey")
            if not isinstance(doc.data, dict):
                self.diags.error("document is not a Kubernetes object", file=name, line=doc.line, document=chunk.index, code="NotAnObject")
                continue
            if doc.data.get("kind") == "List" and isinstance(doc.data.get("items"), list):
                out += [Doc(i, name, chunk.index, doc.line) for i in doc.data["items"] if isinstance(i, dict)]
                continue
            sops = (chunk.text, None) if len(chunks) == 1 else (text, chunk.index)
            out.append(Doc(doc.data, name, chunk.index, doc.line, doc.positions,
                           sops if isinstance(doc.data.get("sops"), dict) else None))
        return out

    def kustomization_file(self, d: Path) -> Path | None:
        for n in KUSTOMIZATION_FILES:
            if (d / n).is_file():
                return d / n
        return None

    # --- building -------------------------------------------------------------------

    def build(self, d: Path, stack: tuple[Path, ...] = ()) -> list[Doc]:
        d = d.resolve()
        if d in stack:
            self.diags.error(f"kustomization cycle: {' -> '.join(self.rel(x) for x in stack + (d,))}", file=self.rel(d), code="KustomizeCycle")
            return []
        if not d.is_dir():
            self.diags.error(f"path does not exist: {self.rel(d)}", file=self.rel(d), code="PathNotFound")
            return []
        kf = self.kustomization_file(d)
        if kf is None:
            return self._build_plain(d, stack + (d,))
        docs = self.read_file(kf)
        kdoc = next((x for x in docs if is_kustomize_file(x)), None)
        if kdoc is None:
            self.diags.error("not a kustomize Kustomization", file=self.rel(kf), code="NotAKustomization")
            return []
        kdoc = conform_kustomization(kdoc, self.diags)
        resources = self._collect(kdoc, d, stack + (d,))
        return self._transform(kdoc, d, resources)

    def _build_plain(self, d: Path, stack: tuple[Path, ...]) -> list[Doc]:
        """What Flux generates for a folder without kustomization.yaml: every manifest below it."""
        out: list[Doc] = []
        for entry in sorted(d.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if entry.resolve() in self.owned:
                    continue
                if self.kustomization_file(entry) is not None:
                    out += self.build(entry, stack)
                else:
                    out += self._build_plain(entry, stack)
            elif entry.suffix in (".yaml", ".yml"):
                out += [x for x in self.read_file(entry) if "apiVersion" in x.data and "kind" in x.data]
        return out

    def _collect(self, k: Doc, d: Path, stack: tuple[Path, ...]) -> list[Doc]:
        spec = k.data
        out: list[Doc] = []
        for entry in spec.get("resources") or []:
            out += self._resource(str(entry), d, k, stack)
        for entry in spec.get("bases") or []:
            out += self._resource(str(entry), d, k, stack)
        out += self._generate(k, d)
        for comp in spec.get("components") or []:
            out = self.apply_component(str(comp), d, out, k, stack)
        return out

    def _resource(self, entry: str, d: Path, k: Doc, stack: tuple[Path, ...]) -> list[Doc]:
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            self.diags.warning(f"remote resource {entry!r} is not loadable here; skipped", file=k.file, code="RemoteResource")
            return []
        p = d / entry
        if p.is_dir():
            return self.build(p, stack)
        if p.is_file():
            return self.read_file(p)
        self.diags.error(f"resource {entry!r} not found", file=k.file, line=_line_of(k, "resources", entry), code="ResourceNotFound")
        return []

    def apply_component(self, entry: str, d: Path, current: list[Doc], k: Doc, stack: tuple[Path, ...]) -> list[Doc]:
        p = (d / entry).resolve()
        kf = self.kustomization_file(p) if p.is_dir() else None
        if kf is None:
            self.diags.error(f"component {entry!r} not found (no kustomization.yaml in {self.rel(p)})", file=k.file, code="ComponentNotFound")
            return current
        cdocs = self.read_file(kf)
        cdoc = next((x for x in cdocs if is_kustomize_file(x)), None)
        if cdoc is None:
            return current
        if cdoc.kind != "Component":
            self.diags.warning(f"{self.rel(kf)} is used as a component but is kind {cdoc.kind}", file=k.file, code="NotAComponent")
        cdoc = conform_kustomization(cdoc, self.diags)
        added = self._collect(cdoc, p, stack + (p,))
        return self._transform(cdoc, p, current + added)

    # --- generators -------------------------------------------------------------------

    def _generate(self, k: Doc, d: Path) -> list[Doc]:
        spec = k.data
        opts = spec.get("generatorOptions") or {}
        out = []
        for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
            for g in spec.get(key) or []:
                if not isinstance(g, dict) or not g.get("name"):
                    self.diags.error(f"{key} entry needs a name", file=k.file, code="InvalidGenerator")
                    continue
                data: dict[str, str] = {}
                for lit in g.get("literals") or []:
                    if not isinstance(lit, str):
                        self.diags.error(f"{key} {g['name']}: literal {lit!r} is not a KEY=VALUE string (quote it)", file=k.file, code="InvalidGenerator")
                        continue
                    name, _, value = lit.partition("=")
                    data[name] = value.strip('"') if value.startswith('"') and value.endswith('"') else value
                for f in g.get("files") or []:
                    key_name, sep, rel = str(f).partition("=")
                    if not sep:
                        rel, key_name = key_name, os.path.basename(key_name)
                    fp = d / rel
                    try:
                        data[key_name] = fp.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as e:
                        self.diags.error(f"{key} {g['name']}: cannot read {rel}: {e}", file=k.file, code="GeneratorFile")
                for env in ([g["env"]] if g.get("env") else []) + list(g.get("envs") or []):
                    try:
                        data.update(parse_dotenv((d / env).read_text(encoding="utf-8"), str(d / env)))
                    except (OSError, VariablesError) as e:
                        self.diags.error(f"{key} {g['name']}: {e}", file=k.file, code="GeneratorFile")
                obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]}}
                if g.get("namespace"):
                    obj["metadata"]["namespace"] = g["namespace"]
                if kind == "Secret":
                    obj["type"] = g.get("type", "Opaque")
                    obj["data"] = {n: base64.b64encode(v.encode()).decode() for n, v in data.items()}
                else:
                    obj["data"] = data
                labels = {**(opts.get("labels") or {}), **((g.get("options") or {}).get("labels") or {})}
                ann = {**(opts.get("annotations") or {}), **((g.get("options") or {}).get("annotations") or {})}
                if labels:
                    obj["metadata"]["labels"] = labels
                if ann:
                    obj["metadata"]["annotations"] = ann
                disable = (g.get("options") or {}).get("disableNameSuffixHash", opts.get("disableNameSuffixHash", False))
                if not disable and g.get("behavior", "create") == "create":
                    obj["metadata"]["name"] = f"{g['name']}-{kustomize_hash(obj)}"
                out.append(Doc(obj, k.file, k.document, _line_of(k, key) or k.line))
        return out

    # --- transformers ------------------------------------------------------------------

    def _transform(self, k: Doc, d: Path, docs: list[Doc]) -> list[Doc]:
        spec = k.data
        docs = apply_patches(spec, d, docs, self, k)
        ns = spec.get("namespace")
        if ns:
            for x in docs:
                if x.kind == "Namespace" and not x.group:
                    x.meta["name"] = ns
                elif registry.namespaced(x.group, x.kind):
                    x.meta["namespace"] = ns
        prefix, suffix = spec.get("namePrefix") or "", spec.get("nameSuffix") or ""
        if prefix or suffix:
            for x in docs:
                if x.kind != "Namespace":
                    x.meta["name"] = f"{prefix}{x.name}{suffix}"
        label_sets: list[tuple[dict[str, str], bool]] = []
        if spec.get("commonLabels"):
            label_sets.append((spec["commonLabels"], True))
        for entry in spec.get("labels") or []:
            if isinstance(entry, dict) and entry.get("pairs"):
                label_sets.append((entry["pairs"], bool(entry.get("includeSelectors"))))
        for pairs, selectors in label_sets:
            for x in docs:
                x.meta.setdefault("labels", {}).update({str(a): str(b) for a, b in pairs.items()})
                if selectors and x.kind == "Service" and isinstance(x.data.get("spec"), dict) and x.data["spec"].get("selector") is not None:
                    x.data["spec"]["selector"].update({str(a): str(b) for a, b in pairs.items()})
        if spec.get("commonAnnotations"):
            for x in docs:
                x.meta.setdefault("annotations", {}).update({str(a): str(b) for a, b in spec["commonAnnotations"].items()})
        return docs


def _line_of(k: Doc, *path: Any) -> int | None:
    if path and len(path) == 2 and isinstance(k.data.get(path[0]), list) and path[1] in k.data[path[0]]:
        return k.positions.get((path[0], k.data[path[0]].index(path[1])), k.line)
    return k.positions.get(tuple(path[:1]), k.line)


def apply_patches(spec: dict[str, Any], d: Path | None, docs: list[Doc], builder: Builder | None, owner: Doc) -> list[Doc]:
    """The ``patches`` (and legacy patch fields) of a kustomize or Flux Kustomization."""
    diags = builder.diags if builder else None
    entries: list[tuple[Any, dict[str, Any] | None]] = []
    for p in spec.get("patches") or []:
        if not isinstance(p, dict):
            continue
        body: Any = p.get("patch")
        if body is None and p.get("path") and d is not None:
            try:
                body = (d / p["path"]).read_text(encoding="utf-8")
            except OSError as e:
                if diags:
                    diags.error(f"patch file {p['path']}: {e.strerror}", file=owner.file, code="PatchNotFound")
                continue
        entries.append((body, p.get("target")))
    for p in spec.get("patchesStrategicMerge") or []:
        body = p
        if isinstance(p, str) and d is not None and "\n" not in p and (d / p).is_file():
            body = (d / p).read_text(encoding="utf-8")
        entries.append((body, None))
    for p in spec.get("patchesJson6902") or []:
        if isinstance(p, dict):
            body = p.get("patch")
            if body is None and p.get("path") and d is not None:
                body = (d / p["path"]).read_text(encoding="utf-8")
            entries.append((body, p.get("target")))
    for body, target in entries:
        docs = _apply_one(body, target, docs, diags, owner)
    return docs


def _parse_patch(body: Any) -> list[Any]:
    if isinstance(body, (dict, list)):
        return [body]
    return [x for x in load_all(str(body)) if x is not None]


def _apply_one(body: Any, target: dict[str, Any] | None, docs: list[Doc], diags: Diagnostics | None, owner: Doc) -> list[Doc]:
    try:
        parsed = _parse_patch(body)
    except YamlSyntaxError as e:
        if diags:
            diags.error(f"patch is not valid YAML: {e}", file=owner.file, code="InvalidPatch")
        return docs
    for patch in parsed:
        is_json = isinstance(patch, list)
        for x in docs:
            if target is not None:
                if not target_matches(target, x):
                    continue
            elif is_json:
                continue  # a JSON 6902 patch needs a target
            else:
                pm = patch.get("metadata") or {}
                if patch.get("kind") != x.kind or pm.get("name") not in (x.name, None):
                    continue
                if pm.get("namespace") and pm.get("namespace") != x.namespace:
                    continue
            try:
                if is_json:
                    x.data = json6902(x.data, patch)
                else:
                    p = copy.deepcopy(patch)
                    if target is not None:
                        # with a target, the patch's own identity does not rename the object
                        meta = p.get("metadata")
                        if isinstance(meta, dict):
                            meta.pop("name", None)
                            meta.pop("namespace", None)
                        p.pop("apiVersion", None)
                        p.pop("kind", None)
                    x.data = strategic_merge(x.data, p)
            except (PatchError, ValueError, IndexError, KeyError, TypeError) as e:
                if diags:
                    diags.error(f"patch failed on {x.kind}/{x.name}: {e}", file=owner.file, code="PatchFailed")
    return docs
