"""Every request the gateway serves becomes a flow with Hubble's fields and counts in Envoy's
metric names, whichever lane served it: verdicts and drop reasons, Services, filters, histograms."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from homeplane.gateway.server import Settings
from homeplane.observe.flows import FlowFilter
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway, free_port
from tests.gateway.manifests import gateway, route, service
from tests.gateway.test_auth import GRANT, auth_service, ext_auth_policy


def _samples(dp) -> dict[tuple[str, frozenset], float]:
    reg = CollectorRegistry()
    reg.register(dp.envoy_stats)
    out = {}
    families = list(text_string_to_metric_families(generate_latest(reg).decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "each family once: its TYPE line names its own samples"
    for fam in families:
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast", "python"])
def test_flows_and_envoy_stats_say_what_happened(backend: Backend, fast_lane: bool) -> None:
    from tests.gateway.authserver import AuthServer

    auth = AuthServer()
    dead = free_port()
    manifests = (gateway() + service("a", backend.port) + service("dead", dead) + service("down", backend.port, ready=False)
                 + route("r", "[auth.test]") + auth_service(auth.port) + GRANT + ext_auth_policy()
                 + route("ok", "[ok.test]") + route("gone", "[dead.test]", "\n    - backendRefs: [{name: dead, port: 80}]")
                 + route("none", "[down.test]", "\n    - backendRefs: [{name: down, port: 80}]"))
    g = Gateway(manifests, Settings(access_log=False, fast_lane=fast_lane, flows=64))
    try:
        sent = {"ok.test": 200, "nowhere.test": 404, "down.test": 503, "dead.test": 503, "auth.test": 302}
        for host, code in sent.items():
            assert httpx.get(g.url(80, "/echo"), headers={"host": host}, timeout=20).status_code == code
        httpx.get(g.url(80, "/echo?x=1"), headers={"host": "ok.test"}, timeout=20)
        import socket

        with socket.create_connection(("127.0.0.1", g.port(80)), timeout=10) as bad:  # refused as malformed: counted
            bad.sendall(b"GET /a\x01b HTTP/1.1\r\nHost: ok.test\r\n\r\n")
            assert bad.recv(100).startswith(b"HTTP/1.1 400")
        ring = g.dp.flow_ring
        assert ring is not None
        flows = ring.read()
        by_host = {}
        for w in flows:
            url = w["flow"]["l7"]["http"]["url"]
            by_host.setdefault(url.split("/")[2], w["flow"])
        verdicts = {h: (f["verdict"], f.get("drop_reason_desc")) for h, f in by_host.items()}
        assert verdicts == {"ok.test": ("FORWARDED", None), "nowhere.test": ("DROPPED", "NO_ROUTE"),
                            "down.test": ("DROPPED", "NO_SERVICE"), "dead.test": ("ERROR", None),
                            "auth.test": ("DROPPED", "POLICY_DENIED")}
        ok = by_host["ok.test"]
        assert ok["destination_service"] == {"namespace": "apps", "name": "a"}
        assert ok["IP"] == {"source": "127.0.0.1", "destination": "127.0.0.1", "ipVersion": "IPv4"}
        assert ok["l4"]["TCP"]["destination_port"] == backend.port
        assert ok["l7"]["http"] == {"code": 200, "method": "GET", "url": "http://ok.test/echo", "protocol": "HTTP/1.1"}
        assert ok["homeplane"]["gateway"] == "network/gw" and ok["homeplane"]["route"].startswith("HTTPRoute/apps/ok")
        assert ok["source"]["labels"] == ["reserved:host"] and ok["Type"] == "L7"
        nowhere = by_host["nowhere.test"]  # answered by the gateway: the Gateway is the destination
        assert nowhere["destination"]["namespace"] == "network" and nowhere["l4"]["TCP"]["destination_port"] == 80

        def hosts(**flags: list[str]) -> list[str]:
            flt = FlowFilter.parse({k.replace("_", "-"): v for k, v in flags.items()})
            return [w["flow"]["l7"]["http"]["url"].split("/")[2] for w in ring.read(flt=flt)]

        assert hosts(verdict=["DROPPED"]) == ["nowhere.test", "down.test", "auth.test"]
        assert hosts(verdict=["ERROR", "forwarded"]) == ["ok.test", "dead.test", "ok.test"]
        assert hosts(http_status=["5+"]) == ["down.test", "dead.test"]
        assert hosts(http_status=["302"]) == ["auth.test"]
        assert hosts(to_service=["apps/a"]) == ["ok.test", "ok.test"]
        assert hosts(to_service=["dead"]) == ["dead.test"]
        # answered by the Gateway itself
        assert hosts(namespace=["network"]) == ["nowhere.test", "down.test", "auth.test"]
        assert hosts(to_namespace=["apps"], verdict=["ERROR"]) == ["dead.test"]
        assert hosts(http_path=[r"x=1$"]) == []  # the path filter reads the path, not the query
        assert hosts(to_port=[str(backend.port)], verdict=["FORWARDED"]) == ["ok.test", "ok.test"]
        assert hosts(protocol=["dns"]) == []
        assert [w["flow"]["l7"]["http"]["url"] for w in ring.read(last=1)] == ["http://ok.test/echo?x=1"]
        assert ring.read(since=flows[-2]["flow"]["homeplane"]["seq"]) == [flows[-1]]

        m = _samples(g.dp)
        prefix = {("envoy_http_conn_manager_prefix", "http-80"), ("gateway", "network/gw")}
        assert m[("envoy_http_downstream_rq_total", frozenset(prefix))] == 6
        assert m[("envoy_http_downstream_cx_protocol_error", frozenset())] >= 1
        assert m[("envoy_http_downstream_rq_xx", frozenset(prefix | {("envoy_response_code_class", "5")}))] == 2
        assert m[("envoy_http_downstream_rq_xx", frozenset(prefix | {("envoy_response_code_class", "2")}))] == 2
        assert m[("envoy_http_downstream_rq_http1_total", frozenset(prefix))] == 6
        assert m[("envoy_http_downstream_rq_time_count", frozenset(prefix))] == 6
        assert m[("envoy_http_downstream_cx_total", frozenset(prefix))] >= 1
        pool = ("envoy_cluster_name", "service/apps/a:80")
        assert m[("envoy_cluster_upstream_rq", frozenset({pool, ("envoy_response_code", "200")}))] == 2
        assert m[("envoy_cluster_upstream_rq_total", frozenset({pool}))] == 2
        assert m[("envoy_cluster_upstream_rq_time_count", frozenset({pool}))] == 2
        assert m[("envoy_cluster_upstream_cx_connect_fail", frozenset({("envoy_cluster_name", "service/apps/dead:80")}))] >= 1
        assert m[("envoy_cluster_membership_healthy", frozenset({pool}))] == 1
        assert m[("envoy_cluster_membership_total", frozenset({("envoy_cluster_name", "service/apps/down:80")}))] == 0
    finally:
        g.close()
        auth.close()


def test_the_ring_keeps_the_newest_and_nothing_when_off(backend: Backend) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route(), Settings(access_log=False, flows=4))
    try:
        for i in range(10):
            assert httpx.get(g.url(80, f"/echo/{i}"), headers={"host": "app.test"}, timeout=20).status_code == 200
        flows = g.dp.flow_ring.read()
        assert [f["flow"]["l7"]["http"]["url"].rsplit("/", 1)[1] for f in flows] == ["6", "7", "8", "9"]
        assert [f["flow"]["homeplane"]["seq"] for f in flows] == [7, 8, 9, 10]
    finally:
        g.close()
    off = Gateway(gateway() + service("a", backend.port) + route(), Settings(access_log=False, flows=0, request_stats=False))
    try:
        assert httpx.get(off.url(80, "/echo"), headers={"host": "app.test"}, timeout=20).status_code == 200
        assert off.dp.flow_ring is None and not off.dp.per_request and off.dp.envoy_stats.listeners == {}
    finally:
        off.close()
