"""--port-map and what clients are told: a redirect asked for on a mapped port names the port its
target was mapped to; one asked for without a port (a client behind a port forward from 80)
keeps the manifest's port. Which ports move at all depends on what the process may bind."""

from __future__ import annotations

import httpx

from homeplane.gateway import server
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route

LISTENERS = """- {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
    - {name: alt, protocol: HTTP, port: 443, allowedRoutes: {namespaces: {from: All}}}"""
REDIRECT = """
    - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]"""


def test_redirects_follow_the_port_the_client_used() -> None:
    g = Gateway(gateway(LISTENERS) + route(rules=REDIRECT, section="http"))
    try:
        local_80, local_443 = g.port(80), g.port(443)
        r = httpx.get(g.url(80, "/a?b=1"), headers={"host": f"app.test:{local_80}"})
        assert r.status_code == 301 and r.headers["location"] == f"https://app.test:{local_443}/a?b=1"
        r = httpx.get(g.url(80, "/a"), headers={"host": "app.test"})
        assert r.headers["location"] == "https://app.test/a"
    finally:
        g.close()


def test_ports_move_only_when_they_cannot_be_bound(monkeypatch) -> None:
    monkeypatch.setattr(server.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(server, "_has_capability", lambda bit: bit == 10)
    assert server.default_port_map() == {}  # CAP_NET_BIND_SERVICE: 80 stays 80
    monkeypatch.setattr(server, "_has_capability", lambda bit: False)
    assert server.default_port_map()[443] == 8443
