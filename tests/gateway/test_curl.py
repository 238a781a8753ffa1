"""The gateway seen by curl, where a second client matters: TLS with SNI, HTTP/2, upgrades."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route, service
from tests.translate.helpers import tls_pair, tls_secret

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by scripts/install-test-deps.sh")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def test_curl_http2_over_tls_with_sni_per_listener(backend: Backend, backend_b: Backend, tmp_path: Path) -> None:
    listeners = """- {name: a, protocol: HTTPS, port: 443, hostname: "*.a.test", tls: {certificateRefs: [{name: cert-a}]}, allowedRoutes: {namespaces: {from: All}}}
    - {name: b, protocol: HTTPS, port: 443, hostname: "b.test", tls: {certificateRefs: [{name: cert-b}]}, allowedRoutes: {namespaces: {from: All}}}"""
    g = Gateway(
        gateway(listeners) + tls_secret("cert-a", "network", "*.a.test") + tls_secret("cert-b", "network", "b.test")
        + service("a", backend.port) + service("b", backend_b.port)
        + route("ra", '["x.a.test"]', "\n    - backendRefs: [{name: a, port: 80}]", section="a")
        + route("rb", '["b.test"]', "\n    - backendRefs: [{name: b, port: 80}]", section="b")
    )
    try:
        port = g.port(443)
        for host, names, expect in (("x.a.test", ("*.a.test",), "a"), ("b.test", ("b.test",), "b")):
            ca = tmp_path / f"{expect}.pem"
            ca.write_bytes(base64.b64decode(tls_pair(*names)[0]))
            r = curl("--http2", "--cacert", str(ca), "--resolve", f"{host}:{port}:127.0.0.1",
                     "-w", "\n%{http_version}", f"https://{host}:{port}/echo")
            assert r.returncode == 0, r.stderr  # the certificate for this name verified against its own CA
            body, version = r.stdout.rsplit("\n", 1)
            assert version == "2" and json.loads(body)["backend"] == expect
    finally:
        g.close()


def test_curl_h2c_prior_knowledge_and_websocket_upgrade(backend: Backend) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route())
    try:
        port = g.port(80)
        r = curl("--http2-prior-knowledge", "-H", "Host: app.test", "-w", "\n%{http_version}", f"http://127.0.0.1:{port}/echo")
        body, version = r.stdout.rsplit("\n", 1)
        assert version == "2" and json.loads(body)["method"] == "GET"
        # an Upgrade passes through to the backend, which switches protocols
        r = curl("-i", "-N", "--max-time", "2", "-H", "Host: app.test", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
                 "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", f"http://127.0.0.1:{port}/ws")
        head = r.stdout.split("\r\n\r\n", 1)[0].lower()
        assert head.startswith("http/1.1 101") and "upgrade: websocket" in head
    finally:
        g.close()
