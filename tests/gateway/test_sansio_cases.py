"""The gateway's pure cores, as case tables with no sockets (CoreDNS's test.Case style): the
TLS ClientHello reader, the router, redirects and rewrites, client IP detection."""

from __future__ import annotations

import ssl

import pytest

from homeplane.gateway.frontends.tlspeek import NEED_MORE, NotTLS, client_hello_sni
from homeplane.gateway.routing.filters import redirect_location, replace_path
from homeplane.gateway.routing.headers import detect_client_ip, parse_cidrs
from homeplane.gateway.routing.router import compile_gateway, normalize_host
from homeplane.translate import snapshot as ir


def client_hello(server_name: str | None) -> bytes:
    """A real ClientHello, from Python's TLS stack through memory buffers (no socket)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_client_hello_sni_cases() -> None:
    hello = client_hello("Git.Example.TEST")
    cases = [
        (hello, "git.example.test"),  # lower-cased
        (client_hello(None), None),  # no SNI extension
        (hello[:5], NEED_MORE),  # record header only
        (hello[: len(hello) // 2], NEED_MORE),  # every prefix asks for more, never guesses
        (b"", NEED_MORE),
    ]
    for data, want in cases:
        assert client_hello_sni(data) == want
    for n in range(len(hello)):
        assert client_hello_sni(hello[:n]) is NEED_MORE
    for not_tls in (b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"):  # HTTP; a ServerHello
        with pytest.raises(NotTLS):
            client_hello_sni(not_tls)


def _rule(route: str, path_type: str, path: str, method: str | None = None, headers=()) -> ir.RouteRule:
    return ir.RouteRule(ir.Ref("HTTPRoute", "apps", route), 0, 0, ir.Match(path_type, path, method, headers), ir.Filters(), ())


GATEWAY = ir.Gateway(
    ir.Ref("Gateway", "network", "gw"), "envoy",
    (
        ir.Listener(ir.Ref("Gateway", "network", "gw"), "http", 80, "HTTP", None, True, vhosts=(
            ir.VirtualHost("app.test", (
                _rule("exact", "Exact", "/login"),
                _rule("api-post", "PathPrefix", "/api", method="POST"),
                _rule("api", "PathPrefix", "/api/"),
                _rule("hdr", "PathPrefix", "/", headers=(("Exact", "x-canary", "1"),)),
                _rule("rx", "RegularExpression", "/v[0-9]+/.*"),
                _rule("root", "PathPrefix", "/"),
            )),
            ir.VirtualHost("*.wild.test", (_rule("wild", "PathPrefix", "/"),)),
            ir.VirtualHost("*", (_rule("any", "PathPrefix", "/"),)),
        )),
    ),
    (),
)


@pytest.mark.parametrize("host,method,path,headers,want", [
    (b"app.test", b"GET", b"/login", {}, "exact"),
    (b"app.test", b"GET", b"/login/x", {}, "root"),  # Exact is exact
    (b"app.test", b"POST", b"/api/x", {}, "api-post"),
    (b"app.test", b"GET", b"/api", {}, "api"),  # "/api/" is the prefix "/api"
    (b"app.test", b"GET", b"/apix", {}, "root"),  # prefixes match whole segments
    (b"app.test", b"GET", b"/x", {b"x-canary": b"1"}, "hdr"),
    (b"app.test", b"GET", b"/v2/users", {}, "rx"),
    (b"a.b.wild.test", b"GET", b"/", {}, "wild"),
    (b"wild.test", b"GET", b"/", {}, "any"),  # "*.wild.test" needs a label before it
    (b"other.test", b"GET", b"/", {}, "any"),
])
def test_router_cases(host: bytes, method: bytes, path: bytes, headers: dict, want: str) -> None:
    table = compile_gateway(GATEWAY)[80]
    _, m = table.route(host, method, path, headers)
    assert m is not None and m.rule.route.name == want


@pytest.mark.parametrize("raw,host", [
    (b"App.Test:8080", b"app.test"), (b"app.test.", b"app.test"), (b"[::1]:443", b"[::1]"), (b" app.test ", b"app.test"),
])
def test_host_normalisation(raw: bytes, host: bytes) -> None:
    assert normalize_host(raw) == host


@pytest.mark.parametrize("redirect,want", [
    (ir.Redirect(scheme="https", status_code=301), "https://app.test/a/b?x=1"),
    (ir.Redirect(hostname="new.test"), "http://new.test:8080/a/b?x=1"),  # the listener's port is kept
    (ir.Redirect(scheme="https", port=8443), "https://app.test:8443/a/b?x=1"),
    (ir.Redirect(path_type="ReplacePrefixMatch", path_value="/z"), "http://app.test:8080/z/b?x=1"),
    (ir.Redirect(path_type="ReplaceFullPath", path_value="/"), "http://app.test:8080/?x=1"),
])
def test_redirect_cases(redirect: ir.Redirect, want: str) -> None:
    assert redirect_location(redirect, "http", "app.test", 8080, "/a/b", "x=1", "/a") == want


@pytest.mark.parametrize("path,kind,value,prefix,want", [
    ("/foo/x", "ReplacePrefixMatch", "/bar", "/foo", "/bar/x"),
    ("/foo", "ReplacePrefixMatch", "/bar", "/foo", "/bar"),
    ("/foo/x", "ReplacePrefixMatch", "/", "/foo", "/x"),
    ("/foo/x", "ReplaceFullPath", "/only", "/foo", "/only"),
    ("/foo/x", None, None, None, "/foo/x"),
])
def test_rewrite_cases(path: str, kind: str | None, value: str | None, prefix: str | None, want: str) -> None:
    assert replace_path(path, kind, value, prefix) == want


@pytest.mark.parametrize("remote,xff,hops,trusted,want", [
    ("10.0.0.1", None, 1, (), "10.0.0.1"),
    ("10.0.0.1", "203.0.113.7", 1, (), "203.0.113.7"),
    ("10.0.0.1", "198.51.100.1, 203.0.113.7", 2, (), "198.51.100.1"),
    ("10.0.0.1", "203.0.113.7", 2, (), "10.0.0.1"),  # fewer hops than trusted: the peer
    ("10.0.0.1", "198.51.100.1, 10.0.0.9", None, ("10.0.0.0/8",), "198.51.100.1"),
    ("192.0.2.1", "198.51.100.1", None, ("10.0.0.0/8",), "192.0.2.1"),  # an untrusted peer is the client
])
def test_client_ip_detection_cases(remote: str, xff: str | None, hops: int | None, trusted: tuple, want: str) -> None:
    assert detect_client_ip(remote, xff, hops, parse_cidrs(trusted)) == want


@pytest.mark.parametrize("triggers,codes,status,want", [
    ({"5xx"}, (), 500, True), ({"5xx"}, (), 404, False), ({"gateway-error"}, (), 503, True), ({"gateway-error"}, (), 500, False),
    ({"retriable-4xx"}, (), 409, True), ({"retriable-status-codes"}, (429,), 429, True), ({"retriable-status-codes"}, (429,), 503, False),
    ({"reset", "connect-failure"}, (), 503, False),
])
def test_retriable_status_cases(triggers: set, codes: tuple, status: int, want: bool) -> None:
    from homeplane.gateway.exchange import RetryPolicy, retriable_status

    assert retriable_status(RetryPolicy(2, frozenset(triggers), frozenset(codes)), status) is want


def test_retry_backoff_and_deadlines_take_time_and_chance_as_inputs() -> None:
    from homeplane.gateway.exchange import deadline_passed, retry_backoff

    assert [retry_backoff(0.1, n, 0.999) for n in (1, 2, 3)] == pytest.approx([0.0999, 0.1998, 0.3996])
    assert retry_backoff(0.1, 3, 0.0) == 0.0
    assert not deadline_passed(0.0, 1e9)  # no deadline
    assert not deadline_passed(10.0, 9.99) and deadline_passed(10.0, 10.0)
