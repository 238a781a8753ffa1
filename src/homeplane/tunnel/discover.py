"""Where a repo keeps its cloudflared config: found in the manifests, so it works unchanged.

Two shapes are common in home-ops repos: a ConfigMap holding ``config.yaml``, and an
app-template HelmRelease running cloudflared with the config in ``values.configMaps.*.data``
(rendered by the chart with ``tpl``, so ``{{ .Release.Namespace }}`` is filled in here).
A data value counts when it parses as a cloudflared config (an ``ingress:`` list of rules
with ``service``). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from homeplane.importer.helm import TemplateError, render_tpl
from homeplane.tunnel.ingress import Ingress, IngressError, looks_like_cloudflared, parse_ingress


@dataclass(frozen=True)
class Found:
    origin: str  # e.g. "HelmRelease network/cloudflare-tunnel values.configMaps.config.data.config.yaml (file.yaml)"
    ingress: Ingress | None
    error: str | None = None


def _parse(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _candidates(data: Any) -> Iterable[tuple[str, str]]:
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, str) and "ingress" in v:
                yield str(k), v


def _found(origin: str, text: str) -> Found | None:
    doc = _parse(text)
    if not looks_like_cloudflared(doc):
        return None
    try:
        return Found(origin, parse_ingress(doc))
    except IngressError as e:
        return Found(origin, None, str(e))


def find_cloudflared(objects: Iterable[Any]) -> list[Found]:
    """Every cloudflared ingress config in the objects (``api.objects.Obj``)."""
    out: list[Found] = []
    for o in objects:
        where = f"{o.namespace + '/' if o.namespace else ''}{o.name}"
        src = getattr(o, "source", None)
        file = f" ({src.file})" if src is not None and getattr(src, "file", None) else ""
        if o.kind == "ConfigMap":
            for key, text in _candidates(o.raw.get("data")):
                f = _found(f"ConfigMap {where} data.{key}{file}", text)
                if f is not None:
                    out.append(f)
        elif o.kind == "HelmRelease":
            values = (o.raw.get("spec") or {}).get("values") or {}
            cms = values.get("configMaps") if isinstance(values, dict) else None
            if not isinstance(cms, dict):
                continue
            for ident, cm in cms.items():
                if not isinstance(cm, dict) or cm.get("enabled", True) is False:
                    continue
                for key, text in _candidates(cm.get("data")):
                    try:
                        text = render_tpl(text, o.name, o.namespace or "default", values)
                    except TemplateError as e:
                        out.append(Found(f"HelmRelease {where} values.configMaps.{ident}.data.{key}{file}", None, str(e)))
                        continue
                    f = _found(f"HelmRelease {where} values.configMaps.{ident}.data.{key}{file}", text)
                    if f is not None:
                        out.append(f)
    return out
