"""``homeplane run``: load, translate, publish; watch the manifests; serve the admin endpoint.

Reload policy: a change whose manifests fail to *load* (YAML syntax, schema,
substitution errors) is rejected as a whole and the last good Snapshot keeps
serving; the rejection is logged and shown under ``runtime.rejected`` in
``/status``. Problems found by translation (a route not accepted, a backend
missing) are part of the new configuration, exactly as a Kubernetes controller
would apply them, and show up in status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from homeplane.observe.admin import AdminServer
from homeplane.observe.systemd import notify
from homeplane.pipeline import Inputs, Result, run_pipeline
from homeplane.store import StateStore
from homeplane.translate.snapshot import Snapshot

log = logging.getLogger("homeplane")

Subscriber = Callable[[Snapshot], "Awaitable[None] | None"]

_VERSION_KEY = "runtime/snapshot-version"
_CLUSTER_IP_PREFIX = "ipam/cluster-ip/"
_LB_PREFIX = "ipam/lb/"
ALLOCATION_ATTEMPTS = 5  # compare-and-swap rounds against other nodes' allocations per reload
_BINDING_PREFIX = "gateway-address/"  # loopback addresses Gateways were given (ipam/binding.py)
_TRANSITIONS_KEY = "runtime/condition-transitions"


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Runtime:
    inputs: Inputs
    store: StateStore
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    debounce_ms: int = 300
    watch_files: bool = True  # off when the manifests come from a followed Git repository
    current: Result | None = None
    rejected: dict[str, Any] | None = None
    version: int = 0
    subscribers: list[Subscriber] = field(default_factory=list)
    status_extras: dict[str, Callable[[], Any]] = field(default_factory=dict)
    status_patches: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)  # runtime facts over translation's status
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _transitions: dict[str, list[str]] = field(default_factory=dict)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.published = 0  # the version the data planes were last given
        self.registry = CollectorRegistry()
        self.m_version = Gauge("homeplane_snapshot_version", "Version of the Snapshot being served", registry=self.registry)
        self.m_reloads = Counter(
            "homeplane_reloads", "Configuration reloads by result", ["result"], registry=self.registry
        )
        self.m_diags = Gauge(
            "homeplane_diagnostics", "Problems in the served configuration", ["severity"], registry=self.registry
        )
        self.m_objects = Gauge("homeplane_objects", "Loaded objects by kind", ["kind", "served"], registry=self.registry)
        entry = self.store.get(_VERSION_KEY)
        self.version = int(entry.value) if entry else 0
        t = self.store.get(_TRANSITIONS_KEY)
        if t:
            try:
                self._transitions = json.loads(t.value)
            except ValueError:
                self._transitions = {}
        self.admin = AdminServer(self.admin_host, self.admin_port, check_host=True)
        self.admin.route("/healthz", lambda _: (200, "text/plain", b"ok\n"))
        self.admin.route("/readyz", self._readyz)
        self.admin.route("/status", self._status)
        self.admin.route("/metrics", self._metrics)

    # --- publishing -------------------------------------------------------------

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    async def _publish(self, snapshot: Snapshot) -> None:
        for fn in self.subscribers:
            try:
                res = fn(snapshot)
                if asyncio.iscoroutine(res):
                    await res
            except Exception:  # one subscriber's bug must not keep the others (or the watcher) from the new config
                log.exception("applying snapshot version %d in %s failed", snapshot.version, getattr(fn, "__qualname__", fn))

    def _stamp_transitions(self, report: dict[str, Any]) -> None:
        """Give each condition a lastTransitionTime that only moves when the condition changes."""
        now = _now_rfc3339()
        seen: dict[str, list[str]] = {}

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                if "conditions" in node and isinstance(node["conditions"], list):
                    for c in node["conditions"]:
                        key = f"{path}/{c.get('type')}"
                        sig = [c.get("status", ""), c.get("reason", "")]
                        old = self._transitions.get(key)
                        ts = old[2] if old and old[:2] == sig else now
                        c["lastTransitionTime"] = ts
                        seen[key] = sig + [ts]
                for k, v in node.items():
                    if k != "conditions":
                        walk(v, f"{path}/{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    name = v.get("name") if isinstance(v, dict) else None
                    walk(v, f"{path}/{name if name is not None else i}")

        for section in ("gateways", "routes", "policies"):
            walk(report.get(section, []), section)
        self._transitions = seen
        self.store.put(_TRANSITIONS_KEY, json.dumps(seen).encode())

    def _persist_cluster_ips(self, result: Result, seen: dict[str, int]) -> bool:
        """The address controllers' state: every ClusterIP, LB IP and loopback binding is kept, so
        restarts and reorders never move one. Written by compare-and-swap against what the
        allocation was computed from (``seen``: key -> mod_revision): False, and nothing written,
        when another node changed any of it meanwhile (a shared store)."""
        from homeplane.store import Txn

        current = {e.key: e for e in self.store.list(_CLUSTER_IP_PREFIX)}
        current.update({e.key: e for e in self.store.list(_LB_PREFIX)})
        wanted = {f"{_CLUSTER_IP_PREFIX}{ns}/{name}": ip.encode() for (ns, name), ip in result.cluster_ips.items()}
        wanted.update({f"{_LB_PREFIX}{ns}/{name}": ",".join(ips).encode() for (ns, name), ips in result.lb_ips.items()})
        puts = [(k, v) for k, v in wanted.items() if k not in current or current[k].value != v]
        deletes = [k for k in current if k not in wanted]
        # loopback bindings are kept even when a Gateway goes away for a while (never reused)
        bound = {e.key: e for e in self.store.list(_BINDING_PREFIX)}
        for k, v in result.bindings.loopback.items():
            key = _BINDING_PREFIX + k
            if key not in bound or bound[key].value != v.encode():
                puts.append((key, v.encode()))
        if not puts and not deletes:
            return True
        changed = [k for k in {k for k, _ in puts} | set(deletes)]
        compares = [(k, seen.get(k, 0)) for k in changed]
        return self.store.commit(Txn(compares=compares, puts=puts, deletes=deletes))

    def _read_allocations(self) -> tuple[dict, dict, dict, dict[str, int]]:
        """What the allocators start from: ClusterIPs, LB IPs, Gateway bindings, and the
        revision each key was read at (for the compare-and-swap that writes the result)."""
        entries = [*self.store.list(_CLUSTER_IP_PREFIX), *self.store.list(_LB_PREFIX), *self.store.list(_BINDING_PREFIX)]
        seen = {e.key: e.mod_revision for e in entries}
        cluster = {tuple(e.key[len(_CLUSTER_IP_PREFIX):].split("/", 1)): e.value.decode()
                   for e in entries if e.key.startswith(_CLUSTER_IP_PREFIX)}
        lb = {tuple(e.key[len(_LB_PREFIX):].split("/", 1)): e.value.decode().split(",") for e in entries if e.key.startswith(_LB_PREFIX)}
        bindings = {e.key[len(_BINDING_PREFIX):]: e.value.decode() for e in entries if e.key.startswith(_BINDING_PREFIX)}
        return cluster, lb, bindings, seen

    async def apply(self, result: Result) -> None:
        snap = result.translation.snapshot
        self.version = snap.version
        self.store.put(_VERSION_KEY, str(self.version).encode())
        report = result.report
        self._stamp_transitions(report)
        self.current = result
        self.m_version.set(self.version)
        s = report["summary"]
        self.m_diags.labels("error").set(s["errors"])
        self.m_diags.labels("warning").set(s["warnings"])
        self.m_objects.clear()
        for kind, n in s["served"].items():
            self.m_objects.labels(kind, "true").set(n)
        for kind, n in s["notServed"].items():
            self.m_objects.labels(kind, "false").set(n)
        await self._publish(snap)
        self.published = snap.version  # the data planes have it: ready
        gw = len(snap.gateways)
        # HTTPRoutes, and TCP/UDP/TLS routes (listed per listener in the report)
        routes = len(report["routes"]) + len(
            {r["route"] for g in report["gateways"] for ls in g["listeners"] for r in ls.get("l4Routes", [])}
        )
        log.info(
            "applied snapshot version=%d digest=%s gateways=%d routes=%d services=%d errors=%d warnings=%d",
            self.version, snap.digest, gw, routes, len(snap.services), s["errors"], s["warnings"],
        )

    async def reload(self, reason: str = "change", controller: bool = False) -> bool:
        """Load and translate again; apply unless the manifests fail to load. Returns True if applied.

        ``controller``: a controller's state changed (a certificate issued, a challenge route). When
        the files on disk do not load right now, that state still reaches the data planes, on top
        of the last good configuration's objects."""
        async with self._reload_lock:
            started = time.monotonic()
            from homeplane.certs.controller import http01_objects, issued_secrets

            for attempt in range(ALLOCATION_ATTEMPTS):
                previous, previous_lb, previous_bindings, seen = self._read_allocations()
                args = (self.inputs, self.version + 1, previous, previous_lb, previous_bindings,
                        issued_secrets(self.store), http01_objects(self.store))
                result = await asyncio.to_thread(run_pipeline, *args)
                new_errors = self._new_load_errors(result)
                still_rejected = None
                if new_errors and controller and self.current is not None:
                    result = await asyncio.to_thread(run_pipeline, *args, self.current.load)
                    new_errors, still_rejected = [], self.rejected  # the files' problem is still there
                if self.current is not None and new_errors:
                    self.rejected = {
                        "time": _now_rfc3339(),
                        "reason": reason,
                        "diagnostics": [d.to_json() for d in new_errors],
                    }
                    self.m_reloads.labels("rejected").inc()
                    for d in new_errors:
                        log.error("reload rejected, still serving version %d: %s", self.version, d)
                    return False
                if self.current is not None and result.translation.snapshot.digest == self.current.translation.snapshot.digest:
                    self.rejected = still_rejected
                    self.m_reloads.labels("unchanged").inc()
                    return False
                if self._persist_cluster_ips(result, seen):
                    break
                # another node allocated meanwhile (a shared store): start again from what it wrote
                log.info("address allocations changed on another node; allocating again (%d)", attempt + 1)
            else:
                log.error("address allocations kept changing under this node; serving version %d", self.version)
                return False
            self.rejected = still_rejected
            await self.apply(result)
            self.m_reloads.labels("applied").inc()
            log.info("reload (%s) took %.0f ms", reason, (time.monotonic() - started) * 1000)
            for d in result.load.diagnostics.errors:
                log.error("%s", d)
            return True

    async def try_inputs(self, inputs: Inputs, reason: str) -> bool:
        """Load and apply other inputs (a new Git revision) as a whole; when they fail to load,
        the previous inputs and configuration stay. True when they are in force afterwards."""
        old = self.inputs
        self.inputs = inputs
        await self.reload(reason)
        if self.rejected is not None:
            self.inputs = old
            return False
        return True

    def _new_load_errors(self, result: Result) -> list[Any]:
        """Load errors (and network policies translation could not read) the configuration being
        served did not have: only these refuse a reload
        (a problem that was already there when it was applied is part of that configuration;
        lines may move, so a problem is known by file, code and message)."""
        errors = result.load.diagnostics.errors + _unreadable_policies(result)
        if self.current is None:
            return errors
        known = {(d.file, d.code, d.message) for d in self.current.load.diagnostics.errors + _unreadable_policies(self.current)}
        return [d for d in errors if (d.file, d.code, d.message) not in known]

    async def watch(self) -> None:
        from watchfiles import awatch

        paths = [str(p) for p in self.inputs.paths]

        def relevant(_change: Any, path: str) -> bool:
            return path.endswith((".yaml", ".yml")) or Path(path).is_dir()

        async for changes in awatch(*paths, debounce=self.debounce_ms, watch_filter=relevant, recursive=True):
            names = sorted({Path(p).name for _, p in changes})
            try:
                await self.reload("files changed: " + ", ".join(names[:5]))
            except Exception:  # the watcher must outlive any one bad change
                log.exception("reload after a change failed; still serving version %d", self.version)

    # --- admin handlers ---------------------------------------------------------

    def _readyz(self, _: str) -> tuple[int, str, bytes]:
        if self.current is None or not self.published:
            return 503, "text/plain", b"not ready: no configuration applied yet\n"
        return 200, "text/plain", b"ok\n"

    def status_doc(self) -> dict[str, Any] | None:
        """What ``/status`` serves: translation's report with the runtime's facts (None before
        the first configuration)."""
        if self.current is None:
            return None
        doc = dict(self.current.report)
        doc["runtime"] = {"servingVersion": self.version, "rejected": self.rejected}
        for name, fn in self.status_extras.items():
            doc["runtime"][name] = fn()
        if self.status_patches:
            doc = json.loads(json.dumps(doc, default=str))  # a copy: the report itself stays translation's
            for patch in self.status_patches:
                patch(doc)
        return doc

    def _status(self, _: str) -> tuple[int, str, bytes]:
        doc = self.status_doc()
        if doc is None:
            return 503, "application/json", b'{"error": "no configuration applied yet"}\n'
        return 200, "application/json", json.dumps(doc, indent=2, default=str).encode() + b"\n"

    def _metrics(self, _: str) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    # --- lifecycle --------------------------------------------------------------

    async def _sighup(self) -> None:
        """``systemctl reload``: read the manifests again, telling systemd while it happens."""
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            await self.reload("SIGHUP")
        finally:
            notify(f"READY=1\nSTATUS=serving snapshot {self.version}")

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self.admin.start()  # first: a port that is taken stops homeplane before it serves anything
        for fn in self.on_start:
            await fn()
        await self.reload("start")
        log.info("admin endpoint on http://%s:%d (/healthz /readyz /status /metrics /ui)", self.admin_host, self.admin.port)
        notify(f"READY=1\nSTATUS=serving snapshot {self.version}")  # systemd Type=notify
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._sighup()))
        except (NotImplementedError, RuntimeError):
            pass
        watcher = asyncio.create_task(self.watch() if self.watch_files else asyncio.Event().wait())
        try:
            await stop.wait()
        finally:
            notify("STOPPING=1")
            watcher.cancel()
            for fn in self.on_stop:
                await fn()
            await self.admin.close()
            self.store.close()
            log.info("stopped")


def _unreadable_policies(result: Result) -> list[Any]:
    """Network policies translation could not read: like load errors, they refuse a reload (a
    policy dropped would open what it closed), so the last good configuration keeps serving."""
    return [d for d in result.translation.diagnostics.errors if d.code == "InvalidNetworkPolicy"]
