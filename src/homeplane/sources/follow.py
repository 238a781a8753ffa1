"""``homeplane run URL``: follow a Git repository as Flux's source- and kustomize-controllers do.

Every ``interval`` (or at once on ``homeplane reconcile``) the source is fetched; a new revision
is loaded and applied as a whole. A revision that fails to load (YAML, schema, substitution
errors) is refused and the last good one keeps serving, as a Kustomization whose build fails
keeps what it applied before. Status in Flux's terms: the GitRepository's fetched revision and
Ready condition (``Succeeded`` / ``GitOperationFailed``), the Kustomization's applied revision
(``ReconciliationSucceeded`` / ``BuildFailed``), and ``gotk_reconcile_condition``. A failing fetch
is retried with backoff (the interval's tenth, doubling, up to the interval).

The repository's own sync declaration (a FluxInstance, the flux-instance chart's values, or the
``flux-system`` GitRepository and Kustomization; see :mod:`homeplane.sources.sync`) sets the
ref, path and interval wherever no flag did, read again from every revision as Flux does when it
reconciles its own sync objects from the repository.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from homeplane.sources.git import GitError, GitSource
from homeplane.sources.sync import SyncSpec, find_sync
from homeplane.tasks import cancel_and_wait

log = logging.getLogger("homeplane.git")


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def content_path(revision_dir: Path, path: str) -> Path:
    """The folder to serve inside a revision: ``--path``, else ``kubernetes`` when the repo has one."""
    if path:
        if ".." in Path(path).parts:
            raise GitError(f"path {path!r} leaves the repository")
        return revision_dir / path.strip("/")
    return revision_dir / "kubernetes" if (revision_dir / "kubernetes").is_dir() else revision_dir


class GitFollower:
    def __init__(self, runtime: Any, source: GitSource, path: str = "", interval: float = 60.0,
                 name: str = "flux-system", namespace: str = "flux-system", registry: CollectorRegistry | None = None,
                 pinned: frozenset[str] = frozenset({"ref", "path", "interval"})):
        self.rt = runtime
        self.pinned = pinned  # what flags set ("ref", "path", "interval"); the rest the repo may declare
        self.declared: SyncSpec | None = None
        self._hopped = False
        self.source = source
        self.path = path
        self.interval = interval
        self.name, self.namespace = name, namespace
        self.fetched: str | None = None
        self.applied: str | None = None
        self.served_dir: Path | None = None
        self.source_ready: dict[str, str] = {"type": "Ready", "status": "Unknown", "reason": "Progressing", "message": "not fetched yet"}
        self.ks_ready: dict[str, str] = {"type": "Ready", "status": "Unknown", "reason": "Progressing", "message": "not applied yet"}
        self.last_fetch: str | None = None
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.m_cond = Gauge("gotk_reconcile_condition", "The current condition status of a GitOps Toolkit resource",
                            ["kind", "name", "namespace", "type", "status"], registry=registry or CollectorRegistry())

    # --- the first revision, before serving ---------------------------------------------------

    def first(self) -> Path:
        """Fetch synchronously at start; the folder to serve (``run`` cannot start without one)."""
        revision, tree = self.source.fetch()
        if self._adopt(tree, revision):  # the repo follows another ref than the one fetched first
            revision, tree = self.source.fetch()
            self._adopt(tree, revision)
        self._fetched(revision)
        self.served_dir = tree
        self.applied = revision
        self.ks_ready = {"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": f"Applied revision: {revision}"}
        self._metrics()
        return content_path(tree, self.path)

    # --- the loop -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    def reconcile(self) -> None:
        """``homeplane reconcile`` / a Receiver webhook: fetch now."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            wait = self.interval
            try:
                await self.once()
            except Exception:  # a bug must not stop following the repository
                log.exception("git: reconcile failed")
            if self.failures:
                wait = min(self.interval, max(1.0, self.interval / 10) * 2 ** (self.failures - 1))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def once(self) -> None:
        protect = (self.served_dir,) if self.served_dir else ()
        try:
            try:
                revision, tree = await asyncio.to_thread(self.source.fetch, protect)
            except (OSError, ValueError) as e:  # anything else that goes wrong fetching is a failed fetch too
                raise GitError(f"{type(e).__name__}: {e}") from None
        except GitError as e:
            self.failures += 1
            self.source_ready = {"type": "Ready", "status": "False", "reason": "GitOperationFailed", "message": str(e)}
            log.warning("git: %s (still serving %s)", e, self.applied)
            self._metrics()
            return
        self.failures = 0
        self._fetched(revision)
        if self._adopt(tree, revision) and not self._hopped:
            self._hopped = True  # fetch the declared ref at once (once: two refs naming each other wait)
            self._wake.set()
            self._metrics()
            return
        self._hopped = False
        if revision == self.applied:
            self._metrics()
            return
        inputs = dataclasses.replace(self.rt.inputs, paths=(content_path(tree, self.path),) + tuple(self.rt.inputs.paths[1:]))
        ok = await self.rt.try_inputs(inputs, f"revision {revision}")
        if ok:
            self.applied, self.served_dir = revision, tree
            self.ks_ready = {"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": f"Applied revision: {revision}"}
            log.info("git: applied revision %s", revision)
        else:
            errors = (self.rt.rejected or {}).get("diagnostics") or []
            first = errors[0] if errors else {}
            where = f"{first.get('file', '')}:{first.get('line', '')}: " if first.get("file") else ""
            msg = f"revision {revision} refused (still serving {self.applied}): {where}{first.get('message', 'load errors')}"
            self.ks_ready = {"type": "Ready", "status": "False", "reason": "BuildFailed", "message": msg}
            log.error("git: %s", msg)
        self._metrics()

    def _adopt(self, tree: Path, revision: str) -> bool:
        """Take ref, path and interval from the revision's sync declaration where no flag set
        them; True when the declared ref is not the one just fetched."""
        try:
            spec = find_sync(tree)
        except Exception:  # a declaration that cannot be read changes nothing
            log.exception("git: reading the repository's sync declaration failed")
            return False
        if spec is not None and spec.problems and (self.declared is None or self.declared.problems != spec.problems):
            for problem in spec.problems:
                log.warning("git: %s", problem)
        self.declared = spec
        if spec is None:
            return False
        if spec.ref.branch and not any(getattr(self.source.ref, k) for k in ("branch", "tag", "semver", "commit", "name")) \
                and revision.startswith(f"{spec.ref.branch}@"):
            self.source.ref = spec.ref  # the remote's HEAD is the declared branch: nothing to fetch again
        if "path" not in self.pinned:
            self.path = spec.path
        if "interval" not in self.pinned and spec.interval:
            self.interval = spec.interval
        if "ref" not in self.pinned and spec.ref != self.source.ref:
            log.info("git: %s follows %s; fetching it", spec.origin, spec.ref)
            self.source.ref = spec.ref
            return True
        return False

    def _fetched(self, revision: str) -> None:
        self.fetched = revision
        self.last_fetch = _now()
        self.source_ready = {"type": "Ready", "status": "True", "reason": "Succeeded",
                             "message": f"stored artifact for revision '{revision}'"}

    def _metrics(self) -> None:
        self.m_cond.clear()
        for kind, cond in (("GitRepository", self.source_ready), ("Kustomization", self.ks_ready)):
            for st in ("True", "False", "Unknown"):
                self.m_cond.labels(kind, self.name, self.namespace, "Ready", st).set(1 if cond["status"] == st else 0)

    def status(self) -> dict[str, Any]:
        root = {"name": f"{self.namespace}/{self.name}", "path": self.path or "(kubernetes, else the root)",
                "lastAppliedRevision": self.applied, "lastAttemptedRevision": self.fetched, "conditions": [self.ks_ready]}
        return {
            "gitRepository": {"name": f"{self.namespace}/{self.name}", "url": self.source.safe_url, "ref": str(self.source.ref),
                              "interval": self.interval, "declaredBy": self.declared.origin if self.declared else None,
                              "declarationProblems": list(self.declared.problems) if self.declared else [],
                              "artifact": {"revision": self.fetched, "lastFetch": self.last_fetch},
                              "conditions": [self.source_ready]},
            "kustomization": root,
            "kustomizations": [root] + self._repo_kustomizations(),
        }

    def _repo_kustomizations(self) -> list[dict[str, Any]]:
        """The Flux Kustomizations of the revision served, each with its own Ready: one whose
        files failed in a refused revision is ``BuildFailed`` with that error, the others are at
        the revision applied."""
        current = getattr(self.rt, "current", None)
        if current is None:
            return []
        refused = (self.rt.rejected or {}).get("diagnostics") or [] if self.ks_ready["status"] == "False" else []
        return kustomization_status(current.load.objects, refused, self.applied, self.fetched,
                                    skip=frozenset({(self.namespace, self.name)}))


def kustomization_status(objects: list[Any], errors: list[dict[str, Any]], applied: str | None,
                         attempted: str | None, skip: frozenset[tuple[str, str]] = frozenset()) -> list[dict[str, Any]]:
    """Flux-style status of each Flux Kustomization among ``objects``. Each error (a diagnostic
    as JSON) belongs to one Kustomization: the one its message names, else the one written where
    it points, else the one with the deepest ``spec.path`` holding its file."""
    ks = [o for o in objects if o.kind == "Kustomization" and o.group == "kustomize.toolkit.fluxcd.io"]
    paths = {id(o): "/".join(x for x in str((o.raw.get("spec") or {}).get("path") or "").split("/") if x not in ("", "."))
             for o in ks}

    def owner(d: dict[str, Any]) -> Any:
        message, file = str(d.get("message", "")), str(d.get("file") or "")
        for o in ks:
            if message.startswith(f"Kustomization {o.namespace or 'flux-system'}/{o.name}:"):
                return o
        for o in ks:
            if file == o.source.file and d.get("line") == o.source.line:
                return o
        holders = [o for o in ks if paths[id(o)] and file.startswith(paths[id(o)] + "/")]
        return max(holders, key=lambda o: len(paths[id(o)]), default=None)

    owned: dict[int, list[dict[str, Any]]] = {}
    for d in errors:
        o = owner(d)
        if o is not None:
            owned.setdefault(id(o), []).append(d)
    out = []
    for o in ks:
        if (o.namespace or "flux-system", o.name) in skip:
            continue
        spec = o.raw.get("spec") or {}
        mine = owned.get(id(o))
        if mine:
            d = mine[0]
            where = f"{d['file']}:{d.get('line') or ''}".rstrip(":")
            cond = {"type": "Ready", "status": "False", "reason": "BuildFailed",
                    "message": (f"revision {attempted}: " if attempted else "") + f"{where}: {d.get('message', '')}"}
        elif applied:
            cond = {"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": f"Applied revision: {applied}"}
        else:
            cond = {"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": "builds without errors"}
        out.append({"name": f"{o.namespace or 'flux-system'}/{o.name}", "path": paths[id(o)], "suspended": bool(spec.get("suspend")),
                    "lastAppliedRevision": applied, "conditions": [cond]})
    return sorted(out, key=lambda k: k["name"])


