"""The external-dns controller inside ``homeplane run``: one reconcile loop per instance.

external-dns polls every ``--interval``; homeplane knows when the manifests change, so each
new configuration wakes the instances whose desired records changed (at most one sync per
``--min-event-sync-interval``, default 0.5 s here), and the interval remains as a periodic full
resync that also repairs changes made at the provider by hand. A failed sync is retried with
exponential backoff (1 s doubling to 5 min, or the provider's ``Retry-After``); nothing is lost
in between, because every sync plans from the manifests and the provider's records as they are
then. ``/status`` shows, per instance, the last sync, the last error and the changes pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from homeplane.externaldns.config import Instance, instances, resolve_env
from homeplane.externaldns.providers import make_provider, provider_kind
from homeplane.externaldns.providers.base import Provider, ProviderError
from homeplane.externaldns.sources import SourceInput
from homeplane.externaldns.sync import PlanResult, desired, plan
from homeplane.tasks import cancel_and_wait

log = logging.getLogger("homeplane.externaldns")

MIN_BACKOFF, MAX_BACKOFF = 1.0, 300.0


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class InstanceState:
    inst: Instance
    provider: Provider | None = None
    provider_error: str | None = None
    fingerprint: tuple = ()
    src: SourceInput | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    last_sync: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    failures: int = 0
    next_attempt: float | None = None
    hold_until: float | None = None  # the provider's Retry-After
    last_plan: PlanResult | None = None
    applied_changes: int = 0
    syncs: int = 0

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "provider": provider_kind(self.inst), "sources": list(self.inst.sources), "policy": self.inst.policy,
            "txtOwnerId": self.inst.owner, "lastSync": _rfc3339(self.last_sync), "syncs": self.syncs,
            "changesApplied": self.applied_changes,
        }
        if self.provider_error:
            doc["notRunning"] = self.provider_error
        if self.last_error:
            doc["lastError"] = self.last_error
            doc["failures"] = self.failures
            doc["nextAttempt"] = _rfc3339(self.next_attempt)
        p = self.last_plan
        if p is not None:
            doc["records"] = len(p.desired)
            if p.changes and self.last_error:
                doc["pending"] = p.to_json().get("changes")
            if p.blocked:
                doc["blocked"] = p.to_json()["blocked"]
            if p.problems:
                doc["problems"] = p.problems
        return doc


class DNSController:
    def __init__(self, current: Callable[[], Any], variables: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None, webhook_urls: Mapping[str, str] | None = None,
                 registry: CollectorRegistry | None = None, min_event_interval: float = 0.5, timeout: float = 10.0):
        self._current = current  # () -> pipeline Result being served
        self.variables = dict(variables or {})
        self.environ = environ
        self.webhook_urls = dict(webhook_urls or {})
        self.min_event_interval = min_event_interval
        self.timeout = timeout
        self.states: dict[str, InstanceState] = {}
        self._running = False
        reg = registry or CollectorRegistry()
        labels = ["instance"]
        self.m_last_sync = Gauge("external_dns_controller_last_sync_timestamp_seconds",
                                 "Timestamp of the last successful sync with the DNS provider", labels, registry=reg)
        self.m_last_reconcile = Gauge("external_dns_controller_last_reconcile_timestamp_seconds",
                                      "Timestamp of the last attempted sync with the DNS provider", labels, registry=reg)
        self.m_registry_eps = Gauge("external_dns_registry_endpoints_total", "Number of Endpoints in the registry", labels, registry=reg)
        self.m_source_eps = Gauge("external_dns_source_endpoints_total", "Number of Endpoints in all sources", labels, registry=reg)
        self.m_registry_errors = Counter("external_dns_registry_errors", "Number of Registry errors", labels, registry=reg)
        self.m_source_errors = Counter("external_dns_source_errors", "Number of Source errors", labels, registry=reg)
        self.m_noop = Counter("external_dns_controller_no_op_runs", "Number of reconcile loops ending up with no changes", labels, registry=reg)
        self.m_changes = Counter("external_dns_plan_changes", "Records changed at the provider, by action", labels + ["action"], registry=reg)

    # --- configuration ----------------------------------------------------------------------

    async def apply(self, _snapshot: Any = None) -> None:
        """A new configuration is served: reconfigure instances, wake those whose records changed."""
        result = self._current()
        if result is None:
            return
        objects = result.load.objects
        src = SourceInput.from_result(result)
        seen = set()
        try:
            found = instances(objects)
        except Exception:  # values no chart would render: keep the instances as they were
            log.exception("external-dns: reading the instances failed; keeping the previous ones")
            return
        for inst in found:
            seen.add(inst.id)
            try:
                await self._configure(inst, objects, src)
            except Exception as e:  # one broken instance must not stop the others (or the reload)
                log.exception("external-dns %s: configuring failed", inst.id)
                st = self.states.get(inst.id)
                if st is not None:
                    st.last_error = f"internal error: {type(e).__name__}: {e}"
        for gone in [k for k in self.states if k not in seen]:
            await self._stop(self.states.pop(gone))

    async def _configure(self, inst: Instance, objects: list[Any], src: SourceInput) -> None:
        st = self.states.get(inst.id)
        env = resolve_env(inst, objects, self.variables, self.environ)
        wenv = resolve_env(inst, objects, self.variables, self.environ, webhook=True)
        # where the HelmRelease sits in its file is not configuration: moving it restarts nothing
        key = (replace(inst, file="", line=None), tuple(sorted(env.items())), tuple(sorted(wenv.items())))
        if st is None or st.fingerprint[:1] != (key,):
            if st is not None:
                await self._stop(st)
            st = InstanceState(inst)
            if inst.fatal:
                st.provider_error = "not synced: " + "; ".join(inst.fatal)
            else:
                try:
                    st.provider = make_provider(inst, env, wenv, self.webhook_urls, self.timeout)
                except ProviderError as e:
                    st.provider_error = str(e)
            if st.provider_error:
                log.warning("external-dns %s not started: %s", inst.id, st.provider_error)
            self.states[inst.id] = st
            st.fingerprint = (key,)
        eps, _ = desired(inst, src, st.provider)
        wanted = tuple(sorted((e.key, e.targets, e.ttl, e.provider_specific) for e in eps))
        changed = st.fingerprint[1:] != (wanted,)
        st.fingerprint = (key, wanted)
        st.src = src
        if self._running and st.provider is not None:
            if st.task is None:
                st.task = asyncio.create_task(self._loop(st))
            elif changed:
                st.wake.set()

    async def start(self) -> None:
        self._running = True
        await self.apply()

    async def close(self) -> None:
        self._running = False
        for st in list(self.states.values()):
            await self._stop(st)

    async def _stop(self, st: InstanceState) -> None:
        await cancel_and_wait(st.task)
        st.task = None
        if st.provider is not None:
            await st.provider.close()

    # --- the loop ---------------------------------------------------------------------------

    async def _loop(self, st: InstanceState) -> None:
        inst = st.inst
        min_gap = self.min_event_interval
        flag = inst.flag("min-event-sync-interval")
        if flag:
            try:
                from homeplane.externaldns.config import _duration

                min_gap = _duration(flag)
            except ValueError:
                pass
        while True:
            st.wake.clear()
            started = time.monotonic()
            ok = await self.sync_once(st)
            if ok:
                delay = inst.interval
            else:
                delay = st.next_attempt - time.time() if st.next_attempt else MIN_BACKOFF
            try:
                await asyncio.wait_for(st.wake.wait(), timeout=max(0.0, delay))
            except asyncio.TimeoutError:
                continue
            # woken by a change: keep the minimum gap between syncs, and never call a provider
            # that asked us to wait (Retry-After) before it said
            gap = min_gap - (time.monotonic() - started)
            if st.hold_until:
                gap = max(gap, st.hold_until - time.time())
            if gap > 0:
                await asyncio.sleep(gap)

    async def sync_once(self, st: InstanceState) -> bool:
        inst, provider, src = st.inst, st.provider, st.src
        if provider is None or src is None:
            return False
        label = inst.id
        st.last_attempt = time.time()
        self.m_last_reconcile.labels(label).set(st.last_attempt)
        try:
            result, _ = await plan(inst, src, provider)
            st.last_plan = result
            self.m_source_eps.labels(label).set(len(result.desired))
            self.m_registry_eps.labels(label).set(len(result.current or []))
            ch = result.changes
            if ch and not inst.flag_bool("dry-run"):
                await provider.apply_changes(ch)
                st.applied_changes += ch.count()
                for action, n in (("create", len(ch.create)), ("update", len(ch.update_new)), ("delete", len(ch.delete))):
                    if n:
                        self.m_changes.labels(label, action).inc(n)
                log.info("external-dns %s: %d created, %d updated, %d deleted", inst.id, len(ch.create), len(ch.update_new), len(ch.delete))
            elif ch:
                log.info("external-dns %s (dry run): would change %s", inst.id, ch.to_json())
            else:
                self.m_noop.labels(label).inc()
        except ProviderError as e:
            st.failures += 1
            st.last_error = str(e)
            self.m_registry_errors.labels(label).inc()
            backoff = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (st.failures - 1))
            wait = max(backoff, e.retry_after or 0.0)
            st.next_attempt = time.time() + wait
            st.hold_until = time.time() + e.retry_after if e.retry_after else None
            log.warning("external-dns %s: %s (retrying in %.0f s)", inst.id, e, wait)
            return False
        except Exception as e:  # a bug in a source must not stop the other instances
            st.failures += 1
            st.last_error = f"internal error: {type(e).__name__}: {e}"
            st.next_attempt = time.time() + MAX_BACKOFF
            self.m_source_errors.labels(label).inc()
            log.exception("external-dns %s: sync failed", inst.id)
            return False
        st.failures, st.last_error, st.next_attempt, st.hold_until = 0, None, None, None
        st.last_sync = time.time()
        st.syncs += 1
        self.m_last_sync.labels(label).set(st.last_sync)
        return True

    def status(self) -> dict[str, Any]:
        return {k: st.status() for k, st in sorted(self.states.items())}
