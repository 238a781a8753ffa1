"""State store: what controllers persist (IP allocations, certificates, DNS registry).

:class:`StateStore` is the interface; :class:`SQLiteStore` is the embedded
implementation, :class:`homeplane.store.etcd.EtcdStore` the one several nodes share.
"""

from homeplane.store.base import StateStore, StoreError, Txn
from homeplane.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "StateStore", "StoreError", "Txn"]
