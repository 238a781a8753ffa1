"""``homeplane status`` reads a running instance's /status: each component's state and the
problems that made it less than OK."""

from __future__ import annotations

import copy

from homeplane.observe.status import DISABLED, ERROR, OK, WARNING, overall, summarize

HEALTHY = {
    "homeplaneVersion": "0.1.0",
    "summary": {"files": 3, "objects": 9, "errors": 0, "warnings": 0, "notServed": {}},
    "gateways": [{"namespace": "network", "name": "envoy-internal", "programmed": True,
                  "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed"}],
                  "listeners": [{"name": "https", "conditions": [{"type": "Accepted", "status": "True"}]}]}],
    "routes": [{"namespace": "apps", "name": "echo", "parents": [{"gateway": "network/envoy-internal", "accepted": True,
                                                                  "resolvedRefs": True, "reason": "Accepted"}]}],
    "policies": [],
    "services": [{"namespace": "apps", "name": "echo", "type": "LoadBalancer", "loadBalancerIPs": ["192.0.2.5"]}],
    "diagnostics": [],
    "runtime": {"servingVersion": 4, "rejected": None, "listeners": [{"gateway": "network/envoy-internal", "http3": {"listening": True}}],
                "dns": {"listen": ["127.0.0.1:53"], "upstreams": ["1.1.1.1:53"], "cacheEntries": 3},
                "certificates": {"network/wild": {"conditions": [{"type": "Ready", "status": "True"}]}},
                "flows": {"capacity": 4095, "stored": 10, "seen": 10},
                "leader": {"node": "a", "isLeader": True, "leader": "a", "leaseSeconds": 15, "shared": False}},
}


def states(doc) -> dict[str, str]:
    return {c.name: c.state for c in summarize(doc)}


def test_a_healthy_instance_is_ok_and_absent_parts_disabled() -> None:
    got = states(HEALTHY)
    assert got == {"Configuration": OK, "Gateways": OK, "Routes": OK, "Policies": DISABLED, "Network policy": DISABLED, "Services": OK, "DNS": OK,
                   "DNS automation": DISABLED, "Certificates": OK, "Tunnel": DISABLED, "Flows": OK, "Controllers": OK}
    assert overall(summarize(HEALTHY)) == OK
    gw = [c for c in summarize(HEALTHY) if c.name == "Gateways"][0]
    assert gw.detail == "1/1 programmed, 1 listeners on 1 sockets (1 with HTTP/3)"


def test_each_problem_is_named() -> None:
    doc = copy.deepcopy(HEALTHY)
    doc["runtime"]["rejected"] = {"time": "2026-12-08T01:00:00Z", "reason": "file change",
                                  "diagnostics": [{"message": "apps/echo.yaml: bad indentation"}]}
    doc["routes"][0]["parents"][0].update(accepted=False, reason="NotAllowedByListeners", message="namespace not allowed")
    doc["services"][0]["loadBalancerIPs"] = []
    doc["runtime"]["certificates"]["network/wild"]["conditions"][0].update(status="False", reason="Failed", message="ACME said no")
    doc["runtime"]["tunnel"] = {"connections": [{"index": 0, "edge": "edge:7844", "state": "connected"},
                                                {"index": 1, "edge": "edge:7844", "state": "backoff", "lastError": "refused"}],
                                "rules": [{}], "activeStreams": 2}
    doc["runtime"]["externalDNS"] = {"network/cloudflare": {"lastError": "HTTP 403", "failures": 3}}
    comps = {c.name: c for c in summarize(doc)}
    assert comps["Configuration"].state == ERROR and "still serving snapshot 4: apps/echo.yaml: bad indentation" in comps["Configuration"].problems[0]
    assert comps["Routes"].state == ERROR and comps["Routes"].problems == [
        "apps/echo: network/envoy-internal: NotAllowedByListeners namespace not allowed"]
    assert comps["Services"].state == WARNING and "apps/echo: LoadBalancer without an address" in comps["Services"].problems[0]
    assert comps["Certificates"].state == ERROR and comps["Certificates"].problems == ["network/wild: Ready=False Failed: ACME said no"]
    assert comps["Tunnel"].state == WARNING and comps["Tunnel"].detail.startswith("1/2 connections up")
    assert comps["Tunnel"].problems == ["connection 1 to edge:7844: backoff (refused)"]
    assert comps["DNS automation"].state == ERROR and comps["DNS automation"].problems == ["network/cloudflare: HTTP 403 (3 failures in a row)"]
    assert overall(list(comps.values())) == ERROR
