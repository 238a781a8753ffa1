"""Flux ``Kustomization`` (kustomize.toolkit.fluxcd.io/v1) processing.

Each Flux Kustomization builds ``spec.path`` (from the repository root) with its
``spec.components``, applies its ``spec.patches``, ``targetNamespace``,
``namePrefix``/``nameSuffix`` and ``commonMetadata``, then runs post-build
substitution with, lowest first: the user's ``--vars``/``--set``, the
ConfigMaps/Secrets named in ``substituteFrom`` (found in the repository;
SOPS-encrypted values are skipped, since the user's variables stand in for
them), and ``postBuild.substitute``. SOPS-encrypted objects are decrypted first, as Flux does,
in Kustomizations with ``spec.decryption.provider: sops`` and with the user's age keys plus the
ones of the Secret ``spec.decryption.secretRef`` names (see :mod:`homeplane.importer.sops`);
an encrypted ``substituteFrom`` Secret is decrypted with the same keys. Flux Kustomizations produced by a build
(the per-app ``ks.yaml`` files) are processed in turn. ``dependsOn`` is checked
for missing references and cycles; ``prune``, ``wait``, ``interval`` and health
checks are accepted and have no effect here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homeplane.api.diagnostics import Diagnostics
from homeplane.api.secrets import secret_values
from homeplane.api.substitute import (
    SUBSTITUTE_ANNOTATION,
    SubstitutionError,
    substitute,
)
from homeplane.api.yamlio import YamlSyntaxError, dump, load
from homeplane.importer.docs import Doc, is_flux_kustomization
from homeplane.importer.kustomize import Builder
from homeplane.importer.shapes import conform_flux
from homeplane.importer.sops import DecryptError, Decryptor, identities_from_secret, is_encrypted, merge_plaintext


@dataclass
class FluxResult:
    objects: list[Doc] = field(default_factory=list)
    kustomizations: dict[tuple[str, str], Doc] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)


def _disabled(d: Doc) -> bool:
    for section in ("annotations", "labels"):
        values = d.meta.get(section)
        if isinstance(values, dict) and values.get(SUBSTITUTE_ANNOTATION) == "disabled":
            return True
    return False


def substitute_doc(d: Doc, variables: dict[str, str], diags: Diagnostics, owner: str, missing: dict[str, str]) -> None:
    """Flux post-build substitution on one object: serialise, substitute, parse back."""
    if _disabled(d):
        return
    text = dump(d.data)
    if "${" not in text:
        return
    try:
        exp = substitute(text, variables)
    except SubstitutionError as e:
        diags.error(
            f"Kustomization {owner}: variable substitution failed in {d.kind}/{d.name}: {e}",
            file=d.file, line=d.line, document=d.document, kind=d.kind, name=d.name, code="SubstitutionFailed",
        )
        return
    for var in exp.missing:
        missing.setdefault(var, f"{d.file}:{d.line}")
    try:
        data = load(exp.text)
    except YamlSyntaxError as e:  # a value that breaks YAML after substitution
        diags.error(
            f"Kustomization {owner}: {d.kind}/{d.name} is not valid YAML after substitution: {e}",
            file=d.file, line=d.line, document=d.document, code="SubstitutionFailed",
        )
        return
    if isinstance(data, dict):
        d.data = data


def is_secret(d: Doc) -> bool:
    return d.kind == "Secret" and d.api_version == "v1"


class FluxProcessor:
    def __init__(self, root: Path, builder: Builder, user_vars: dict[str, str], diags: Diagnostics, sources: list[Doc],
                 decryptor: Decryptor | None = None):
        self.root = root
        self.builder = builder
        self.user_vars = user_vars
        self.diags = diags
        self.decryptor = decryptor or Decryptor(())
        self.undecrypted: list[Doc] = []  # encrypted objects left as they are: no key given
        self._failed: set[tuple[str, int]] = set()
        # ConfigMaps/Secrets anywhere in the repo, for substituteFrom (by name; namespace when known)
        self.sources = [d for d in sources if d.kind in ("ConfigMap", "Secret") and not d.group]

    def _source_vars(self, ks: Doc) -> dict[str, str]:
        post = (ks.data.get("spec") or {}).get("postBuild") or {}
        out: dict[str, str] = {}
        for ref in post.get("substituteFrom") or []:
            kind, name = ref.get("kind"), ref.get("name")
            ns = ks.namespace
            found = [d for d in self.sources if d.kind == kind and d.name == name and d.namespace in (ns, None)]
            if not found:
                if not ref.get("optional"):
                    self.diags.info(
                        f"Kustomization {ks.namespace}/{ks.name}: substituteFrom {kind} {name} is not in the repository; "
                        "its values are expected from --vars/--set",
                        file=ks.file, line=ks.line, code="SubstituteFromMissing",
                    )
                continue
            src = found[0]
            if is_encrypted(src.data) and is_secret(src):  # in a cluster, Flux reads it decrypted
                src = self._decrypted(src, self.decryptor.with_identities(self._decryption_keys(ks)))
            out.update(secret_values(src.data, src.kind))
        return out

    def _decryption_keys(self, ks: Doc) -> list[str]:
        """Age identities of the Secret ``spec.decryption.secretRef`` names, when the repository
        holds it in the clear (usually it is created by hand at bootstrap and is not there)."""
        ref = ((ks.data.get("spec") or {}).get("decryption") or {}).get("secretRef") or {}
        name = ref.get("name") if isinstance(ref, dict) else None
        if not name:
            return []
        for d in self.sources:
            if d.kind == "Secret" and d.name == name and d.namespace in (ks.namespace or "flux-system", None) and not is_encrypted(d.data):
                return identities_from_secret(secret_values(d.data, "Secret"))
        return []

    def _decrypted(self, d: Doc, decryptor: Decryptor) -> Doc:
        """``d`` with its values decrypted; left encrypted (values from --set) when no key is
        given at all, and an error naming the file when the keys given cannot open it."""
        if not decryptor:
            self.undecrypted.append(d)
            return d
        try:
            text, index = d.sops_source or (None, None)
            plain = decryptor.decrypt(d.data, text, index)
        except DecryptError as e:
            if (d.file, d.document) not in self._failed:
                self._failed.add((d.file, d.document))
                self.diags.error(f"{d.kind} {d.name}: cannot decrypt with sops: {e}", file=d.file, line=d.line,
                                 document=d.document, kind=d.kind, name=d.name, code="DecryptionFailed")
            return d
        out = d.copy()
        out.data = merge_plaintext(d.data, plain)
        out.sops_source = None
        return out

    def _decrypt(self, ks: Doc, owner: str, docs: list[Doc]) -> list[Doc]:
        encrypted = [x for x in docs if is_encrypted(x.data)]
        if not encrypted:
            return docs
        others = [x for x in encrypted if not is_secret(x)]
        if others:  # Flux's decryptor opens v1 Secrets only; anything else is applied as it is
            x = others[0]
            self.diags.warning(
                f"Kustomization {owner}: {x.kind} {x.name} is SOPS-encrypted, but Flux decrypts only Secrets; left encrypted",
                file=x.file, line=x.line, kind=x.kind, name=x.name, code="DecryptionNotSupported",
            )
            encrypted = [x for x in encrypted if is_secret(x)]
            if not encrypted:
                return docs
        decryption = (ks.data.get("spec") or {}).get("decryption") or {}
        if decryption.get("provider") != "sops":
            first = encrypted[0]
            self.diags.warning(
                f"Kustomization {owner} builds {len(encrypted)} SOPS-encrypted object(s) ({first.kind} {first.name} in {first.file}) "
                "but has no spec.decryption with provider sops: Flux applies them encrypted, so they are not decrypted here",
                file=ks.file, line=ks.line, code="DecryptionNotConfigured",
            )
            return docs
        decryptor = self.decryptor.with_identities(self._decryption_keys(ks))
        return [self._decrypted(x, decryptor) if is_encrypted(x.data) and is_secret(x) else x for x in docs]

    def run(self, roots: list[Doc]) -> FluxResult:
        result = FluxResult()
        queue = list(roots)
        while queue:
            ks = conform_flux(queue.pop(0), self.diags)
            key = (ks.namespace or "flux-system", ks.name)
            if key in result.kustomizations:
                continue
            result.kustomizations[key] = ks
            result.order.append(key)
            for d in self.build(ks):
                if is_flux_kustomization(d):
                    queue.append(d)
                else:
                    result.objects.append(d)
        self._check_depends(result)
        return result

    def build(self, ks: Doc) -> list[Doc]:
        spec = ks.data.get("spec") or {}
        owner = f"{ks.namespace or 'flux-system'}/{ks.name}"
        path = spec.get("path")
        if not path:
            self.diags.error(f"Kustomization {owner}: spec.path is required", file=ks.file, line=ks.line, code="InvalidKustomization")
            return []
        d = (self.root / str(path)).resolve()
        if not d.is_dir():
            self.diags.error(
                f"Kustomization {owner}: spec.path {path} does not exist in the repository",
                file=ks.file, line=ks.positions.get(("spec", "path"), ks.line), code="PathNotFound",
            )
            return []
        docs = self.builder.build(d)
        for comp in spec.get("components") or []:
            docs = self.builder.apply_component(str(comp), d, docs, ks, ())
        wrapper: dict[str, Any] = {"patches": spec.get("patches") or []}
        if spec.get("targetNamespace"):
            wrapper["namespace"] = spec["targetNamespace"]
        if spec.get("namePrefix"):
            wrapper["namePrefix"] = spec["namePrefix"]
        if spec.get("nameSuffix"):
            wrapper["nameSuffix"] = spec["nameSuffix"]
        meta = spec.get("commonMetadata") or {}
        if meta.get("labels"):
            wrapper["commonLabels"] = meta["labels"]
        if meta.get("annotations"):
            wrapper["commonAnnotations"] = meta["annotations"]
        docs = self.builder._transform(Doc(wrapper, ks.file, ks.document, ks.line), d, docs)
        docs = self._decrypt(ks, owner, docs)
        post = spec.get("postBuild")
        if post is not None:
            variables = dict(self.user_vars)
            variables.update(self._source_vars(ks))
            variables.update({str(k): str(v) for k, v in (post.get("substitute") or {}).items()})
            missing: dict[str, str] = {}
            for x in docs:
                substitute_doc(x, variables, self.diags, owner, missing)
            for var, where in missing.items():
                self.diags.warning(
                    f"Kustomization {owner}: variable ${{{var}}} is not set (first used at {where}); it became an empty string",
                    file=ks.file, line=ks.line, code="VariableNotSet",
                )
        return docs

    def _check_depends(self, result: FluxResult) -> None:
        graph: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for key, ks in result.kustomizations.items():
            deps = []
            for dep in (ks.data.get("spec") or {}).get("dependsOn") or []:
                dkey = (dep.get("namespace") or key[0], dep.get("name"))
                deps.append(dkey)
                if dkey not in result.kustomizations:
                    self.diags.warning(
                        f"Kustomization {key[0]}/{key[1]} depends on {dkey[0]}/{dkey[1]}, which is not in the repository",
                        file=ks.file, line=ks.line, code="DependencyNotFound",
                    )
            graph[key] = deps
        state: dict[tuple[str, str], int] = {}

        def visit(n: tuple[str, str], path: list[tuple[str, str]]) -> None:
            state[n] = 1
            for m in graph.get(n, []):
                if m not in graph:
                    continue
                if state.get(m) == 1:
                    cycle = path[path.index(m):] + [m] if m in path else [n, m]
                    ks = result.kustomizations[n]
                    self.diags.error(
                        "dependsOn cycle: " + " -> ".join(f"{a}/{b}" for a, b in cycle),
                        file=ks.file, line=ks.line, code="DependencyCycle",
                    )
                elif state.get(m) is None:
                    visit(m, path + [m])
            state[n] = 2

        for n in graph:
            if state.get(n) is None:
                visit(n, [n])

