"""The tunnel against OpenSSH's remote forwarding (``ssh -R``), and both against no tunnel.

One home (``homeplane run``: a Gateway whose HTTP listener routes to an nginx origin), reached
three ways on loopback:

* direct:  client -> the Gateway's port;
* tunnel:  client -> ``homeplane edge`` (HTTP by Host) -> connector (h2 streams over TLS) -> Gateway;
* ssh -R:  client -> sshd's forwarded port -> ssh (the connection it dialled out) -> Gateway.

Rows: small requests on kept-alive connections (wrk: req/s, p50/p99 latency), a new connection
per request, and a 256 MB download (curl: MB/s). CPU per request is the tunnel's own processes
(edge + connector's share, i.e. homeplane run minus the direct row's) against sshd + ssh.
frp and rathole are not packaged in Debian, so they are not in the run; rathole's published
figure is ~4.4x frp's TCP throughput.

    python bench/tunnel.py [--seconds 8] [--connections 20]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, descendants, free_port, stop_all, wait_port  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def wrk(url: str, seconds: int, connections: int, host: str, close: bool = False) -> dict[str, float]:
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-H", f"Host: {host}", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def pct(p: str) -> float:
        m = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out)
        return float(m.group(1)) * scale[m.group(2)] if m else float("nan")

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": pct("50"), "p99_ms": pct("99"),
            "errors": (int(errors.group(1)) if errors else 0) + (sum(map(int, sock.groups())) if sock else 0)}


def download(url: str, host: str) -> float:
    best = 0.0
    for _ in range(3):
        t = time.monotonic()
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "-H", f"Host: {host}", url],
                             capture_output=True, text=True, check=True)
        size = int(out.stdout)
        best = max(best, size / (time.monotonic() - t) / 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=20)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hp-bench-tunnel-"))
    root.chmod(0o755)  # nginx's workers read the files
    procs: list[subprocess.Popen] = []
    try:
        # the origin: nginx with a small answer and a large file
        (root / "www").mkdir()
        (root / "www" / "index.html").write_bytes(b"x" * 1024)
        with (root / "www" / "big").open("wb") as f:
            f.truncate(256 * 1024 * 1024)
        origin = free_port()
        (root / "nginx.conf").write_text(f"""
worker_processes 1; daemon off; pid {root}/nginx.pid; error_log {root}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{origin}; root {root}/www; }} }}
""")
        procs.append(subprocess.Popen(["nginx", "-c", str(root / "nginx.conf")]))
        wait_port("127.0.0.1", origin)
        gw_port = free_port()
        repo = root / "repo"
        repo.mkdir()
        (repo / "bench.yaml").write_text(f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: envoy}}
spec: {{controllerName: gateway.envoyproxy.io/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: envoy-external, namespace: network}}
spec:
  gatewayClassName: envoy
  listeners: [{{name: http, protocol: HTTP, port: 80, allowedRoutes: {{namespaces: {{from: All}}}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: apps}}
spec: {{ports: [{{name: http, port: 80, targetPort: {origin}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: apps, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {origin}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: apps}}
spec:
  parentRefs: [{{name: envoy-external, namespace: network}}]
  hostnames: [web.bench.test]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: cloudflared, namespace: network}}
data:
  config.yaml: |
    ingress:
      - hostname: "*.bench.test"
        service: http://envoy-external.network.svc.cluster.local:80
      - service: http_status:404
""")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(root / "t.key"),
                        "-out", str(root / "t.crt")], check=True, capture_output=True)
        (root / "token").write_text(TOKEN)
        tunnel, edge_http, admin_edge, admin_home = free_port(), free_port(), free_port(), free_port()
        (root / "edge.yaml").write_text(json.dumps({
            "tunnel": {"listen": f"127.0.0.1:{tunnel}", "certFile": str(root / "t.crt"), "keyFile": str(root / "t.key"),
                       "tokens": [{"name": "bench", "token": TOKEN}]},
            "http": {"listen": f"127.0.0.1:{edge_http}"}, "admin": {"listen": f"127.0.0.1:{admin_edge}"}}))
        edge = subprocess.Popen([sys.executable, "-m", "homeplane", "edge", "--config", str(root / "edge.yaml"), "--log-level", "warning"])
        procs.append(edge)
        home = subprocess.Popen([sys.executable, "-m", "homeplane", "run", str(repo), "--admin", f"127.0.0.1:{admin_home}",
                                 "--state", str(root / "state.db"), "--port-map", f"80={gw_port}", "--no-access-log",
                                 "--gateway-address", "network/envoy-external=127.0.0.1", "--no-external-dns", "--no-certificates",
                                 "--log-level", "warning", "--tunnel-edge", f"127.0.0.1:{tunnel}", "--tunnel-token-file",
                                 str(root / "token"), "--tunnel-ca", str(root / "t.crt")])
        procs.append(home)
        wait_port("127.0.0.1", gw_port)
        wait_port("127.0.0.1", edge_http, timeout=30)
        # OpenSSH: an sshd on loopback, and ssh -R forwarding a port of it to the Gateway
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "user")], check=True)
        (root / "authorized").write_text((root / "user.pub").read_text())
        sshd_port, fwd = free_port(), free_port()
        (root / "sshd.conf").write_text(f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {root}/host\nAuthorizedKeysFile {root}/authorized\n"
                                        "PermitRootLogin yes\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPidFile none\n")
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd.conf")], stderr=subprocess.DEVNULL)
        procs.append(sshd)
        wait_port("127.0.0.1", sshd_port)
        ssh = subprocess.Popen(["ssh", "-N", "-i", str(root / "user"), "-p", str(sshd_port), "-o", "StrictHostKeyChecking=no",
                                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-R", f"127.0.0.1:{fwd}:127.0.0.1:{gw_port}",
                                "root@127.0.0.1"])
        procs.append(ssh)
        wait_port("127.0.0.1", fwd, timeout=30)

        paths = {
            "direct": (f"http://127.0.0.1:{gw_port}", lambda: descendants(home.pid)),
            "tunnel": (f"http://127.0.0.1:{edge_http}", lambda: descendants(home.pid) + descendants(edge.pid)),
            "ssh -R": (f"http://127.0.0.1:{fwd}", lambda: descendants(home.pid) + descendants(sshd.pid) + [ssh.pid]),
        }
        host = "web.bench.test"
        for name, (url, _) in paths.items():
            probe = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}", url + "/"],
                                   capture_output=True, text=True)
            if probe.stdout != "200":
                raise SystemExit(f"{name}: {url}/ answers {probe.stdout} {probe.stderr.strip()}")
        rows: dict[str, dict[str, dict[str, float]]] = {}
        for row, close in (("keep-alive", False), ("new connection", True)):
            rows[row] = {}
            for name, (url, pids) in paths.items():
                wrk(url + "/", 2, a.connections, host, close)
                before = cpu_seconds(pids())
                res = wrk(url + "/", a.seconds, a.connections, host, close)
                res["cpu_us"] = (cpu_seconds(pids()) - before) / max(res["requests"], 1) * 1e6
                rows[row][name] = res
        print(f"{'row':16} {'path':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'CPU µs/req':>11} {'tunnel CPU':>11}")
        for row, by in rows.items():
            for name, r in by.items():
                own = r["cpu_us"] - by["direct"]["cpu_us"]
                print(f"{row:16} {name:8} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:6.0f} {r['cpu_us']:11.0f}"
                      f" {own if name != 'direct' else 0:11.0f}")
            t, s = by["tunnel"], by["ssh -R"]
            print(f"{row:16} tunnel/ssh: req/s {t['rps'] / s['rps']:.2f}x, p99 {t['p99_ms'] / s['p99_ms']:.2f}x, "
                  f"own CPU per request {(t['cpu_us'] - by['direct']['cpu_us']) / max(s['cpu_us'] - by['direct']['cpu_us'], 1e-9):.2f}x")
        speeds = {name: download(url + "/big", host) for name, (url, _) in paths.items()}
        print("256 MB download, MB/s: " + ", ".join(f"{k} {v:.0f}" for k, v in speeds.items())
              + f"; tunnel/ssh {speeds['tunnel'] / speeds['ssh -R']:.2f}x")
    finally:
        stop_all(procs, root)


if __name__ == "__main__":
    main()
