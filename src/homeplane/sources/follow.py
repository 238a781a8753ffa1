"""``homeplane run URL``: follow a Git repository as Flux's source- and kustomize-controllers do.

Every ``interval`` (or at once on ``homeplane reconcile``) the source is fetched; a new revision
is loaded and applied as a whole. A revision that fails to load (YAML, schema, substitution
errors) is refused and the last good one keeps serving, as a Kustomization whose build fails
keeps what it applied before. Status in Flux's terms: the GitRepository's fetched revision and
Ready condition (``Succeeded`` / ``GitOperationFailed``), the Kustomization's applied revision
(``ReconciliationSucceeded`` / ``BuildFailed``), and ``gotk_reconcile_condition``. A failing fetch
is retried with backoff (the interval's tenth, doubling, up to the interval).
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
from homeplane.tasks import cancel_and_wait

log = logging.getLogger("homeplane.git")


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def content_path(revision_dir: Path, path: str) -> Path:
    """The folder to serve inside a revision: ``--path``, else ``kubernetes`` when the repo has one."""
    if path:
        return revision_dir / path.strip("/")
    return revision_dir / "kubernetes" if (revision_dir / "kubernetes").is_dir() else revision_dir


class GitFollower:
    def __init__(self, runtime: Any, source: GitSource, path: str = "", interval: float = 60.0,
                 name: str = "flux-system", namespace: str = "flux-system", registry: CollectorRegistry | None = None):
        self.rt = runtime
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
        return {
            "gitRepository": {"name": f"{self.namespace}/{self.name}", "url": self.source.safe_url, "ref": str(self.source.ref),
                              "interval": self.interval, "artifact": {"revision": self.fetched, "lastFetch": self.last_fetch},
                              "conditions": [self.source_ready]},
            "kustomization": {"name": f"{self.namespace}/{self.name}", "path": self.path or "(kubernetes, else the root)",
                              "lastAppliedRevision": self.applied, "lastAttemptedRevision": self.fetched,
                              "conditions": [self.ks_ready]},
        }


