#!/usr/bin/env python3
"""Maglev table build time: 1000 backends at M=65537 (Envoy's size) and M=16381 (Cilium's default).

No peer runs in this one: it measures how long a Snapshot swap spends rebuilding a
large service's table, which bounds how fast endpoint changes can be applied.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from homeplane.l4 import maglev  # noqa: E402


def main() -> None:
    names = [f"10.42.{i // 250}.{i % 250}:8080" for i in range(1000)]
    for m in (maglev.ENVOY_SIZE, maglev.DEFAULT_SIZE):
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            maglev.build(names, m)
            runs.append(time.perf_counter() - t)
        print(f"maglev build: 1000 backends, M={m}: best {min(runs) * 1000:.0f} ms, worst {max(runs) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
