"""HelmRelease values (Helm's merge rules) and the small part of Helm ``tpl`` that
app-template values use: ``{{ .Release.Name }}``, ``{{ .Release.Namespace }}``,
``{{ .Chart.Name }}`` and ``{{ .Values.a.b }}``, with optional ``| quote``/``| lower``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from homeplane.api.yamlio import load

_TEMPLATE = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


class TemplateError(ValueError):
    pass


def merge_values(base: Any, override: Any) -> Any:
    """Helm's coalescing: maps merge recursively, anything else is replaced, null deletes."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge_values(out.get(k), v)
        return out
    return copy.deepcopy(override)


def parse_values(text: str) -> Any:
    return load(text)


def render_tpl(value: Any, release: str, namespace: str, values: dict[str, Any], chart: str = "app-template") -> Any:
    if not isinstance(value, str) or "{{" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1)
        parts = [p.strip() for p in expr.split("|")]
        head = parts[0]
        if head == ".Release.Name":
            out: Any = release
        elif head == ".Release.Namespace":
            out = namespace
        elif head == ".Chart.Name":
            out = chart
        elif head.startswith(".Values."):
            out = values
            for key in head[len(".Values.") :].split("."):
                if not isinstance(out, dict) or key not in out:
                    raise TemplateError(f"{{{{ {expr} }}}}: no value at {head}")
                out = out[key]
        else:
            raise TemplateError(f"unsupported template expression {{{{ {expr} }}}}")
        for f in parts[1:]:
            if f == "quote":
                out = f'"{out}"'
            elif f == "lower":
                out = str(out).lower()
            elif f == "upper":
                out = str(out).upper()
            else:
                raise TemplateError(f"unsupported template function {f!r}")
        return str(out)

    return _TEMPLATE.sub(sub, value)
