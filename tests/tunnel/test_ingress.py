"""cloudflared ingress rules, where a repo keeps them, the tunnel's handshake and the edge's config (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from homeplane.tunnel import wire
from homeplane.tunnel.edge_config import EdgeConfigError, load_edge_config
from homeplane.tunnel.ingress import IngressError, parse_ingress
from homeplane.tunnel.local import service_name


def rules(text: str):  # noqa: ANN201
    return parse_ingress(yaml.safe_load(text))


def test_first_matching_rule_wins_and_wildcards_are_leftmost_label_only() -> None:
    ing = rules("""
originRequest: {connectTimeout: 10s, noTLSVerify: true}
ingress:
  - hostname: ssh.example.com
    service: ssh://localhost:22
  - hostname: "*.example.com"
    service: https://envoy-external.network.svc.cluster.local
    originRequest: {originServerName: external.example.com, http2Origin: true}
  - hostname: example.com
    service: http://10.0.0.5:8080
  - service: http_status:404
""")
    assert ing.match("ssh.example.com").scheme == "tcp" and ing.match("ssh.example.com").port == 22
    r = ing.match("App.Example.com.")
    assert (r.index, r.host, r.port) == (1, "envoy-external.network.svc.cluster.local", 443)
    assert r.origin.server_name == "external.example.com" and r.origin.http2_origin
    # top-level originRequest is the default for every rule
    assert r.origin.connect_timeout == 10.0 and r.origin.no_tls_verify
    assert ing.match("a.b.example.com").index == 1  # "*." matches any depth, as cloudflared's suffix match
    assert ing.match("example.com").index == 2  # the apex is not under "*.example.com"
    assert ing.match("example.org").status == 404 and ing.match(None).status == 404
    assert ing.hostnames() == ["ssh.example.com", "*.example.com", "example.com"]


@pytest.mark.parametrize("text, message", [
    ("ingress: [{hostname: a.example.com, service: 'http://x:1'}]", "last rule must match all"),
    ("ingress: [{service: 'http_status:999'}]", "100-599"),
    ("ingress: [{hostname: 'a.*.example.com', service: 'http://x'}, {service: 'http_status:404'}]", "leftmost label"),
    ("ingress: [{hostname: 'a.example.com:443', service: 'http://x'}, {service: 'http_status:404'}]", "must not have a port"),
    ("ingress: [{service: 'ftp://x:21'}]", "expected http://"),
    ("ingress: [{service: 'http://x/path'}]", "cannot have a path"),
    ("ingress: [{service: 'tcp://x'}]", "needs a port"),
    ("ingress: [{service: hello_world}]", "not supported"),
    ("ingress: [{hostname: x}]", r"ingress\[0\]\.service: required"),
    ("ingress: []", "non-empty list"),
    ("ingress: [{service: 'http://x', originRequest: {connectTimeout: soon}}]", "connectTimeout"),
])
def test_what_cloudflared_refuses_is_refused_with_the_rule(text: str, message: str) -> None:
    with pytest.raises(IngressError, match=message):
        rules(text)


def test_path_rules_match_a_regular_expression_in_the_path_only_where_a_path_is_known() -> None:
    ing = rules("""
ingress:
  - hostname: a.example.com
    path: ^/api/
    service: http://api:80
  - hostname: a.example.com
    service: http://web:80
    originRequest: {unknownThing: 1}
  - path: \\.(jpg|png)$
    service: http://images:80
  - service: http_status:404
""")
    assert ing.match("a.example.com", "/api/v1").host == "api"
    assert ing.match("a.example.com", "/apix").host == "web"  # searched, not prefix-matched: ^/api/ needs the slash
    assert ing.match("a.example.com", None).host == "web"  # no path known (TLS passed through): path rules do not match
    assert ing.match("b.example.com", "/x/cat.png").host == "images" and ing.match("b.example.com", "/x").status == 404
    assert ing.has_paths("a.example.com") and ing.has_paths("zzz.org")  # (the hostname-less path rule)
    assert any("path rules are applied to HTTP/1.1" in w for w in ing.warnings)
    assert any("unknownThing" in w for w in ing.warnings)
    with pytest.raises(IngressError, match=r"ingress\[0\]\.path: .* is not a regular expression"):
        rules("ingress: [{path: '(unclosed', service: 'http://x'}, {service: 'http_status:404'}]")


def test_rules_after_a_catch_all_are_flagged() -> None:
    ing = rules("ingress: [{service: 'http://a:1'}, {hostname: x.com, service: 'http://b:1'}, {service: 'http_status:404'}]")
    assert any("never used" in w for w in ing.warnings)


def test_the_corpus_cloudflared_config_is_found_in_its_helmrelease(corpus: Path) -> None:
    from homeplane.pipeline import Inputs, run_pipeline

    res = run_pipeline(Inputs((corpus / "onedr0p-home-ops" / "kubernetes",), {}))
    found = res.translation.snapshot.extras["cloudflared"]
    assert len(found) == 1 and found[0].ingress is not None
    assert found[0].origin.startswith("HelmRelease network/cloudflare-tunnel values.configMaps.config.data.config.yaml")
    rule = found[0].ingress.match("grafana.turbo.ac")
    # {{ .Release.Namespace }} rendered as the chart's tpl does
    assert rule.service == "https://envoy-external.network.svc.cluster.local:443"
    assert rule.origin.server_name == "external.turbo.ac" and rule.origin.http2_origin
    assert found[0].ingress.match("turbo.ac").status == 404


def test_a_configmap_with_a_broken_config_is_a_diagnostic() -> None:
    from tests.conftest import translate_text

    _, tr = translate_text("""
apiVersion: v1
kind: ConfigMap
metadata: {name: cloudflared, namespace: network}
data:
  config.yaml: |
    ingress:
      - hostname: a.example.com
        service: http://web:80
""")
    assert tr.snapshot.extras["cloudflared"][0].ingress is None
    assert any("last rule must match all" in str(d) and "ConfigMap network/cloudflared" in str(d) for d in tr.diagnostics)


def test_service_names() -> None:
    assert service_name("envoy-external.network.svc.cluster.local") == ("network", "envoy-external")
    assert service_name("envoy-external.network.svc") == ("network", "envoy-external")
    assert service_name("envoy-external.network") == ("network", "envoy-external")
    assert service_name("web.example.com") is None
    assert service_name("localhost") is None
    assert service_name("a.b.svc.other.domain", "other.domain") == ("b", "a")


def test_handshake_round_trip_and_refusals() -> None:
    hello = wire.parse_hello(wire.connector_hello("edge.example.com", "t0ken-0123456789", "home-1", 3))
    assert (hello.token, hello.connector, hello.index) == ("t0ken-0123456789", "home-1", 3)
    assert wire.parse_accept(wire.edge_accept("vps-1")) == "vps-1"
    with pytest.raises(wire.HandshakeError, match="401"):
        wire.parse_accept(wire.edge_refuse(401, "Unauthorized", "unknown tunnel token"))
    with pytest.raises(wire.HandshakeError, match="bearer"):
        wire.parse_hello(b"GET /tunnel HTTP/1.1\r\nUpgrade: homeplane-tunnel/1\r\n\r\n")
    with pytest.raises(wire.HandshakeError, match="not a tunnel handshake"):
        wire.parse_hello(b"POST / HTTP/1.1\r\n\r\n")
    opened = wire.parse_open(wire.Open("http", "App.Example.com", ("2001:db8::1", 443), "h2").headers())
    assert opened == wire.Open("http", "app.example.com", ("2001:db8::1", 443), "h2")
    with pytest.raises(ValueError, match="unknown kind"):
        wire.parse_open([(":method", "CONNECT"), ("hp-kind", "udp"), ("hp-client", "1.2.3.4 5")])


def test_edge_config_errors_name_the_field(tmp_path: Path) -> None:
    def load(text: str):  # noqa: ANN202
        p = tmp_path / "edge.yaml"
        p.write_text(text)
        return load_edge_config(p)

    with pytest.raises(EdgeConfigError, match="tunnel: is required"):
        load("name: x\n")
    with pytest.raises(EdgeConfigError, match="unknown field.*tunel"):
        load("tunel: {}\n")
    with pytest.raises(EdgeConfigError, match="tunnel.certFile: .*does not exist"):
        load("tunnel: {certFile: nope.crt, keyFile: nope.key, tokens: [{name: a, token: 0123456789abcdef}]}\n")
    (tmp_path / "c.crt").write_text("x")
    (tmp_path / "c.key").write_text("x")
    with pytest.raises(EdgeConfigError, match=r"tunnel.tokens\[0\]: needs token"):
        load("tunnel: {certFile: c.crt, keyFile: c.key, tokens: [{name: a, token: short}]}\n")
    with pytest.raises(EdgeConfigError, match="https.hostnames\\[0\\].tls: passthrough or terminate"):
        load("tunnel: {certFile: c.crt, keyFile: c.key, tokens: [{name: a, token: 0123456789abcdef}]}\n"
             "https: {hostnames: [{hostname: a.com, tls: maybe}]}\n")
    with pytest.raises(EdgeConfigError, match="maxConnectionsPerSource: a positive number"):
        load("tunnel: {certFile: c.crt, keyFile: c.key, tokens: [{name: a, token: 0123456789abcdef}]}\n"
             "maxConnectionsPerSource: 0\n")
    with pytest.raises(EdgeConfigError, match="tunnel: cannot use"):
        load("tunnel: {certFile: c.crt, keyFile: c.key, tokens: [{name: a, token: 0123456789abcdef}]}\n")


def test_without_a_cloudflared_config_the_gateway_whose_dns_target_is_the_tunnel_is_served() -> None:
    from tests.conftest import translate_text

    _, tr = translate_text("""
apiVersion: externaldns.k8s.io/v1alpha1
kind: DNSEndpoint
metadata: {name: cloudflare-tunnel, namespace: network}
spec:
  endpoints:
    - {dnsName: external.example.com, recordType: CNAME, targets: [0a1b2c3d.cfargotunnel.com]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: envoy-external
  namespace: network
  annotations: {external-dns.alpha.kubernetes.io/target: external.example.com}
spec:
  gatewayClassName: envoy
  listeners:
    - {name: https, protocol: HTTPS, port: 443, hostname: "*.example.com", allowedRoutes: {namespaces: {from: All}},
       tls: {certificateRefs: [{name: missing}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: envoy-internal
  namespace: network
  annotations: {external-dns.alpha.kubernetes.io/target: internal.example.com}
spec:
  gatewayClassName: envoy
  listeners:
    - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
""")
    ing, origin = tr.snapshot.extras["tunnelIngress"]
    assert "Gateway network/envoy-external" in origin and "envoy-internal" not in origin
    assert "external.example.com is the tunnel" in origin
    # the listener is not ready (its certificate is missing): nothing is routed to it
    assert [r.service for r in ing.rules] == ["http_status:404"]


def test_default_ingress_names_route_hostnames_and_matches_sni_to_host() -> None:
    from types import SimpleNamespace as NS

    from homeplane.tunnel.discover import default_ingress

    gw = NS(ref=NS(namespace="network", name="envoy-external"), annotations={}, infrastructure_annotations={},
            listeners=[NS(protocol="HTTPS", ready=True, port=443, hostname="*.example.com",
                          vhosts=[NS(hostname="app.example.com"), NS(hostname="b.example.com")]),
                       NS(protocol="HTTP", ready=True, port=80, hostname=None, vhosts=[NS(hostname="app.example.com")])])
    assert default_ingress((), [gw]) is None
    ing, origin = default_ingress((), [gw], named=["network/envoy-external"])
    assert origin.endswith("(--tunnel-gateway)")
    assert [(r.hostname, r.service) for r in ing.rules[:2]] == [
        ("app.example.com", "https://envoy-external.network.svc.cluster.local:443"),
        ("b.example.com", "https://envoy-external.network.svc.cluster.local:443")]
    assert ing.rules[0].origin.match_sni_to_host and ing.match("c.example.com").status == 404


def test_proxy_protocol_header_round_trips_through_the_gateways_parser() -> None:
    from homeplane.gateway.frontends import proxyproto

    for client, server in ((("198.51.100.7", 50123), ("10.0.0.1", 443)), (("2001:db8::7", 4431), ("::1", 8443)),
                           (("2001:db8::7", 4431), ("10.0.0.1", 443))):
        info = proxyproto.parse(proxyproto.encode_v2(client, server) + b"rest")
        assert info is not None and (info.client_ip, info.client_port) == client
    assert rules("ingress: [{service: 'tcp://x:1', originRequest: {proxyProtocol: v2}}]").rules[0].origin.proxy_protocol
    with pytest.raises(IngressError, match="proxyProtocol: v2 or off"):
        rules("ingress: [{service: 'tcp://x:1', originRequest: {proxyProtocol: v9}}]")


def test_requests_are_read_from_http1_and_http2_byte_streams() -> None:
    import h2.config
    import h2.connection

    from homeplane.tunnel import requests

    r1 = requests.H1Requests()
    assert r1.feed(b"GET /a?x=1 HTTP/1.1\r\nHost: App.Example.com:8080\r\n\r\nGET http://other.example.com/b HTTP/1.1\r\n"
                   b"Host: app.example.com\r\n\r\n") == [("app.example.com", "/a"), ("other.example.com", "/b")]
    r1 = requests.H1Requests()
    with pytest.raises(requests.Upgraded) as up:
        r1.feed(b"GET /ws HTTP/1.1\r\nHost: a.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello")
    assert up.value.args[0] == [("a.example.com", "/ws")]
    with pytest.raises(requests.NotReadable):
        requests.H1Requests().feed(b"\x16\x03\x01 not http\r\n\r\n")

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "a.example.com"), (":path", "/one")])
    client.send_data(1, b"x" * 100)
    client.send_headers(1, [("grpc-status", "0")], end_stream=True)  # trailers: not a request
    client.send_headers(3, [(":method", "GET"), (":scheme", "https"), (":authority", "B.example.com:443"), (":path", "/two?q")],
                        end_stream=True)
    data = client.data_to_send()
    r2 = requests.H2Requests()
    seen = []
    for i in range(0, len(data), 7):  # in small pieces, as a network would
        seen += r2.feed(data[i : i + 7])
    assert seen == [("a.example.com", "/one"), ("b.example.com", "/two")]
    with pytest.raises(requests.NotReadable, match="preface"):
        requests.H2Requests().feed(b"GET / HTTP/1.1\r\n")


def test_the_edge_asks_the_kernel_to_migrate_queued_connections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """At a handover the old edge closes listeners the successor shares: net.ipv4.tcp_migrate_req
    makes the kernel pass the connections waiting in their queues on instead of resetting them."""
    from homeplane.tunnel.edge import migrate_queued_connections

    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("0\n")
    assert migrate_queued_connections(str(knob)) and knob.read_text().strip() == "1"
    assert migrate_queued_connections(str(knob))  # already on
    assert not migrate_queued_connections(str(tmp_path / "missing" / "knob"))
