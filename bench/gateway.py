#!/usr/bin/env python3
"""HTTP/1.1 keep-alive proxy benchmark: homeplane vs nginx, same backend, same run.

A static nginx backend answers a small body. In front of it, in turn:
  * homeplane (`homeplane run`, a dozen HTTPRoutes loaded, access log off), with its C fast
    lane for plain requests (gateway/_fastlane.c) and, as "hp-python", without it,
  * nginx as a reverse proxy (upstream keepalive, access log off, 1 worker),
  * the floor for Python: a bare uvloop + httptools proxy (bench/_floor_proxy.py) with none
    of homeplane's work, to tell the cost of the language and libraries from homeplane's own.
wrk drives each through loopback; the proxy's CPU time (user+system, all its
processes) is read from /proc before and after. Reported: requests/s, p99,
CPU µs per request, and homeplane/nginx ratios. Timings vary ±25 % run to run
on a shared 2-core machine: compare within one run only.

    python bench/gateway.py [--seconds 10] [--connections 50] [--workers 1] [--policy] [--h2]
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

ROUTES = 12


def nginx_conf(root: Path, listen: int, body: str | None = None, upstream: int | None = None, h2: bool = False) -> Path:
    conf = root / f"nginx-{listen}.conf"
    if upstream is None:
        location = f'location / {{ return 200 "{body}"; }}'
        upstream_block = ""
    else:
        upstream_block = f"upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}"
        location = textwrap.dedent(
            """
            location / {
                proxy_pass http://backend;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
                proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            }"""
        )
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {root}/nginx-{listen}.pid;
            error_log {root}/nginx-{listen}.err warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                client_body_temp_path {root}/body-{listen};
                proxy_temp_path {root}/proxy-{listen};
                {upstream_block}
                server {{
                    listen 127.0.0.1:{listen} reuseport{" http2" if h2 else ""};
                    {location}
                }}
            }}
            """
        )
    )
    return conf


# --policy: the gateway-wide BackendTrafficPolicy of the seed's home-ops layout (compression and
# retries on reset), as most real gateways carry one; wrk sends no Accept-Encoding, so nothing
# gets compressed: this measures what the policy costs on the request path.
HOME_OPS_POLICY = """
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: envoy, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: bench}]
  compressor: [{type: Brotli}, {type: Gzip}]
  retry: {numRetries: 2, retryOn: {triggers: [reset]}}
"""


def manifests(root: Path, backend_port: int, policy: bool = False) -> Path:
    d = root / "manifests"
    d.mkdir()
    docs = [
        textwrap.dedent(
            """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: bench, namespace: network}
            spec:
              gatewayClassName: envoy
              listeners:
                - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
            """
        ),
        textwrap.dedent(
            f"""
            apiVersion: v1
            kind: Service
            metadata: {{name: backend, namespace: apps}}
            spec: {{ports: [{{name: http, port: 80}}]}}
            ---
            apiVersion: v1
            kind: Endpoints
            metadata: {{name: backend, namespace: apps}}
            subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: http, port: {backend_port}}}]}}]
            """
        ),
    ]
    for i in range(ROUTES):
        docs.append(
            textwrap.dedent(
                f"""
                apiVersion: gateway.networking.k8s.io/v1
                kind: HTTPRoute
                metadata: {{name: app{i}, namespace: apps}}
                spec:
                  parentRefs: [{{name: bench, namespace: network}}]
                  hostnames: [app{i}.bench.test]
                  rules:
                    - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
                      backendRefs: [{{name: backend, port: 80}}]
                    - backendRefs: [{{name: backend, port: 80}}]
                """
            )
        )
    if policy:
        docs.append(HOME_OPS_POLICY)
    (d / "all.yaml").write_text("\n---\n".join(docs))
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--policy", action="store_true", help="load a home-ops style gateway-wide BackendTrafficPolicy")
    ap.add_argument("--h2", action="store_true", help="HTTP/2 clients (h2c, h2load -m 10) instead of HTTP/1.1")
    args = ap.parse_args()
    for tool in ("nginx", "h2load" if args.h2 else "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install nginx wrk)")
    root = Path(tempfile.mkdtemp(prefix="hp-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        backend = free_port()
        procs.append(subprocess.Popen(["nginx", "-c", str(nginx_conf(root, backend, body="hello from the backend\\n"))]))
        wait_port("127.0.0.1", backend)

        tree = manifests(root, backend, args.policy)

        def homeplane(name: str, fast_lane: bool) -> tuple[subprocess.Popen, int]:
            port, admin = free_port(), free_port()
            cmd = [
                sys.executable, "-m", "homeplane", "run", str(tree),
                "--admin", f"127.0.0.1:{admin}", "--state", str(root / f"{name}.db"),
                "--gateway-address", "network/bench=127.0.0.1", "--port-map", f"80={port}", "--no-access-log",
            ]
            if args.workers > 1:
                cmd += ["--workers", str(args.workers)]
            env = {**os.environ, "HOMEPLANE_FASTLANE": "1" if fast_lane else "0"}
            p = subprocess.Popen(cmd, stderr=open(root / f"{name}.log", "w"), env=env)
            procs.append(p)
            wait_port("127.0.0.1", port)
            return p, port

        hp, hp_port = homeplane("homeplane", True)
        hpy, hpy_port = homeplane("homeplane-py", False)

        ng_port = free_port()
        ng = subprocess.Popen(["nginx", "-c", str(nginx_conf(root, ng_port, upstream=backend, h2=args.h2))])
        procs.append(ng)
        wait_port("127.0.0.1", ng_port)

        fl_port = free_port()
        fl = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_floor_proxy.py"), str(fl_port), str(backend)], stderr=subprocess.DEVNULL)
        procs.append(fl)
        wait_port("127.0.0.1", fl_port)

        host = f"app{ROUTES - 1}.bench.test"
        if args.h2:
            # HTTP/2 takes the Python lane in any case: homeplane against nginx only
            results = {
                "homeplane": measure(lambda: descendants(hp.pid), f"http://127.0.0.1:{hp_port}/api/items", args.seconds, args.connections, host, h2=True),
                "nginx": measure(lambda: descendants(ng.pid), f"http://127.0.0.1:{ng_port}/api/items", args.seconds, args.connections, host, h2=True),
            }
            print(f"HTTP/2 (h2c), h2load -c{args.connections} -m10 -D{args.seconds}, {ROUTES} HTTPRoutes; latency column: mean, not p99")
            print(f"{'proxy':<10} {'req/s':>10} {'mean ms':>8} {'CPU µs/req':>11} {'errors':>7}")
            for name, r in results.items():
                print(f"{name:<10} {r['rps']:>10.0f} {r['p99_ms']:>8.2f} {r['cpu_us_per_req']:>11.1f} {int(r['non2xx'] + r['socket_errors']):>7}")
            h, n = results["homeplane"], results["nginx"]
            print(f"ratio homeplane/nginx: req/s {h['rps'] / n['rps']:.2f}, CPU per request {h['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}")
            return
        results = {
            "homeplane": measure(lambda: descendants(hp.pid), f"http://127.0.0.1:{hp_port}/api/items", args.seconds, args.connections, host),
            "nginx": measure(lambda: descendants(ng.pid), f"http://127.0.0.1:{ng_port}/api/items", args.seconds, args.connections, host),
            "hp-python": measure(lambda: descendants(hpy.pid), f"http://127.0.0.1:{hpy_port}/api/items", args.seconds, args.connections, host),
            "py-floor": measure(lambda: descendants(fl.pid), f"http://127.0.0.1:{fl_port}/api/items", args.seconds, args.connections, host),
        }
        policy = ", gateway-wide BackendTrafficPolicy (compression, retries)" if args.policy else ""
        print(f"HTTP/1.1 keep-alive, wrk -c{args.connections} -d{args.seconds}s, {ROUTES} HTTPRoutes{policy}, homeplane workers={args.workers}")
        print(f"{'proxy':<10} {'req/s':>10} {'p99 ms':>8} {'CPU µs/req':>11} {'errors':>7}")
        for name, r in results.items():
            errs = int(r["non2xx"] + r["socket_errors"])
            print(f"{name:<10} {r['rps']:>10.0f} {r['p99_ms']:>8.2f} {r['cpu_us_per_req']:>11.1f} {errs:>7}")
        h, n, f = results["homeplane"], results["nginx"], results["py-floor"]
        print(f"ratio homeplane/nginx: req/s {h['rps'] / n['rps']:.2f}, CPU per request {h['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}")
        hpy_r = results["hp-python"]
        print(f"ratio hp-python/nginx (fast lane off): CPU per request {hpy_r['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}")
        print(f"ratio py-floor/nginx: CPU per request {f['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}; homeplane/py-floor {h['cpu_us_per_req'] / f['cpu_us_per_req']:.2f}")
    finally:
        stop_all(procs, root)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
