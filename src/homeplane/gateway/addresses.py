"""Loopback addresses for Gateways that have no address on this machine.

Each Gateway gets its own 127.0.1.x (any 127/8 address can be bound on Linux
without configuration), so ``envoy-external`` and ``envoy-internal`` can both
listen on 443. The choice is kept in the state store: a restart, or a new
Gateway sorted in front, never moves an existing one.
"""

from __future__ import annotations

from homeplane.store import StateStore, Txn

PREFIX = "gateway-address/"


def loopback_allocator(store: StateStore, base: str = "127.0.1."):
    def allocate(gateway: str) -> str:
        key = PREFIX + gateway
        for _ in range(3):
            e = store.get(key)
            if e is not None:
                return e.value.decode()
            used = {x.value.decode() for x in store.list(PREFIX)}
            for i in range(1, 255):
                ip = f"{base}{i}"
                if ip not in used:
                    if store.commit(Txn(compares=[(key, 0)], puts=[(key, ip.encode())])):
                        return ip
                    break  # someone else wrote the key: read it again
        raise RuntimeError(f"no loopback address left for Gateway {gateway}")

    return allocate
