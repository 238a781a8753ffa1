"""One node at a time acts on the outside world; every node says it is alive.

Nodes that share a state store (etcd) all serve the same manifests, but the controllers that
change things elsewhere (DNS records at a provider, ACME orders) run on one elected node at a
time. The leader holds ``leader/controllers`` under an etcd lease it renews every third of the
lease; when it dies the lease runs out, the key goes, and another node's campaign wins —
the lease duration bounds the handover, as a Kubernetes Lease does for Cilium. Each node also
keeps ``nodes/<name>`` (its address, version, start time) under a lease of its own, which is what
``homeplane get nodes`` lists. A store without leases (the embedded SQLite one: one machine) makes
its node the leader at once.

Nodes that are not the leader pick up what the leader wrote to the store (certificates,
allocations) by reloading when the store's revision moves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

from homeplane import __version__
from homeplane.store.base import StoreError
from homeplane.tasks import cancel_and_wait

log = logging.getLogger("homeplane.leader")

LEADER_KEY = "leader/controllers"
NODES_PREFIX = "nodes/"


class Elector:
    def __init__(self, store: Any, node: str, lease_seconds: int = 15, address: str = "",
                 on_elected: Callable[[], Awaitable[None]] | None = None,
                 on_lost: Callable[[], Awaitable[None]] | None = None,
                 on_store_changed: Callable[[], Awaitable[Any]] | None = None):
        self.store = store
        self.node = node
        self.lease_seconds = max(2, int(lease_seconds))
        self.address = address
        self.on_elected, self.on_lost, self.on_store_changed = on_elected, on_lost, on_store_changed
        self.leases = hasattr(store, "campaign")
        self.is_leader = False
        self.leader: str | None = None
        self.since: float | None = None
        self._lease: int | None = None  # while leading
        self._node_lease: int | None = None
        self._revision = 0
        self._renewed = 0.0
        self._task: asyncio.Task | None = None
        self.started = time.time()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.leases:  # one machine: it leads
            await self._elected()
            return
        self._revision = await asyncio.to_thread(self.store.revision)
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self.is_leader:
            await self._lost("stopping")
        if self.leases:  # hand over at once instead of after the lease
            for lease in (self._lease, self._node_lease):
                if lease:
                    await asyncio.to_thread(self.store.revoke, lease)

    # --- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        period = self.lease_seconds / 3
        while True:
            try:
                await self._step()
            except StoreError as e:  # the store is away: a leader that cannot renew must stop acting
                log.warning("leader election: %s", e)
                if self.is_leader and self.since is not None and time.monotonic() - self._renewed > self.lease_seconds * 2 / 3:
                    await self._lost("cannot renew its lease")
            except Exception:  # a bug must not stop the election for good
                log.exception("leader election failed")
            await asyncio.sleep(period)

    async def _step(self) -> None:
        s = self.store
        info = json.dumps({"address": self.address, "version": __version__, "started": int(self.started),
                           "leader": self.is_leader}).encode()
        if self._node_lease is None or not await asyncio.to_thread(s.keep_alive, self._node_lease):
            self._node_lease = await asyncio.to_thread(s.grant, self.lease_seconds)
        await asyncio.to_thread(s.attach, NODES_PREFIX + self.node, info, self._node_lease)
        if self.is_leader:
            if self._lease is not None and await asyncio.to_thread(s.keep_alive, self._lease):
                self._renewed = time.monotonic()
            else:
                await self._lost("its lease ran out")
        if not self.is_leader:
            lease = await asyncio.to_thread(s.campaign, LEADER_KEY, self.node.encode(), self.lease_seconds)
            if lease is not None:
                self._lease, self._renewed = lease, time.monotonic()
                await self._elected()
            else:
                holder = await asyncio.to_thread(s.get, LEADER_KEY)
                self.leader = holder.value.decode() if holder else None
                rev = await asyncio.to_thread(s.revision)
                if rev != self._revision and self.on_store_changed is not None:
                    self._revision = rev
                    await self.on_store_changed()  # what the leader wrote reaches this node's data planes

    async def _elected(self) -> None:
        self.is_leader, self.leader, self.since = True, self.node, time.monotonic()
        self._renewed = time.monotonic()
        log.info("node %s leads the controllers", self.node)
        if self.on_elected is not None:
            await self.on_elected()

    async def _lost(self, why: str) -> None:
        self.is_leader, self.since, self._lease = False, None, None
        self.leader = None
        log.warning("node %s no longer leads the controllers: %s", self.node, why)
        if self.on_lost is not None:
            await self.on_lost()

    def status(self) -> dict[str, Any]:
        return {"node": self.node, "isLeader": self.is_leader, "leader": self.leader,
                "leaseSeconds": self.lease_seconds, "shared": self.leases}


def nodes(store: Any) -> list[dict[str, Any]]:
    """The nodes alive in a shared store (each one's key lives as long as its lease)."""
    holder = store.get(LEADER_KEY)
    leader = holder.value.decode() if holder else None
    out = []
    for e in store.list(NODES_PREFIX):
        try:
            info = json.loads(e.value)
        except ValueError:
            info = {}
        name = e.key[len(NODES_PREFIX):]
        out.append({"name": name, "address": info.get("address", ""), "version": info.get("version", ""),
                    "started": info.get("started"), "leader": name == leader})
    return out
