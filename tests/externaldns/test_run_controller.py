"""``homeplane run`` keeps DNS in sync: a route change reaches a real RFC 2136 server without
waiting for the interval (set to an hour here), an outage shows in /status and is recovered
from, and external-dns's metric names are on /metrics."""

from __future__ import annotations

import httpx

from tests.externaldns import manifests as m
from tests.externaldns.knot import KEY_NAME, KEY_SECRET, Knot
from tests.integration.test_run import Homeplane, wait_for


def _repo(tmp_path, port: int):
    args = ["--rfc2136-host=127.0.0.1", f"--rfc2136-port={port}", "--rfc2136-zone=home.example",
            f"--rfc2136-tsig-keyname={KEY_NAME}", f"--rfc2136-tsig-secret={KEY_SECRET}", "--rfc2136-tsig-axfr"]
    hr = m.external_dns("lan-dns", "rfc2136", ["gateway-httproute"], "main", "k8s.main.%{record_type}-", args)
    repo = m.write(tmp_path / "repo", {
        "gateways.yaml": m.GATEWAYS, "dns.yaml": hr.replace("policy: sync", "policy: sync\n    interval: 1h"),
        "routes.yaml": m.route("app", "default", "envoy-internal", ["app.home.example"]),
        "cluster-secrets.env": "",
    })
    return repo


def test_changes_reach_the_server_and_outages_are_survived(tmp_path):
    knot = Knot(tmp_path / "knot")
    knot.start()
    repo = _repo(tmp_path, knot.port)
    hp = Homeplane(repo, tmp_path / "state.db")
    try:
        wait_for(lambda: knot.dig("app.home.example", "A") == ["192.168.42.121"], what="first sync")
        st = wait_for(lambda: hp.status()["runtime"]["externalDNS"]["network/lan-dns"].get("lastSync") and hp.status(), what="status")
        edns = st["runtime"]["externalDNS"]["network/lan-dns"]
        assert edns["provider"] == "rfc2136" and edns["records"] == 1 and "lastError" not in edns
        assert KEY_SECRET not in httpx.get(hp.url + "/status").text
        # a new route: published on the change, not an hour later
        (repo / "routes.yaml").write_text(
            m.route("app", "default", "envoy-internal", ["app.home.example"])
            + m.route("new", "default", "envoy-internal", ["new.home.example"]))
        wait_for(lambda: knot.dig("new.home.example", "A") == ["192.168.42.121"], timeout=15, what="event-driven sync")
        # the server goes away while a route changes: the error shows, nothing is lost
        knot.stop()
        (repo / "routes.yaml").write_text(
            m.route("app", "default", "envoy-internal", ["app.home.example"])
            + m.route("later", "default", "envoy-internal", ["later.home.example"]))
        err = wait_for(lambda: hp.status()["runtime"]["externalDNS"]["network/lan-dns"].get("lastError"), what="error in status")
        assert "zone transfer" in err
        knot.start()
        wait_for(lambda: knot.dig("later.home.example", "A") == ["192.168.42.121"], timeout=40, what="recovery")
        assert knot.dig("new.home.example", "A") == []  # the route removed during the outage is removed too
        wait_for(lambda: "lastError" not in hp.status()["runtime"]["externalDNS"]["network/lan-dns"], what="error cleared")
        metrics = httpx.get(hp.url + "/metrics").text
        assert 'external_dns_controller_last_sync_timestamp_seconds{instance="network/lan-dns"}' in metrics
        assert 'external_dns_source_endpoints_total{instance="network/lan-dns"} 2.0' in metrics
        assert 'external_dns_registry_errors_total{instance="network/lan-dns"}' in metrics
    finally:
        hp.stop()
        knot.stop()
