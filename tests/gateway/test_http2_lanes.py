"""HTTP/2 on both implementations: the C session on nghttp2 (frontends/http2.c, its plain
streams served by the fast lane, the others by Python exchanges) and the h2 library's
(frontends/http2.py, Settings.native_h2=False). The same frames through both must give the
same upstream requests and the same answers; the limits against abuse hold on both."""

from __future__ import annotations

import socket
import time
from typing import Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeplane.gateway.frontends import fastlane
from homeplane.gateway.server import Settings
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.test_edge_requests import _read_until_closed
from tests.gateway.test_fastlane import Scripted
from tests.gateway.manifests import gateway, route, service

ANSWERS = {
    "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: t\r\n\r\n",
    "eof": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    "hop": b"HTTP/1.1 200 OK\r\nConnection: X-Private, keep-alive\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Public: 2\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "empty": b"HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n",
    "notmod": b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "big": b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + bytes(range(256)) * 781 + b"\x00" * 64,
    "status": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\nbusy",
    "upper": b"HTTP/1.1 200 OK\r\nX-MiXeD-Case: V\r\nContent-Length: 0\r\n\r\n",
    "broken": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
}


class Recorder(Scripted):
    """A raw HTTP/1.1 backend: answers ANSWERS[<last path segment>], records each request
    (Scripted's listener and accept loop, its own reading)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        super().__init__({})

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        d = c.recv(65536)
                    except OSError:
                        return
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                body = b""
                if any(line == b"transfer-encoding: chunked" for line in lines):
                    while not buf.endswith(b"0\r\n\r\n"):
                        d = c.recv(65536)
                        if not d:
                            return
                        buf += d
                    body, buf = buf, b""
                self.seen.append(head + b"\r\n\r\n" + body)
                name = head.split(b" ")[1].split(b"?")[0].rsplit(b"/", 1)[-1].decode()
                c.sendall(ANSWERS.get(name, ANSWERS["ok"]))
                if name in ("eof", "broken"):
                    return

    def close(self) -> None:
        self.sock.close()


MANIFESTS = """
""" + gateway() + route(hostnames="[app.test, '*.wild.test']", rules="""
    - matches: [{path: {type: PathPrefix, value: /filtered}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-added, value: "1"}]}}]
      backendRefs: [{name: a, port: 80}]
    - backendRefs: [{name: a, port: 80}]
""")


@pytest.fixture(scope="module")
def lanes() -> Iterator[tuple[Recorder, Gateway, Gateway]]:
    rec = Recorder()
    m = MANIFESTS + service("a", rec.port)
    native = Gateway(m)
    library = Gateway(m, Settings(access_log=False, native_h2=False))
    yield rec, native, library
    native.close()
    library.close()
    rec.close()


def test_nghttp2_is_built() -> None:
    # CI installs libnghttp2-dev (scripts/install-test-deps.sh), so both lanes are compared
    assert fastlane.native_h2_available()


Request = tuple[list[tuple[str, str]], bytes | None]


def converse(port: int, requests: list[Request], timeout: float = 5.0) -> list[object]:
    """Send the requests on one connection (one stream each); what came back per stream:
    (status, headers, body) or ("reset", code), and ("closed", code) if the connection ended."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
                                                               normalize_outbound_headers=False))
    c.initiate_connection()
    out: dict[int, object] = {}
    heads: dict[int, tuple[str, list[tuple[str, str]]]] = {}
    bodies: dict[int, bytes] = {}
    sids = []
    for i, (headers, body) in enumerate(requests):
        sid = 1 + 2 * i
        sids.append(sid)
        c.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            for at in range(0, len(body), 16384):
                c.send_data(sid, body[at : at + 16384])
            c.end_stream(sid)
    s.sendall(c.data_to_send())
    closed = None
    deadline = time.monotonic() + timeout
    while len(out) < len(sids) and closed is None and time.monotonic() < deadline:
        try:
            d = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not d:
            break
        try:
            events = c.receive_data(d)
        except h2.exceptions.ProtocolError as e:
            closed = ("protocol-error", type(e).__name__)
            break
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                hs = [(k, v) for k, v in ev.headers]
                heads[ev.stream_id] = (dict(hs)[":status"], [h for h in hs if h[0] != ":status"])
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                status, hs = heads[ev.stream_id]
                out[ev.stream_id] = (status, hs, bodies.get(ev.stream_id, b""))
            elif isinstance(ev, h2.events.StreamReset):
                out[ev.stream_id] = ("reset", int(ev.error_code))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                closed = ("goaway", int(ev.error_code))
        try:
            s.sendall(c.data_to_send())
        except OSError:
            break
    s.close()
    return [out.get(sid, "no answer") for sid in sids] + ([closed] if closed else [])


def _view(raws: list[bytes]) -> list[bytes]:
    """What the backend saw, request ids masked (each lane makes its own), in a stable order."""
    return sorted(b"\r\n".join(b"x-request-id: <id>" if x.startswith(b"x-request-id:") else x for x in raw.split(b"\r\n")) for raw in raws)


def both(lanes: tuple[Recorder, Gateway, Gateway], requests: list[Request]) -> list[object]:
    """The same conversation with each lane: the same answers, the same upstream requests."""
    rec, native, library = lanes
    n0 = len(rec.seen)
    a = converse(native.port(80), requests)
    time.sleep(0.02)
    n1 = len(rec.seen)
    b = converse(library.port(80), requests)
    time.sleep(0.02)
    assert a == b, requests
    assert _view(rec.seen[n0:n1]) == _view(rec.seen[n1:]), requests
    return a


def req(path: str = "/ok", method: str = "GET", authority: str = "app.test", extra: list[tuple[str, str]] | None = None,
        body: bytes | None = None) -> Request:
    headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)] + (extra or [])
    return headers, body


CASES = {
    "plain": [req()],
    "answers": [req(f"/x/{name}") for name in ANSWERS],
    "head": [req("/x/ok", "HEAD"), req("/x/big", "HEAD"), req("/x/empty", "HEAD")],
    "cookies": [req(extra=[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2"), ("cookie", "c=3")])],
    "forwarding": [req(extra=[("x-forwarded-for", "203.0.113.1"), ("x-request-id", "mine"), ("x-forwarded-proto", "https"),
                              ("x-forwarded-host", "evil"), ("te", "trailers")])],
    "authority-forms": [req(authority="APP.test:80"), req(authority="app.test."), req(authority="x.wild.test"), req(authority="other.test")],
    "host-field": [req(extra=[("host", "app.test")])],
    "bodies": [req("/x/ok", "POST", body=b"x" * 60000), req("/x/ok", "PUT", body=b""), req("/x/chunked", "POST", body=b"abc")],
    "filtered-route": [req("/filtered/ok"), req("/filtered/chunked", "POST", body=b"q")],
    "odd-paths": [req("/a/../x/ok"), req("/a/%2e%2e/ok"), req("//x/ok"), req("/x/ok?q=%20")],
    "many-streams": [req(f"/x/ok?i={i}") for i in range(40)],
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_both_lanes_answer_the_same(lanes: tuple[Recorder, Gateway, Gateway], case: str) -> None:
    assert "no answer" not in both(lanes, CASES[case])


def test_what_the_upstream_and_the_client_see(lanes: tuple[Recorder, Gateway, Gateway]) -> None:
    rec, native, _ = lanes
    n0 = len(rec.seen)
    (status, headers, body), = converse(native.port(80), [req("/x/hop", extra=[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2"),
                                                                            ("te", "trailers")])])
    assert status == "200" and body == b"ok"
    # hop-by-hop fields (and those Connection names) are not HTTP/2's: dropped
    assert headers == [("x-public", "2"), ("content-length", "2")]
    head = rec.seen[n0].split(b"\r\n")
    assert head[:4] == [b"GET /x/hop HTTP/1.1", b"host: app.test", b"accept: */*", b"cookie: a=1; b=2"]
    assert head[4].startswith(b"x-forwarded-for: 127.0.0.1") and b"te:" not in rec.seen[n0]


def test_a_host_field_naming_another_server_than_authority_is_malformed(lanes: tuple[Recorder, Gateway, Gateway]) -> None:
    rec, native, _ = lanes
    n0 = len(rec.seen)
    # RFC 9113 8.3.1; routed by either name the request could reach a route the other does not
    # (the h2 library ends the whole connection; nghttp2's session resets the stream)
    answers = converse(native.port(80), [req(authority="other.test", extra=[("host", "app.test")]), req(extra=[("host", "APP.test")])])
    assert answers[0] == ("reset", h2.errors.ErrorCodes.PROTOCOL_ERROR)
    assert answers[1][0] == "200" and len(rec.seen) == n0 + 1  # the same name, other case: served


NAMES = st.sampled_from(["accept", "x-a", "cookie", "x-forwarded-for", "x-request-id", "accept-encoding", "user-agent", "te",
                         "x-forwarded-proto", "content-type", "authorization", "if-none-match"])
VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=0, max_size=12)


@st.composite
def requests(draw: st.DrawFn) -> list[Request]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE", "OPTIONS", "PATCH"]))
        path = draw(st.sampled_from(["/x/", "/filtered/", "/", "/y/../x/", "/x//"])) + draw(st.sampled_from(list(ANSWERS)))
        if draw(st.booleans()):
            path += "?" + draw(st.text(st.sampled_from("abc=&%2e/"), max_size=8))
        authority = draw(st.sampled_from(["app.test", "app.test:80", "APP.TEST", "a.wild.test", "nope.test", "app.test."]))
        extra = [(n, "trailers" if n == "te" else v) for n, v in draw(st.lists(st.tuples(NAMES, VALUES), max_size=6))]
        body = draw(st.one_of(st.none(), st.binary(max_size=300)))
        out.append(req(path, method, authority, extra, body))
    return out


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rs=requests())
def test_fuzzed_streams_get_the_same_treatment_from_both_lanes(lanes: tuple[Recorder, Gateway, Gateway], rs: list[Request]) -> None:
    both(lanes, rs)


# --- limits against abuse, on both ----------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["nghttp2", "h2-library"])
def lane(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    rec = Recorder()
    g = Gateway(MANIFESTS + service("a", rec.port), Settings(access_log=False, native_h2=request.param, idle_timeout=1.0))
    yield g
    g.close()
    rec.close()


def raw_client(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.local_settings.max_concurrent_streams = 1000
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def ends_with_goaway(s: socket.socket, c: h2.connection.H2Connection) -> int | None:
    """Read until the connection closes: the GOAWAY error code, if one came."""
    codes = [int(e.error_code) for e in _read_until_closed(s, c) if isinstance(e, h2.events.ConnectionTerminated)]
    return codes[0] if codes else None


def test_continuation_flood_ends_the_connection(lane: Gateway) -> None:
    """Endless CONTINUATION frames of one header block (CVE-2024-27316 and kin): the gateway
    does not keep reading them; the connection ends after a bounded amount."""
    s, c = raw_client(lane.port(80))
    import struct

    block = c.encoder.encode([(":method", "GET"), (":path", "/x/ok"), (":scheme", "http"), (":authority", "app.test")])
    frame = struct.pack(">I", len(block))[1:] + bytes([0x1, 0x0]) + struct.pack(">I", 1) + block  # HEADERS, no END_HEADERS
    s.sendall(frame)
    sent = 0
    filler = c.encoder.encode([("x-filler", "v" * 100)])
    cont = struct.pack(">I", len(filler))[1:] + bytes([0x9, 0x0]) + struct.pack(">I", 1) + filler
    try:
        for _ in range(20000):
            s.sendall(cont)
            sent += len(cont)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.settimeout(5)
    ends_with_goaway(s, c)
    assert sent < 2_000_000, "the gateway kept reading CONTINUATION frames"
    s.close()


def test_settings_flood_is_bounded(lane: Gateway) -> None:
    """SETTINGS frames the client never reads the acknowledgements of: reading stops (or the
    connection ends) instead of queueing acknowledgements without bound."""
    s, c = raw_client(lane.port(80))
    frame = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64"  # SETTINGS MAX_CONCURRENT_STREAMS=100
    s.settimeout(0.5)
    sent = 0
    try:
        while sent < 300 << 20:
            s.sendall(frame * 1000)
            sent += len(frame) * 1000
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    assert sent < 300 << 20, "the gateway kept reading SETTINGS from a client that reads none of the acknowledgements"
    s.close()


def test_idle_connection_gets_goaway(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    g = Gateway(MANIFESTS + service("a", rec.port), Settings(access_log=False, idle_timeout=0.5))
    try:
        s, c = raw_client(g.port(80))
        c.send_headers(1, req()[0], end_stream=True)
        s.sendall(c.data_to_send())
        s.settimeout(10)
        assert ends_with_goaway(s, c) == h2.errors.ErrorCodes.NO_ERROR  # after the stream, once idle
        s.close()
    finally:
        g.close()
        rec.close()


def test_a_removed_listener_says_goaway_to_its_http2_clients(lane: Gateway) -> None:
    s, c = raw_client(lane.port(80))
    c.send_headers(1, req("/x/ok")[0], end_stream=True)
    s.sendall(c.data_to_send())
    got: list = []
    while not any(isinstance(e, h2.events.StreamEnded) for e in got):
        got += c.receive_data(s.recv(65536))
    # the Gateway now listens on another port only: port 80's connections are drained
    lane.apply(MANIFESTS.replace("port: 80,", "port: 8080,") + service("a", 9))
    s.settimeout(10)
    assert ends_with_goaway(s, c) == h2.errors.ErrorCodes.NO_ERROR
    s.close()


def closes_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    started = time.monotonic()
    try:
        while s.recv(65536):
            pass
    except (socket.timeout, ConnectionResetError):
        pass
    return time.monotonic() - started < seconds


def test_a_header_block_that_never_ends_does_not_hold_the_connection(lane: Gateway) -> None:
    import struct

    s, c = raw_client(lane.port(80))
    block = c.encoder.encode([(":method", "GET"), (":path", "/x/ok"), (":scheme", "http"), (":authority", "app.test")])
    s.sendall(struct.pack(">I", len(block))[1:] + bytes([0x1, 0x0]) + struct.pack(">I", 1) + block)  # no END_HEADERS, ever
    assert closes_within(s, 6)  # the idle timeout (1 s here), as for a connection with no stream
    s.close()


def test_an_answered_stream_whose_client_never_ends_does_not_hold_the_connection(lane: Gateway) -> None:
    s, c = raw_client(lane.port(80))
    c.send_headers(1, req("/x/ok", "POST", authority="nope.test")[0], end_stream=False)  # 404 at once
    c.send_data(1, b"part of a body that never ends")
    s.sendall(c.data_to_send())
    assert closes_within(s, 6)
    s.close()


def test_held_back_upload_bytes_return_to_the_connection_window(lane: Gateway) -> None:
    """Uploads to a backend that cannot take them (its connects hang) are reset by the client:
    the bytes the gateway held back must count again for the connection, or it starves."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(0)
    fillers = []
    for _ in range(3):  # a full accept queue: connects hang
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(hang.getsockname())
        except BlockingIOError:
            pass
        fillers.append(f)
    rec = Recorder()
    lane.apply(MANIFESTS.replace("value: /filtered}}]", "value: /slow}}]") + service("a", hang.getsockname()[1]))
    s, c = raw_client(lane.port(80))
    try:
        for i in range(24):
            sid = 1 + 2 * i
            c.send_headers(sid, req("/slow/upload", "POST")[0], end_stream=False)
            n = min(c.local_flow_control_window(sid), c.outbound_flow_control_window)
            for at in range(0, n, 16384):
                c.send_data(sid, b"x" * min(16384, n - at))
            s.sendall(c.data_to_send())
            time.sleep(0.05)
            c.reset_stream(sid)
            s.sendall(c.data_to_send())
            s.settimeout(0.1)
            try:
                while d := s.recv(65536):
                    c.receive_data(d)
                    s.sendall(c.data_to_send())
            except socket.timeout:
                pass
        # 24 streams' windows (more than the 16 MiB connection window) went out and came back
        assert c.outbound_flow_control_window > 1 << 20
    finally:
        s.close()
        rec.close()
        hang.close()
        for f in fillers:
            f.close()


def test_answers_without_a_body_finish_as_answers_on_the_fast_lane(lanes: tuple[Recorder, Gateway, Gateway]) -> None:
    """HEAD, 204 and 304 end the stream with the HEADERS frame: the exchange is finished as
    answered (counted once, access log without error, upstream connection pooled), not as a
    client that left."""
    rec, native, _ = lanes
    lines: list[dict] = []
    hooks = [srv.hooks for srv in native.dp.servers.values() if srv.hooks is not None]
    for h in hooks:
        h.access_log = True  # read by each new connection
    original = native.dp.record
    # DataPlane.record(table, gateway, client, method, host, path, protocol, status, duration, backend, cluster, error, ...)
    native.dp.record = lambda *a: lines.append({"protocol": a[6], "status": a[7], "error": a[11]})  # type: ignore[method-assign]
    try:
        before = fastlane.served()
        for method, path in (("HEAD", "/x/ok"), ("GET", "/x/empty"), ("GET", "/x/notmod")):
            connections = rec.connections
            for _ in range(4):
                converse(native.port(80), [req(path, method)])
            assert rec.connections - connections <= 1, (method, path)  # pooled between requests
        assert fastlane.served() - before == 12
        assert [(ln["status"], ln["error"]) for ln in lines] == [(200, None)] * 4 + [(204, None)] * 4 + [(304, None)] * 4
        assert all(ln["protocol"] == "HTTP/2" for ln in lines)
    finally:
        native.dp.record = original  # type: ignore[method-assign]
        for h in hooks:
            h.access_log = False


def test_a_client_that_reads_nothing_holds_a_bounded_amount(lanes: tuple[Recorder, Gateway, Gateway]) -> None:
    """100 streams of 200 kB each (20 MB) to a client that opened its windows wide and then
    reads nothing: once its socket is full the upstreams stop being read; what was read in the
    meantime (a few MiB here) is all that waits."""
    rec, native, _ = lanes
    s = socket.create_connection(("127.0.0.1", native.port(80)), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.local_settings.initial_window_size = (1 << 31) - 1
    c.local_settings.max_concurrent_streams = 1000
    c.initiate_connection()
    c.increment_flow_control_window((1 << 31) - 1 - 65535)
    for i in range(100):
        c.send_headers(1 + 2 * i, req("/x/big")[0], end_stream=True)
    s.sendall(c.data_to_send())
    time.sleep(1.5)
    session = next(x for x in native.dp.connections if type(x).__name__ == "Http2Fast")
    assert session.queued < 6 << 20, session.queued
    s.close()


@pytest.mark.parametrize("native_h2", [pytest.param(True, marks=pytest.mark.compiled, id="nghttp2"), pytest.param(False, id="h2-library")])
def test_grpc_passes_through_with_its_trailers(native_h2: bool) -> None:
    from tests.gateway.h2backend import H2Backend
    from tests.gateway.test_operations import H2C_RULES, h2c_service

    b = H2Backend()
    g = Gateway(gateway() + h2c_service(b.port) + route(rules=H2C_RULES), Settings(access_log=False, native_h2=native_h2))
    try:
        s, c = raw_client(g.port(80))
        message = b"\x00\x00\x00\x00\x03abc"
        c.send_headers(1, [(":method", "POST"), (":path", "/grpc.Echo/Say"), (":scheme", "http"), (":authority", "app.test"),
                           ("content-type", "application/grpc"), ("te", "trailers")])
        c.send_data(1, message, end_stream=True)
        s.sendall(c.data_to_send())
        events: list = []
        while not any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events):
            d = s.recv(65536)
            assert d, events
            events += c.receive_data(d)
            s.sendall(c.data_to_send())
        head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        assert dict(head.headers)[":status"] == "200" and dict(head.headers)["content-type"] == "application/grpc"
        body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert body[:1] == b"\x00" and int.from_bytes(body[1:5], "big") == len(body) - 5
        trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
        assert dict(trailers.headers) == {"grpc-status": "0", "grpc-message": "fine"}
        assert b.requests[-1]["body_len"] == len(message) and ["te", "trailers"] in b.requests[-1]["headers"]
        s.close()
    finally:
        g.close()
        b.close()


FILTERED = """
    - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-added, value: "1"}]}}]
      backendRefs: [{name: a, port: 80}]"""


@pytest.mark.parametrize("native_h2, rules", [
    pytest.param(True, "", marks=pytest.mark.compiled, id="nghttp2-c-streams"),
    pytest.param(True, FILTERED, marks=pytest.mark.compiled, id="nghttp2-python-streams"),
    pytest.param(False, "", id="h2-library"),
])
def test_streams_a_client_does_not_read_hold_back_no_other_stream(native_h2: bool, rules: str, backend: Backend) -> None:
    """Downloads the client leaves unread fill their queues; another stream the client reads
    still completes (the connection-wide limit pauses only streams with bytes waiting), and
    bytes queued while the windows were shut all go out once they open."""
    g = Gateway(gateway() + service("a", backend.port) + route(rules=rules), Settings(access_log=False, native_h2=native_h2))
    try:
        s, c = raw_client(g.port(80))
        c.increment_flow_control_window(1 << 30)  # the connection's window: only the streams' count
        for i in range(6):  # never read: their stream windows stay shut
            c.send_headers(1 + 2 * i, req(f"/big?bytes={4_000_000}&i={i}")[0], end_stream=True)
        s.sendall(c.data_to_send())
        time.sleep(1.0)
        c.send_headers(13, req("/big?bytes=2000000")[0], end_stream=True)
        s.sendall(c.data_to_send())
        got, ended = 0, False
        left = {sid: 4_000_000 for sid in (1, 3, 5, 7, 9, 11)}
        s.settimeout(10)
        while not ended:
            d = s.recv(65536)
            assert d, got
            for ev in c.receive_data(d):
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id != 13:
                    left[ev.stream_id] -= len(ev.data)  # (their first window's worth)
                elif isinstance(ev, h2.events.DataReceived):
                    got += len(ev.data)
                    c.acknowledge_received_data(ev.flow_controlled_length, 13)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 13:
                    ended = True
            s.sendall(c.data_to_send())
        assert got == 2_000_000
        # now read the others: what waited for the windows comes out, to the end
        for sid in left:
            c.increment_flow_control_window(8 << 20, stream_id=sid)
        c.increment_flow_control_window(48 << 20)
        s.sendall(c.data_to_send())
        done: set[int] = set()
        while len(done) < 6:
            d = s.recv(65536)
            assert d, left
            for ev in c.receive_data(d):
                if isinstance(ev, h2.events.DataReceived):
                    left[ev.stream_id] -= len(ev.data)
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done.add(ev.stream_id)
            s.sendall(c.data_to_send())
        assert set(left.values()) == {0}
        s.close()
    finally:
        g.close()
