"""Edge and connector as real processes: public traffic reaches the home gateway only through the tunnel."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.gateway.backends import Backend
from tests.tunnel.harness import CA, Edge, Home, curl, wait_until, write_repo


class TcpEcho:
    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import threading

        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return

            def serve(c: socket.socket = c) -> None:
                with c:
                    c.sendall(b"hello from home\n")
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=serve, daemon=True).start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("tunnel")
    backend = Backend("app")
    echo = TcpEcho()
    ca = CA(tmp)
    repo = write_repo(tmp, ca, backend.port, echo.port, extra_rules="""
              - hostname: internal.home.test
                service: http_status:403
              - hostname: app.home.test
                path: ^/status/4
                service: http_status:418""")
    edge = Edge(tmp, ca, terminate=["secure.home.test"])
    home = Home(tmp, repo, ca, [edge], connections=2)
    edge.wait_connectors(2)
    yield {"tmp": tmp, "backend": backend, "ca": ca, "edge": edge, "home": home, "repo": repo}
    home.stop()
    edge.stop()
    backend.close()


def _via_edge(world: dict, host: str, path: str, *extra: str, scheme: str = "https") -> tuple[int, dict | str, str]:
    edge: Edge = world["edge"]
    port = edge.ports["https" if scheme == "https" else "http"]
    out = curl("--resolve", f"{host}:{port}:127.0.0.1", "--cacert", str(world["ca"].path), "--interface", "127.0.0.5",
               "-o", "-", "-w", "\n%{http_code} %{http_version}", *extra, f"{scheme}://{host}:{port}{path}")
    body, _, tail = out.stdout.rpartition("\n")
    code, version = tail.split()
    try:
        return int(code), json.loads(body), version
    except ValueError:
        return int(code), body, version


@pytest.mark.parametrize("host", ["app.home.test", "secure.home.test"])
@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_https_through_the_tunnel_with_the_clients_address(world: dict, host: str, http: str) -> None:
    # app: TLS passed through to the home gateway by SNI; secure: terminated at the edge
    code, body, version = _via_edge(world, host, "/echo/x", http)
    assert code == 200, body
    assert version == ("2" if http == "--http2" else "1.1")
    headers = {k.lower(): v for k, v in body["headers"]}
    assert headers.get("host", headers.get(":authority", "")).split(":")[0] == host
    assert headers["x-forwarded-for"].split(",")[-1].strip() == "127.0.0.5"  # the public client, not the connector


def test_streams_are_flows_with_the_public_client(world: dict) -> None:
    """Each tunnel stream is a flow (the public client, the rule, the origin), and the request
    it carried a flow of the Gateway it reached; a rule's refusal is DROPPED."""
    code, _, _ = _via_edge(world, "app.home.test", "/echo/flow-check", "--http1.1")
    assert code == 200
    assert _via_edge(world, "internal.home.test", "/", scheme="http")[0] == 403
    admin = f"127.0.0.1:{world['home'].admin_port}"

    def flows(**flt: str) -> list[dict]:
        q = "&".join(f"{k}={v}" for k, v in flt.items())
        return [w["flow"] for w in httpx.get(f"http://{admin}/api/v1/flows?last=200&{q}").json()["flows"]]

    tunnel = wait_until(lambda: [f for f in flows(**{"from-ip": "127.0.0.5", "protocol": "tcp"})
                               if (f["homeplane"].get("route") or "").startswith("tunnel ingress")], what="tunnel flows")
    app = [f for f in tunnel if "sni app.home.test" in f["Summary"] and f["verdict"] == "FORWARDED"]
    assert app and app[-1]["homeplane"]["bytes_in"] > 0 and app[-1]["homeplane"]["bytes_out"] > 0
    refused = [f for f in tunnel if "sni internal.home.test" in f["Summary"]]
    assert refused and refused[-1]["verdict"] == "DROPPED" and refused[-1]["drop_reason_desc"] == "POLICY_DENIED"
    http = flows(**{"from-ip": "127.0.0.5", "protocol": "http", "http-path": "^/echo/flow-check$"})
    assert http and http[-1]["verdict"] == "FORWARDED"  # the Gateway saw the public client


def test_plain_http_port_and_catch_all_404(world: dict) -> None:
    code, body, _ = _via_edge(world, "app.home.test", "/echo/plain", scheme="http")
    assert code == 200 and body["target"] == "/echo/plain"
    # the rule names the Gateway's HTTPS port; plain HTTP from the edge's HTTP port goes to the
    # same Gateway's HTTP listener, where its redirect (and ACME HTTP-01) routes are
    out = curl("--resolve", f"redirect.home.test:{world['edge'].ports['http']}:127.0.0.1", "-o", "/dev/null", "-w",
               "%{http_code} %{redirect_url}", f"http://redirect.home.test:{world['edge'].ports['http']}/x")
    assert out.stdout.startswith("301 https://redirect.home.test"), out
    assert _via_edge(world, "redirect.home.test", "/x", "--http1.1")[0] == 404  # not on the HTTPS listener
    code, body, _ = _via_edge(world, "other.example.org", "/", scheme="http")
    assert code == 404 and "not served through the tunnel" in body


def test_large_upload_and_download(world: dict, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    data = hashlib.sha256(b"seed").digest() * (50 * 1024 * 1024 // 32)
    blob.write_bytes(data)
    code, body, _ = _via_edge(world, "app.home.test", "/echo/upload", "--http2", "--data-binary", f"@{blob}")
    assert code == 200
    assert body["body_len"] == len(data) and body["body_sha256"] == hashlib.sha256(data).hexdigest()
    out = curl("--resolve", f"secure.home.test:{world['edge'].ports['https']}:127.0.0.1", "--cacert", str(world["ca"].path),
               "-o", str(tmp_path / "down"), "-w", "%{http_code}", f"https://secure.home.test:{world['edge'].ports['https']}/big?bytes=20000000")
    assert out.stdout == "200" and (tmp_path / "down").stat().st_size == 20_000_000


def test_server_sent_events_arrive_as_sent(world: dict) -> None:
    code, body, _ = _via_edge(world, "app.home.test", "/stream?n=5&ms=50", "--http2", "-N")
    assert code == 200 and body.count("data: event") == 5


def test_websocket_upgrade(world: dict) -> None:
    edge: Edge = world["edge"]
    ctx = ssl.create_default_context(cafile=str(world["ca"].path))
    for host in ("app.home.test", "secure.home.test"):
        with socket.create_connection(("127.0.0.1", edge.ports["https"]), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head
            s.sendall(b"ping through the tunnel")
            got = b""
            while len(got) < 23:
                got += s.recv(4096)
            assert got == b"ping through the tunnel"


def test_tcp_port(world: dict) -> None:
    with socket.create_connection(("127.0.0.1", world["edge"].ports["ssh"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline() == b"hello from home\n"
        s.sendall(b"abc\n")
        assert f.readline() == b"abc\n"


def test_status_and_metrics(world: dict) -> None:
    st = world["home"].status()["runtime"]["tunnel"]
    assert st["ingress"].startswith("HelmRelease network/cloudflare-tunnel values.configMaps.config.data.config.yaml")
    assert [c["state"] for c in st["connections"]] == ["connected", "connected"]
    assert {"hostname": "*.home.test", "service": "https://envoy-external.network.svc.cluster.local:443"} in st["rules"]
    m = world["home"].metrics()
    assert "cloudflared_tunnel_ha_connections 2.0" in m
    total = next(line for line in m.splitlines() if line.startswith("cloudflared_tunnel_total_requests "))
    assert float(total.split()[1]) >= 1
    assert 'cloudflared_tunnel_response_by_code{status_code="404"}' in m
    est = world["edge"].status()
    assert len(est["connections"]) == 2 and {c["connector"] for c in est["connections"]} == {est["connections"][0]["connector"]}



def _curl_edge(edge: Edge, ca: CA, url_host: str, *args: str, scheme: str = "https") -> subprocess.CompletedProcess[str]:
    port = edge.ports[scheme]
    return curl("--resolve", f"{url_host}:{port}:127.0.0.1", "--cacert", str(ca.path), "-o", "-", "-w", "\n%{http_code}",
                *args, f"{scheme}://{url_host}:{port}/echo", timeout=20)


def test_no_connector_answers_503_in_the_clients_protocol_and_closes_passthrough(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    edge = Edge(tmp_path, ca, terminate=["secure.home.test"], extra={"publicWait": "0s"})
    try:
        wait_until(lambda: edge.status()["publicOpen"], what="public ports open without a connector after publicWait")
        for args in (("--http1.1",), ("--http2",)):
            out = _curl_edge(edge, ca, "secure.home.test", *args)
            assert out.stdout.endswith("\n503") and "No tunnel connector is connected" in out.stdout, out
        out = _curl_edge(edge, ca, "app.home.test", scheme="http")
        assert out.stdout.endswith("\n503")
        # passed-through TLS has no page to show: the connection is closed during the handshake
        out = _curl_edge(edge, ca, "app.home.test")
        assert out.returncode != 0 and out.stdout.endswith("\n000")
        metrics = httpx.get(edge.admin + "/metrics").text
        assert 'homeplane_edge_streams_total{kind="http",result="no_connector"} 3.0' in metrics
    finally:
        edge.stop()


def test_a_wrong_token_is_refused_and_said_so(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    backend_port = 9  # (nothing is asked of it)
    repo = write_repo(tmp_path, ca, backend_port, backend_port)
    edge = Edge(tmp_path, ca)
    home = Home(tmp_path, repo, ca, [edge], connections=1)
    try:
        home.token.write_text("not-the-token-0123456789\n")
        home.stop()
        home.start()
        st = wait_until(lambda: (c := home.status()["runtime"]["tunnel"]["connections"][0])["lastError"] and c, what="an error")
        assert st["state"] in ("backoff", "connecting") and "401 Unauthorized: unknown tunnel token" in st["lastError"]
        assert edge.status()["connections"] == []
        assert "refused: unknown token" in edge.log.read_text()
    finally:
        home.stop()
        edge.stop()


def test_an_unreachable_origin_is_a_502_page(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]  # bound, never listening: connection refused
    config = tmp_path / "cloudflared.yaml"
    config.write_text(f"ingress:\n  - hostname: dead.home.test\n    service: http://127.0.0.1:{dead}\n  - service: http_status:418\n")
    repo = write_repo(tmp_path, ca, 9, 9)
    edge = Edge(tmp_path, ca, terminate=["dead.home.test"])
    home = Home(tmp_path, repo, ca, [edge], connections=1, extra=["--tunnel-config", str(config)])
    try:
        edge.wait_connectors(1)
        for args in (("--http1.1",), ("--http2",)):
            out = _curl_edge(edge, ca, "dead.home.test", *args)
            assert out.stdout.endswith("\n502") and "could not reach the service" in out.stdout, out
        out = _curl_edge(edge, ca, "other.home.test", scheme="http")
        assert out.stdout.endswith("\n418")
        st = home.status()["runtime"]["tunnel"]
        assert st["ingress"] == str(config)  # --tunnel-config wins over the repo's
        assert "origin http://127.0.0.1:%d (ingress[0])" % dead in home.log.read_text()
        assert 'cloudflared_tunnel_request_errors 2.0' in home.metrics()
    finally:
        home.stop()
        edge.stop()
        closed.close()


def test_tunnel_gateway_serves_a_gateways_routes_without_a_cloudflared_config(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    backend = Backend("app")
    repo = write_repo(tmp_path, ca, backend.port, 9, with_cloudflared=False)
    edge = Edge(tmp_path, ca, terminate=["secure.home.test"])
    home = Home(tmp_path, repo, ca, [edge], connections=1, extra=["--tunnel-gateway", "network/envoy-external"])
    try:
        edge.wait_connectors(1)
        for host in ("app.home.test", "secure.home.test"):
            out = _curl_edge(edge, ca, host, "--http2")
            assert out.stdout.endswith("\n200"), out
        assert _curl_edge(edge, ca, "other.home.test", scheme="http").stdout.endswith("\n404")
        assert home.status()["runtime"]["tunnel"]["ingress"] == "the routes of Gateway network/envoy-external (--tunnel-gateway)"
    finally:
        home.stop()
        edge.stop()
        backend.close()


def test_proxy_protocol_carries_the_client_to_a_dialled_origin(tmp_path: Path) -> None:
    from homeplane.gateway.frontends import proxyproto

    got: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(20)
    config = tmp_path / "cloudflared.yaml"
    config.write_text(f"ingress:\n  - hostname: ssh.home.test\n    service: tcp://127.0.0.1:{srv.getsockname()[1]}\n"
                      "    originRequest: {proxyProtocol: v2}\n  - service: http_status:404\n")
    ca = CA(tmp_path)
    repo = write_repo(tmp_path, ca, 9, 9, with_cloudflared=False)
    edge = Edge(tmp_path, ca)
    home = Home(tmp_path, repo, ca, [edge], connections=1, extra=["--tunnel-config", str(config)])
    try:
        edge.wait_connectors(1)
        with socket.socket() as c:
            c.bind(("127.0.0.5", 0))
            c.connect(("127.0.0.1", edge.ports["ssh"]))
            c.sendall(b"after the header\n")
            source = c.getsockname()[1]
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                while b"after the header\n" not in b"".join(got):
                    got.append(conn.recv(4096))
        data = b"".join(got)
        info = proxyproto.parse(data)
        assert info is not None and (info.client_ip, info.client_port) == ("127.0.0.5", source)
        assert data[info.length:] == b"after the header\n"
    finally:
        home.stop()
        edge.stop()
        srv.close()


def _raw_http(port: int, request: bytes, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


def test_stalled_downloads_stall_only_themselves(world: dict) -> None:
    edge: Edge = world["edge"]
    # 24 clients that never read 200 MB downloads: each stream holds its own window, no more
    stuck = [_raw_http(edge.ports["http"], b"GET /big?bytes=200000000 HTTP/1.1\r\nHost: app.home.test\r\n\r\n", rcvbuf=4096)
             for _ in range(24)]
    try:
        import time

        time.sleep(1.0)
        for _ in range(3):
            code, body, _ = _via_edge(world, "app.home.test", "/echo/while-stalled", "--http2")
            assert code == 200, body
    finally:
        for s in stuck:
            s.close()
    code, body, _ = _via_edge(world, "app.home.test", "/echo/after", scheme="http")
    assert code == 200


def test_hosts_that_are_not_host_names_are_answered_at_the_edge(world: dict) -> None:
    edge: Edge = world["edge"]
    before = len(edge.status()["connections"])
    for host in (b"app.home.test\x00x", b"a\rb.home.test", b"x" * 300, b"a..b.home.test"):
        s = _raw_http(edge.ports["http"], b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        with s:
            assert s.recv(100).startswith(b"HTTP/1.1 400"), host
    # the tunnel connections are untouched, and serve on
    assert len(edge.status()["connections"]) == before
    assert _via_edge(world, "app.home.test", "/echo/ok", scheme="http")[0] == 200


def _read_answer(f: Any) -> bytes:
    """One answer with a Content-Length body from a kept-alive connection's file."""
    head = f.readline()
    length = 0
    while (line := f.readline()) != b"\r\n":
        head += line
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + b"\r\n" + f.read(length)


def test_a_kept_alive_connection_cannot_reach_another_rules_hostname(world: dict) -> None:
    backend: Backend = world["backend"]
    s = _raw_http(world["edge"].ports["http"], b"GET /echo/first HTTP/1.1\r\nHost: app.home.test\r\n\r\n")
    with s:
        f = s.makefile("rb")
        assert _read_answer(f).startswith(b"HTTP/1.1 200")
        # internal.home.test's rule answers 403; on this connection it must not reach the gateway
        s.sendall(b"GET /echo/smuggled HTTP/1.1\r\nHost: internal.home.test\r\n\r\n")
        assert f.read() == b""  # closed, no answer
    assert not any(r["target"] == "/echo/smuggled" for r in backend.requests)
    assert _via_edge(world, "internal.home.test", "/echo/x", scheme="http")[0] == 403


def test_tcp_services_are_not_reachable_by_naming_them_in_http(world: dict) -> None:
    code, body, _ = _via_edge(world, "ssh.home.test", "/", scheme="http")
    assert code == 404


def test_half_closed_tcp_connections_leave_nothing_behind(world: dict) -> None:
    edge: Edge = world["edge"]
    for _ in range(60):
        with socket.create_connection(("127.0.0.1", edge.ports["ssh"]), timeout=10) as c:
            c.sendall(b"bye\n")
            c.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := c.recv(4096):
                data += chunk
            assert data == b"hello from home\nbye\n"
    wait_until(lambda: world["home"].status()["runtime"]["tunnel"]["activeStreams"] == 0, what="no stream left at the connector")
    wait_until(lambda: edge.status()["activeStreams"] == 0, what="no stream left at the edge")


def test_connections_spread_over_two_edges_and_survive_one_dying(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    backend = Backend("app")
    repo = write_repo(tmp_path, ca, backend.port, 9)
    edges = [Edge(tmp_path, ca, name="edge-a"), Edge(tmp_path, ca, name="edge-b")]
    home = Home(tmp_path, repo, ca, edges, connections=4)
    try:
        for e in edges:
            e.wait_connectors(2)  # cloudflared's shape: 4 connections, 2 per edge
        for e in edges:
            assert _curl_edge(e, ca, "app.home.test", "--http2").stdout.endswith("\n200")
        edges[0].proc.kill()
        edges[0].proc.wait()
        assert _curl_edge(edges[1], ca, "app.home.test", "--http2").stdout.endswith("\n200")
        st = wait_until(lambda: (c := home.status()["runtime"]["tunnel"]["connections"]) and
                        sum(x["state"] == "connected" for x in c) == 2 and c, what="two connections left")
        assert {x["edge"] for x in st if x["state"] == "connected"} == {f"127.0.0.1:{edges[1].ports['tunnel']}"}
        assert "cloudflared_tunnel_ha_connections 2.0" in home.metrics()
    finally:
        home.stop()
        for e in edges:
            e.stop()
        backend.close()


def test_path_rules_apply_per_request_on_http1(world: dict) -> None:
    backend: Backend = world["backend"]
    # the edge's HTTP port and TLS it terminates carry readable HTTP/1.1: the path rule applies
    assert _via_edge(world, "app.home.test", "/status/404", scheme="http")[0] == 418
    assert _via_edge(world, "app.home.test", "/status/201", scheme="http")[0] == 201
    # inside passed-through TLS no path is known: the Gateway answers
    assert _via_edge(world, "app.home.test", "/status/404", "--http1.1")[0] == 404
    # a kept-alive connection opened for one rule cannot carry a request of another
    s = _raw_http(world["edge"].ports["http"], b"GET /status/200 HTTP/1.1\r\nHost: app.home.test\r\n\r\n")
    with s:
        f = s.makefile("rb")
        assert _read_answer(f).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /status/400?via=keepalive HTTP/1.1\r\nHost: app.home.test\r\n\r\n")
        assert f.read() == b""
    assert not any(r["target"] == "/status/400?via=keepalive" for r in backend.requests)


def test_a_certificate_issued_at_home_over_http01_through_the_tunnel_is_what_clients_see(tmp_path: Path) -> None:
    """cert-manager's HTTP-01 (gatewayHTTPRoute solver) at home, validated by Pebble through the
    edge's HTTP port; then TLS passed through by the edge presents that certificate."""
    from tests.certs.pebble import Pebble
    from tests.certs.test_acme_pebble import acme_issuer
    from tests.externaldns import manifests as m
    from tests.externaldns.knot import Knot
    from tests.integration.test_run import free_port

    knot = Knot(tmp_path / "knot", extra_records="www IN A 127.0.0.1\n")
    knot.start()
    pebble = Pebble(tmp_path / "pebble", f"127.0.0.1:{knot.port}")
    ca = CA(tmp_path)
    edge = Edge(tmp_path, ca, ports={"tunnel": free_port(), "https": free_port(), "http": pebble.http_port, "admin": free_port(),
                                     "ssh": free_port()})
    repo = tmp_path / "repo"
    issuer = acme_issuer(pebble, "letsencrypt-http", """      - http01:
          gatewayHTTPRoute:
            parentRefs: [{name: envoy-external, namespace: network, sectionName: http, kind: Gateway}]
""")
    www = """
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: www, namespace: network}
spec:
  secretName: www-tls
  dnsNames: [www.home.example]
  issuerRef: {name: letsencrypt-http, kind: ClusterIssuer}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cloudflared, namespace: network}
data:
  config.yaml: |
    ingress:
      - hostname: "*.home.example"
        service: https://envoy-external.network.svc.cluster.local:443
      - service: http_status:404
"""
    gateways = m.GATEWAYS.replace("""    - {name: https, protocol: HTTPS, port: 443, allowedRoutes: {namespaces: {from: All}},
       tls: {certificateRefs: [{name: tls}]}}""", """    - {name: https, protocol: HTTPS, port: 443, allowedRoutes: {namespaces: {from: All}},
       tls: {certificateRefs: [{name: tls}]}}
    - {name: www, protocol: HTTPS, port: 443, hostname: www.home.example, tls: {certificateRefs: [{name: www-tls}]}}""")
    assert gateways != m.GATEWAYS
    m.write(repo, {"gw.yaml": gateways, "issuer.yaml": issuer + "---" + www, "cluster-secrets.env": ""})
    home = Home(tmp_path, repo, ca, [edge], connections=1, certificates=True)
    try:
        edge.wait_connectors(1)
        wait_until(lambda: (home.status()["runtime"]["certificates"].get("network/www") or {}).get("revision"), timeout=90,
                   what="the certificate issued over HTTP-01 through the tunnel")
        roots = tmp_path / "pebble-roots.pem"
        roots.write_bytes(pebble.roots())

        def verified() -> bool:
            out = curl("--resolve", f"www.home.example:{edge.ports['https']}:127.0.0.1", "--cacert", str(roots), "-o", "/dev/null",
                       "-w", "%{http_code}", f"https://www.home.example:{edge.ports['https']}/", timeout=10)
            return out.returncode == 0  # the chain verifies against Pebble's root: home's issued certificate
        wait_until(verified, timeout=30, what="the issued certificate served through the edge")
    finally:
        home.stop()
        edge.stop()
        pebble.stop()
        knot.stop()


def test_the_pure_python_lane_serves_tunnel_streams_too(tmp_path: Path) -> None:
    """Without the compiled fast lane a Gateway's adopted connections take Python's TLS and HTTP."""
    ca = CA(tmp_path)
    backend = Backend("app")
    repo = write_repo(tmp_path, ca, backend.port, 9)
    edge = Edge(tmp_path, ca, terminate=["secure.home.test"])
    home = Home(tmp_path, repo, ca, [edge], connections=1, env={"HOMEPLANE_FASTLANE": "0"})
    try:
        edge.wait_connectors(1)
        for host in ("app.home.test", "secure.home.test"):
            out = _curl_edge(edge, ca, host, "--http2")
            assert out.stdout.endswith("\n200"), out
            assert json.loads(out.stdout.rpartition("\n")[0])["target"] == "/echo"
        assert _curl_edge(edge, ca, "app.home.test", scheme="http").stdout.endswith("\n200")
    finally:
        home.stop()
        edge.stop()
        backend.close()


def test_other_hosts_by_absolute_target_or_http2_authority_do_not_pass(world: dict) -> None:
    import h2.config
    import h2.connection
    import h2.events

    backend: Backend = world["backend"]
    edge: Edge = world["edge"]
    # an absolute-form target names the host the gateway serves, whatever Host says
    for first in (True, False):
        s = _raw_http(edge.ports["http"], (b"" if first else b"GET /echo/warm HTTP/1.1\r\nHost: app.home.test\r\n\r\n")
                      + b"GET http://internal.home.test/echo/absolute HTTP/1.1\r\nHost: app.home.test\r\n\r\n")
        with s:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert b"/echo/absolute" not in data
        if first:
            assert data.startswith(b"HTTP/1.1 403")  # the first request chose internal.home.test's rule
    # HTTP/2 on TLS the edge terminates: a second stream for another rule's host closes the connection
    ctx = ssl.create_default_context(cafile=str(world["ca"].path))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", edge.ports["https"]), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="secure.home.test") as s:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "secure.home.test"), (":path", "/echo/h2-first")],
                          end_stream=True)
        s.sendall(conn.data_to_send())
        statuses: dict[int, str] = {}
        ended = False
        while 1 not in statuses:
            for ev in conn.receive_data(s.recv(65536)):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = dict(ev.headers)[b":status"].decode()
        assert statuses[1] == "200"
        conn.send_headers(3, [(":method", "GET"), (":scheme", "https"), (":authority", "internal.home.test"),
                              (":path", "/echo/h2-smuggled")], end_stream=True)
        s.sendall(conn.data_to_send())
        try:
            while not ended:
                data = s.recv(65536)
                if not data:
                    ended = True
                for ev in conn.receive_data(data) if data else []:
                    if isinstance(ev, h2.events.ResponseReceived):
                        statuses[ev.stream_id] = dict(ev.headers)[b":status"].decode()
        except (ConnectionError, ssl.SSLError):
            ended = True
        assert 3 not in statuses
    assert not any(r["target"] in ("/echo/absolute", "/echo/h2-smuggled") for r in backend.requests)


def test_clients_that_vanish_mid_answer_cost_only_their_own_stream(world: dict) -> None:
    import threading

    edge: Edge = world["edge"]
    before = {(c["connector"], c["index"], c["since"]) for c in edge.status()["connections"]}
    long_result: list[tuple[int, object, str]] = []
    t = threading.Thread(target=lambda: long_result.append(_via_edge(world, "app.home.test", "/stream?n=12&ms=100", "-N",
                                                                      scheme="http")))
    t.start()
    for i in range(12):
        # half-close right after the request, then go away while the answer streams;
        # then one that shuts both ways while its download is stalled
        s = _raw_http(edge.ports["http"], b"GET /stream?n=3&ms=200 HTTP/1.1\r\nHost: app.home.test\r\n\r\n", rcvbuf=4096)
        s.shutdown(socket.SHUT_WR)
        if i % 2:
            s.recv(10)
        s.close()
        s = _raw_http(edge.ports["http"], b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: app.home.test\r\n\r\n", rcvbuf=4096)
        try:
            s.recv(4096)
        except TimeoutError:
            raise AssertionError((i, world["home"].status()["runtime"]["tunnel"], edge.status()))
        s.shutdown(socket.SHUT_RDWR)
        s.close()
    t.join(30)
    code, body, _ = long_result[0]
    assert code == 200 and body.count("data: event") == 12  # an unrelated stream was not cut
    assert {(c["connector"], c["index"], c["since"]) for c in edge.status()["connections"]} == before  # no connection lost
    assert "Fatal error" not in edge.log.read_text()
    # nothing left behind on either side: stalled streams whose client left were reset
    wait_until(lambda: world["home"].status()["runtime"]["tunnel"]["activeStreams"] == 0, what="no stream left at home")
    wait_until(lambda: all(c["activeStreams"] == 0 for c in edge.status()["connections"]), what="no stream left at the edge")


class FakeConnector:
    """A connector holding a valid token that misbehaves (for the edge's defences)."""

    def __init__(self, edge: Edge, ca: CA, settings: dict | None = None):
        import h2.config
        import h2.connection

        from homeplane.tunnel import wire
        from tests.tunnel.harness import TOKEN

        ctx = ssl.create_default_context(cafile=str(ca.path))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", edge.ports["tunnel"]), timeout=10), server_hostname="127.0.0.1")
        self.sock.sendall(wire.connector_hello("127.0.0.1", TOKEN, "fake", 9))
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.sock.sendall(self.h2.data_to_send())

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        import time

        self.sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.sock.recv(65536) == b"":
                    return True
            except socket.timeout:
                continue
            except (ConnectionError, ssl.SSLError):
                return True
        return False


def test_a_connector_flooding_pings_is_cut_off_and_others_serve_on(world: dict) -> None:
    edge: Edge = world["edge"]
    fake = FakeConnector(edge, world["ca"])
    with fake.sock:
        cut = False
        try:
            for _ in range(50):
                for _ in range(20):
                    fake.h2.ping(b"12345678")
                fake.sock.sendall(fake.h2.data_to_send())
        except (ConnectionError, ssl.SSLError):
            cut = True  # (the edge closed it while it was still flooding)
        assert cut or fake.closed_by_peer()
    assert "more than 100 PING/SETTINGS frames in a second" in edge.log.read_text()
    assert _via_edge(world, "app.home.test", "/echo/after-flood", "--http2")[0] == 200


def test_a_connector_that_takes_no_streams_is_not_chosen(world: dict) -> None:
    import h2.settings

    edge: Edge = world["edge"]
    fake = FakeConnector(edge, world["ca"], {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
    with fake.sock:
        fake.sock.settimeout(2)
        fake.h2.receive_data(fake.sock.recv(65536))  # the edge's settings, and its ack of ours
        fake.sock.sendall(fake.h2.data_to_send())
        import time

        time.sleep(0.3)
        for _ in range(6):  # it has the fewest streams; without room it must never be picked
            assert _via_edge(world, "app.home.test", "/echo/not-fake", scheme="http")[0] == 200
    assert "TooManyStreams" not in edge.log.read_text() and "Fatal error" not in edge.log.read_text()


def test_public_connections_are_bounded_per_source(tmp_path: Path) -> None:
    import time

    ca = CA(tmp_path)
    edge = Edge(tmp_path, ca, extra={"publicWait": "0s", "maxConnectionsPerSource": 3})
    try:
        wait_until(lambda: edge.status()["publicOpen"], what="public ports open")
        held = [socket.create_connection(("127.0.0.1", edge.ports["http"]), timeout=5) for _ in range(3)]
        over = socket.create_connection(("127.0.0.1", edge.ports["http"]), timeout=5)
        with over:
            assert over.recv(10) == b""  # closed at once, the three others still open
        assert edge.status()["publicConnections"] == 3
        # another source is not affected
        with socket.socket() as other:
            other.bind(("127.0.0.7", 0))
            other.settimeout(5)
            other.connect(("127.0.0.1", edge.ports["http"]))
            other.sendall(b"GET / HTTP/1.1\r\nHost: app.home.test\r\n\r\n")
            assert other.recv(100).startswith(b"HTTP/1.1 503")
        for s in held:
            s.close()
        time.sleep(1.2)  # (closed connections are counted out twice a second)
        with socket.create_connection(("127.0.0.1", edge.ports["http"]), timeout=5) as again:
            again.sendall(b"GET / HTTP/1.1\r\nHost: app.home.test\r\n\r\n")
            assert again.recv(100).startswith(b"HTTP/1.1 503")
        assert 'homeplane_edge_streams_total{kind="any",result="over_limit"} 1.0' in httpx.get(edge.admin + "/metrics").text
    finally:
        edge.stop()
