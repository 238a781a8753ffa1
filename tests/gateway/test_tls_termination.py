"""HTTPS termination on both implementations: the fast lane's OpenSSL layer (tls.c) and
Python's ssl module (HOMEPLANE_NATIVE_TLS=0). Same certificates, same expectations."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from homeplane.gateway.frontends import fastlane
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route, service
from tests.translate.helpers import tls_pair, tls_secret

LANES = ["native", "python"] if fastlane.native_tls_available() else ["python"]

LISTENERS = """- {name: a, protocol: HTTPS, port: 443, hostname: "*.a.test", tls: {certificateRefs: [{name: cert-a}]}, allowedRoutes: {namespaces: {from: All}}}
    - {name: b, protocol: HTTPS, port: 443, hostname: "b.test", tls: {certificateRefs: [{name: cert-b}]}, allowedRoutes: {namespaces: {from: All}}}"""


def manifests(backend: Backend, extra: str = "") -> str:
    return (
        gateway(LISTENERS)
        + tls_secret("cert-a", "network", "*.a.test")
        + tls_secret("cert-b", "network", "b.test")
        + service("a", backend.port)
        + route("ra", '["x.a.test"]', "\n    - backendRefs: [{name: a, port: 80}]", section="a")
        + route("rb", '["b.test"]', "\n    - backendRefs: [{name: a, port: 80}]", section="b")
        + extra
    )


@pytest.fixture(params=LANES)
def lane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HOMEPLANE_NATIVE_TLS", "1" if request.param == "native" else "0")
    return request.param


@pytest.fixture
def gw(lane: str, backend: Backend) -> Iterator[Gateway]:
    g = Gateway(manifests(backend))
    yield g
    g.close()


@pytest.fixture
def native_gw(monkeypatch: pytest.MonkeyPatch, backend: Backend) -> Iterator[Gateway]:
    """The fast lane's TLS only (CI builds it: test_fastlane checks the extension has TLS)."""
    monkeypatch.setenv("HOMEPLANE_NATIVE_TLS", "1")
    assert fastlane.native_tls_available()
    g = Gateway(manifests(backend))
    yield g
    g.close()


def ca_file(tmp_path: Path, *names: str) -> str:
    p = tmp_path / f"ca-{abs(hash(names))}.pem"
    p.write_bytes(base64.b64decode(tls_pair(*names)[0]))
    return str(p)


def client_ctx(ca: str | None = None, alpn: list[str] | None = None, tls: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if tls:
        ctx.minimum_version, ctx.maximum_version = tls
    return ctx


class Answer(NamedTuple):
    status: int
    body: bytes
    version: str | None
    session: ssl.SSLSession | None
    resumed: bool


def request(port: int, ctx: ssl.SSLContext, sni: str | None, host: str, session: ssl.SSLSession | None = None) -> Answer:
    """One HTTP/1.1 request with Connection: close, and what the TLS connection was."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
            s.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            # TLS 1.3 tickets arrive after the handshake: read once the answer is in
            return Answer(int(head.split(b" ", 2)[1]), body, s.version(), s.session, bool(s.session_reused))


def peer_cn(port: int, sni: str | None) -> str:
    from cryptography import x509

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_ctx().wrap_socket(raw, server_hostname=sni) as s:
            der = s.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_certificate_by_server_name_and_alpn(gw: Gateway, tmp_path: Path) -> None:
    port = gw.port(443)
    # each name validates against its own certificate: the listener's certificate was served
    a = request(port, client_ctx(ca_file(tmp_path, "*.a.test")), "x.a.test", "x.a.test")
    assert a.status == 200 and json.loads(a.body)["headers"]
    assert request(port, client_ctx(ca_file(tmp_path, "b.test")), "b.test", "b.test").status == 200
    # no server name, or one no listener has: the certificate of the port's first listener
    # (the most specific hostname first, as the port table orders them)
    assert peer_cn(port, None) == "CN=b.test"
    assert peer_cn(port, "unknown.test") == "CN=b.test"
    assert peer_cn(port, "y.a.test") == "CN=*.a.test"
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (None, None)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx(alpn=offered).wrap_socket(raw, server_hostname="b.test") as s:
                assert s.selected_alpn_protocol() == chosen
                assert s.version() == "TLSv1.3"


def test_forwarded_proto_and_large_bodies_both_ways(gw: Gateway) -> None:
    import hashlib

    import httpx

    with httpx.Client(verify=False, timeout=30) as c:
        url = f"https://127.0.0.1:{gw.port(443)}"
        r = c.get(url + "/echo", headers={"host": "b.test"})
        h = dict(r.json()["headers"])
        assert r.status_code == 200 and h["x-forwarded-proto"] == "https"
        big = c.get(url + "/big?bytes=6000000", headers={"host": "b.test"})
        assert len(big.content) == 6_000_000  # many TLS records, written through backpressure
        body = bytes(range(256)) * 8000
        r = c.post(url + "/echo", headers={"host": "b.test"}, content=body)
        assert r.json()["body_len"] == len(body) and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


TLS12 = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
TLS13 = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)


@pytest.mark.parametrize("versions", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_session_tickets_resume(gw: Gateway, versions: tuple[ssl.TLSVersion, ssl.TLSVersion]) -> None:
    ctx = client_ctx(tls=versions)
    port = gw.port(443)
    first = request(port, ctx, "b.test", "b.test")
    assert not first.resumed and first.session is not None
    second = request(port, ctx, "b.test", "b.test", session=first.session)
    assert second.status == 200 and second.resumed


@pytest.mark.compiled
def test_ticket_keys_rotate_and_expire(native_gw: Gateway) -> None:
    """Keys shared by the workers (derived from one secret) are the fast lane's; Python's ssl
    keeps random keys per context."""
    from homeplane.gateway.frontends import _fastlane

    gw = native_gw
    secret = gw.settings.ticket_secret
    assert secret
    ctx = client_ctx(tls=TLS13)
    port = gw.port(443)
    session = request(port, ctx, "b.test", "b.test").session
    try:
        # five hours on: made under an epoch still accepted, and resumed
        _fastlane.set_ticket_keys(secret, 3600, 12, 5 * 3600)
        assert request(port, ctx, "b.test", "b.test", session=session).resumed
        # thirteen hours on: past the twelve kept epochs, a full handshake
        _fastlane.set_ticket_keys(secret, 3600, 12, 13 * 3600)
        assert not request(port, ctx, "b.test", "b.test", session=session).resumed
        # another secret (another cluster): not accepted either
        _fastlane.set_ticket_keys(b"x" * 32)
        assert not request(port, ctx, "b.test", "b.test", session=session).resumed
    finally:
        _fastlane.set_ticket_keys(secret)


def test_minimum_and_maximum_versions_from_client_traffic_policy(lane: str, backend: Backend) -> None:
    ctp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: tls, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  tls: {minVersion: "1.3"}
"""
    g = Gateway(manifests(backend, ctp))
    try:
        port = g.port(443)
        assert request(port, client_ctx(tls=TLS13), "b.test", "b.test").status == 200
        with pytest.raises(ssl.SSLError):
            request(port, client_ctx(tls=TLS12), "b.test", "b.test")
        g.apply(manifests(backend, ctp.replace('minVersion: "1.3"', 'minVersion: "1.2", maxVersion: "1.2"')))
        assert request(port, client_ctx(tls=TLS12), "b.test", "b.test").version == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            request(port, client_ctx(tls=TLS13), "b.test", "b.test")
    finally:
        g.close()


def test_certificate_change_applies_to_new_connections(lane: str, backend: Backend) -> None:
    g = Gateway(manifests(backend))
    try:
        assert peer_cn(g.port(443), "b.test") == "CN=b.test"
        g.apply(manifests(backend).replace("name: cert-b}", "name: cert-c}") + tls_secret("cert-c", "network", "renewed.b.test", "b.test"))
        assert peer_cn(g.port(443), "b.test") == "CN=renewed.b.test"
    finally:
        g.close()


@pytest.mark.parametrize(
    "junk",
    [b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x00" * 4096],
    ids=["plain-http", "truncated-record", "zeros"],
)
def test_not_tls_is_closed_and_the_port_keeps_serving(gw: Gateway, junk: bytes) -> None:
    port = gw.port(443)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(junk)
        if junk.startswith(b"\x16"):
            s.shutdown(socket.SHUT_WR)  # a ClientHello cut short: the end of the stream ends it
        try:
            rest = s.recv(65536)
            while rest and not rest.startswith(b"\x15"):  # an alert may come first
                rest = s.recv(65536)
        except ConnectionResetError:
            pass
    assert request(port, client_ctx(), "b.test", "b.test").status == 200


@pytest.mark.compiled
def test_a_silent_client_is_closed_after_the_handshake_timeout(native_gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = native_gw
    monkeypatch.setattr(fastlane, "HANDSHAKE_TIMEOUT", 0.3)
    with socket.create_connection(("127.0.0.1", gw.port(443)), timeout=10) as s:
        started = time.monotonic()
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5


@pytest.mark.compiled
@pytest.mark.parametrize("versions", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_a_session_resumes_only_under_its_own_certificate(native_gw: Gateway, versions: tuple[ssl.TLSVersion, ssl.TLSVersion]) -> None:
    ctx = client_ctx(tls=versions)
    port = native_gw.port(443)
    session = request(port, ctx, "x.a.test", "x.a.test").session
    assert request(port, ctx, "y.a.test", "y.a.test", session=session).resumed  # the same listener and certificate
    other = request(port, ctx, "b.test", "b.test", session=session)
    assert not other.resumed and other.status == 200  # a full handshake, b.test's certificate
