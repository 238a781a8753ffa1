"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.

Each backend gets a permutation of the table slots from two hashes of its
stable name: ``offset = h1(name) mod M`` and ``skip = h2(name) mod (M-1) + 1``;
backends take turns claiming their next preferred free slot until the table is
full. M must be prime so every permutation visits every slot. Backends are
ordered by name, not by arrival, so every node builds the same table for the
same backend set (as Cilium does); ``seed`` changes all tables at once.

Weights: a backend of weight w takes w turns per round (w=0 takes none), which
gives it a share of slots proportional to w.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Sequence

try:  # the fill loop in C (l4/_maglev.c); optional, same result as populate_python
    from homeplane.l4 import _maglev
except ImportError:  # built without a C compiler
    _maglev = None  # type: ignore[assignment]

# Table sizes Cilium accepts (primes), plus 65537, Envoy's default.
CILIUM_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_SIZE = 16381
ENVOY_SIZE = 65537


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


_UNPACK = struct.Struct("<QQ").unpack
_PARAMS_CACHE_MAX = 200_000
_params_cache: dict[tuple[int, bytes], dict[str, tuple[int, int]]] = {}


def _hashes(name: str, seed: bytes) -> tuple[int, int]:
    d = hashlib.blake2b(name.encode(), digest_size=16, key=seed).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def permutation_params(names: Sequence[str], m: int, seed: bytes = b"") -> list[tuple[int, int]]:
    """(offset, skip) for each backend name. Remembered per (M, seed): an endpoint change
    rehashes only the new names."""
    known = _params_cache.get((m, seed))
    if known is None or len(known) > _PARAMS_CACHE_MAX:
        known = _params_cache[(m, seed)] = {}
    base = hashlib.blake2b(digest_size=16, key=seed)  # keyed once, copied per name
    out = []
    for name in names:
        p = known.get(name)
        if p is None:
            h = base.copy()
            h.update(name.encode())
            h1, h2 = _UNPACK(h.digest())  # the same two little-endian halves as _hashes
            p = known[name] = (h1 % m, h2 % (m - 1) + 1)
        out.append(p)
    return out


def populate(params: Sequence[tuple[int, int]], m: int, weights: Sequence[int] | None = None) -> list[int]:
    """Fill a table of size m: entry -> backend index (-1 only if no backend has weight)."""
    if not _is_prime(m):
        raise ValueError(f"Maglev table size must be prime, got {m}")
    if weights is not None and len(weights) != len(params):
        raise ValueError("weights must match backends")
    if _maglev is not None and os.environ.get("HOMEPLANE_MAGLEV_C", "1") != "0":
        return _maglev.populate(params, m, weights)
    return populate_python(params, m, weights)


def populate_python(params: Sequence[tuple[int, int]], m: int, weights: Sequence[int] | None = None) -> list[int]:
    """The reference implementation (and the fallback without the C extension)."""
    n = len(params)
    table = [-1] * m
    if n == 0:
        return table
    weights = list(weights) if weights is not None else [1] * n
    if not any(w > 0 for w in weights):
        return table
    nxt = [0] * n
    filled = 0
    while True:
        for i in range(n):
            offset, skip = params[i]
            for _ in range(weights[i]):
                c = (offset + nxt[i] * skip) % m
                while table[c] >= 0:
                    nxt[i] += 1
                    c = (offset + nxt[i] * skip) % m
                table[c] = i
                nxt[i] += 1
                filled += 1
                if filled == m:
                    return table


def build(names: Sequence[str], m: int = DEFAULT_SIZE, weights: Sequence[int] | None = None, seed: bytes = b"") -> tuple[list[str], list[int]]:
    """Sorted backend names and the table (entries index into the sorted names)."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    sorted_names = [names[i] for i in order]
    sorted_weights = [weights[i] for i in order] if weights is not None else None
    return sorted_names, populate(permutation_params(sorted_names, m, seed), m, sorted_weights)
