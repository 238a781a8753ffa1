#!/usr/bin/env python3
"""L4 benchmark: homeplane's nftables path, its userspace path, and haproxy (TCP mode), same run.

Network namespaces made here (needs root): a client namespace and a router namespace joined
by a veth pair; the backend (iperf3 server, and a small accept-and-close server) runs in the
router namespace on 10.99.2.11. Each contender sits in front of it:
  * nftables  - homeplane's DNAT rules (Maglev map) for the ClusterIP 10.43.0.50
  * userspace - homeplane's TCP proxy listening on 10.99.1.1
  * haproxy   - mode tcp, one worker, listening on 10.99.1.1
Reported: iperf3 throughput (Gbit/s), new connections per second (client opens and closes
connections as fast as it can for N seconds), and the ratios to haproxy.

    sudo python bench/l4.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

CONN_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.create_connection((host, port), timeout=2)
        s.recv(1)
        s.close()
        n += 1
    print(n / seconds)
    """
)
ACCEPT_SERVER = textwrap.dedent(
    """
    import socket
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.99.2.11", 9000)); s.listen(1024)
    while True:
        c, _ = s.accept(); c.sendall(b"x"); c.close()
    """
)


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


def setup(tag: str) -> tuple[str, str]:
    client, router = f"hpbc-{tag}", f"hpbr-{tag}"
    sh("ip", "netns", "add", client)
    sh("ip", "netns", "add", router)
    sh("ip", "link", "add", f"c{tag}", "type", "veth", "peer", "name", f"r{tag}")
    sh("ip", "link", "set", f"c{tag}", "netns", client)
    sh("ip", "link", "set", f"r{tag}", "netns", router)
    for ns, dev, addr in ((client, f"c{tag}", "10.99.1.2/24"), (router, f"r{tag}", "10.99.1.1/24")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", client, "route", "add", "default", "via", "10.99.1.1")
    sh("ip", "-n", router, "addr", "add", "10.99.2.11/32", "dev", "lo")
    return client, router


def iperf(client: str, host: str, port: int, seconds: int) -> float:
    out = sh("ip", "netns", "exec", client, "iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J")
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def conns(client: str, host: str, port: int, seconds: int) -> float:
    return float(sh("ip", "netns", "exec", client, sys.executable, "-c", CONN_CLIENT, host, str(port), str(seconds)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, nftables)")
    for tool in ("iperf3", "haproxy", "nft"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install iperf3 haproxy nftables)")
    tag = uuid.uuid4().hex[:5]
    tmp = Path(tempfile.mkdtemp(prefix="hp-l4bench-"))
    procs: list[subprocess.Popen] = []
    client, router = setup(tag)
    try:
        procs.append(subprocess.Popen(["ip", "netns", "exec", router, "iperf3", "-s", "-B", "10.99.2.11", "-p", "5201"], stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["ip", "netns", "exec", router, sys.executable, "-c", ACCEPT_SERVER]))
        time.sleep(0.5)
        manifests = tmp / "m.yaml"
        manifests.write_text(
            textwrap.dedent(
                """
                apiVersion: v1
                kind: Service
                metadata: {name: bench, namespace: apps}
                spec:
                  clusterIP: 10.43.0.50
                  ports: [{name: iperf, port: 5201}, {name: conn, port: 9000}]
                ---
                apiVersion: v1
                kind: Endpoints
                metadata: {name: bench, namespace: apps}
                subsets: [{addresses: [{ip: 10.99.2.11}], ports: [{name: iperf, port: 5201}, {name: conn, port: 9000}]}]
                """
            )
        )
        from homeplane.l4.nftables import NftDataPlane
        from homeplane.l4.tables import compile_tables
        from homeplane.pipeline import Inputs, run_pipeline

        snap = run_pipeline(Inputs(paths=(manifests,))).translation.snapshot
        results: dict[str, tuple[float, float]] = {}

        # 1. nftables
        nft = NftDataPlane(command=["ip", "netns", "exec", router, "nft"])
        nft.apply_tables(compile_tables(snap, nft.table_size))
        results["nftables"] = (iperf(client, "10.43.0.50", 5201, args.seconds), conns(client, "10.43.0.50", 9000, args.seconds))
        nft.clear()

        # 2. userspace proxy: the same Service, its ClusterIP moved onto the router's veth address
        user_m = tmp / "user.yaml"
        user_m.write_text(manifests.read_text().replace("clusterIP: 10.43.0.50", "clusterIP: 10.99.1.1"))
        runner = textwrap.dedent(
            f"""
            import asyncio, uvloop, sys
            sys.path.insert(0, {str(ROOT / 'src')!r})
            from pathlib import Path
            from homeplane.l4.proxy import UserspaceProxy
            from homeplane.pipeline import Inputs, run_pipeline
            async def main():
                snap = run_pipeline(Inputs(paths=(Path({str(user_m)!r}),), service_cidr="10.99.1.0/24")).translation.snapshot
                p = UserspaceProxy(health_interval=60)
                await p.apply(snap)
                print("ready", flush=True)
                await asyncio.Event().wait()
            uvloop.install(); asyncio.run(main())
            """
        )
        up = subprocess.Popen(["ip", "netns", "exec", router, sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True)
        procs.append(up)
        assert up.stdout.readline().strip() == "ready"
        results["userspace"] = (iperf(client, "10.99.1.1", 5201, args.seconds), conns(client, "10.99.1.1", 9000, args.seconds))
        up.terminate()
        up.wait(5)

        # 3. haproxy, mode tcp
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(
            textwrap.dedent(
                """
                global
                    nbthread 1
                defaults
                    mode tcp
                    timeout connect 5s
                    timeout client 60s
                    timeout server 60s
                listen iperf
                    bind 10.99.1.1:5201
                    server b 10.99.2.11:5201
                listen conn
                    bind 10.99.1.1:9000
                    server b 10.99.2.11:9000
                """
            )
        )
        hap = subprocess.Popen(["ip", "netns", "exec", router, "haproxy", "-f", str(cfg)])
        procs.append(hap)
        time.sleep(0.5)
        results["haproxy"] = (iperf(client, "10.99.1.1", 5201, args.seconds), conns(client, "10.99.1.1", 9000, args.seconds))

        print(f"{'path':<10} {'Gbit/s':>8} {'conn/s':>9}")
        for name, (gbps, cps) in results.items():
            print(f"{name:<10} {gbps:>8.2f} {cps:>9.0f}")
        h = results["haproxy"]
        for name in ("nftables", "userspace"):
            g, c = results[name]
            print(f"ratio {name}/haproxy: throughput {g / h[0]:.2f}, new connections {c / h[1]:.2f}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        subprocess.run(["ip", "netns", "del", client])
        subprocess.run(["ip", "netns", "del", router])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
