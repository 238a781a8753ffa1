#!/usr/bin/env python3
"""The gateway against nginx over the traffic users send: same backend, same certificate, same run.

A static nginx backend answers a small body. In front of it, in turn:
  * homeplane (`homeplane run`, a dozen HTTPRoutes loaded, access log off) with its C fast lane,
  * nginx as a reverse proxy (upstream keepalive, access log off, 1 worker, TLS session cache
    and tickets on), with the same ECDSA P-256 certificate,
and for plain HTTP/1.1 also homeplane with the fast lane off ("hp-python") and the floor for
Python: a bare uvloop + httptools proxy (bench/_floor_proxy.py) doing none of homeplane's work.

Rows (``--rows`` picks some):
  plain      HTTP/1.1 keep-alive, wrk
  https      HTTPS, HTTP/1.1 keep-alive, wrk
  h2         HTTPS, HTTP/2 chosen by ALPN, h2load -m10
  h2c        HTTP/2 over plain TCP (prior knowledge), h2load -m10
  handshake  a new TLS connection (full handshake) per request, wrk with Connection: close
  resume13   TLS 1.3 resumption (session tickets): openssl s_time -reuse, one request each
  resume12   TLS 1.2 resumption (session tickets), the same
  h3         HTTP/3 over QUIC (ClientTrafficPolicy http3), bench/_h3load.py -m10: no peer here
             serves HTTP/3 as a reverse proxy (Debian's nginx is built without it) and h2load has
             no QUIC, so the row is compared to homeplane's own HTTPS HTTP/2 row of the same run
             (CPU per request; the Python load generator shares the 2 cores)

The proxy's CPU time (user+system, all its processes) is read from /proc before and after.
Reported: requests/s, p99 (h2load: mean), errors, CPU µs per request and the homeplane/nginx
ratios. Timings vary ±25 % run to run on a shared 2-core machine: compare within one run only.

    python bench/gateway.py [--seconds 10] [--connections 50] [--workers 1] [--policy] [--rows plain,h2]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import descendants, free_port, measure, run_h2load, run_s_time, run_wrk, stop_all, wait_port  # noqa: E402

ROUTES = 12
ROWS = ("plain", "https", "h2", "h2c", "handshake", "resume13", "resume12", "h3")


def make_certificate(root: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for *.bench.test (the same for both proxies)."""
    crt, key = root / "tls.crt", root / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:*.bench.test,DNS:bench.test",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )
    return crt, key


def nginx_conf(root: Path, listen: int, body: str | None = None, upstream: int | None = None,
               h2c: int | None = None, tls: tuple[int, Path, Path] | None = None) -> Path:
    """The backend (``body``) or the reverse proxy (``upstream``): plain HTTP/1.1 on ``listen``,
    h2c on ``h2c``, HTTPS (HTTP/2 and HTTP/1.1 by ALPN) on ``tls``."""
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
    servers = [f"server {{ listen 127.0.0.1:{listen} reuseport; {location} }}"]
    if h2c is not None:
        servers.append(f"server {{ listen 127.0.0.1:{h2c} reuseport http2; {location} }}")
    if tls is not None:
        port, crt, key = tls
        servers.append(textwrap.dedent(
            f"""
            server {{
                listen 127.0.0.1:{port} reuseport ssl http2;
                ssl_certificate {crt};
                ssl_certificate_key {key};
                ssl_protocols TLSv1.2 TLSv1.3;
                ssl_session_cache shared:SSL:10m;
                ssl_session_tickets on;
                {location}
            }}"""
        ))
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
            """
        )
        + "\n".join(servers)
        + "\n}\n"
    )
    return conf


# --policy: the gateway-wide BackendTrafficPolicy of the seed's home-ops layout (compression and
# retries on reset), as most real gateways carry one; the clients send no Accept-Encoding, so
# nothing gets compressed: this measures what the policy costs on the request path.
HOME_OPS_POLICY = """
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: envoy, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: bench}]
  compressor: [{type: Brotli}, {type: Gzip}]
  retry: {numRetries: 2, retryOn: {triggers: [reset]}}
"""


def manifests(root: Path, backend_port: int, crt: Path, key: Path, policy: bool = False) -> Path:
    d = root / "manifests"
    d.mkdir()
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
    docs = [
        textwrap.dedent(
            f"""
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {{name: bench, namespace: network}}
            spec:
              gatewayClassName: envoy
              listeners:
                - {{name: http, protocol: HTTP, port: 80, allowedRoutes: {{namespaces: {{from: All}}}}}}
                - name: https
                  protocol: HTTPS
                  port: 443
                  tls: {{certificateRefs: [{{name: bench-tls}}]}}
                  allowedRoutes: {{namespaces: {{from: All}}}}
            ---
            apiVersion: gateway.envoyproxy.io/v1alpha1
            kind: ClientTrafficPolicy
            metadata: {{name: bench-h3, namespace: network}}
            spec:
              targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: bench}}]
              http3: {{}}
            ---
            apiVersion: v1
            kind: Secret
            metadata: {{name: bench-tls, namespace: network}}
            type: kubernetes.io/tls
            data: {{tls.crt: {b64(crt)}, tls.key: {b64(key)}}}
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
    # openssl s_time sends HTTP/1.0 without a Host: a route for any host takes it
    docs.append(textwrap.dedent(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: any-host, namespace: apps}
        spec:
          parentRefs: [{name: bench, namespace: network}]
          rules: [{backendRefs: [{name: backend, port: 80}]}]
        """
    ))
    if policy:
        docs.append(HOME_OPS_POLICY)
    (d / "all.yaml").write_text("\n---\n".join(docs))
    return d


def runner(row: str):
    """The load generator of a row, as measure() calls it."""
    if row in ("plain", "https"):
        return run_wrk
    if row in ("h2", "h2c"):
        return run_h2load
    if row == "h3":
        return run_h3load
    if row == "handshake":
        return lambda url, seconds, connections, host=None: run_wrk(url, seconds, connections, host=host, close=True)
    version = "-tls1_3" if row == "resume13" else "-tls1_2"
    return lambda url, seconds, connections, host=None: run_s_time(url, seconds, connections, host=host, version=version)


DESCRIPTION = {
    "plain": "HTTP/1.1 keep-alive (wrk)",
    "https": "HTTPS, HTTP/1.1 keep-alive (wrk)",
    "h2": "HTTPS, HTTP/2 by ALPN (h2load -m10)",
    "h2c": "h2c, prior knowledge (h2load -m10)",
    "handshake": "HTTPS, new TLS connection per request (wrk, Connection: close)",
    "resume13": "TLS 1.3 resumption, one request per connection (s_time -reuse)",
    "resume12": "TLS 1.2 resumption, one request per connection (s_time -reuse)",
    "h3": "HTTP/3 over QUIC (_h3load.py -m10; ratio: to homeplane's h2 row)",
}


def run_h3load(url: str, seconds: int, connections: int, host: str | None = None) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "_h3load.py"), url, str(seconds), str(connections), *(["--host", host] if host else [])],
        capture_output=True, text=True, check=True, timeout=seconds * 3 + 30,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--policy", action="store_true", help="load a home-ops style gateway-wide BackendTrafficPolicy")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--no-python", action="store_true", help="skip the fast-lane-off and bare-Python rows")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if unknown := set(rows) - set(ROWS):
        sys.exit(f"unknown rows: {', '.join(sorted(unknown))}")
    for tool in ("nginx", "wrk", "h2load", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install nginx wrk nghttp2-client openssl)")
    root = Path(tempfile.mkdtemp(prefix="hp-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        crt, key = make_certificate(root)
        backend = free_port()
        procs.append(subprocess.Popen(["nginx", "-c", str(nginx_conf(root, backend, body="hello from the backend\\n"))]))
        wait_port("127.0.0.1", backend)
        tree = manifests(root, backend, crt, key, args.policy)

        def homeplane(name: str, fast_lane: bool) -> tuple[subprocess.Popen, int, int]:
            port, tls_port, admin = free_port(), free_port(), free_port()
            cmd = [
                sys.executable, "-m", "homeplane", "run", str(tree),
                "--admin", f"127.0.0.1:{admin}", "--state", str(root / f"{name}.db"),
                "--gateway-address", "network/bench=127.0.0.1", "--port-map", f"80={port},443={tls_port}", "--no-access-log",
            ]
            if args.workers > 1:
                cmd += ["--workers", str(args.workers)]
            env = {**os.environ, "HOMEPLANE_FASTLANE": "1" if fast_lane else "0"}
            p = subprocess.Popen(cmd, stderr=open(root / f"{name}.log", "w"), env=env)
            procs.append(p)
            wait_port("127.0.0.1", port)
            wait_port("127.0.0.1", tls_port)
            return p, port, tls_port

        hp, hp_port, hp_tls = homeplane("homeplane", True)
        ng_port, ng_h2c, ng_tls = free_port(), free_port(), free_port()
        ng = subprocess.Popen(["nginx", "-c", str(nginx_conf(root, ng_port, upstream=backend, h2c=ng_h2c, tls=(ng_tls, crt, key)))])
        procs.append(ng)
        wait_port("127.0.0.1", ng_tls)

        def url(row: str, plain: int, h2c: int, tls: int) -> str:
            if row == "plain":
                return f"http://127.0.0.1:{plain}/api/items"
            if row == "h2c":
                return f"http://127.0.0.1:{h2c}/api/items"
            return f"https://127.0.0.1:{tls}/api/items"

        host = f"app{ROUTES - 1}.bench.test"
        policy = ", gateway-wide BackendTrafficPolicy (compression, retries)" if args.policy else ""
        print(f"{ROUTES} HTTPRoutes{policy}, homeplane workers={args.workers}, {args.connections} connections, {args.seconds} s per run, ECDSA P-256")
        print(f"{'traffic':<66} {'proxy':<10} {'req/s':>9} {'p99 ms':>7} {'CPU µs/req':>10} {'errors':>6} {'CPU ratio':>9}")
        h2_cpu: float | None = None  # homeplane's CPU per request on the h2 row, for the h3 row's ratio
        for row in rows:
            run = runner(row)
            if row == "h3":
                r = measure(lambda: descendants(hp.pid), url(row, hp_port, hp_port, hp_tls), args.seconds, min(args.connections, 10), host, run=run)
                if h2_cpu is None:
                    h2_cpu = measure(lambda: descendants(hp.pid), url("h2", hp_port, hp_port, hp_tls), args.seconds, args.connections, host, run=run_h2load)["cpu_us_per_req"]
                errs = int(r["non2xx"] + r["socket_errors"])
                print(f"{DESCRIPTION[row]:<66} {'homeplane':<10} {r['rps']:>9.0f} {r['p99_ms']:>7.2f} {r['cpu_us_per_req']:>10.1f} {errs:>6} {r['cpu_us_per_req'] / h2_cpu:>9.2f}")
                continue
            results = {
                "homeplane": measure(lambda: descendants(hp.pid), url(row, hp_port, hp_port, hp_tls), args.seconds, args.connections, host, run=run),
                "nginx": measure(lambda: descendants(ng.pid), url(row, ng_port, ng_h2c, ng_tls), args.seconds, args.connections, host, run=run),
            }
            n = results["nginx"]
            if row == "h2":
                h2_cpu = results["homeplane"]["cpu_us_per_req"]
            for name, r in results.items():
                errs = int(r["non2xx"] + r["socket_errors"])
                ratio = f"{r['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}" if name != "nginx" else ""
                print(f"{DESCRIPTION[row]:<66} {name:<10} {r['rps']:>9.0f} {r['p99_ms']:>7.2f} {r['cpu_us_per_req']:>10.1f} {errs:>6} {ratio:>9}")
            if row == "plain" and not args.no_python:
                hpy, hpy_port, _ = homeplane("homeplane-py", False)
                fl_port = free_port()
                fl = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_floor_proxy.py"), str(fl_port), str(backend)], stderr=subprocess.DEVNULL)
                procs.append(fl)
                wait_port("127.0.0.1", fl_port)
                for name, proc, port in (("hp-python", hpy, hpy_port), ("py-floor", fl, fl_port)):
                    r = measure(lambda: descendants(proc.pid), f"http://127.0.0.1:{port}/api/items", args.seconds, args.connections, host, run=run)
                    errs = int(r["non2xx"] + r["socket_errors"])
                    print(f"{DESCRIPTION[row]:<66} {name:<10} {r['rps']:>9.0f} {r['p99_ms']:>7.2f} {r['cpu_us_per_req']:>10.1f} {errs:>6} {r['cpu_us_per_req'] / n['cpu_us_per_req']:>9.2f}")
                hpy.terminate()
                fl.terminate()
        print("latency: p99 for wrk rows, mean for h2load rows, none for s_time rows (sequential connections)")
    finally:
        stop_all(procs, root)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
