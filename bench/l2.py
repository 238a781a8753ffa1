#!/usr/bin/env python3
"""L2 announcement failover, measured: how long a client's traffic to a LoadBalancer IP stops when
the node announcing it fails, over many runs (needs root: network namespaces).

Three ``homeplane run`` nodes, etcd and a client on a bridge (the namespace test's setup,
``tests/l2/test_l2_netns.py``). Each run fails the current leader — its link goes down (it
loses etcd and the client), or its homeplane is killed — and measures from then to the first
answer from another node; the failed node comes back before the next run. The peer is Cilium
with its default timings (leaseDuration 15 s + retryPeriod 2 s: about 17 s, by its
documentation; it cannot run here), and homeplane with Cilium's timings would be the same.

    sudo python bench/l2.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.l2.test_l2_netns import NODES, Client, Lan, sh  # noqa: E402

CILIUM_DEFAULT = 15.0 + 2.0  # leaseDuration + retryPeriod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("network namespaces need root")
    lan = Lan(Path(tempfile.mkdtemp(prefix="hp-l2bench-")))
    client = Client(lan)
    results: dict[str, list[float]] = {"link down": [], "SIGKILL": []}
    try:
        _, leader = client.next_answer(set(NODES), 60)
        for i in range(args.runs):
            how = "link down" if i % 2 == 0 else "SIGKILL"
            failed = time.time()
            if how == "link down":
                sh("ip", "-n", lan.ns["lan"], "link", "set", lan.bridge_port[leader], "down")
            else:
                lan.homeplane[leader].send_signal(signal.SIGKILL)
                lan.homeplane[leader].wait(10)
            t, other = client.next_answer(set(NODES) - {leader}, 30)
            results[how].append(t - failed)
            # the failed node comes back and waits as a follower
            if how == "link down":
                sh("ip", "-n", lan.ns["lan"], "link", "set", lan.bridge_port[leader], "up")
            else:
                lan.start(leader)
            time.sleep(3)
            leader = other
        print(f"{'failure':<12} {'runs':>5} {'p50 s':>7} {'p99 s':>7} {'max s':>7}   vs Cilium's default (~{CILIUM_DEFAULT:.0f} s)")
        for how, xs in results.items():
            xs.sort()
            p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
            print(f"{how:<12} {len(xs):>5} {statistics.median(xs):>7.2f} {p99:>7.2f} {xs[-1]:>7.2f}   "
                  f"{CILIUM_DEFAULT / statistics.median(xs):.0f}x faster at the median")
    finally:
        client.close()
        lan.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
