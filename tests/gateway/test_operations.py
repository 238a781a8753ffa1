"""What an operator relies on: access log, certificate rotation, connection cap, mirroring,
consistent hashing and Envoy Gateway Backend resources, all on live traffic."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
import struct
import time

import httpx
import pytest

from homeplane.gateway.server import Settings
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway, closed_without_answer
from tests.gateway.manifests import gateway, route, service, two_endpoints
from tests.translate.helpers import tls_secret

HTTPS = "- {name: https, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: cert}]}, allowedRoutes: {namespaces: {from: All}}}"


def test_access_log_has_one_structured_line_per_request(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route(), Settings(access_log=True))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            httpx.post(g.url(80, "/echo?x=1"), headers={"host": "app.test"}, content=b"12345")
            httpx.get(g.url(80, "/nope"), headers={"host": "unknown.test"})
            deadline = time.monotonic() + 5
            while len([r for r in caplog.records if r.name == "homeplane.access"]) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "homeplane.access"]
        ok, missing = lines
        assert ok["response_code"] == 200 and ok["method"] == "POST" and ok["x-envoy-origin-path"] == "/echo?x=1"
        assert ok["route_name"] and "apps/r" in ok["route_name"] and ok["upstream_host"]
        assert ok["bytes_received"] == 5 and ok["bytes_sent"] > 0
        assert ok["duration"] >= 0 and ok["x-request-id"]
        assert missing["response_code"] == 404 and missing["route_name"] is None and missing["upstream_host"] is None
        assert missing["response_flags"] == "NR"
    finally:
        g.close()


def peer_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="app.test") as s:
        der = s.getpeercert(binary_form=True)
    assert der
    return der


def test_certificate_rotation_keeps_open_connections(backend: Backend) -> None:
    base = gateway(HTTPS) + service("a", backend.port) + route()
    g = Gateway(base + tls_secret("cert", "network", "app.test"))
    try:
        before = peer_cert(g.port(443))
        with httpx.Client(verify=False) as c:
            assert c.get(g.url(443, "/echo", "https"), headers={"host": "app.test"}).status_code == 200
            g.apply(base + tls_secret("cert", "network", "app.test", "www.app.test"))  # renewed, one more name
            # the connection opened before the rotation keeps working on the old session
            r = c.get(g.url(443, "/echo", "https"), headers={"host": "app.test"})
            assert r.status_code == 200 and r.json()["connection"] == 1
        after = peer_cert(g.port(443))
        assert after != before  # new handshakes present the new certificate
    finally:
        g.close()


def test_connection_cap_closes_connections_over_the_limit(backend: Backend) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route(), Settings(access_log=False, max_connections=3))
    held = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", g.port(80)), timeout=5)
            held.append(s)
        time.sleep(0.2)
        assert closed_without_answer(g.port(80))
        for s in held:
            s.close()
        time.sleep(0.2)
        assert httpx.get(g.url(80, "/echo"), headers={"host": "app.test"}).status_code == 200  # room again
    finally:
        for s in held:
            s.close()
        g.close()


def test_request_mirror_sends_a_copy_and_ignores_its_answer(backend: Backend, backend_b: Backend) -> None:
    rules = """
    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: b, port: 80}}
      backendRefs: [{name: a, port: 80}]"""
    backend_b.fail_all = True  # the mirror's answer never reaches the client
    g = Gateway(gateway() + service("a", backend.port) + service("b", backend_b.port) + route(rules=rules))
    try:
        r = httpx.get(g.url(80, "/echo?m=1"), headers={"host": "app.test"})
        assert r.status_code == 200 and r.json()["backend"] == "a"
        deadline = time.monotonic() + 5
        while not backend_b.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [q["target"] for q in backend_b.requests] == ["/echo?m=1"]
        assert dict(backend_b.requests[0]["headers"])["host"] == "app.test-shadow"  # as Envoy marks shadows
        # with a body, fixed-length and chunked: the copy carries the same bytes
        body = b"payload " * 1000
        r = httpx.post(g.url(80, "/echo?m=2"), headers={"host": "app.test"}, content=body)
        assert r.status_code == 200 and r.json()["body_len"] == len(body)
        r = httpx.post(g.url(80, "/echo?m=3"), headers={"host": "app.test"}, content=iter([body[:100], body[100:]]))
        assert r.status_code == 200
        deadline = time.monotonic() + 5
        while len(backend_b.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        copies = {q["target"]: q for q in backend_b.requests}
        for target in ("/echo?m=2", "/echo?m=3"):
            assert copies[target]["method"] == "POST" and copies[target]["body_len"] == len(body)
            assert copies[target]["body_sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        g.close()


def test_consistent_hash_on_a_header_pins_clients_to_an_endpoint(backend: Backend, backend_b: Backend) -> None:
    svc = two_endpoints("a", backend.port, backend_b.port) + """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: hash, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  loadBalancer: {type: ConsistentHash, consistentHash: {type: Header, header: {name: x-user}}}
"""
    g = Gateway(gateway() + svc + route())
    try:
        def who(user: str) -> str:
            return httpx.get(g.url(80, "/echo"), headers={"host": "app.test", "x-user": user}).json()["backend"]

        users = [f"user{i}" for i in range(20)]
        first = {u: who(u) for u in users}
        assert all(who(u) == first[u] for u in users for _ in range(3))
        assert set(first.values()) == {"a", "b"}  # and the hash spreads users over both
    finally:
        g.close()


def test_envoy_gateway_backend_with_an_ip_endpoint(backend: Backend) -> None:
    m = f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: nas, namespace: apps}}
spec:
  endpoints: [{{ip: {{address: 127.0.0.1, port: {backend.port}}}}}]
"""
    rules = "\n    - backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: nas}]"
    g = Gateway(gateway() + m + route(rules=rules))
    try:
        r = httpx.get(g.url(80, "/echo"), headers={"host": "app.test"})
        assert r.status_code == 200 and r.json()["backend"] == "a"
    finally:
        g.close()


def test_buffer_limit_decides_which_bodies_can_be_mirrored(backend: Backend, backend_b: Backend) -> None:
    rules = """
    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: b, port: 80}}}]
      backendRefs: [{name: a, port: 80}]"""
    base = gateway() + service("a", backend.port) + service("b", backend_b.port) + route(rules=rules)
    ctp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: buffers, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  connection: {bufferLimit: 1Mi}
"""
    body = b"z" * 200_000
    g = Gateway(base)
    try:
        def post(tag: str) -> None:
            r = httpx.post(g.url(80, f"/echo?{tag}"), headers={"host": "app.test"}, content=body)
            assert r.status_code == 200 and r.json()["body_len"] == len(body)  # the request itself always passes

        post("default")
        g.apply(base + ctp)
        post("raised")
        deadline = time.monotonic() + 5
        while not backend_b.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        # 200 kB is over the default 64 KiB: only the request under the 1 MiB limit was copied
        assert [(q["target"], q["body_len"]) for q in backend_b.requests] == [("/echo?raised", len(body))]
    finally:
        g.close()


def h2c_service(port: int) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: grpcish, namespace: apps}}
spec: {{ports: [{{name: h2c, port: 80, appProtocol: kubernetes.io/h2c}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: grpcish, namespace: apps}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: h2c, port: {port}}}]}}]
"""


H2C_RULES = "\n    - backendRefs: [{name: grpcish, port: 80}]"


def test_h2c_backend_by_app_protocol() -> None:
    from tests.gateway.h2backend import H2Backend

    b = H2Backend()
    g = Gateway(gateway() + h2c_service(b.port) + route(rules=H2C_RULES))
    try:
        with httpx.Client(timeout=10) as c:
            r = c.get(g.url(80, "/items?x=1"), headers={"host": "app.test", "x-custom": "1"})
            assert r.status_code == 200 and r.json()["protocol"] == "HTTP/2"
            got = r.json()
            assert (got["method"], got["path"], got["authority"]) == ("GET", "/items?x=1", "app.test")
            h = dict(got["headers"])
            assert h["x-custom"] == "1" and "connection" not in h and h["x-forwarded-proto"] == "http"
            body = b"q" * 300_000  # more than HTTP/2's initial 64 KiB window: flow control works
            r = c.post(g.url(80, "/upload"), headers={"host": "app.test"}, content=body)
            assert r.status_code == 200 and r.json()["body_len"] == len(body) and r.json()["method"] == "POST"
            r = c.post(g.url(80, "/chunked"), headers={"host": "app.test"}, content=iter([b"a" * 1000, b"b" * 1000]))
            assert r.json()["body_len"] == 2000
        assert b.connections == 1  # one h2c connection, reused for every request
    finally:
        g.close()
        b.close()


def concurrently(n: int, fn) -> list:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, range(n)))


def test_h2c_requests_share_one_connection_as_concurrent_streams() -> None:
    from tests.gateway.h2backend import H2Backend

    b = H2Backend()
    g = Gateway(gateway() + h2c_service(b.port) + route(rules=H2C_RULES))
    try:
        def get(i: int) -> int:
            with httpx.Client(timeout=10) as c:  # a client connection each: the gateway sees 8 at once
                r = c.get(g.url(80, f"/slow/{i}"), headers={"host": "app.test"})
                assert r.json()["path"] == f"/slow/{i}"
                return r.status_code

        assert concurrently(8, get) == [200] * 8
        assert b.connections == 1 and b.most_in_flight >= 4  # multiplexed, not queued
        # a stream the backend resets fails alone: the others on the connection go on
        def mixed(i: int) -> int:
            with httpx.Client(timeout=10) as c:
                return c.get(g.url(80, "/reset" if i == 0 else f"/slow/{i}"), headers={"host": "app.test"}).status_code

        assert sorted(concurrently(4, mixed)) == [200, 200, 200, 502]
        assert b.connections == 1
        # a client that goes away (TCP reset) cancels its stream (RST_STREAM), not the connection
        port = int(g.url(80).split(":")[2].split("/")[0])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /slow/abandoned HTTP/1.1\r\nhost: app.test\r\n\r\n")
            time.sleep(0.1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        deadline = time.monotonic() + 5
        while b.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.cancelled == 1
        with httpx.Client(timeout=10) as c:
            assert c.get(g.url(80, "/after"), headers={"host": "app.test"}).status_code == 200
        assert b.connections == 1
    finally:
        g.close()
        b.close()


def test_h2c_backend_stream_limit_opens_more_connections() -> None:
    from tests.gateway.h2backend import H2Backend

    b = H2Backend(max_streams=2)
    g = Gateway(gateway() + h2c_service(b.port) + route(rules=H2C_RULES))
    try:
        with httpx.Client(timeout=10) as c:  # the connection (and the backend's SETTINGS) first
            assert c.get(g.url(80, "/warm"), headers={"host": "app.test"}).status_code == 200

        def get(i: int) -> int:
            with httpx.Client(timeout=10) as c:
                return c.get(g.url(80, f"/slow/{i}"), headers={"host": "app.test"}).status_code

        assert concurrently(6, get) == [200] * 6
        # SETTINGS_MAX_CONCURRENT_STREAMS=2 is respected: never more than 2 streams on a connection
        assert b.most_in_flight == 2 and b.connections >= 3
    finally:
        g.close()
        b.close()


def tls_backend(name: str, tmp_path) -> tuple[Backend, str]:
    """An HTTPS backend with a self-signed certificate for name, and that certificate's PEM."""
    import base64
    import ssl

    from tests.translate.helpers import tls_pair

    crt, key = (base64.b64decode(x) for x in tls_pair(name))
    (tmp_path / "b.crt").write_bytes(crt)
    (tmp_path / "b.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "b.crt", tmp_path / "b.key")
    return Backend("tls", ctx), crt.decode()


def backend_tls_policy(validation: str) -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: upstream-tls, namespace: apps}}
spec:
  targetRefs: [{{group: "", kind: Service, name: a}}]
  validation: {validation}
"""


def test_backend_tls_policy_encrypts_and_verifies(tmp_path) -> None:
    import textwrap

    b, pem = tls_backend("backend.internal", tmp_path)
    ca = "\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: internal-ca, namespace: apps}\ndata:\n  ca.crt: |\n" + textwrap.indent(pem, "    ")
    base = gateway() + service("a", b.port) + route() + ca
    g = Gateway(base + backend_tls_policy("{hostname: backend.internal, caCertificateRefs: [{group: '', kind: ConfigMap, name: internal-ca}]}"))
    try:
        def status() -> int:
            return httpx.get(g.url(80, "/echo"), headers={"host": "app.test"}, timeout=10).status_code

        def served() -> int:  # requests that reached the backend (health probes aside)
            return sum(1 for q in b.requests if q["target"] == "/echo")

        assert status() == 200 and served() == 1  # over TLS, the certificate checked against the CA
        # active health checks go over TLS too: the endpoint stays healthy and gets probed
        check = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: hc, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  healthCheck:
    active: {type: HTTP, http: {path: /healthz}, interval: 100ms, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1}
"""
        g.apply(base + check + backend_tls_policy("{hostname: backend.internal, caCertificateRefs: [{group: '', kind: ConfigMap, name: internal-ca}]}"))
        time.sleep(0.6)
        assert any(q["target"] == "/healthz" for q in b.requests)
        assert status() == 200
        # a name the certificate does not carry: refused, nothing reaches the backend
        tr = g.apply(base + backend_tls_policy("{hostname: wrong.internal, caCertificateRefs: [{group: '', kind: ConfigMap, name: internal-ca}]}"))
        assert status() == 503 and served() == 2
        cond = tr.status[("gateway.networking.k8s.io", "BackendTLSPolicy", "apps", "upstream-tls")]["ancestors"][0]
        assert cond["ancestorRef"]["name"] == "gw" and cond["conditions"][0]["reason"] == "Accepted"
        # subjectAltNames take over from hostname for the check (hostname stays the SNI)
        g.apply(base + backend_tls_policy("{hostname: sni.internal, subjectAltNames: [{type: Hostname, hostname: backend.internal}], caCertificateRefs: [{group: '', kind: ConfigMap, name: internal-ca}]}"))
        assert status() == 200 and served() == 3
        # the system CAs do not know this self-signed certificate
        g.apply(base + backend_tls_policy("{hostname: backend.internal, wellKnownCACertificates: System}"))
        assert status() == 503
        # a missing CA: not accepted, and the route fails closed instead of sending in clear
        tr = g.apply(gateway() + service("a", b.port) + route() + backend_tls_policy("{hostname: backend.internal, caCertificateRefs: [{group: '', kind: ConfigMap, name: internal-ca}]}"))
        conds = {c["type"]: c for c in tr.status[("gateway.networking.k8s.io", "BackendTLSPolicy", "apps", "upstream-tls")]["ancestors"][0]["conditions"]}
        assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == ("False", "NoValidCACertificate")
        assert conds["ResolvedRefs"]["reason"] == "InvalidCACertificateRef"
        assert status() == 503 and served() == 3
    finally:
        g.close()
        b.close()


def test_h2c_backend_is_health_checked_over_http2() -> None:
    from tests.gateway.h2backend import H2Backend

    b = H2Backend()
    policy = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: checks, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  healthCheck:
    active: {type: HTTP, http: {path: /healthz, expectedStatuses: [200]}, interval: 200ms, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1}
"""
    g = Gateway(gateway() + h2c_service(b.port) + route(rules=H2C_RULES) + policy)
    try:
        deadline = time.monotonic() + 5
        while not any(r["path"] == "/healthz" for r in b.requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        probe = next(r for r in b.requests if r["path"] == "/healthz")
        assert probe["method"] == "GET" and ["user-agent", "homeplane-health-check"] in probe["headers"]
        with httpx.Client(timeout=10) as c:
            assert c.get(g.url(80, "/x"), headers={"host": "app.test"}).status_code == 200
    finally:
        g.close()
        b.close()
