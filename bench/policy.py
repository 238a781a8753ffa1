#!/usr/bin/env python3
"""What network policy costs the gateway, beside nginx doing the same filtering, in one run.

Three homeplane instances serve the gateway bench's routes to one nginx backend:

- ``open``: no network policy;
- ``l3l4``: a CiliumNetworkPolicy lets only this Gateway's proxy pods reach the backend (the
  bjw-s "only envoy-internal" pattern). It is compiled into the Gateway's view of the pool, so a
  request pays nothing for it;
- ``l7``: the same with Cilium L7 rules (``GET /api/.*``): every request is checked as it would
  reach the pod — in the Python lane, as the C fast lane does not read those rules.

nginx is the peer: a reverse proxy with ``limit_except GET`` on ``/api/`` (the same L7 decision).
Rows alternate over rounds and the median is shown; the machine drifts between runs.

    python bench/policy.py [--seconds 10] [--connections 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import descendants, free_port, measure, stop_all, wait_port  # noqa: E402
from gateway import DESCRIPTION, ROUTES, make_certificate, manifests, nginx_conf, runner  # noqa: E402

L3L4 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: apps}
spec:
  endpointSelector: {}
  ingress:
    - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": network, gateway.networking.k8s.io/gateway-name: bench}}]
"""

L7 = L3L4 + """      toPorts:
        - ports: [{port: "PORT", protocol: TCP}]
          rules: {http: [{method: GET, path: "/api/.*"}, {method: GET, path: "/"}]}
"""


def nginx_filtering(root: Path, listen: int, upstream: int, tls: tuple[int, Path, Path]) -> Path:
    """nginx as the gateway with the same L7 rule: GET only under /api/."""
    conf = nginx_conf(root, listen, upstream=upstream, tls=tls)
    text = conf.read_text()
    rule = textwrap.dedent(
        """
        location /api/ {
                limit_except GET { deny all; }
                proxy_pass http://backend;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
            }
            location / {"""
    )
    conf.write_text(text.replace("location / {", rule, 2))
    return conf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per row; the median is shown")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "h2load", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install nginx wrk nghttp2-client openssl)")
    root = Path(tempfile.mkdtemp(prefix="hp-polbench-"))
    procs: list[subprocess.Popen] = []
    try:
        crt, key = make_certificate(root)
        backend = free_port()
        procs.append(subprocess.Popen(["nginx", "-c", str(nginx_conf(root, backend, body="hello from the backend\\n"))]))
        wait_port("127.0.0.1", backend)

        def homeplane(name: str, policy: str) -> tuple[subprocess.Popen, int, int]:
            (root / name).mkdir()
            tree = manifests(root / name, backend, crt, key)
            if policy:
                (tree / "policy.yaml").write_text(policy.replace("PORT", str(backend)))
            port, tls_port, admin = free_port(), free_port(), free_port()
            p = subprocess.Popen(
                [sys.executable, "-m", "homeplane", "run", str(tree), "--admin", f"127.0.0.1:{admin}",
                 "--state", str(root / f"{name}.db"), "--gateway-address", "network/bench=127.0.0.1", "--bind-address", "127.0.0.1",
                 "--port-map", f"80={port},443={tls_port}", "--no-access-log"],
                stderr=open(root / f"{name}.log", "w"))
            procs.append(p)
            wait_port("127.0.0.1", tls_port)
            return p, port, tls_port

        instances = {"open": homeplane("open", ""), "l3l4": homeplane("l3l4", L3L4), "l7": homeplane("l7", L7)}
        ng_port, ng_tls = free_port(), free_port()
        ng = subprocess.Popen(["nginx", "-c", str(nginx_filtering(root, ng_port, backend, (ng_tls, crt, key)))])
        procs.append(ng)
        wait_port("127.0.0.1", ng_tls)
        host = f"app{ROUTES - 1}.bench.test"
        print(f"{ROUTES} HTTPRoutes, {args.connections} connections, {args.seconds} s per run, median of {args.rounds} alternating rounds")
        print(f"{'traffic (GET /api/items)':<40} {'proxy':<10} {'req/s':>9} {'CPU µs/req':>10} {'vs nginx':>8} {'errors':>6}")
        for row in ("plain", "h2"):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in (*instances, "nginx")}
            for _ in range(args.rounds):
                for name, (proc, plain, tls) in [*instances.items(), ("nginx", (ng, ng_port, ng_tls))]:
                    url = f"http://127.0.0.1:{plain}/api/items" if row == "plain" else f"https://127.0.0.1:{tls}/api/items"
                    runs[name].append(measure(lambda proc=proc: descendants(proc.pid), url, args.seconds, args.connections, host,
                                              run=runner(row)))
            got = {name: sorted(rs, key=lambda r: r["cpu_us_per_req"])[len(rs) // 2] for name, rs in runs.items()}
            n = got["nginx"]["cpu_us_per_req"]
            for name, r in got.items():
                errs = int(r["non2xx"] + r["socket_errors"])
                print(f"{DESCRIPTION[row][:40]:<40} {name:<10} {r['rps']:>9.0f} {r['cpu_us_per_req']:>10.1f} "
                      f"{r['cpu_us_per_req'] / n:>8.2f} {errs:>6}")
    finally:
        stop_all(procs, root)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
