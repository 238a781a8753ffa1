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


TUNNEL_TARGET_SUFFIX = ".cfargotunnel.com"
TARGET_ANNOTATION = "external-dns.alpha.kubernetes.io/target"


def tunnel_names(objects: Iterable[Any]) -> set[str]:
    """Names the DNS records point at the tunnel: DNSEndpoints with a CNAME to
    ``<tunnel id>.cfargotunnel.com`` (the seed's ``external.<domain>``)."""
    names: set[str] = set()
    for o in objects:
        if o.kind != "DNSEndpoint":
            continue
        for ep in (o.raw.get("spec") or {}).get("endpoints") or []:
            if not isinstance(ep, dict) or str(ep.get("recordType", "")).upper() != "CNAME":
                continue
            if any(str(t).lower().rstrip(".").endswith(TUNNEL_TARGET_SUFFIX) for t in ep.get("targets") or []):
                names.add(str(ep.get("dnsName", "")).lower().rstrip("."))
    return names


def default_ingress(objects: Iterable[Any], gateways: Iterable[Any], cluster_domain: str = "cluster.local",
                    named: Iterable[str] = ()) -> tuple[Ingress, str] | None:
    """Without a cloudflared config: the hostnames of the routes on the Gateways whose DNS
    target is the tunnel (or the Gateways ``named`` NAMESPACE/NAME), each to its Gateway's
    HTTPS port (SNI as the client sent it), then 404 — what the seed's cloudflared config
    says by hand."""
    names = tunnel_names(objects)
    wanted = set(named)
    if not names and not wanted:
        return None
    rules: list[dict[str, Any]] = []
    chosen: list[str] = []
    for g in gateways:
        target = (g.annotations.get(TARGET_ANNOTATION) or g.infrastructure_annotations.get(TARGET_ANNOTATION) or "").lower().rstrip(".")
        if target not in names and f"{g.ref.namespace}/{g.ref.name}" not in wanted:
            continue
        chosen.append(f"{g.ref.namespace}/{g.ref.name}")
        for ls in g.listeners:
            if ls.protocol != "HTTPS" or not ls.ready:
                continue
            hosts = sorted({vh.hostname for vh in ls.vhosts if vh.hostname and vh.hostname != "*"} or
                           ({ls.hostname} if ls.hostname else set()))
            for h in hosts:
                rules.append({"hostname": h, "service": f"https://{g.ref.name}.{g.ref.namespace}.svc.{cluster_domain}:{ls.port}",
                              "originRequest": {"matchSNItoHost": True}})
    if not chosen:
        return None
    rules.append({"service": "http_status:404"})
    try:
        ing = parse_ingress({"ingress": rules})
    except IngressError:
        return None
    why = f"its DNS target {', '.join(sorted(names))} is the tunnel" if names else "--tunnel-gateway"
    return ing, f"the routes of Gateway {', '.join(chosen)} ({why})"
