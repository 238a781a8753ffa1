"""Load a Flux repository the way the cluster would see it (see the package docstring)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from homeplane.api.diagnostics import Diagnostics, processing
from homeplane.api.loader import LoadOptions, LoadResult, add_object, find_manifest_files
from homeplane.importer.charts import RENDERERS, route_like_values
from homeplane.importer.docs import Doc, is_flux_kustomization
from homeplane.importer.endpoints import endpoint_slices
from homeplane.importer.flux import FluxProcessor, is_secret
from homeplane.importer.helm import merge_values, parse_values
from homeplane.importer.kustomize import Builder
from homeplane.importer.sops import Decryptor

FLUX_MARKER = "kustomize.toolkit.fluxcd.io"
RENDERED_FROM = "homeplane.dev/rendered-from"


def is_flux_repo(path: Path) -> bool:
    """True when the tree holds Flux Kustomizations (then it is imported as a Flux repo)."""
    for f in find_manifest_files(path):
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if FLUX_MARKER in text and re.search(r"^kind:\s*Kustomization\s*$", text, re.M):
            return True
    return False


_PATH_LINE = re.compile(r"^\s*path:\s*[\"']?([^\s\"'#]+)", re.M)


def _find_root(path: Path, files: list[Path]) -> Path:
    """The repository root: where the Flux spec.paths resolve (nearest wins a tie; .git breaks ties)."""
    p = path.resolve()
    spec_paths: list[str] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if FLUX_MARKER in text:
            spec_paths += _PATH_LINE.findall(text)
    best, best_n = p, (-1, False)
    for cand in [p, *list(p.parents)[:4]]:
        n = (sum(1 for sp in spec_paths if (cand / sp).is_dir()), (cand / ".git").exists())
        if n > best_n:
            best, best_n = cand, n
    return best


def load_repo(path: Path, variables: dict[str, str], endpoints: Path | None = None, default_namespace: str = "default",
              decryptor: Decryptor | None = None) -> LoadResult:
    started = time.monotonic()
    result = LoadResult()
    diags = result.diagnostics
    files = find_manifest_files(path)
    root = _find_root(path, files)
    builder = Builder(root, diags)
    scanned: list[Doc] = []
    quiet = Diagnostics()  # problems in files no Kustomization uses are not reported
    builder.diags = builder.quiet = quiet
    for f in files:
        scanned += builder.read_file(f)
    builder.diags = diags
    for f in files:
        # a Flux Kustomization that does not parse would drop its app without a word
        try:
            if FLUX_MARKER in f.read_text(encoding="utf-8", errors="replace"):
                builder.report_problems(f)
        except OSError:
            builder.report_problems(f)
    flux_docs = [d for d in scanned if is_flux_kustomization(d)]
    paths = {(root / str((d.data.get("spec") or {}).get("path", ""))).resolve() for d in flux_docs}
    builder.owned = {p for p in paths if p != root.resolve()}
    roots = []
    for d in flux_docs:
        f = (root / d.file).resolve()
        if not any(p in f.parents for p in builder.owned):
            roots.append(d)
    if not roots:
        diags.error(f"no Flux Kustomization found under {path}", file=str(path), code="NoFluxRoot")
    result.files = [builder.rel(f) for f in files]
    if decryptor:  # sops runs are independent: decrypt the repo's encrypted Secrets side by side first
        decryptor.prefetch((d.data, *d.sops_source) for d in scanned if d.sops_source and is_secret(d))
    processor = FluxProcessor(root, builder, variables, diags, scanned, decryptor)
    flux = processor.run(roots)
    if processor.undecrypted:
        names = sorted({d.file for d in processor.undecrypted})
        diags.info(
            f"{len(names)} SOPS-encrypted file(s) left encrypted, no age key given (--age-key FILE or $SOPS_AGE_KEY_FILE); "
            f"their values are expected from --set/--vars: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}",
            code="NotDecrypted",
        )
    objects = flux.objects + list(flux.kustomizations.values())
    objects += _render_helm_releases(flux.objects, diags)
    if endpoints is not None:
        objects += endpoint_slices(endpoints, objects, diags)
    opts = LoadOptions(variables=None, default_namespace=default_namespace)
    seen: dict[tuple[str, str, str | None, str], str] = {}
    for d in objects:
        key = (d.api_version, d.kind, d.namespace, d.name)
        where = f"{d.file}:{d.line}"
        if key in seen:
            diags.warning(
                f"{d.kind} {d.namespace + '/' if d.namespace else ''}{d.name} is defined twice ({seen[key]} and {where}); the later one wins in a cluster",
                file=d.file, line=d.line, kind=d.kind, name=d.name, code="Duplicate",
            )
        seen[key] = where
        add_object(d.data, d.file, opts, result, d.document, d.line, d.positions)
    diags.info(
        f"Flux repository {root}: {len(flux.kustomizations)} Kustomizations, {len(objects)} objects in {time.monotonic() - started:.2f} s",
        code="FluxImport",
    )
    return result


def _chart_of(hr: Doc, by_kind: dict[str, dict[tuple[str | None, str], Doc]]) -> str | None:
    spec = hr.data.get("spec") or {}
    ref = spec.get("chartRef")
    if isinstance(ref, dict):
        src = by_kind.get(ref.get("kind", ""), {}).get((ref.get("namespace") or hr.namespace, ref.get("name")))
        if src is None:
            # the source is not in the manifests read: home-ops repos name an OCIRepository after its chart
            return str(ref.get("name")) if ref.get("kind") == "OCIRepository" and ref.get("name") else None
        url = str((src.data.get("spec") or {}).get("url", ""))
        return url.rstrip("/").rsplit("/", 1)[-1] or None
    chart = ((spec.get("chart") or {}).get("spec") or {}).get("chart")
    return str(chart) if chart else None


def _looks_like_app_template(values: Any) -> bool:
    controllers = values.get("controllers") if isinstance(values, dict) else None
    return isinstance(controllers, dict) and bool(controllers) and all(
        isinstance(c, dict) and isinstance(c.get("containers"), dict) for c in controllers.values()
    )


def _source_missing(hr: Doc, by_kind: dict[str, dict[tuple[str | None, str], Doc]]) -> bool:
    ref = (hr.data.get("spec") or {}).get("chartRef")
    if not isinstance(ref, dict):
        return False
    return by_kind.get(ref.get("kind", ""), {}).get((ref.get("namespace") or hr.namespace, ref.get("name"))) is None


def _render_helm_releases(objects: list[Doc], diags: Diagnostics) -> list[Doc]:
    by_kind: dict[str, dict[tuple[str | None, str], Doc]] = {}
    for d in objects:
        by_kind.setdefault(d.kind, {})[(d.namespace, d.name)] = d
    out: list[Doc] = []
    for hr in objects:
        if hr.kind != "HelmRelease":
            continue
        ns = hr.namespace or "default"
        spec = hr.data.get("spec") or {}
        release = spec.get("releaseName") or hr.name
        target_ns = spec.get("targetNamespace") or ns
        chart = _chart_of(hr, by_kind)
        if chart not in RENDERERS and _looks_like_app_template(spec.get("values")) and _source_missing(hr, by_kind):
            diags.info(
                f"HelmRelease {ns}/{hr.name}: its chart source is not in the repository and its values are "
                "app-template's (controllers with containers): rendered as app-template",
                file=hr.file, line=hr.line, kind="HelmRelease", namespace=ns, name=hr.name, code="ChartGuessed",
            )
            chart = "app-template"
        renderer = RENDERERS.get(chart or "")
        if renderer is None:
            diags.info(
                f"HelmRelease {ns}/{hr.name} (chart {chart or 'unknown'}) not rendered: only {', '.join(RENDERERS)} charts are",
                file=hr.file, line=hr.line, kind="HelmRelease", namespace=ns, name=hr.name, code="HelmNotRendered",
            )
            for where in route_like_values(spec.get("values") or {}):
                diags.warning(
                    f"HelmRelease {ns}/{hr.name}: values at {where} look like a route, but homeplane does not render "
                    f"chart {chart or 'unknown'}: that route is not served (write it as an HTTPRoute)",
                    file=hr.file, line=hr.positions.get(("spec", "values", *where.split(".")), hr.line),
                    kind="HelmRelease", namespace=ns, name=hr.name, code="ChartRouteNotRendered",
                )
            continue
        values: Any = {}
        for vf in spec.get("valuesFrom") or []:
            src = by_kind.get(vf.get("kind", ""), {}).get((ns, vf.get("name")))
            if src is None:
                if not vf.get("optional"):
                    diags.warning(
                        f"HelmRelease {ns}/{hr.name}: valuesFrom {vf.get('kind')} {vf.get('name')} not found in the repository",
                        file=hr.file, line=hr.line, code="ValuesFromMissing",
                    )
                continue
            raw = (src.data.get("data") or {}).get(vf.get("valuesKey") or "values.yaml")
            if raw is None and src.kind == "Secret":
                raw = (src.data.get("stringData") or {}).get(vf.get("valuesKey") or "values.yaml")
            try:
                parsed = parse_values(str(raw)) if raw is not None else None
            except Exception as e:
                diags.error(f"HelmRelease {ns}/{hr.name}: valuesFrom {vf.get('name')} is not YAML: {e}", file=hr.file, code="ValuesFromInvalid")
                continue
            if vf.get("targetPath") and parsed is not None:
                for key in reversed(str(vf["targetPath"]).split(".")):
                    parsed = {key: parsed}
            values = merge_values(values, parsed or {})
        values = merge_values(values, spec.get("values") or {})
        warned: list[str] = []
        with processing(hr.file):
            rendered = renderer(str(release), target_ns, values, warned.append)
        for obj in rendered:
            obj["metadata"].setdefault("annotations", {})[RENDERED_FROM] = f"HelmRelease/{ns}/{hr.name}"
            out.append(Doc(obj, hr.file, hr.document, hr.positions.get(("spec", "values"), hr.line)))
        for w in warned:
            diags.warning(f"HelmRelease {ns}/{hr.name}: {w}", file=hr.file, line=hr.line, code="HelmRender")
    return out
