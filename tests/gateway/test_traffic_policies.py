"""BackendTrafficPolicy and ClientTrafficPolicy effects on live traffic."""

from __future__ import annotations

import gzip
import time

import brotli
import httpx
import zstandard

from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway, closed_without_answer
from tests.gateway.manifests import gateway, route, service, two_endpoints


def btp(spec: str, target: str = "kind: HTTPRoute, name: r") -> str:
    return f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: policy, namespace: apps}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, {target}}}]
{spec}
"""


def test_compression_with_both_spellings(backend: Backend) -> None:
    spec = "  compressor: [{type: Zstd, zstd: {}}, {type: Brotli, brotli: {}}]\n  compression: [{type: Gzip}]"
    g = Gateway(gateway() + service("a", backend.port) + route() + btp(spec))
    try:
        def fetch(ae: str) -> tuple[httpx.Headers, bytes]:
            """Headers and the body exactly as sent (httpx would decode it otherwise)."""
            with httpx.Client() as c:
                req = c.build_request("GET", g.url(80, "/echo?" + "x" * 200), headers={"host": "app.test", "accept-encoding": ae})
                r = c.send(req, stream=True)
                try:
                    return r.headers, b"".join(r.iter_raw())
                finally:
                    r.close()

        h, raw = fetch("gzip")
        assert h["content-encoding"] == "gzip" and h["vary"] == "accept-encoding"
        assert "content-length" not in h
        assert b'"method": "GET"' in gzip.decompress(raw)
        h, raw = fetch("gzip, br")  # the policy's order is the preference: brotli before gzip
        assert h["content-encoding"] == "br" and b"GET" in brotli.decompress(raw)
        h, raw = fetch("zstd;q=1, br;q=0.5")
        assert h["content-encoding"] == "zstd"
        assert b"GET" in zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        h, _ = fetch("br;q=0, zstd;q=0, gzip;q=0")
        assert "content-encoding" not in h
        h, raw = fetch("identity")
        assert "content-encoding" not in h and b'"method": "GET"' in raw
    finally:
        g.close()


def test_active_http_health_check_takes_a_failing_endpoint_out() -> None:
    good, bad = Backend("good"), Backend("bad")
    bad.close()  # nothing listens there any more
    spec = """  healthCheck:
    active: {type: HTTP, http: {path: /healthz, expectedStatuses: [200]}, interval: 200ms, timeout: 100ms, unhealthyThreshold: 2, healthyThreshold: 1}"""
    g = Gateway(gateway() + two_endpoints("a", good.port, bad.port) + route() + btp(spec))
    try:
        time.sleep(1.0)  # a few check rounds
        codes = [httpx.get(g.url(80, "/echo"), headers={"host": "app.test"}).status_code for _ in range(20)]
        assert codes == [200] * 20
        assert any(r["target"] == "/healthz" and ["user-agent", "homeplane-health-check"] in r["headers"] for r in good.requests)
    finally:
        g.close()
        good.close()


def test_passive_outlier_detection_ejects_an_endpoint_answering_5xx() -> None:
    ok, failing = Backend("ok"), Backend("failing")
    spec = "  healthCheck:\n    passive: {consecutive5XxErrors: 2, baseEjectionTime: 30s, maxEjectionPercent: 50}"
    rules = "\n    - backendRefs: [{name: a, port: 80}]"
    g = Gateway(gateway() + two_endpoints("a", ok.port, failing.port) + route(rules=rules) + btp(spec))
    try:
        seen = {httpx.get(g.url(80, "/echo"), headers={"host": "app.test"}).headers.get("x-backend") for _ in range(40)}
        assert seen == {"ok", "failing"}  # both serve while healthy
        failing.fail_all = True
        before = len(failing.requests)
        codes = [httpx.get(g.url(80, "/echo"), headers={"host": "app.test"}).status_code for _ in range(40)]
        # two 5xx in a row eject it for 30 s: it sees at most a couple more requests
        assert len(failing.requests) - before <= 3
        assert codes[-20:] == [200] * 20
    finally:
        g.close()
        ok.close()
        failing.close()


def test_circuit_breaker_limits_parallel_requests(backend: Backend) -> None:
    import concurrent.futures

    spec = "  circuitBreaker: {maxParallelRequests: 2}"
    g = Gateway(gateway() + service("a", backend.port) + route() + btp(spec))
    try:
        def slow(_: int) -> int:
            return httpx.get(g.url(80, "/stream?n=2&ms=300"), headers={"host": "app.test"}, timeout=10).status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(slow, range(6)))
        assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
    finally:
        g.close()


def test_client_ip_detection_with_trusted_hops(backend: Backend) -> None:
    ctp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: hops, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  clientIPDetection: {xForwardedFor: {numTrustedHops: 1}}
"""
    rules = """
    - filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: X-Client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]}
      backendRefs: [{name: a, port: 80}]"""
    g = Gateway(gateway() + service("a", backend.port) + route(rules=rules) + ctp)
    try:
        r = httpx.get(g.url(80, "/echo"), headers={"host": "app.test", "x-forwarded-for": "198.51.100.1, 203.0.113.5"})
        h = dict(r.json()["headers"])
        assert h["x-client"] == "203.0.113.5"
        assert h["x-forwarded-for"] == "198.51.100.1, 203.0.113.5, 127.0.0.1"
    finally:
        g.close()


def test_client_traffic_http2_settings_and_connection_limit(backend: Backend) -> None:
    import socket

    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    ctp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: tuning, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  http2: {maxConcurrentStreams: 7, initialStreamWindowSize: 64Ki, initialConnectionWindowSize: 1Mi}
  connection: {connectionLimit: {value: 2}}
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + ctp)
    try:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        with socket.create_connection(("127.0.0.1", g.port(80)), timeout=5) as s:
            s.sendall(client.data_to_send())
            settings: dict = {}
            window = 0
            deadline = time.monotonic() + 5
            while (not settings or not window) and time.monotonic() < deadline:
                for ev in client.receive_data(s.recv(65536)):
                    if isinstance(ev, h2.events.RemoteSettingsChanged):
                        settings = {k: v.new_value for k, v in ev.changed_settings.items()}
                    elif isinstance(ev, h2.events.WindowUpdated) and ev.stream_id == 0:
                        window = ev.delta
            assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
            assert settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 64 * 1024
            assert window + 65535 == 1024 * 1024
            # this is one of two allowed connections; a third is closed at once
            other = socket.create_connection(("127.0.0.1", g.port(80)), timeout=5)
            time.sleep(0.1)
            assert closed_without_answer(g.port(80))
            other.sendall(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert other.recv(100).startswith(b"HTTP/1.1 200")
            other.close()
    finally:
        g.close()
