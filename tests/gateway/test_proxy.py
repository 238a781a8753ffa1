"""The HTTP/1.1 data plane against real backends on loopback, through real sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

import httpx
import pytest

from homeplane.gateway.server import Settings
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route, service


def gw_for(manifests: str, settings: Settings | None = None) -> Gateway:
    return Gateway(manifests, settings)


@pytest.fixture
def simple(backend: Backend):
    g = gw_for(gateway() + service("a", backend.port) + route())
    yield g
    g.close()


def headers_of(resp: httpx.Response) -> dict[str, str]:
    return {n: v for n, v in resp.json()["headers"]}


def test_proxies_and_sets_forwarding_headers(simple: Gateway, backend: Backend) -> None:
    r = httpx.get(simple.url(80, "/echo?x=1"), headers={"host": "app.test", "x-forwarded-for": "203.0.113.7"})
    assert r.status_code == 200
    body = r.json()
    assert body["target"] == "/echo?x=1" and body["method"] == "GET"
    h = headers_of(r)
    assert h["host"] == "app.test"
    assert h["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "app.test"
    assert len(h["x-request-id"]) == 36
    # hop-by-hop response headers (and those the backend named in Connection) are not forwarded
    assert "x-upstream-secret" not in r.headers and r.headers["x-backend"] == "a"


def test_hop_by_hop_request_headers_are_stripped(simple: Gateway) -> None:
    r = httpx.get(
        simple.url(80, "/echo"),
        headers={"host": "app.test", "connection": "keep-alive, x-private", "x-private": "1", "te": "trailers", "keep-alive": "5"},
    )
    h = headers_of(r)
    assert "x-private" not in h and "te" not in h and "keep-alive" not in h


def test_unknown_host_is_404_never_an_open_proxy(simple: Gateway) -> None:
    assert httpx.get(simple.url(80, "/echo"), headers={"host": "evil.example"}).status_code == 404
    # absolute-form target naming another host: still routed by that host, so 404
    with socket.create_connection(("127.0.0.1", simple.port(80))) as s:
        s.sendall(b"GET http://evil.example/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 404")


def test_keep_alive_reuses_backend_connection(simple: Gateway, backend: Backend) -> None:
    with httpx.Client() as c:
        for _ in range(5):
            assert c.get(simple.url(80, "/echo"), headers={"host": "app.test"}).status_code == 200
    assert len({r["connection"] for r in backend.requests}) == 1


def test_route_matching(backend: Backend, backend_b: Backend) -> None:
    rules = """
    - matches: [{path: {type: Exact, value: /exact}}]
      backendRefs: [{name: b, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api/}}]
      backendRefs: [{name: b, port: 80}]
    - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
      backendRefs: [{name: b, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: X-Canary, value: "yes"}]}]
      backendRefs: [{name: b, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: v, value: "2"}]}]
      backendRefs: [{name: b, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /m}, method: POST}]
      backendRefs: [{name: b, port: 80}]
    - backendRefs: [{name: a, port: 80}]"""
    g = gw_for(gateway() + service("a", backend.port) + service("b", backend_b.port) + route(rules=rules))
    try:
        def who(path: str, method: str = "GET", **h: str) -> str:
            r = httpx.request(method, g.url(80, path), headers={"host": "app.test", **{k.replace("_", "-"): v for k, v in h.items()}})
            return r.headers["x-backend"]

        assert who("/exact") == "b" and who("/exact/more") == "a"
        assert who("/api") == "b" and who("/api/x") == "b" and who("/apix") == "a"  # segment-aware
        assert who("/re/123") == "b" and who("/re/abc") == "a"
        assert who("/h", x_canary="yes") == "b" and who("/h") == "a"
        assert who("/q?v=2&v=3") == "b" and who("/q?v=3") == "a"
        assert who("/m", "POST") == "b" and who("/m") == "a"
    finally:
        g.close()


def test_hostname_wildcards_and_case(backend: Backend, backend_b: Backend) -> None:
    g = gw_for(
        gateway()
        + service("a", backend.port)
        + service("b", backend_b.port)
        + route("wild", '["*.example.com"]', "\n    - backendRefs: [{name: a, port: 80}]")
        + route("exact", "[api.example.com]", "\n    - backendRefs: [{name: b, port: 80}]")
    )
    try:
        def who(host: str) -> int | str:
            r = httpx.get(g.url(80, "/"), headers={"host": host})
            return r.headers.get("x-backend", r.status_code)

        assert who("API.Example.COM:80") == "b"
        assert who("x.example.com") == "a" and who("a.b.example.com") == "a"
        assert who("example.com") == 404
    finally:
        g.close()


def test_redirect_and_header_filters(backend: Backend) -> None:
    rules = """
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 308}
    - filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Real-Ip, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]
            add: [{name: X-Added, value: "1"}]
            remove: [X-Remove-Me]
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: X-Frame-Options, value: DENY}], remove: [x-backend]}
      backendRefs: [{name: a, port: 80}]"""
    g = gw_for(gateway() + service("a", backend.port) + route(rules=rules))
    try:
        r = httpx.get(g.url(80, "/old/page?a=1"), headers={"host": "app.test"})
        assert r.status_code == 308 and r.headers["location"] == "https://app.test/new/page?a=1"
        r = httpx.get(g.url(80, "/echo"), headers={"host": "app.test", "x-remove-me": "1", "x-real-ip": "spoofed"})
        h = headers_of(r)
        assert h["x-real-ip"] == "127.0.0.1" and h["x-added"] == "1" and "x-remove-me" not in h
        assert r.headers["x-frame-options"] == "DENY" and "x-backend" not in r.headers
    finally:
        g.close()


def test_url_rewrite(backend: Backend) -> None:
    rules = """
    - matches: [{path: {type: PathPrefix, value: /app}}]
      filters:
        - type: URLRewrite
          urlRewrite: {hostname: internal.svc, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
      backendRefs: [{name: a, port: 80}]"""
    g = gw_for(gateway() + service("a", backend.port) + route(rules=rules))
    try:
        r = httpx.get(g.url(80, "/app/echo?z=9"), headers={"host": "app.test"})
        assert r.json()["target"] == "/echo?z=9"
        h = headers_of(r)
        assert h["host"] == "internal.svc" and h["x-forwarded-host"] == "app.test"
    finally:
        g.close()


def test_weighted_backends_and_invalid_share(backend: Backend, backend_b: Backend) -> None:
    rules = "\n    - backendRefs: [{name: a, port: 80, weight: 3}, {name: b, port: 80, weight: 1}, {name: ghost, port: 80, weight: 1}]"
    g = gw_for(gateway() + service("a", backend.port) + service("b", backend_b.port) + route(rules=rules))
    try:
        seen: Counter[str] = Counter()
        with httpx.Client() as c:
            for _ in range(500):
                r = c.get(g.url(80, "/echo"), headers={"host": "app.test"})
                seen[r.headers.get("x-backend", str(r.status_code))] += 1
        # expected 300 / 100 / 100 (the invalid backend's share answers 500)
        assert 240 < seen["a"] < 360 and 60 < seen["b"] < 140 and 60 < seen["500"] < 140, seen
    finally:
        g.close()


def test_no_ready_endpoint_is_503() -> None:
    g = gw_for(gateway() + service("a", 1, ready=False) + route())
    try:
        r = httpx.get(g.url(80, "/"), headers={"host": "app.test"})
        assert r.status_code == 503 and b"no healthy upstream" in r.content
    finally:
        g.close()


def test_backend_failures_give_502_503_504(backend: Backend) -> None:
    rules = """
    - matches: [{path: {type: PathPrefix, value: /hang}}]
      timeouts: {request: 1s}
      backendRefs: [{name: a, port: 80}]
    - backendRefs: [{name: a, port: 80}]"""
    dead = service("dead", 1).replace("name: dead", "name: dead")
    g = gw_for(gateway() + service("a", backend.port) + dead + route(rules=rules) + route("d", "[dead.test]", "\n    - backendRefs: [{name: dead, port: 80}]"))
    try:
        with httpx.Client(timeout=10) as c:
            assert c.get(g.url(80, "/reset"), headers={"host": "app.test"}).status_code == 502
            assert c.get(g.url(80, "/garbage"), headers={"host": "app.test"}).status_code == 502
            t = time.monotonic()
            assert c.get(g.url(80, "/hang"), headers={"host": "app.test"}).status_code == 504
            assert time.monotonic() - t < 3
            assert c.get(g.url(80, "/"), headers={"host": "dead.test"}).status_code == 503  # connection refused
            # and the gateway still serves
            assert c.get(g.url(80, "/echo"), headers={"host": "app.test"}).status_code == 200
    finally:
        g.close()


def test_retry_on_reset_with_backend_traffic_policy(backend: Backend) -> None:
    btp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: retry, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  retry:
    numRetries: 2
    retryOn: {triggers: [retriable-status-codes], httpStatusCodes: [503]}
"""
    g = gw_for(gateway() + service("a", backend.port) + route() + btp)
    try:
        r = httpx.get(g.url(80, "/status/503"), headers={"host": "app.test"})
        assert r.status_code == 503
        assert sum(1 for q in backend.requests if q["target"] == "/status/503") == 3  # 1 try + 2 retries
    finally:
        g.close()


def test_streaming_both_ways(simple: Gateway, backend: Backend) -> None:
    # upload: a 6 MB chunked body is streamed through and arrives intact
    import hashlib

    payload = bytes(range(256)) * (6 * 4096)

    def gen():
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    r = httpx.post(simple.url(80, "/echo"), headers={"host": "app.test"}, content=gen(), timeout=30)
    assert r.json()["body_len"] == len(payload)
    assert r.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert ["transfer-encoding", "chunked"] in r.json()["headers"]
    # download: 20 MB with content-length
    r = httpx.get(simple.url(80, "/big?bytes=20000000"), headers={"host": "app.test"}, timeout=30)
    assert len(r.content) == 20_000_000
    # server-sent events arrive one by one, not buffered until the end
    with httpx.stream("GET", simple.url(80, "/stream?n=3&ms=400"), headers={"host": "app.test"}) as s:
        t0 = time.monotonic()
        chunks = s.iter_raw()
        first = next(chunks)
        assert b"event 0" in first and time.monotonic() - t0 < 0.35
        rest = b"".join(chunks)
        assert b"event 2" in rest


def test_a_slow_client_at_the_end_of_a_response_does_not_stall_the_pooled_connection(simple: Gateway, backend: Backend) -> None:
    # The client reads nothing at first (a small receive buffer): the gateway's write buffer
    # fills and it stops reading from the backend - just as the whole response has arrived and
    # the backend connection goes back to the pool. The next request reuses that connection.
    for _ in range(4):  # the pause has to fall on the last read: likely, not certain, each time
        with socket.socket() as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.connect(("127.0.0.1", simple.port(80)))
            slow.sendall(b"GET /big?bytes=3000000 HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n")
            got = b""
            while chunk := slow.recv(16384):  # slowly, to the end: the gateway keeps pausing the backend
                got += chunk
                time.sleep(0.001)
            assert got.startswith(b"HTTP/1.1 200") and len(got.split(b"\r\n\r\n", 1)[1]) == 3000000
        r = httpx.get(simple.url(80, "/echo"), headers={"host": "app.test"}, timeout=5)
        assert r.status_code == 200
    assert backend.connections == 1  # the pooled connection was reused, and it answered


def test_websocket_upgrade_pass_through(simple: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", simple.port(80)), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        rest = head.split(b"\r\n\r\n", 1)[1]
        while len(rest) < 5:
            rest += s.recv(4096)
        assert rest == b"early"  # bytes sent right after the upgrade request
        s.sendall(b"ping-frame")
        got = b""
        while len(got) < 10:
            got += s.recv(4096)
        assert got == b"ping-frame"


def test_pipelined_requests_answer_in_order(simple: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", simple.port(80)), timeout=5) as s:
        s.sendall(
            b"GET /stream?n=2&ms=100 HTTP/1.1\r\nHost: app.test\r\n\r\n"
            b"GET /echo?second HTTP/1.1\r\nHost: app.test\r\n\r\n"
            b"GET /status/204 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    first = data.index(b"event 1")
    second = data.index(b"/echo?second")
    third = data.index(b"HTTP/1.1 204")
    assert first < second < third


@pytest.mark.parametrize(
    "raw,status",
    [
        (b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n  b\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: app.test\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n", 414),
        (b"GET /echo HTTP/1.1\r\nHost: app.test\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"z" * 70000 + b"\r\n\r\n", 431),
        (b"GET /echo HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00garbage", 400),
    ],
    ids=["cl+te", "obs-fold", "bad-name", "two-cl", "long-url", "many-headers", "big-header", "no-host", "tls-on-http"],
)
def test_malformed_requests(simple: Gateway, backend: Backend, raw: bytes, status: int) -> None:
    with socket.create_connection(("127.0.0.1", simple.port(80)), timeout=5) as s:
        s.sendall(raw)
        resp = s.recv(200)
    assert resp.startswith(b"HTTP/1.1 %d" % status), resp
    assert backend.requests == []  # nothing reached the backend
    assert httpx.get(simple.url(80, "/echo"), headers={"host": "app.test"}).status_code == 200


def test_slow_client_headers_timeout(backend: Backend) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route(), Settings(access_log=False, request_headers_timeout=1.0))
    try:
        with socket.create_connection(("127.0.0.1", g.port(80)), timeout=5) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: app.te")
            t = time.monotonic()
            resp = s.recv(200)
            assert resp.startswith(b"HTTP/1.1 408") and time.monotonic() - t < 3
    finally:
        g.close()


def test_config_changes_under_load_lose_no_request(backend: Backend, backend_b: Backend) -> None:
    base = gateway() + service("a", backend.port) + service("b", backend_b.port)
    g = gw_for(base + route())
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client() as c:
            while not stop.is_set():
                try:
                    r = c.get(g.url(80, "/echo"), headers={"host": "app.test"})
                    if r.status_code != 200:
                        failures.append(str(r.status_code))
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            target = "a" if i % 2 else "b"
            extra = route(f"extra{i}", f"[x{i}.test]")
            g.apply(base + route(rules=f"\n    - backendRefs: [{{name: {target}, port: 80}}]") + extra)
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
        g.close()
    assert failures == []
    assert backend.requests and backend_b.requests  # traffic really moved between backends


def test_https_sni_selects_listener_and_certificate(backend: Backend, backend_b: Backend, tmp_path) -> None:
    from tests.translate.helpers import tls_pair, tls_secret

    listeners = """- {name: a, protocol: HTTPS, port: 443, hostname: "*.a.test", tls: {certificateRefs: [{name: cert-a}]}, allowedRoutes: {namespaces: {from: All}}}
    - {name: b, protocol: HTTPS, port: 443, hostname: "b.test", tls: {certificateRefs: [{name: cert-b}]}, allowedRoutes: {namespaces: {from: All}}}"""
    m = (
        gateway(listeners)
        + tls_secret("cert-a", "network", "*.a.test")
        + tls_secret("cert-b", "network", "b.test")
        + service("a", backend.port)
        + service("b", backend_b.port)
        + route("ra", '["x.a.test"]', "\n    - backendRefs: [{name: a, port: 80}]", section="a")
        + route("rb", '["b.test"]', "\n    - backendRefs: [{name: b, port: 80}]", section="b")
    )
    g = gw_for(m)
    try:
        import base64
        import ssl

        def fetch(name: str, ca_secret: tuple[str, ...]) -> tuple[int, str]:
            crt = base64.b64decode(tls_pair(*ca_secret)[0])
            ca = tmp_path / f"{name}.pem"
            ca.write_bytes(crt)
            ctx = ssl.create_default_context(cafile=str(ca))
            with socket.create_connection(("127.0.0.1", g.port(443))) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as s:
                    s.sendall(f"GET /echo HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
            status = int(data.split(b" ", 2)[1])
            body = data.split(b"\r\n\r\n", 1)[1]
            return status, json.loads(body)["backend"] if status == 200 else ""

        # each name validates against its own certificate, so the right one was served
        assert fetch("x.a.test", ("*.a.test",)) == (200, "a")
        assert fetch("b.test", ("b.test",)) == (200, "b")
        h = headers_of(httpx.get(g.url(443, "/echo", "https"), headers={"host": "b.test"}, verify=False))
        assert h["x-forwarded-proto"] == "https"
    finally:
        g.close()


def test_http2_over_tls_and_cleartext(backend: Backend) -> None:
    from tests.translate.helpers import tls_secret

    listeners = """- {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
    - {name: https, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: cert}]}, allowedRoutes: {namespaces: {from: All}}}"""
    g = gw_for(gateway(listeners) + tls_secret("cert", "network", "app.test") + service("a", backend.port) + route())
    try:
        import hashlib

        with httpx.Client(http2=True, verify=False, timeout=30) as c:
            r = c.get(g.url(443, "/echo?h2=1", "https"), headers={"host": "app.test"})
            assert r.http_version == "HTTP/2" and r.status_code == 200
            h = headers_of(r)
            assert h["x-forwarded-proto"] == "https" and h["host"] == "app.test"
            body = b"z" * 300_000
            r = c.post(g.url(443, "/echo", "https"), headers={"host": "app.test"}, content=body)
            assert r.json()["body_len"] == len(body) and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
            r = c.get(g.url(443, "/big?bytes=5000000", "https"), headers={"host": "app.test"})
            assert len(r.content) == 5_000_000  # more than the client's initial window: flow control works
            assert c.get(g.url(443, "/nothing", "https"), headers={"host": "other.test"}).status_code == 404
        # many concurrent streams on one connection
        import asyncio

        async def many() -> list[int]:
            async with httpx.AsyncClient(http2=True, verify=False) as ac:
                rs = await asyncio.gather(*(ac.get(g.url(443, f"/echo?i={i}", "https"), headers={"host": "app.test"}) for i in range(30)))
                return [r.status_code for r in rs if r.http_version == "HTTP/2"]

        assert asyncio.run(many()) == [200] * 30
        # h2c with prior knowledge on the cleartext listener
        with httpx.Client(http1=False, http2=True) as c:
            r = c.get(g.url(80, "/echo"), headers={"host": "app.test"})
            assert r.http_version == "HTTP/2" and r.status_code == 200
    finally:
        g.close()
