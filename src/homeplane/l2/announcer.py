"""L2 announcements on one node: a lease per Service it may announce; while it holds the lease,
its responders answer ARP for the Service's addresses on the selected interfaces.

The data plane is ready before anything is announced: the L4 path serves every LB IP on every
node already, so the node that takes an address over only has to say so (gratuitous ARP). Lease
calls go to the store off the event loop, one round every ``retryPeriod``, through a client whose
calls give up well within ``renewDeadline``; a watchdog on the event loop withdraws whatever was
not renewed in time even while a store call hangs, so a node cut off from etcd goes quiet before
another one takes over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from typing import Any, Callable

from homeplane.l2.lease import ServiceLease, Timing, lease_key
from homeplane.l2.policy import Announcement, announcements
from homeplane.l2.responder import Responder
from homeplane.translate.snapshot import Snapshot

log = logging.getLogger("homeplane.l2")
Key = tuple[str, str]
Pairs = tuple[tuple[str, str], ...]  # (interface, address)
COMPACT_EVERY = 300.0  # seconds: etcd keeps every version of a renewed lease until compacted


def host_interfaces() -> list[str]:
    """This machine's Ethernet interfaces that are not enslaved to a bridge or bond (Cilium
    announces on its detected devices, not on every interface)."""
    out = []
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return []
    for name in sorted(names):
        base = f"/sys/class/net/{name}"
        try:
            with open(f"{base}/type") as f:
                if f.read().strip() != "1":  # ARPHRD_ETHER
                    continue
        except OSError:
            continue
        if name != "lo" and not os.path.exists(f"{base}/master"):
            out.append(name)
    return out


class LocalRoutes:
    """While a node announces an address, the kernel takes it as its own (a ``local`` route, as an
    address would be, but on no interface): the Gateway and the userspace L4 proxy listen there
    with IP_FREEBIND, and packets for it are delivered to them. The nftables path DNATs before
    routing and needs none. Needs CAP_NET_ADMIN, as answering ARP needs CAP_NET_RAW."""

    def __init__(self, command: tuple[str, ...] = ("ip",)):
        self.command = command
        self.ips: set[str] = set()
        self.error: str | None = None

    def _ip(self, *args: str) -> bool:
        try:
            p = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as e:
            err = str(e)
        else:
            if p.returncode == 0:
                return True
            err = p.stderr.strip()
        if err != self.error:
            log.error("L2: ip %s: %s", " ".join(args), err)
        self.error = err
        return False

    def add(self, ip: str) -> None:
        if ip not in self.ips and self._ip("route", "replace", "local", f"{ip}/32", "dev", "lo", "table", "local", "proto", "static"):
            self.ips.add(ip)

    def remove(self, ip: str) -> None:
        if ip in self.ips:
            self._ip("route", "del", "local", f"{ip}/32", "dev", "lo", "table", "local")
            self.ips.discard(ip)

    def clear(self) -> None:
        for ip in list(self.ips):
            self.remove(ip)


class L2Announcer:
    def __init__(self, store: Any, node: str, node_labels: dict[str, str] | None = None, timing: Timing | None = None,
                 interfaces: Callable[[], list[str]] = host_interfaces):
        self.timing = timing or Timing()
        # store calls that give up within the renew deadline (etcd; the embedded store is local)
        self.store = store.with_timeout(max(0.05, self.timing.renew_deadline / 3)) if hasattr(store, "with_timeout") else store
        self.node, self.node_labels = node, dict(node_labels or {})
        self.interfaces = interfaces
        self.snapshot: Snapshot | None = None
        self.wanted: dict[Key, Announcement] = {}
        self.leases: dict[Key, ServiceLease] = {}
        self.responders: dict[str, Responder] = {}
        self.announcing: dict[Key, Pairs] = {}  # while this node holds the Service's lease
        self.errors: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self._refreshed = 0.0
        self._compact_at: tuple[float, int] | None = None
        self.routes = LocalRoutes()

    async def apply(self, snap: Snapshot) -> None:
        self.snapshot = snap
        try:
            self._select()
        except Exception:  # a new configuration must not stop what is announced now
            log.exception("L2 announcements: selecting Services")

    def _select(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        found = announcements(snap, snap.extras.get("l2policies", ()), self.node, self.node_labels, self.interfaces())
        self.wanted = {(a.service.namespace or "default", a.service.name): a for a in found}
        self._refreshed = time.monotonic()

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._watchdog = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        """Stop: let the running round finish (its store calls are in a thread), go quiet on the
        link, then give the leases up so another node takes over at once."""
        self._stopping = True
        for t in (self._task, self._watchdog):
            if t is not None:
                try:
                    await asyncio.wait_for(t, 5)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    t.cancel()
        for key in list(self.announcing):
            self._stop(key)
        for r in self.responders.values():
            r.close()
        self.responders.clear()
        self.routes.clear()
        await asyncio.to_thread(lambda: [lease.release() for lease in self.leases.values()])

    async def _run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.round()
            except Exception:  # the loop must outlive any one bad round; what was not renewed goes quiet
                log.exception("L2 announcements")
            await asyncio.sleep(max(0.0, self.timing.retry_period - (time.monotonic() - started)))

    async def _watch(self) -> None:
        """Withdraw what this node no longer holds in time, whatever the store calls are doing."""
        while not self._stopping:
            for key in [k for k in self.announcing if k not in self.leases or not self.leases[k].held]:
                self._stop(key)
            await asyncio.sleep(self.timing.retry_period / 2)

    async def round(self) -> None:
        if time.monotonic() - self._refreshed > 5.0:
            self._select()  # interfaces come and go
        for key in [k for k in self.leases if k not in self.wanted]:  # no longer ours to announce
            self._stop(key)
            lease = self.leases.pop(key)
            await asyncio.to_thread(lease.release)
        competing: dict[Key, Announcement] = {}
        for key, a in self.wanted.items():
            # compete only with a responder open on one of its interfaces: a lease held by a node
            # that cannot answer would leave the address dark
            if any(self._responder(i) is not None for i in a.interfaces):
                competing[key] = a
                lease = self.leases.get(key)
                if lease is None:
                    lease = self.leases[key] = ServiceLease(self.store, lease_key(*key), self.node, self.timing)
                lease.info = {"service": f"{key[0]}/{key[1]}", "ips": list(a.ips), "interfaces": list(a.interfaces)}
            elif key in self.leases:
                self._stop(key)
                lease = self.leases.pop(key)
                await asyncio.to_thread(lease.release)
        leases = {k: self.leases[k] for k in competing}
        won = await asyncio.to_thread(lambda: {k: lease.tick() for k, lease in leases.items()})
        for key, a in competing.items():
            if won.get(key) and self.leases[key].held:
                self._start(key, a)
            else:
                self._stop(key)
        await self._compact()

    def _responder(self, iface: str) -> Responder | None:
        r = self.responders.get(iface)
        if r is not None and r.sock is not None:
            return r
        r = Responder(iface)
        try:
            r.open()
        except OSError as e:
            if self.errors.get(iface) != str(e):  # logged once per reason, not every round
                log.error("L2 announcements on %s: %s", iface, e)
            self.errors[iface] = str(e)
            self.responders.pop(iface, None)
            return None
        self.errors.pop(iface, None)
        self.responders[iface] = r
        return r

    def _start(self, key: Key, a: Announcement) -> None:
        before = self.announcing.get(key)
        for ip in a.ips:
            if before is None or all(ip != b for _, b in before):
                self.routes.add(ip)
        for iface, ip in a.pairs:
            r = self._responder(iface)
            if r is not None and (before is None or ip not in r.ips):
                r.announce(ip)  # answers from now on, and a gratuitous ARP tells the link
        if before is None:
            log.info("L2: announcing %s/%s (%s) on %s", key[0], key[1], ", ".join(a.ips), ", ".join(a.interfaces))
        elif before != a.pairs:
            self.announcing[key] = a.pairs
            self._withdraw(key, tuple(p for p in before if p not in a.pairs))
        self.announcing[key] = a.pairs

    def _stop(self, key: Key) -> None:
        before = self.announcing.pop(key, None)
        if before is None:
            return
        self._withdraw(key, before)
        log.info("L2: no longer announcing %s/%s", *key)

    def _withdraw(self, key: Key, pairs: Pairs) -> None:
        """Stop answering for these (interface, address) pairs, but those another Service this
        node announces shares (LB IPAM's sharing key)."""
        others = {p for k, v in self.announcing.items() if k != key for p in v}
        for iface, ip in pairs:
            r = self.responders.get(iface)
            if r is not None and (iface, ip) not in others:
                r.withdraw(ip)
        still = {ip for v in self.announcing.values() for _, ip in v}
        for ip in {ip for _, ip in pairs} - still:
            self.routes.remove(ip)

    async def _compact(self) -> None:
        """Every few minutes, compact the store's history up to the revision seen a period ago
        (as kube-apiserver does for Kubernetes' etcd): renewed leases would fill it otherwise."""
        compact = getattr(self.store, "compact", None)
        if compact is None or not self.announcing:
            return
        now = time.monotonic()
        if self._compact_at is not None and now - self._compact_at[0] < COMPACT_EVERY:
            return
        try:
            rev = await asyncio.to_thread(self.store.revision)
            if self._compact_at is not None and self._compact_at[1] > 0:
                await asyncio.to_thread(compact, self._compact_at[1])
        except Exception as e:  # noqa: BLE001 - another node compacted first, or the store is away
            log.debug("L2: compaction: %s", e)
            rev = self._compact_at[1] if self._compact_at else 0
        self._compact_at = (now, rev)

    def status(self) -> list[dict[str, Any]]:
        """/status: each Service this node may announce, who holds its lease, where it is announced."""
        out = []
        for key, a in self.wanted.items():
            lease = self.leases.get(key)
            holder = lease.holder.node if lease is not None and lease.holder is not None else None
            out.append({"namespace": key[0], "name": key[1], "ips": list(a.ips), "policies": list(a.policies),
                        "leader": holder, "announcing": key in self.announcing, "interfaces": list(a.interfaces)})
        return out
