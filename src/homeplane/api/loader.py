"""Load manifests from files and folders into :class:`Obj` values plus diagnostics.

Per file: split into documents, apply Flux substitution to each document's text
(unless it opts out), parse with line numbers, validate served kinds against
their models. Any problem becomes a :class:`Diagnostic`; the offending document
is skipped and every other document still loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ValidationError

from homeplane.api import registry
from homeplane.api.diagnostics import Diagnostic, Diagnostics, Severity, SourceRef, processing
from homeplane.api.objects import Obj
from homeplane.api.substitute import SUBSTITUTE_ANNOTATION, SubstitutionError, offset_to_line, substitute
from homeplane.api.yamlio import Chunk, Document, YamlSyntaxError, parse_chunk, split_documents

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class LoadOptions:
    # None disables substitution; a mapping applies Flux post-build substitution.
    variables: Mapping[str, str] | None = None
    strict: bool = False
    # Namespace for namespaced objects that name none (as `kubectl apply -n`).
    default_namespace: str = "default"
    # Paths are reported relative to this folder when possible.
    relative_to: Path | None = None


@dataclass
class LoadResult:
    objects: list[Obj] = field(default_factory=list)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    files: list[str] = field(default_factory=list)


def find_manifest_files(root: Path) -> list[Path]:
    """YAML files under root, sorted, skipping hidden folders (.git, .github ...)."""
    if root.is_file():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(YAML_SUFFIXES) and not f.startswith("."):
                found.append(Path(dirpath) / f)
    return found


def load_paths(paths: Iterable[Path], options: LoadOptions | None = None) -> LoadResult:
    options = options or LoadOptions()
    result = LoadResult()
    for root in paths:
        root = Path(root)
        if not root.exists():
            result.diagnostics.error(f"path does not exist: {root}", file=str(root), code="PathNotFound")
            continue
        base = options.relative_to or (root if root.is_dir() else root.parent)
        for f in find_manifest_files(root):
            load_file(f, options, result, display=_display(f, base))
    return result


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def load_file(path: Path, options: LoadOptions, result: LoadResult, display: str | None = None) -> None:
    name = display or str(path)
    with processing(name):
        _load_file(path, name, options, result)


def _load_file(path: Path, name: str, options: LoadOptions, result: LoadResult) -> None:
    result.files.append(name)
    try:
        raw = path.read_bytes()
    except OSError as e:
        result.diagnostics.error(f"cannot read file: {e.strerror}", file=name, code="FileUnreadable")
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        result.diagnostics.error(f"file is not UTF-8 (byte {e.start})", file=name, code="FileNotUTF8")
        return
    load_text(text, name, options, result)


def load_text(text: str, filename: str, options: LoadOptions, result: LoadResult) -> None:
    for chunk in split_documents(text):
        _load_chunk(chunk, filename, options, result)


def _substitution_disabled(chunk: Chunk) -> bool:
    """True when the document carries the Flux opt-out annotation or label."""
    if SUBSTITUTE_ANNOTATION not in chunk.text:
        return False
    try:
        doc = parse_chunk(chunk)
    except YamlSyntaxError:
        return False
    data = doc.data if doc else None
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict):
        return False
    for section in ("annotations", "labels"):
        values = meta.get(section)
        if isinstance(values, dict) and values.get(SUBSTITUTE_ANNOTATION) == "disabled":
            return True
    return False


def _load_chunk(chunk: Chunk, filename: str, options: LoadOptions, result: LoadResult) -> None:
    diags = result.diagnostics
    where = {"file": filename, "document": chunk.index}
    if options.variables is not None and "${" in chunk.text and not _substitution_disabled(chunk):
        try:
            expansion = substitute(chunk.text, options.variables, strict=options.strict)
        except SubstitutionError as e:
            line = chunk.first_line + offset_to_line(chunk.text, e.offset) - 1
            snippet = chunk.text[e.offset : e.offset + 40].split("\n", 1)[0]
            diags.error(
                f"variable substitution failed: {e} in {snippet!r}; document skipped",
                line=line,
                code="SubstitutionFailed",
                **where,
            )
            return
        for var in dict.fromkeys(expansion.missing):
            pos = chunk.text.find("${" + var)
            line = chunk.first_line + offset_to_line(chunk.text, max(pos, 0)) - 1
            diags.warning(
                f"variable ${{{var}}} is not set; it was replaced by an empty string "
                f"(give it with --set {var}=... or --vars FILE)",
                line=line,
                code="VariableNotSet",
                **where,
            )
        chunk = Chunk(expansion.text, chunk.index, chunk.first_line)
    try:
        doc = parse_chunk(chunk)
    except YamlSyntaxError as e:
        diags.error(str(e), line=e.line, code=e.code, **where)
        return
    if doc is None:
        return
    for line, message in doc.warnings:
        diags.warning(message, line=line, code="DuplicateKey", **where)
    data = doc.data
    if not isinstance(data, dict):
        diags.error(
            f"document is a {type(data).__name__}, not a Kubernetes object", line=doc.line, code="NotAnObject", **where
        )
        return
    if data.get("kind") == "List" and isinstance(data.get("items"), list):
        for i, item in enumerate(data["items"]):
            sub = Document(item, doc.index, doc.line_of(("items", i)), _subpositions(doc, ("items", i)))
            _load_object(sub, filename, options, result)
        return
    _load_object(doc, filename, options, result)


def _subpositions(doc: Document, prefix: tuple) -> dict[tuple, int]:
    n = len(prefix)
    return {p[n:]: ln for p, ln in doc.positions.items() if p[:n] == prefix}


def add_object(
    data: dict[str, Any],
    filename: str,
    options: LoadOptions,
    result: LoadResult,
    document: int = 0,
    line: int | None = None,
    positions: dict[tuple, int] | None = None,
) -> None:
    """Validate one object (already substituted and assembled) and add it to the result."""
    _load_object(Document(data, document, line or 1, positions or {}), filename, options, result)


def _load_object(doc: Document, filename: str, options: LoadOptions, result: LoadResult) -> None:
    data: dict[str, Any] = doc.data
    diags = result.diagnostics
    where: dict[str, Any] = {"file": filename, "document": doc.index, "line": doc.line}
    api_version = data.get("apiVersion")
    kind = data.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str) or not api_version or not kind:
        missing = [k for k in ("apiVersion", "kind") if not isinstance(data.get(k), str) or not data.get(k)]
        if "apiVersion" not in data and "kind" not in data:
            # Other YAML that lives beside manifests (helmfile, app settings): not ours.
            diags.info("not a Kubernetes object (no apiVersion/kind); skipped", code="NotAnObject", **where)
        else:
            diags.error(
                f"not a Kubernetes object: missing or invalid {' and '.join(missing)}", code="NotAnObject", **where
            )
        return
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    name = meta.get("name")
    group, version = registry.split_api_version(api_version)
    if not isinstance(name, str) or not name:
        if kind in ("Kustomization", "Component") and group.startswith("kustomize.config.k8s.io"):
            name = ""  # kustomize build files carry no name
        else:
            diags.error("metadata.name is missing", kind=kind, field="metadata.name", code="MissingName", **where)
            return
    ns = meta.get("namespace")
    if registry.namespaced(group, kind):
        namespace = str(ns) if ns else options.default_namespace
    else:
        namespace = None
    where.update(kind=kind, namespace=namespace, name=name)
    source = SourceRef(filename, doc.index, doc.line)
    info = registry.lookup(group, kind)
    model = None
    if info is not None:
        if version not in info.versions:
            diags.warning(
                f"{kind} version {version!r} is not served (served: {', '.join(info.versions)}); object kept as not served",
                code="UnsupportedVersion",
                **where,
            )
        else:
            payload = dict(data)
            payload["metadata"] = {**meta, "name": name, "namespace": namespace} if namespace else {**meta, "name": name}
            try:
                model = info.model.model_validate(payload)
            except ValidationError as e:
                for err in e.errors():
                    loc = tuple(err["loc"])
                    diags.add(
                        Diagnostic(
                            Severity.ERROR,
                            _validation_message(err),
                            file=filename,
                            line=doc.line_of(loc),
                            document=doc.index,
                            kind=kind,
                            namespace=namespace,
                            name=name,
                            field=format_path(loc) or None,
                            code="InvalidField",
                        )
                    )
                return
            for path in unknown_fields(model):
                diags.add(
                    Diagnostic(
                        Severity.WARNING,
                        "unknown field (ignored)",
                        file=filename,
                        line=doc.line_of(path),
                        document=doc.index,
                        kind=kind,
                        namespace=namespace,
                        name=name,
                        field=format_path(path),
                        code="UnknownField",
                    )
                )
    result.objects.append(
        Obj(group, version, kind, namespace, name, data, source, model=model, positions=dict(doc.positions))
    )


def _validation_message(err: dict) -> str:
    msg = err.get("msg", "invalid value")
    if err.get("type") == "missing":
        return "required field is missing"
    value = err.get("input")
    if err.get("type") not in ("missing",) and isinstance(value, (str, int, float, bool)):
        return f"{msg} (got {value!r})"
    return msg


def format_path(path: Iterable[Any]) -> str:
    """``("spec", "listeners", 0, "port")`` -> ``spec.listeners[0].port``."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def unknown_fields(model: BaseModel, prefix: tuple = ()) -> list[tuple]:
    """Paths (by upstream field names) of fields that the models do not know."""
    found: list[tuple] = []
    extra = model.model_extra or {}
    for key in extra:
        found.append(prefix + (key,))
    for fname, finfo in type(model).model_fields.items():
        value = getattr(model, fname)
        alias = finfo.alias or fname
        if prefix == () and alias == "status":
            continue
        _walk_unknown(value, prefix + (alias,), found)
    return found


def _walk_unknown(value: Any, path: tuple, found: list[tuple]) -> None:
    if isinstance(value, BaseModel):
        found.extend(unknown_fields(value, path))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, BaseModel):
                found.extend(unknown_fields(item, path + (i,)))
