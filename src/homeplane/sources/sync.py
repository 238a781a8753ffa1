"""What a repository says Flux follows: its own sync declaration.

A home-ops repo names the source Flux syncs from in one of three ways, found here in this
order of preference:

- a ``FluxInstance`` (flux-operator, ``fluxcd.controlplane.io/v1``) with ``spec.sync``
  (``kind: GitRepository``, ``url``, ``ref`` such as ``refs/heads/main``, ``path``, ``interval``);
- the ``flux-instance`` chart's HelmRelease, whose ``values.instance.sync`` becomes that object;
- a classic ``flux bootstrap`` tree: the ``GitRepository`` and ``Kustomization`` named
  ``flux-system`` (``spec.url``, ``spec.ref``, ``spec.interval``; the Kustomization's ``spec.path``).

``homeplane run URL`` takes ref, path and interval from it where no flag says otherwise, and
``homeplane run ./checkout --follow`` takes the URL too, so a clone of the repository is all a
user needs to hand over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from homeplane.api.units import parse_duration
from homeplane.api.yamlio import YamlSyntaxError, parse_chunk, split_documents
from homeplane.sources.git import GitError, GitRef

log = logging.getLogger("homeplane.git")

_MARKERS = ("FluxInstance", "GitRepository", "instance:")
_SKIP_DIRS = {".git", "node_modules", ".venv"}
_MAX_FILE = 1 << 20


@dataclass(frozen=True)
class SyncSpec:
    url: str
    ref: GitRef
    path: str | None  # None (before checked()): it leaves the repository
    interval: float | None
    name: str
    namespace: str
    origin: str  # "kind namespace/name (file:line)"
    # what of it cannot be used (a ref that is not one, a path outside the repo, an interval
    # that is not positive): those parts are left to the flags and defaults
    problems: tuple[str, ...] = field(default=())

    def checked(self) -> SyncSpec:
        """Itself with its unusable parts dropped and named in ``problems``."""
        problems = list(self.problems)
        ref, path, interval = self.ref, self.path, self.interval
        try:
            ref.checked()
        except GitError as e:
            problems.append(f"{self.origin}: {e}")
            ref = GitRef()
        if path is None:
            problems.append(f"{self.origin}: the sync path leaves the repository")
            path = ""
        if interval is not None and interval < MIN_INTERVAL:
            problems.append(f"{self.origin}: interval {interval:g}s is below {MIN_INTERVAL:g}s")
            interval = None
        return SyncSpec(self.url, ref, path, interval, self.name, self.namespace, self.origin, tuple(problems))


def _interval(text: Any) -> float | None:
    try:
        return parse_duration(str(text)) if text else None
    except ValueError:
        return None


MIN_INTERVAL = 1.0  # a declared interval below this would fetch in a loop


def _clean_path(p: Any) -> Any:
    """A sync path as a folder inside the repo: ``./kubernetes/flux`` -> ``kubernetes/flux``; the
    root is ``""``; None when it climbs out of the repository."""
    parts = [x for x in str(p or "").split("/") if x not in ("", ".")]
    return None if ".." in parts else "/".join(parts)


def ref_from_fluxinstance(ref: str) -> GitRef:
    """flux-operator's ``sync.ref``: ``refs/heads/X``, ``refs/tags/X``, any ``refs/…``; a bare name is a branch."""
    if ref.startswith("refs/heads/"):
        return GitRef(branch=ref[len("refs/heads/"):])
    if ref.startswith("refs/tags/"):
        return GitRef(tag=ref[len("refs/tags/"):])
    if ref.startswith("refs/"):
        return GitRef(name=ref)
    return GitRef(branch=ref)


def ref_from_gitrepository(spec_ref: Any) -> GitRef:
    """``GitRepository.spec.ref`` with Flux's precedence: commit, name, semver, tag, branch."""
    if not isinstance(spec_ref, dict):
        return GitRef()
    for k in ("commit", "name", "semver", "tag", "branch"):
        if spec_ref.get(k):
            return GitRef(**{k: str(spec_ref[k])})
    return GitRef()


def _documents(root: Path) -> Iterator[tuple[dict[str, Any], str, int]]:
    for f in sorted(root.rglob("*")):
        if f.suffix not in (".yaml", ".yml") or not f.is_file() or _SKIP_DIRS & set(f.relative_to(root).parts):
            continue
        try:
            if f.stat().st_size > _MAX_FILE:
                continue
            text = f.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            continue
        if not any(m in text for m in _MARKERS):
            continue
        for chunk in split_documents(text):
            try:
                doc = parse_chunk(chunk)
            except YamlSyntaxError:
                continue
            if doc is not None and isinstance(doc.data, dict):
                yield doc.data, str(f.relative_to(root)), doc.line


def _meta(d: dict[str, Any]) -> tuple[str, str]:
    m = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
    return str(m.get("name", "")), str(m.get("namespace") or "flux-system")


def _from_instance_sync(sync: Any, origin: str, name: str, namespace: str) -> SyncSpec | None:
    if not isinstance(sync, dict) or sync.get("kind", "GitRepository") != "GitRepository" or not sync.get("url"):
        return None
    return SyncSpec(url=str(sync["url"]), ref=ref_from_fluxinstance(str(sync.get("ref") or "")),
                    path=_clean_path(sync.get("path")), interval=_interval(sync.get("interval")),
                    name=str(sync.get("name") or name or "flux-system"), namespace=namespace, origin=origin)


def find_sync(root: Path) -> SyncSpec | None:
    """The repository's sync declaration, searched for in every YAML file under ``root``, with
    its unusable parts dropped (see :meth:`SyncSpec.checked`)."""
    found = _find(root)
    return found.checked() if found is not None else None


def _find(root: Path) -> SyncSpec | None:
    instances: list[SyncSpec] = []
    charts: list[SyncSpec] = []
    gitrepos: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    kustomizations: dict[tuple[str, str], dict[str, Any]] = {}
    for data, file, line in _documents(root):
        kind = data.get("kind")
        name, ns = _meta(data)
        spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
        where = f"{file}:{line}"
        if kind == "FluxInstance":
            found = _from_instance_sync(spec.get("sync"), f"FluxInstance {ns}/{name} ({where})", "flux-system", ns)
            if found:
                instances.append(found)
        elif kind == "HelmRelease":
            values = spec.get("values") if isinstance(spec.get("values"), dict) else {}
            inst = values.get("instance") if isinstance(values.get("instance"), dict) else {}
            found = _from_instance_sync(inst.get("sync"), f"HelmRelease {ns}/{name} values.instance.sync ({where})",
                                        "flux-system", "flux-system")
            if found:
                charts.append(found)
        elif kind == "GitRepository" and str(data.get("apiVersion", "")).startswith("source.toolkit.fluxcd.io/"):
            gitrepos[(ns, name)] = (data, where)
        elif kind == "Kustomization" and str(data.get("apiVersion", "")).startswith("kustomize.toolkit.fluxcd.io/"):
            kustomizations[(ns, name)] = data
    if instances or charts:
        chosen = (instances or charts)[0]
        others = [s.origin for s in instances + charts if s is not chosen]
        if others:  # several: the first in path order, said
            return SyncSpec(chosen.url, chosen.ref, chosen.path, chosen.interval, chosen.name, chosen.namespace,
                            chosen.origin, (f"several sync declarations; using {chosen.origin}, not {', '.join(others)}",))
        return chosen
    repo = gitrepos.get(("flux-system", "flux-system"))
    if repo is None or not isinstance(repo[0].get("spec"), dict) or not repo[0]["spec"].get("url"):
        return None
    data, where = repo
    spec = data["spec"]
    ks_spec = (kustomizations.get(("flux-system", "flux-system")) or {}).get("spec") or {}
    path = _clean_path(ks_spec.get("path") if isinstance(ks_spec, dict) else "")
    return SyncSpec(url=str(spec["url"]), ref=ref_from_gitrepository(spec.get("ref")), path=path,
                    interval=_interval(spec.get("interval")), name="flux-system",
                    namespace="flux-system", origin=f"GitRepository flux-system/flux-system ({where})")
