"""The shapes of kustomize and Flux Kustomization fields, checked before a build reads them.

A field of the wrong type (``resources: true``, ``patches: {}``) is one error naming the file,
line and field, and is left out - the build goes on with the rest, as every other problem in a
repo is reported without stopping the import.
"""

from __future__ import annotations

from typing import Any, Callable

from homeplane.api.diagnostics import Diagnostics
from homeplane.importer.docs import Doc

Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def _str_or_dict(v: Any) -> bool:
    return isinstance(v, (str, dict))


# field -> (what it must be, a check for each item (lists) or for the value)
KUSTOMIZE: dict[str, tuple[str, Check]] = {
    "resources": ("list", _is_scalar), "bases": ("list", _is_scalar), "components": ("list", _is_scalar),
    "crds": ("list", _is_scalar), "patchesStrategicMerge": ("list", _str_or_dict),
    "patches": ("list", _is_dict), "patchesJson6902": ("list", _is_dict), "configMapGenerator": ("list", _is_dict),
    "secretGenerator": ("list", _is_dict), "replacements": ("list", _is_dict), "images": ("list", _is_dict),
    "helmCharts": ("list", _is_dict), "labels": ("list", _is_dict), "replicas": ("list", _is_dict),
    "commonLabels": ("map", _is_scalar), "commonAnnotations": ("map", _is_scalar), "generatorOptions": ("map", lambda v: True),
    "namespace": ("string", _is_str), "namePrefix": ("string", _is_str), "nameSuffix": ("string", _is_str),
}
FLUX_SPEC: dict[str, tuple[str, Check]] = {
    "path": ("string", _is_str), "targetNamespace": ("string", _is_str), "namePrefix": ("string", _is_str),
    "nameSuffix": ("string", _is_str), "components": ("list", _is_scalar), "patches": ("list", _is_dict),
    "dependsOn": ("list", _is_dict), "postBuild": ("map", lambda v: True), "commonMetadata": ("map", lambda v: True),
    "decryption": ("map", lambda v: True), "sourceRef": ("map", lambda v: True),
}
POST_BUILD: dict[str, tuple[str, Check]] = {"substitute": ("map", _is_scalar), "substituteFrom": ("list", _is_dict)}
PATCH: dict[str, tuple[str, Check]] = {"patch": ("string or map", lambda v: True), "path": ("string", _is_str), "target": ("map", lambda v: True)}
GENERATOR: dict[str, tuple[str, Check]] = {
    "name": ("string", _is_scalar), "literals": ("list", _is_scalar), "files": ("list", _is_scalar), "envs": ("list", _is_scalar),
    "options": ("map", lambda v: True), "behavior": ("string", _is_str), "type": ("string", _is_str),
}


def conform(data: dict[str, Any], schema: dict[str, tuple[str, Check]], doc: Doc, diags: Diagnostics, prefix: str = "") -> dict[str, Any]:
    """A copy of ``data`` without the fields (or list items) of the wrong shape, each reported."""
    out = dict(data)
    for key, (shape, item_ok) in schema.items():
        if key not in data or data[key] is None:
            continue
        value = data[key]
        where = prefix + key
        if shape == "list":
            if not isinstance(value, list):
                _report(diags, doc, where, f"{where} must be a list (got {type(value).__name__}); ignored")
                del out[key]
                continue
            kept = [v for v in value if item_ok(v)]
            if len(kept) != len(value):
                _report(diags, doc, where, f"{where}: items of the wrong type ignored")
            out[key] = kept
        elif shape == "map":
            if not isinstance(value, dict) or not all(item_ok(v) for v in value.values()):
                _report(diags, doc, where, f"{where} must be a map of {'values' if item_ok is _is_scalar else 'settings'}; ignored")
                del out[key]
        elif shape == "string" and not item_ok(value):
            _report(diags, doc, where, f"{where} must be a string (got {type(value).__name__}); ignored")
            del out[key]
    return out


def _report(diags: Diagnostics, doc: Doc, field: str, message: str) -> None:
    path = tuple(int(p) if p.isdigit() else p for p in field.replace("]", "").replace("[", ".").split("."))
    if any(d.file == doc.file and d.field == field and d.message == message for d in diags):
        return  # a component used by many apps is read many times: said once
    diags.error(
        message, file=doc.file, line=doc.positions.get(path, doc.line), kind=doc.kind, name=doc.name or None,
        field=field, code="InvalidField",
    )


def conform_kustomization(doc: Doc, diags: Diagnostics) -> Doc:
    """A kustomization.yaml (or Component) with its fields checked, nested ones too."""
    data = conform(doc.data, KUSTOMIZE, doc, diags)
    for key in ("patches", "patchesJson6902"):
        if data.get(key):
            data[key] = [conform(p, PATCH, doc, diags, f"{key}[{i}].") for i, p in enumerate(data[key])]
    for key in ("configMapGenerator", "secretGenerator"):
        if data.get(key):
            data[key] = [conform(g, GENERATOR, doc, diags, f"{key}[{i}].") for i, g in enumerate(data[key])]
    c = doc.copy()
    c.data = data
    return c


def conform_flux(doc: Doc, diags: Diagnostics) -> Doc:
    """A Flux Kustomization with its spec checked."""
    spec = doc.data.get("spec")
    if not isinstance(spec, dict):
        if spec is not None:
            _report(diags, doc, "spec", "spec must be a map; ignored")
        spec = {}
    spec = conform(spec, FLUX_SPEC, doc, diags, "spec.")
    if spec.get("postBuild"):
        spec["postBuild"] = conform(spec["postBuild"], POST_BUILD, doc, diags, "spec.postBuild.")
    if spec.get("patches"):
        spec["patches"] = [conform(p, PATCH, doc, diags, f"spec.patches[{i}].") for i, p in enumerate(spec["patches"])]
    c = doc.copy()
    c.data = {**doc.data, "spec": spec}
    return c
