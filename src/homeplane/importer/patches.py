"""Patches as kustomize applies them: strategic merge (simplified) and JSON 6902, with targets.

The strategic merge here merges maps recursively, replaces lists, honours
``$patch: delete`` and ``$patch: replace``, and merges the lists Kubernetes merges
by key for the kinds in home-ops repos (containers, env, ports by name). That
is what patches in such repos rely on.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from homeplane.importer.docs import Doc

_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "ports": "name", "volumes": "name", "volumeMounts": "mountPath"}


class PatchError(ValueError):
    pass


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(patch, dict):
        if patch.get("$patch") == "delete":
            return None
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        if not isinstance(base, dict):
            return {k: v for k, v in patch.items() if k != "$patch"}
        out = dict(base)
        for k, v in patch.items():
            if k == "$patch":
                continue
            if v is None:
                out.pop(k, None)
                continue
            merged = strategic_merge(out.get(k), v, k)
            if merged is None and isinstance(v, dict) and v.get("$patch") == "delete":
                out.pop(k, None)
            else:
                out[k] = merged
        return out
    if isinstance(patch, list) and isinstance(base, list) and key in _MERGE_KEYS:
        mk = _MERGE_KEYS[key]
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            if isinstance(item, dict) and mk in item:
                for i, existing in enumerate(out):
                    if isinstance(existing, dict) and existing.get(mk) == item[mk]:
                        merged = strategic_merge(existing, item)
                        if merged is None:
                            out.pop(i)
                        else:
                            out[i] = merged
                        break
                else:
                    if item.get("$patch") != "delete":
                        out.append(item)
            else:
                out.append(item)
        return out
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> tuple[Any, str]:
    node = doc
    for p in parts[:-1]:
        if isinstance(node, list):
            node = node[int(p)]
        elif isinstance(node, dict):
            if p not in node:
                raise PatchError(f"path segment {p!r} not found")
            node = node[p]
        else:
            raise PatchError(f"cannot descend into {type(node).__name__} at {p!r}")
    return node, parts[-1]


def json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 operations on a document (a copy is returned)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        parts = _pointer(str(op.get("path", "")))
        if kind in ("add", "replace"):
            if not parts:
                doc = copy.deepcopy(op.get("value"))
                continue
            parent, last = _walk(doc, parts)
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(idx, copy.deepcopy(op.get("value")))
                else:
                    parent[idx] = copy.deepcopy(op.get("value"))
            else:
                if kind == "replace" and last not in parent:
                    raise PatchError(f"replace: {op.get('path')} does not exist")
                parent[last] = copy.deepcopy(op.get("value"))
        elif kind == "remove":
            parent, last = _walk(doc, parts)
            try:
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
            except (KeyError, IndexError):
                raise PatchError(f"remove: {op.get('path')} does not exist") from None
        elif kind in ("copy", "move"):
            src_parent, src_last = _walk(doc, _pointer(str(op.get("from", ""))))
            value = src_parent[int(src_last)] if isinstance(src_parent, list) else src_parent[src_last]
            if kind == "move":
                if isinstance(src_parent, list):
                    src_parent.pop(int(src_last))
                else:
                    del src_parent[src_last]
            doc = json6902(doc, [{"op": "add", "path": op.get("path"), "value": value}])
        elif kind == "test":
            parent, last = _walk(doc, parts)
            got = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if got != op.get("value"):
                raise PatchError(f"test failed at {op.get('path')}")
        else:
            raise PatchError(f"unknown JSON patch op {kind!r}")
    return doc


def target_matches(target: dict[str, Any] | None, d: Doc) -> bool:
    """kustomize patch target selection: group/version/kind/name/namespace (regex) and selectors."""
    if not target:
        return True
    group, _, version = d.api_version.rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": d.kind,
        "name": d.name,
        "namespace": d.namespace or "",
    }
    for field_name, actual in checks.items():
        want = target.get(field_name)
        if want is None:
            continue
        if not re.fullmatch(str(want), actual):
            return False
    for sel_field, meta_field in (("labelSelector", "labels"), ("annotationSelector", "annotations")):
        sel = target.get(sel_field)
        if sel:
            values = d.meta.get(meta_field) or {}
            for term in str(sel).split(","):
                term = term.strip()
                if "!=" in term:
                    k, v = term.split("!=", 1)
                    if values.get(k.strip()) == v.strip():
                        return False
                elif "=" in term:
                    k, v = term.split("=", 1)
                    if values.get(k.strip().rstrip("=")) != v.strip():
                        return False
                elif term.startswith("!"):
                    if term[1:] in values:
                        return False
                elif term and term not in values:
                    return False
    return True
