"""Gateway TCP and UDP listeners: TCPRoute and UDPRoute end to end, on loopback."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from tests.gateway.harness import Gateway, free_port
from tests.gateway.manifests import gateway, two_endpoints

L4_LISTENERS = """- {name: ssh, protocol: TCP, port: 22, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: TCPRoute}]}}
    - {name: dns, protocol: UDP, port: 53, allowedRoutes: {namespaces: {from: All}}}"""


class TCPEcho:
    """Answers each connection with "<name>:" and everything it received, after the client's EOF."""

    def __init__(self, name: str):
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                got = b""
                first = self.request.recv(65536)
                if first == b"hello?\n":  # an interactive greeting, answered at once (like an SSH banner)
                    self.request.sendall(f"{name} here\n".encode())
                    first = b""
                got += first
                while chunk := self.request.recv(65536):
                    got += chunk
                self.request.sendall(name.encode() + b":" + got)

        self.connections = 0
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UDPEcho:
    def __init__(self, name: str):
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                outer.clients.add(self.client_address)
                sock.sendto(name.encode() + b":" + data, self.client_address)

        self.clients: set = set()
        self.server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def routes(tcp_service: str = "git", udp_service: str = "resolver") -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: ssh, namespace: apps}}
spec:
  parentRefs: [{{name: gw, namespace: network, sectionName: ssh}}]
  rules: [{{backendRefs: [{{name: {tcp_service}, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: dns, namespace: apps}}
spec:
  parentRefs: [{{name: gw, namespace: network, sectionName: dns}}]
  rules: [{{backendRefs: [{{name: {udp_service}, port: 53}}]}}]
"""


MQTTS_LISTENER = "- {name: mqtts, protocol: TLS, port: 8883, tls: {mode: Terminate, certificateRefs: [{name: mqtt-tls}]}, allowedRoutes: {namespaces: {from: All}}}"


def mqtt_tls(crt: str, key: str) -> str:
    """The certificate of the mqtts listener and a TCPRoute to the "broker" Service behind it."""
    return f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: mqtt-tls, namespace: network}}
type: kubernetes.io/tls
data: {{tls.crt: {crt}, tls.key: {key}}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: mqtt, namespace: apps}}
spec:
  parentRefs: [{{name: gw, namespace: network, sectionName: mqtts}}]
  rules: [{{backendRefs: [{{name: broker, port: 80}}]}}]
"""


def udp_service(name: str, port: int) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: apps}}
spec: {{ports: [{{name: dns, port: 53, protocol: UDP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: apps, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: dns, port: {port}, protocol: UDP}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"""


def exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the backend answers after our EOF
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_tcp_route_relays_streams_and_follows_route_changes() -> None:
    a, b, other = TCPEcho("a"), TCPEcho("b"), TCPEcho("other")
    u = UDPEcho("u")
    manifests = gateway(L4_LISTENERS) + two_endpoints("git", a.port, b.port) + two_endpoints("spare", other.port, other.port) + udp_service("resolver", u.port)
    g = Gateway(manifests + routes())
    try:
        port = g.port(22)
        big = bytes(range(256)) * 4096  # 1 MiB, both ways
        answers = [exchange(port, big) for _ in range(12)]  # all on one endpoint by chance: 1 in 2048
        assert all(x[2:] == big for x in answers)
        assert {x[:2] for x in answers} == {b"a:", b"b:"}  # both endpoints get connections
        # both ends closed: nothing of those connections is left open in the gateway
        listener = next(lst for key, lst in g.dp.l4.listeners.items() if key[2] == "TCP")
        deadline = time.monotonic() + 5
        while listener.splices and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not listener.splices
        # a connection open across a route change keeps its backend; new ones follow the route
        with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
            held.sendall(b"hello?\n")
            greeting = held.recv(100)
            assert greeting in (b"a here\n", b"b here\n")
            g.apply(manifests + routes(tcp_service="spare"))
            assert exchange(port, b"new") == b"other:new"
            held.sendall(b"still there")
            held.shutdown(socket.SHUT_WR)
            assert held.recv(100) == greeting[:1] + b":still there"
        # UDP: datagrams both ways, each client its own session
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"query", ("127.0.0.1", g.port(53)))
            assert c.recvfrom(100)[0] == b"u:query"
            c.sendto(b"again", ("127.0.0.1", g.port(53)))
            assert c.recvfrom(100)[0] == b"u:again"
        assert len(u.clients) == 1  # both datagrams came through one session
    finally:
        g.close()
        for s in (a, b, other, u):
            s.close()


def test_tcp_route_without_a_usable_backend_closes_and_dead_endpoints_are_skipped() -> None:
    a = TCPEcho("a")
    dead_port = free_port()  # nothing listens there
    g = Gateway(gateway(L4_LISTENERS) + two_endpoints("git", dead_port, a.port) + routes(tcp_service="git", udp_service="git"))
    try:
        # a refused connect moves on to the next endpoint: every connection is served by a
        assert [exchange(g.port(22), b"x") for _ in range(4)] == [b"a:x"] * 4
        g.apply(gateway(L4_LISTENERS) + routes(tcp_service="missing"))
        # the route's only backendRef does not resolve: connections are closed, never hang
        try:
            answer = exchange(g.port(22), b"x")
        except OSError:  # reset, or closed before our half-close
            answer = b""
        assert answer == b""
        status = g.translate(gateway(L4_LISTENERS) + routes(tcp_service="missing")).status
        parents = status[("gateway.networking.k8s.io", "TCPRoute", "apps", "ssh")]["parents"]
        resolved = next(c for c in parents[0]["conditions"] if c["type"] == "ResolvedRefs")
        assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    finally:
        g.close()
        a.close()


def test_older_tcp_route_wins_a_listener() -> None:
    first, second = TCPEcho("first"), TCPEcho("second")
    older = """
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: %s, namespace: apps, creationTimestamp: "%s"}
spec:
  parentRefs: [{name: gw, namespace: network, sectionName: ssh}]
  rules: [{backendRefs: [{name: %s, port: 80}]}]
"""
    m = (
        gateway(L4_LISTENERS) + two_endpoints("one", first.port, first.port) + two_endpoints("two", second.port, second.port)
        + older % ("zz-old", "2024-01-01T00:00:00Z", "one") + older % ("aa-new", "2025-01-01T00:00:00Z", "two")
    )
    g = Gateway(m)
    try:
        assert exchange(g.port(22), b"q") == b"first:q"
        listener = next(x for x in g.translate(m).status[("gateway.networking.k8s.io", "Gateway", "network", "gw")]["listeners"] if x["name"] == "ssh")
        assert listener["attachedRoutes"] == 2
    finally:
        g.close()
        first.close()
        second.close()


def test_tls_passthrough_by_sni_beside_https_on_one_port(tmp_path) -> None:
    import ssl

    from tests.gateway.backends import Backend
    from tests.gateway.manifests import route, service
    from tests.gateway.test_operations import tls_backend
    from tests.translate.helpers import tls_secret

    (tmp_path / "git").mkdir()
    (tmp_path / "other").mkdir()
    git, git_pem = tls_backend("git.home.test", tmp_path / "git")
    other, other_pem = tls_backend("ci.home.test", tmp_path / "other")
    plain = Backend("plain")
    listeners = """- {name: https, protocol: HTTPS, port: 443, hostname: app.test, tls: {certificateRefs: [{name: app-tls}]}, allowedRoutes: {namespaces: {from: All}}}
    - {name: passthrough, protocol: TLS, port: 443, hostname: "*.home.test", tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: All}}}"""
    tls_routes = """
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: git, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: network, sectionName: passthrough}]
  hostnames: [git.home.test]
  rules: [{backendRefs: [{name: git, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: rest, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: network, sectionName: passthrough}]
  rules: [{backendRefs: [{name: other, port: 80}]}]
"""
    m = (
        gateway(listeners) + tls_secret("app-tls", "network", "app.test") + route(section="https") + service("a", plain.port)
        + two_endpoints("git", git.port, git.port) + two_endpoints("other", other.port, other.port) + tls_routes
    )
    g = Gateway(m)

    def get(sni: str, pem: str | None) -> tuple[bytes, dict]:
        ctx = ssl.create_default_context(cadata=pem) if pem else ssl._create_unverified_context()
        with socket.create_connection(("127.0.0.1", g.port(443)), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=sni) as s:
            s.sendall(f"GET /echo HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n".encode())
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out, s.getpeercert()

    try:
        # the backend's own certificate verifies: the gateway did not terminate TLS
        body, _ = get("git.home.test", git_pem)
        assert b"200" in body.split(b"\r\n")[0] and b'"backend": "tls"' in body
        assert git.requests[-1]["headers"] and not any(n == "x-forwarded-for" for n, _ in git.requests[-1]["headers"])
        body, _ = get("ci.home.test", other_pem)  # the route without hostnames takes the listener's wildcard
        assert b"200" in body.split(b"\r\n")[0] and len(other.requests) == 1
        body, cert = get("app.test", None)  # not a passthrough name: the HTTPS listener terminates it
        assert b"200" in body.split(b"\r\n")[0] and b'"backend": "plain"' in body
        status = g.translate(m).status[("gateway.networking.k8s.io", "Gateway", "network", "gw")]
        ls = {x["name"]: x for x in status["listeners"]}
        assert ls["passthrough"]["attachedRoutes"] == 2 and ls["passthrough"]["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]
    finally:
        g.close()
        for b in (git, other, plain):
            b.close()


def test_tls_passthrough_alone_on_a_port_refuses_unknown_names(tmp_path) -> None:
    import ssl

    from tests.gateway.test_operations import tls_backend

    git, git_pem = tls_backend("git.home.test", tmp_path)
    listeners = """- {name: passthrough, protocol: TLS, port: 6443, tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: All}}}"""
    tls_route = """
---
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: TLSRoute
metadata: {name: git, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: network}]
  hostnames: [git.home.test]
  rules: [{backendRefs: [{name: git, port: 80}]}]
"""
    g = Gateway(gateway(listeners) + two_endpoints("git", git.port, git.port) + tls_route)
    try:
        ctx = ssl.create_default_context(cadata=git_pem)
        with socket.create_connection(("127.0.0.1", g.port(6443)), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="git.home.test") as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nhost: git.home.test\r\nconnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        # another name, or no TLS at all: the connection is closed, nothing reaches the backend
        with socket.create_connection(("127.0.0.1", g.port(6443)), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                ssl._create_unverified_context().wrap_socket(raw, server_hostname="vault.home.test")
        with socket.create_connection(("127.0.0.1", g.port(6443)), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nhost: git.home.test\r\n\r\n")
            assert raw.recv(100) == b""
        assert len(git.requests) == 1
        # a PROXY protocol header before the ClientHello (the listener's ClientTrafficPolicy):
        # read and taken off, the TLS stream reaches the backend untouched
        g.apply(gateway(listeners) + two_endpoints("git", git.port, git.port) + tls_route + PROXY_CTP)
        with socket.create_connection(("127.0.0.1", g.port(6443)), timeout=5) as raw:
            raw.sendall(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 6443\r\n")
            with ctx.wrap_socket(raw, server_hostname="git.home.test") as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nhost: git.home.test\r\nconnection: close\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200")
        assert len(git.requests) == 2
    finally:
        g.close()
        git.close()


def test_tls_terminated_in_front_of_a_tcp_route(tmp_path) -> None:
    import base64
    import ssl

    from tests.translate.helpers import tls_pair

    echo = TCPEcho("mqtt")
    crt, key = tls_pair("mqtt.home.test")
    listeners = MQTTS_LISTENER
    secret = mqtt_tls(crt, key)
    g = Gateway(gateway(listeners) + secret + two_endpoints("broker", echo.port, echo.port))
    try:
        ctx = ssl.create_default_context(cadata=base64.b64decode(crt).decode())
        with socket.create_connection(("127.0.0.1", g.port(8883)), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="mqtt.home.test") as s:
            assert s.selected_alpn_protocol() is None  # a TCP stream: no HTTP ALPN offered
            s.sendall(b"hello?\n")  # the backend answers this greeting at once, in plain text
            assert s.recv(100) == b"mqtt here\n"  # and the gateway encrypted it on the way back
        assert echo.connections == 1
        status = g.translate(gateway(listeners) + secret + two_endpoints("broker", echo.port, echo.port)).status
        ls = status[("gateway.networking.k8s.io", "Gateway", "network", "gw")]["listeners"][0]
        assert ls["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}] and ls["attachedRoutes"] == 1
    finally:
        g.close()
        echo.close()


def test_tcp_streams_are_access_logged(caplog) -> None:
    import json
    import logging

    from homeplane.gateway.server import Settings

    a = TCPEcho("a")
    g = Gateway(gateway(L4_LISTENERS) + two_endpoints("git", a.port, a.port) + routes(), Settings(access_log=True))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            assert exchange(g.port(22), b"12345") == b"a:12345"
            deadline = time.monotonic() + 5
            while not [r for r in caplog.records if r.name == "homeplane.access"] and time.monotonic() < deadline:
                time.sleep(0.05)
        line = json.loads(next(r for r in caplog.records if r.name == "homeplane.access").getMessage())
        assert (line["protocol"], line["route_name"], line["upstream_host"]) == ("TCP", "TCPRoute/apps/ssh", f"127.0.0.1:{a.port}")
        assert (line["bytes_received"], line["bytes_sent"], line["gateway"]) == (5, 7, "Gateway/network/gw")
    finally:
        g.close()
        a.close()


def test_backend_traffic_policy_on_a_tcp_route_health_checks_its_backends() -> None:
    a = TCPEcho("a")
    dead_port = free_port()  # nothing listens there
    btp = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: ssh-checks, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: TCPRoute, name: ssh}]
  loadBalancer: {type: Random}
  healthCheck:
    active: {type: TCP, interval: 200ms, timeout: 200ms, unhealthyThreshold: 1, healthyThreshold: 1}
"""
    m = gateway(L4_LISTENERS) + two_endpoints("git", dead_port, a.port) + routes(tcp_service="git", udp_service="git") + btp
    g = Gateway(m)
    try:
        (cluster,) = [c for key, c in g.dp.clusters.items() if key.startswith("service/apps/git:80|Random|apps/ssh-checks")]
        deadline = time.monotonic() + 5
        dead_ep = next(e for e in cluster.endpoints if e.port == dead_port)
        while dead_ep.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not dead_ep.healthy and all(e.healthy for e in cluster.endpoints if e.port == a.port)
        assert dead_ep.local_failures == 0  # no connection was ever tried there: the checks took it out first
        assert [exchange(g.port(22), b"x") for _ in range(6)] == [b"a:x"] * 6
        assert dead_ep.local_failures == 0
        status = g.translate(m).status[("gateway.envoyproxy.io", "BackendTrafficPolicy", "apps", "ssh-checks")]
        accepted = status["ancestors"][0]["conditions"][0]
        assert (accepted["type"], accepted["status"]) == ("Accepted", "True")
    finally:
        g.close()
        a.close()


PROXY_CTP = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: pp, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  proxyProtocol: {}
"""


def test_proxy_protocol_on_tcp_and_tls_listeners(caplog) -> None:
    """A load balancer in front sends a PROXY header before the stream (and before TLS): it is
    read and taken off, never relayed to the backend, and its client is the one logged."""
    import base64
    import json
    import logging
    import ssl

    from homeplane.gateway.server import Settings
    from tests.translate.helpers import tls_pair

    a, mqtt = TCPEcho("a"), TCPEcho("mqtt")
    crt, key = tls_pair("mqtt.home.test")
    listeners = L4_LISTENERS + "\n    " + MQTTS_LISTENER
    extra = mqtt_tls(crt, key)
    base = gateway(listeners) + extra + two_endpoints("git", a.port, a.port) + two_endpoints("broker", mqtt.port, mqtt.port) + routes()
    g = Gateway(base, Settings(access_log=True))
    try:
        header = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 22\r\n"
        assert exchange(g.port(22), header + b"12345") == b"a:" + header + b"12345"  # no policy: bytes as they come
        g.apply(base + PROXY_CTP)
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            assert exchange(g.port(22), header + b"12345") == b"a:12345"  # the header is not the backend's
            deadline = time.monotonic() + 5
            while not [r for r in caplog.records if r.name == "homeplane.access"] and time.monotonic() < deadline:
                time.sleep(0.05)
        line = json.loads(next(r for r in caplog.records if r.name == "homeplane.access").getMessage())
        assert (line["downstream_remote_address"], line["bytes_received"]) == ("198.51.100.7", 5)
        assert exchange(g.port(22), b"12345") == b""  # required: a stream without the header is refused
        # TLS after the header, in the same segment as the ClientHello
        ctx = ssl.create_default_context(cadata=base64.b64decode(crt).decode())
        with socket.create_connection(("127.0.0.1", g.port(8883)), timeout=5) as raw:
            raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="mqtt.home.test") as s:
                s.sendall(b"hello?\n")
                assert s.recv(100) == b"mqtt here\n"
    finally:
        g.close()
        a.close()
        mqtt.close()


def test_udp_sessions_are_access_logged_when_they_end(caplog) -> None:
    import json
    import logging

    from homeplane.gateway.server import Settings

    u = UDPEcho("u")
    g = Gateway(gateway(L4_LISTENERS) + udp_service("resolver", u.port) + routes(udp_service="resolver"), Settings(access_log=True))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            for q in (b"query", b"again"):
                c.sendto(q, ("127.0.0.1", g.port(53)))
                assert c.recvfrom(100)[0] == b"u:" + q
            assert not [r for r in caplog.records if r.name == "homeplane.access"]  # the session is still open
            g.loop.call_soon_threadsafe(g.dp.l4.expire_udp, time.monotonic() + 3600)  # idle long enough
            deadline = time.monotonic() + 5
            while not [r for r in caplog.records if r.name == "homeplane.access"] and time.monotonic() < deadline:
                time.sleep(0.05)
        line = json.loads(next(r for r in caplog.records if r.name == "homeplane.access").getMessage())
        assert (line["protocol"], line["route_name"], line["upstream_host"]) == ("UDP", "UDPRoute/apps/dns", f"127.0.0.1:{u.port}")
        assert (line["downstream_remote_address"], line["bytes_received"], line["bytes_sent"]) == ("127.0.0.1", 10, 14)
        eps = [ep for cl in g.dp.clusters.values() for ep in cl.endpoints]
        assert [ep.active for ep in eps] == [0]
    finally:
        g.close()
        u.close()
