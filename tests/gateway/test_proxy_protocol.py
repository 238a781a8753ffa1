"""PROXY protocol (ClientTrafficPolicy proxyProtocol / enableProxyProtocol): parser and listeners."""

from __future__ import annotations

import json
import socket
import ssl
import struct

import pytest

from homeplane.gateway.frontends import proxyproto
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route, service


def v2(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 443, cmd: int = 1) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return proxyproto.V2_SIGNATURE + bytes([0x20 | cmd, 0x11]) + struct.pack("!H", len(body)) + body


def test_v1_and_v2_headers_parse_to_the_client_address() -> None:
    h1 = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\nGET / HTTP/1.1\r\n"
    info = proxyproto.parse(h1)
    assert info is not None and (info.client_ip, info.client_port) == ("198.51.100.7", 40000)
    assert h1[info.length :].startswith(b"GET /")
    info6 = proxyproto.parse(b"PROXY TCP6 2001:db8::1 ::1 5000 80\r\n")
    assert info6 is not None and info6.client_ip == "2001:db8::1"
    raw = v2("203.0.113.9", 51000) + b"rest"
    info2 = proxyproto.parse(raw)
    assert info2 is not None and (info2.client_ip, info2.client_port) == ("203.0.113.9", 51000)
    assert raw[info2.length :] == b"rest"
    # LOCAL (a balancer's health check) and UNKNOWN keep the peer's own address
    assert proxyproto.parse(v2("1.2.3.4", 1, cmd=0)).client_ip is None  # type: ignore[union-attr]
    assert proxyproto.parse(b"PROXY UNKNOWN\r\n").client_ip is None  # type: ignore[union-attr]


def test_partial_headers_ask_for_more_bytes() -> None:
    full = v2("203.0.113.9", 51000)
    for n in (1, 5, 12, 15, 20, len(full) - 1):
        assert proxyproto.parse(full[:n]) is None
    line = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\n"
    for n in (1, 3, 6, 20, len(line) - 1):
        assert proxyproto.parse(line[:n]) is None


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n", b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n", b"PROXY TCP9 a b c d\r\n", b"PROXY " + b"9" * 200],
    ids=["plain-http", "bad-ip", "bad-proto", "too-long"],
)
def test_malformed_headers_are_rejected(data: bytes) -> None:
    with pytest.raises(proxyproto.ProxyProtocolError):
        proxyproto.parse(data)


def ctp(spec: str) -> str:
    return f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {{name: pp, namespace: network}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]
{spec}
"""


def exchange(port: int, preamble: bytes, host: str = "app.test") -> tuple[int, dict]:
    """One request over a fresh connection that starts with preamble (sent in the same segment)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(preamble + f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data:
        return 0, {}
    status = int(data.split(b" ", 2)[1])
    body = data.split(b"\r\n\r\n", 1)[1]
    return status, dict(json.loads(body)["headers"]) if status == 200 else {}


def test_required_proxy_protocol_sets_the_client_address(backend: Backend) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route() + ctp("  enableProxyProtocol: true"))
    try:
        status, h = exchange(g.port(80), b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n")
        assert status == 200 and h["x-forwarded-for"] == "198.51.100.7"
        status, h = exchange(g.port(80), v2("203.0.113.9", 51000))
        assert status == 200 and h["x-forwarded-for"] == "203.0.113.9"
        # required: a connection without the header is closed without an answer
        assert exchange(g.port(80), b"")[0] == 0
    finally:
        g.close()


def test_optional_proxy_protocol_also_serves_direct_clients(backend: Backend) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route() + ctp("  proxyProtocol: {optional: true}"))
    try:
        status, h = exchange(g.port(80), b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n")
        assert status == 200 and h["x-forwarded-for"] == "198.51.100.7"
        status, h = exchange(g.port(80), b"")
        assert status == 200 and h["x-forwarded-for"] == "127.0.0.1"
    finally:
        g.close()


@pytest.mark.parametrize("native_tls", ["1", "0"], ids=["fast-lane-tls", "python-ssl"])
def test_proxy_header_before_tls_even_in_the_same_segment_as_the_client_hello(backend: Backend, native_tls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEPLANE_NATIVE_TLS", native_tls)
    from tests.translate.helpers import tls_secret

    listeners = "- {name: https, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: cert}]}, allowedRoutes: {namespaces: {from: All}}}"
    g = Gateway(gateway(listeners) + tls_secret("cert", "network", "app.test") + service("a", backend.port) + route()
                + ctp("  enableProxyProtocol: true"))
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="app.test")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        with socket.create_connection(("127.0.0.1", g.port(443)), timeout=10) as s:
            s.sendall(v2("192.0.2.44", 1234) + outgoing.read())  # header and ClientHello together
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    s.sendall(outgoing.read())
                    incoming.write(s.recv(65536))
            tls.write(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            s.sendall(outgoing.read())
            data = b""
            while True:
                try:
                    got = tls.read(65536)
                    if not got:  # close_notify
                        break
                    data += got
                except ssl.SSLWantReadError:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    incoming.write(chunk)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        h = dict(body["headers"])
        assert h["x-forwarded-for"] == "192.0.2.44" and h["x-forwarded-proto"] == "https"
    finally:
        g.close()


def test_turning_proxy_protocol_on_and_off_on_a_live_port(backend: Backend) -> None:
    base = gateway() + service("a", backend.port) + route()
    g = Gateway(base)
    try:
        assert exchange(g.port(80), b"")[0] == 200
        g.apply(base + ctp("  enableProxyProtocol: true"))
        status, h = exchange(g.port(80), b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n")
        assert status == 200 and h["x-forwarded-for"] == "198.51.100.7"
        g.apply(base)
        status, h = exchange(g.port(80), b"")
        assert status == 200 and h["x-forwarded-for"] == "127.0.0.1"
    finally:
        g.close()


def test_a_client_that_never_sends_the_header_is_dropped(backend: Backend) -> None:
    from homeplane.gateway.server import Settings

    g = Gateway(gateway() + service("a", backend.port) + route() + ctp("  enableProxyProtocol: true"),
                Settings(access_log=False, request_headers_timeout=0.5))
    try:
        with socket.create_connection(("127.0.0.1", g.port(80)), timeout=5) as s:
            s.sendall(b"PROXY TCP4 1.2.3.4")  # and then nothing more
            assert s.recv(100) == b""  # closed by the gateway, well before the 5 s client timeout
    finally:
        g.close()
