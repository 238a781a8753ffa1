"""Load-balancing policies over a pool's ready endpoints (Envoy Gateway's ``loadBalancer.type``).

* LeastRequest (the default): power of two choices on in-flight requests;
* RoundRobin, Random;
* ConsistentHash on SourceIP, a Header or a Cookie, with a Maglev table.

A balancer keeps only counters; the endpoint list comes from the cluster and is
replaced on every Snapshot.
"""

from __future__ import annotations

import random
import zlib
from typing import Generic, Sequence, TypeVar

from homeplane.l4 import maglev

T = TypeVar("T")


class Balancer(Generic[T]):
    """Picks one of ``targets`` (all assumed healthy); ``key`` is the hash input for ConsistentHash."""

    def __init__(self, policy: str = "LeastRequest", table_size: int = maglev.ENVOY_SIZE):
        self.policy = policy
        self.table_size = table_size
        self._rr = 0
        self._rand = random.Random()
        self._maglev_names: tuple[str, ...] = ()
        self._maglev: list[int] = []
        self._maglev_order: list[int] = []

    def pick(self, targets: Sequence[T], active: Sequence[int], names: Sequence[str], key: bytes | None = None) -> int:
        """Index into targets. ``active`` gives in-flight requests per target, ``names`` stable names."""
        n = len(targets)
        if n == 1:
            return 0
        p = self.policy
        if p == "RoundRobin":
            self._rr = (self._rr + 1) % n
            return self._rr
        if p == "Random":
            return self._rand.randrange(n)
        if p == "ConsistentHash" and key is not None:
            return self._consistent(names, key)
        # LeastRequest: two random choices, fewer in-flight requests wins.
        a = self._rand.randrange(n)
        b = self._rand.randrange(n - 1)
        if b >= a:
            b += 1
        return a if active[a] <= active[b] else b

    def _consistent(self, names: Sequence[str], key: bytes) -> int:
        tnames = tuple(names)
        if tnames != self._maglev_names:
            sorted_names, table = maglev.build(list(tnames), self.table_size)
            index = {name: i for i, name in enumerate(tnames)}
            self._maglev_order = [index[nm] for nm in sorted_names]
            self._maglev = table
            self._maglev_names = tnames
        slot = self._maglev[zlib.crc32(key) % len(self._maglev)]
        return self._maglev_order[slot]
