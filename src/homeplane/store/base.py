"""The state store interface: a transactional key-value map with revisions.

Keys are ``/``-separated strings (``lbipam/network/envoy-external``), values
bytes. Every write bumps a store-wide revision, and each key remembers the
revision it was last modified at, so a controller can do compare-and-swap
(``Txn``) exactly as it would against etcd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int


@dataclass
class Txn:
    """An etcd-style transaction: if every compare holds, apply ``puts`` and ``deletes``.

    A compare is (key, expected mod_revision); 0 means "the key must not exist".
    """

    compares: list[tuple[str, int]] = field(default_factory=list)
    puts: list[tuple[str, bytes]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)


class StateStore(Protocol):
    def get(self, key: str) -> Entry | None: ...

    def list(self, prefix: str) -> list[Entry]: ...

    def put(self, key: str, value: bytes) -> int:
        """Store value; returns the new revision."""
        ...

    def delete(self, key: str) -> bool: ...

    def commit(self, txn: Txn) -> bool:
        """Apply the transaction atomically; False (and no change) if a compare failed."""
        ...

    def revision(self) -> int: ...

    def close(self) -> None: ...
