"""One announcer per Service: a lease on the shared state store, with Kubernetes Lease semantics.

Cilium elects the node that answers ARP for a Service with a Kubernetes Lease
(``cilium-l2announce-<namespace>-<service>``): the holder renews it every ``retryPeriod``; a
holder that could not renew within ``renewDeadline`` stops announcing; another node takes the
lease once ``leaseDuration`` has passed without a renewal. Here the lease is a record in the state
store (etcd when there are several nodes) written by compare-and-swap, so two nodes never both
win a round. As client-go does, each node times the lease on its own monotonic clock from when it
*saw* the record change, never by comparing another node's timestamp with its own clock: clock
skew between nodes does not matter.

Cilium's defaults (15 s, 5 s, 2 s) make a failover take about 17 s; homeplane's defaults are
chosen for about a second on a LAN (0.8 s, 0.5 s, 0.1 s). The holder writes at most three times
per renewDeadline (the others only read), which keeps the store's history small.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from homeplane.store.base import Txn

PREFIX = "l2/leases/"


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 0.8
    renew_deadline: float = 0.5
    retry_period: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("lease timings need 0 < retryPeriod < renewDeadline < leaseDuration")


def lease_key(namespace: str, name: str) -> str:
    return f"{PREFIX}cilium-l2announce-{namespace}-{name}"


@dataclass
class Holder:
    node: str
    renewed: float  # the holder's wall clock (for people: `get l2announcements`)
    duration: float


class ServiceLease:
    """The lease of one Service as one node sees it. :meth:`tick` is called every retry period,
    off the event loop (it talks to the store); ``clock`` is monotonic."""

    def __init__(self, store: Any, key: str, node: str, timing: Timing, clock: Callable[[], float] = time.monotonic):
        self.store, self.key, self.node, self.timing, self.clock = store, key, node, timing, clock
        self.holder: Holder | None = None
        self.last_renewal: float | None = None  # this node's clock, when it last renewed (while holding)
        self.info: dict[str, Any] = {}  # written with the lease (the addresses and interfaces, for `get`)
        self._seen: tuple[int, float] | None = None  # (mod_revision of the record, when this node first saw it)

    @property
    def held(self) -> bool:
        """Does this node hold it and may still announce (renewed within renewDeadline)?"""
        return self.last_renewal is not None and self.clock() - self.last_renewal < self.timing.renew_deadline

    def tick(self) -> bool:
        """Try to acquire or renew; True while this node holds the lease. Any failure to talk to
        the store counts as a failed renewal: past renewDeadline the node stops announcing."""
        now = self.clock()
        try:
            entry = self.store.get(self.key)
            if entry is not None:
                rec = json.loads(entry.value)
                holder = Holder(str(rec["holder"]), float(rec["renewed"]), float(rec["duration"]))
                self.holder = holder
                if self._seen is None or self._seen[0] != entry.mod_revision:
                    self._seen = (entry.mod_revision, now)
                if holder.node != self.node:
                    if now - self._seen[1] < holder.duration:
                        self.last_renewal = None
                        return False  # someone else's, and alive
                elif self.last_renewal is not None and now - self.last_renewal < self.timing.renew_deadline / 3:
                    return True  # ours, renewed a moment ago: no write this round
            record = json.dumps({**self.info, "holder": self.node, "renewed": time.time(),
                                 "duration": self.timing.lease_duration}).encode()
            ok = self.store.commit(Txn([(self.key, entry.mod_revision if entry else 0)], [(self.key, record)]))
        except Exception:  # noqa: BLE001 - a store that fails, or a record that is not ours to read
            return self.held
        if ok:
            self.last_renewal = now
            self.holder = Holder(self.node, time.time(), self.timing.lease_duration)
            return True
        self.last_renewal = None  # another node wrote first
        return False

    def release(self) -> None:
        """Give the lease up (a node stopping, or a Service no longer announced here), so another
        node takes it at once instead of after leaseDuration."""
        self.last_renewal = None
        try:
            entry = self.store.get(self.key)
            if entry is not None and json.loads(entry.value).get("holder") == self.node:
                self.store.commit(Txn([(self.key, entry.mod_revision)], [], [self.key]))
        except Exception:  # noqa: BLE001 - the lease then runs out on its own
            pass
