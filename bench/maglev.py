#!/usr/bin/env python3
"""Maglev table build time: 1000 backends at M=65537 (Envoy's size) and M=16381 (Cilium's default).

The peer figure is the paper's (Eisenbud et al., NSDI 2016, section 5.3 footnote: 1.8 ms for
1000 backends at M=65537 in C++ on their machines); the pure-Python reference implementation
runs beside the compiled fill for the ratio. The build time bounds how long a Snapshot swap
stalls the event loop when a large service's endpoints change.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from homeplane.l4 import maglev  # noqa: E402

PAPER_MS = 1.8  # 1000 backends, M=65537


def best_of(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main() -> None:
    names = [f"10.42.{i // 250}.{i % 250}:8080" for i in range(1000)]
    compiled = maglev._maglev is not None
    print(f"compiled fill: {'yes' if compiled else 'NO (pure Python only)'}; paper (C++): {PAPER_MS} ms at M=65537")
    for m in (maglev.ENVOY_SIZE, maglev.DEFAULT_SIZE):
        def cold() -> None:
            maglev._params_cache.clear()
            maglev.build(names, m)

        first = best_of(cold, 10)
        maglev.build(names, m)
        changed = names[:-1] + ["10.43.0.1:8080"]  # one endpoint replaced: the common update
        rebuild = best_of(lambda: maglev.build(changed, m), 10)
        params = maglev.permutation_params(sorted(names), m)
        py = best_of(lambda: maglev.populate_python(params, m), 2)
        line = f"M={m:>6}, 1000 backends: first build {first:5.2f} ms, rebuild after one endpoint change {rebuild:5.2f} ms"
        line += f", pure-Python fill {py:6.1f} ms"
        if m == maglev.ENVOY_SIZE:
            line += f"; first build/paper {first / PAPER_MS:.2f}"
        print(line)


if __name__ == "__main__":
    main()
