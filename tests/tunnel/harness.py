"""A home repo, an edge and a `homeplane run` with its connector, as real processes on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.test_run import free_port, wait_for

TOKEN = "tunnel-token-0123456789abcdef"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    """A test CA that issues leaf certificates for names (and IPs)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("homeplane test CA")).issuer_name(_name("homeplane test CA"))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *names: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        crt, k = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return crt, k


def write_repo(root: Path, ca: CA, backend_port: int, tcp_port: int, cloudflared: str | None = None, with_cloudflared: bool = True,
               name: str = "repo", extra_rules: str = "") -> Path:
    """Gateway network/envoy-external (HTTPS *.home.test, HTTP), an app route, and the
    cloudflared config as a home-ops repo keeps it (an app-template HelmRelease)."""
    import base64

    crt, key = ca.issue("home", "*.home.test", "home.test")
    repo = root / name
    repo.mkdir()
    cfg = cloudflared if cloudflared is not None else f"""
            ingress:
              - hostname: ssh.home.test
                service: tcp://127.0.0.1:{tcp_port}{extra_rules}
              - hostname: "*.home.test"
                originRequest:
                  http2Origin: true
                  originServerName: external.home.test
                service: https://envoy-external.{{{{ .Release.Namespace }}}}.svc.cluster.local:443
              - service: http_status:404
"""
    (repo / "home.yaml").write_text(f"""
apiVersion: v1
kind: Secret
metadata: {{name: home-tls, namespace: network}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(crt.read_bytes()).decode()}
  tls.key: {base64.b64encode(key.read_bytes()).decode()}
---
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
  listeners:
    - {{name: http, protocol: HTTP, port: 80, allowedRoutes: {{namespaces: {{from: All}}}}}}
    - name: https
      protocol: HTTPS
      port: 443
      hostname: "*.home.test"
      allowedRoutes: {{namespaces: {{from: All}}}}
      tls: {{certificateRefs: [{{name: home-tls}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: apps}}
spec: {{ports: [{{name: http, port: 80, targetPort: {backend_port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: app-1, namespace: apps, labels: {{kubernetes.io/service-name: app}}}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: apps}}
spec:
  parentRefs: [{{name: envoy-external, namespace: network}}]
  hostnames: [app.home.test, secure.home.test]
  rules: [{{backendRefs: [{{name: app, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: https-redirect, namespace: network}}
spec:
  parentRefs: [{{name: envoy-external, sectionName: http}}]
  hostnames: [redirect.home.test]
  rules: [{{filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, statusCode: 301}}}}]}}]
""")
    if not with_cloudflared:
        return repo
    with (repo / "home.yaml").open("a") as f:
        f.write(f"""---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {{name: cloudflare-tunnel, namespace: network}}
spec:
  chart: {{spec: {{chart: app-template, sourceRef: {{kind: HelmRepository, name: bjw-s}}}}}}
  values:
    controllers:
      cloudflare-tunnel:
        containers:
          app:
            image: {{repository: docker.io/cloudflare/cloudflared, tag: 2025.1.0}}
            args: [tunnel, run]
    configMaps:
      config:
        data:
          config.yaml: |-{cfg}
""")
    return repo


class Edge:
    def __init__(self, tmp: Path, ca: CA, terminate: list[str] = (), extra: dict[str, Any] | None = None, name: str = "edge-1",
                 ports: dict[str, int] | None = None):
        crt, key = ca.issue(f"{name}-tunnel", "127.0.0.1", "localhost")
        pub_crt, pub_key = ca.issue(f"{name}-public", "*.home.test")
        self.ports = ports or {"tunnel": free_port(), "https": free_port(), "http": free_port(), "admin": free_port(),
                               "ssh": free_port()}
        cfg: dict[str, Any] = {
            "name": name,
            "tunnel": {"listen": f"127.0.0.1:{self.ports['tunnel']}", "certFile": str(crt), "keyFile": str(key),
                       "tokens": [{"name": "home", "token": TOKEN}]},
            "https": {"listen": f"127.0.0.1:{self.ports['https']}",
                      "hostnames": [{"hostname": h, "tls": "terminate", "certFile": str(pub_crt), "keyFile": str(pub_key)}
                                    for h in terminate]},
            "http": {"listen": f"127.0.0.1:{self.ports['http']}"},
            "tcp": [{"listen": f"127.0.0.1:{self.ports['ssh']}", "hostname": "ssh.home.test"}],
            "admin": {"listen": f"127.0.0.1:{self.ports['admin']}"},
            "drainTimeout": "20s",
            **(extra or {}),
        }
        self.config = tmp / f"{name}.yaml"
        self.config.write_text(json.dumps(cfg))
        self.log = tmp / f"{name}.log"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "homeplane", "edge", "--config", str(self.config)],
                                     stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        wait_for(lambda: httpx.get(self.admin + "/healthz").status_code == 200 or self.proc.poll() is not None, what="edge up")
        assert self.proc.poll() is None, self.log.read_text()

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def status(self) -> dict[str, Any]:
        return httpx.get(self.admin + "/status").json()

    def wait_connectors(self, n: int) -> None:
        wait_for(lambda: len([c for c in self.status()["connections"] if not c["draining"]]) >= n, what=f"{n} connector connections")

    def stop(self, sig: int = 15) -> None:
        stop_process(self.proc, sig)


class Home:
    """`homeplane run` on the repo with a connector to the edges."""

    def __init__(self, tmp: Path, repo: Path, ca: CA, edges: list[Edge], connections: int = 2, extra: list[str] | None = None,
                 name: str = "home", certificates: bool = False, env: dict[str, str] | None = None):
        self.admin_port = free_port()
        self.token = tmp / "token"
        self.token.write_text(TOKEN + "\n")
        self.log = tmp / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.args = [
            sys.executable, "-m", "homeplane", "run", str(repo), "--admin", f"127.0.0.1:{self.admin_port}",
            "--state", str(tmp / f"{name}.db"), "--gateway-address", "network/envoy-external=127.0.0.1",
            "--port-map", f"80={free_port()},443={free_port()}", "--no-external-dns",
            "--certificates" if certificates else "--no-certificates",
            "--tunnel-token-file", str(self.token), "--tunnel-ca", str(ca.path), "--tunnel-connections", str(connections),
            *[a for e in edges for a in ("--tunnel-edge", f"127.0.0.1:{e.ports['tunnel']}")], *(extra or []),
        ]
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.log.open("a"), stderr=subprocess.STDOUT, env=self.env)
        wait_for(lambda: self.proc.poll() is not None or httpx.get(f"http://127.0.0.1:{self.admin_port}/readyz").status_code == 200,
                 what="homeplane ready")
        assert self.proc.poll() is None, self.log.read_text()

    def status(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}/status").json()

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}/metrics").text

    def stop(self, sig: int = 15) -> None:
        stop_process(self.proc, sig)


def stop_process(proc: subprocess.Popen[Any], sig: int = 15, timeout: float = 30) -> int:
    """Signal (SIGTERM: drain and stop), wait, kill if it hangs; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), *args], capture_output=True, text=True, timeout=timeout + 10)


def wait_until(pred: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
