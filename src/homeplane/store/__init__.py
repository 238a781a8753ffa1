"""State store: what controllers persist (IP allocations, certificates, DNS registry).

:class:`StateStore` is the interface; :class:`SQLiteStore` is the embedded
implementation. An etcd implementation will provide the same calls (with
watches and leases) for multi-node operation.
"""

from homeplane.store.base import StateStore, StoreError, Txn
from homeplane.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "StateStore", "StoreError", "Txn"]
