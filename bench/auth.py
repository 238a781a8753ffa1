#!/usr/bin/env python3
"""The latency extAuth adds: the same route with and without a SecurityPolicy, same run.

nginx plays both the backend and the forward-auth server (``return 200`` on the auth
path, so the auth server itself costs almost nothing). wrk measures each route through
homeplane; the difference in median and p99 latency is the extAuth round trip.

    python bench/auth.py [--seconds 8] [--connections 20]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, stop_all, wait_port  # noqa: E402


def wrk(url: str, host: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-H", f"Host: {host}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        return float(m.group(1)) * scale[m.group(2)] if m else float("nan")

    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": pct("50"), "p99": pct("99")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=20)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed")
    root = Path(tempfile.mkdtemp(prefix="hp-authbench-"))
    procs = []
    try:
        port = free_port()
        (root / "nginx.conf").write_text(
            textwrap.dedent(
                f"""
                worker_processes 1; daemon off; pid {root}/nginx.pid; error_log {root}/err warn;
                events {{ worker_connections 4096; }}
                http {{
                    access_log off; keepalive_requests 1000000;
                    server {{
                        listen 127.0.0.1:{port};
                        location /auth/ {{ add_header X-Auth-User bench; return 200; }}
                        location / {{ return 200 "hello\\n"; }}
                    }}
                }}
                """
            )
        )
        procs.append(subprocess.Popen(["nginx", "-c", str(root / "nginx.conf")]))
        wait_port("127.0.0.1", port)
        m = root / "m"
        m.mkdir()
        (m / "all.yaml").write_text(
            textwrap.dedent(
                f"""
                apiVersion: gateway.networking.k8s.io/v1
                kind: Gateway
                metadata: {{name: bench, namespace: network}}
                spec:
                  gatewayClassName: envoy
                  listeners: [{{name: http, protocol: HTTP, port: 80, allowedRoutes: {{namespaces: {{from: All}}}}}}]
                ---
                apiVersion: v1
                kind: Service
                metadata: {{name: app, namespace: apps}}
                spec: {{ports: [{{name: http, port: 80}}]}}
                ---
                apiVersion: v1
                kind: Endpoints
                metadata: {{name: app, namespace: apps}}
                subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: http, port: {port}}}]}}]
                ---
                apiVersion: gateway.networking.k8s.io/v1
                kind: HTTPRoute
                metadata: {{name: open, namespace: apps}}
                spec:
                  parentRefs: [{{name: bench, namespace: network}}]
                  hostnames: [open.bench.test]
                  rules: [{{backendRefs: [{{name: app, port: 80}}]}}]
                ---
                apiVersion: gateway.networking.k8s.io/v1
                kind: HTTPRoute
                metadata: {{name: protected, namespace: apps}}
                spec:
                  parentRefs: [{{name: bench, namespace: network}}]
                  hostnames: [protected.bench.test]
                  rules: [{{backendRefs: [{{name: app, port: 80}}]}}]
                ---
                apiVersion: gateway.envoyproxy.io/v1alpha1
                kind: SecurityPolicy
                metadata: {{name: auth, namespace: apps}}
                spec:
                  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: protected}}]
                  extAuth:
                    http:
                      backendRefs: [{{name: app, port: 80}}]
                      path: /auth
                      headersToBackend: [x-auth-user]
                """
            )
        )
        gw_port, admin = free_port(), free_port()
        hp = subprocess.Popen(
            [sys.executable, "-m", "homeplane", "run", str(m), "--admin", f"127.0.0.1:{admin}", "--state", str(root / "s.db"),
             "--gateway-address", "network/bench=127.0.0.1", "--port-map", f"80={gw_port}", "--no-access-log"],
            stderr=open(root / "hp.log", "w"),
        )
        procs.append(hp)
        wait_port("127.0.0.1", gw_port)
        url = f"http://127.0.0.1:{gw_port}/"
        wrk(url, "protected.bench.test", 2, args.connections)  # warm up the pools
        res = {name: wrk(url, f"{name}.bench.test", args.seconds, args.connections) for name in ("open", "protected")}
        print(f"wrk -c{args.connections} -d{args.seconds}s through homeplane; extAuth server: nginx on loopback")
        print(f"{'route':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for name, r in res.items():
            print(f"{name:<10} {r['rps']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}")
        o, p = res["open"], res["protected"]
        print(f"extAuth adds: p50 +{p['p50'] - o['p50']:.2f} ms, p99 +{p['p99'] - o['p99']:.2f} ms; throughput x{p['rps'] / o['rps']:.2f}")
    finally:
        stop_all(procs, root)


if __name__ == "__main__":
    main()
