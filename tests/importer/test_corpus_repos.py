"""The two real home-ops repositories in ../shared/corpus, imported as Flux trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import corpus_or_skip

from homeplane.importer.repo import load_repo
from homeplane.translate import translate


def routes(r) -> dict[tuple[str, str], object]:
    return {(o.namespace, o.name): o for o in r.objects if o.kind == "HTTPRoute" and o.served}


@pytest.fixture(scope="module")
def onedr0p(corpus_dir: Path):
    return load_repo(corpus_dir / "onedr0p-home-ops" / "kubernetes", {"CLOUDFLARE_TUNNEL_ID": "0000-tunnel"})


@pytest.fixture(scope="module")
def bjws(corpus_dir: Path):
    return load_repo(corpus_dir / "bjw-s-labs-home-ops" / "kubernetes", {})


@pytest.fixture(scope="module")
def corpus_dir() -> Path:
    return corpus_or_skip()


def test_onedr0p_routes(onedr0p) -> None:
    rs = routes(onedr0p)
    rendered = {k for k, o in rs.items() if "homeplane.dev/rendered-from" in o.annotations}
    # 8 app-template routes, 2 from kube-prometheus-stack, echo's httpRoute, rook-ceph-cluster's dashboard
    assert len(rs) == 14 and len(rendered) == 12
    assert rs[("default", "sonarr")].model.spec.hostnames == ["sonarr.turbo.ac"]  # {{ .Release.Name }}.turbo.ac
    assert rs[("default", "home-assistant")].model.spec.hostnames == ["home-assistant.turbo.ac", "hass.turbo.ac"]
    by_gateway: dict[str, set[str]] = {}
    for (ns, name), o in rs.items():
        for p in o.model.spec.parent_refs:
            by_gateway.setdefault(p.name, set()).add(f"{ns}/{name}")
    assert by_gateway["envoy-external"] == {
        "default/home-assistant", "default/plex", "default/seerr", "flux-system/github-webhook", "network/https-redirect",
        "network/echo",
    }
    assert by_gateway["envoy-internal"] == {
        "default/go2rtc", "default/home-assistant-mcp", "default/qbittorrent", "default/radarr", "default/sonarr", "network/https-redirect",
        "default/kube-prometheus-stack-alertmanager", "default/kube-prometheus-stack-prometheus", "default/default-dashboard",
    }
    # every chart route: name, hostnames, backend
    chart_routes = {
        ("default", "kube-prometheus-stack-prometheus"): (["prometheus.turbo.ac"], [("kube-prometheus-stack-prometheus", 9090)]),
        ("default", "kube-prometheus-stack-alertmanager"): (["alertmanager.turbo.ac"], [("kube-prometheus-stack-alertmanager", 9093)]),
        ("network", "echo"): (["echo.turbo.ac"], [("echo", 80)]),  # {{ .Release.Name }}.turbo.ac
        # rook-ceph-cluster: <clusterName or namespace>-dashboard, the mgr dashboard without ssl on 7000
        ("default", "default-dashboard"): (["rook.turbo.ac"], [("rook-ceph-mgr-dashboard", 7000)]),
    }
    for key, (hosts, backends) in chart_routes.items():
        spec = rs[key].model.spec
        assert spec.hostnames == hosts and [(b.name, b.port) for r in spec.rules for b in r.backend_refs] == backends, key
    services = {(o.namespace, o.name): o for o in onedr0p.objects if o.kind == "Service"}
    assert [p.port for p in services[("network", "echo")].model.spec.ports] == [80, 8081]
    assert [p.port for p in services[("default", "rook-ceph-mgr-dashboard")].model.spec.ports] == [7000]
    echo = rs[("network", "echo")]
    assert echo.annotations["gatus.home-operations.com/endpoint"] == 'conditions: ["[STATUS] == 200"]'
    prom = rs[("default", "kube-prometheus-stack-prometheus")].model.spec
    assert prom.hostnames == ["prometheus.turbo.ac"]
    assert [(b.name, b.port) for b in prom.rules[0].backend_refs] == [("kube-prometheus-stack-prometheus", 9090)]
    # plex's two rules, one with a RequestHeaderModifier that removes Range
    plex = rs[("default", "plex")].model.spec
    assert [r.matches[0].path.value for r in plex.rules] == ["/library/streams", "/"]
    assert plex.rules[0].filters[0].request_header_modifier.remove == ["Range"]


def test_onedr0p_load_balancers(onedr0p) -> None:
    lbs = {
        (o.namespace, o.name): o.annotations.get("lbipam.cilium.io/ips")
        for o in onedr0p.objects
        if o.kind == "Service" and o.model and o.model.spec.type == "LoadBalancer"
    }
    assert lbs == {
        ("kube-system", "kube-api"): "192.168.69.120",
        ("default", "go2rtc-streams"): "192.168.69.124",
        ("default", "plex"): "192.168.69.128",
        ("default", "qbittorrent-bittorrent"): "192.168.69.123",
        ("default", "smtp-relay"): "192.168.69.122",
    }
    gws = {o.name: o.model.spec.infrastructure.annotations["lbipam.cilium.io/ips"] for o in onedr0p.objects if o.kind == "Gateway"}
    assert gws == {"envoy-external": "192.168.69.126", "envoy-internal": "192.168.69.121"}
    dns = next(o for o in onedr0p.objects if o.kind == "DNSEndpoint")
    assert dns.model.spec.endpoints[0].targets == ["0000-tunnel.cfargotunnel.com"]  # ${CLOUDFLARE_TUNNEL_ID}


def test_bjws_routes(bjws) -> None:
    rs = routes(bjws)
    rendered = {k for k, o in rs.items() if "homeplane.dev/rendered-from" in o.annotations}
    # frigate's chart source (an OCIRepository) is not in the corpus; its values are app-template's
    assert len(rs) == 17 and len(rendered) == 12
    fr = rs[("default", "frigate-go2rtc")].model.spec
    assert fr.hostnames == ["frigate-go2rtc.bjw-s.dev"] and [(b.name, b.port) for b in fr.rules[0].backend_refs] == [("frigate", 1984)]
    assert set(rs) >= {("downloads", "sonarr"), ("media", "jellyfin"), ("selfhosted", "searxng"), ("security", "kanidm"), ("dev", "forgejo")}
    assert rs[("selfhosted", "searxng")].model.spec.hostnames == ["search.bjw-s.dev"]
    q = rs[("downloads", "qbittorrent")].model.spec.rules[0].backend_refs[0]
    assert (q.name, q.port) == ("qbittorrent", 8080)  # backendRef by identifier and port name
    ext = {f"{ns}/{n}" for (ns, n), o in rs.items() if any(p.name == "envoy-external" for p in o.model.spec.parent_refs)}
    assert ext == {"dev/forgejo", "default/github-webhook", "security/kanidm", "network/https-redirect"}


def test_bjws_load_balancers_and_policies(bjws) -> None:
    lbs = {
        (o.namespace, o.name): o.annotations.get("lbipam.cilium.io/ips")
        for o in bjws.objects
        if o.kind == "Service" and o.model and o.model.spec.type == "LoadBalancer"
    }
    assert lbs == {("kube-system", "kube-api"): "10.1.6.50", ("downloads", "qbittorrent-bittorrent"): "10.1.6.61",
                   ("media", "jellyfin"): "10.1.6.62", ("default", "frigate"): "10.1.6.64"}
    tr = translate(bjws.objects)
    # home-assistant's BackendTrafficPolicy (active HTTP health check) attaches to its route
    ha = [r for g in tr.snapshot.gateways for ls in g.listeners for vh in ls.vhosts for r in vh.rules if r.route.name == "home-assistant"]
    assert ha and all(r.backend_traffic and r.backend_traffic.settings.active.type == "HTTP" for r in ha)
    # kanidm's BackendTLSPolicy: TLS to every port of its Service, verified as idm.bjw-s.dev with the system CAs
    tls = {n: p.tls for n, p in tr.snapshot.pools.items() if p.tls is not None}
    assert set(tls) == {"service/security/kanidm:8443", "service/security/kanidm:3636"}
    assert all(t.hostname == "idm.bjw-s.dev" and t.ca_pem is None and t.valid for t in tls.values())
    anc = tr.status[("gateway.networking.k8s.io", "BackendTLSPolicy", "security", "kanidm-upstream")]["ancestors"]
    assert [a["ancestorRef"]["name"] for a in anc] == ["envoy-external"] and anc[0]["conditions"][0]["status"] == "True"


@pytest.mark.parametrize("repo", ["onedr0p-home-ops", "bjw-s-labs-home-ops"])
def test_no_placeholder_left_in_served_objects(corpus_dir: Path, repo: str) -> None:
    r = load_repo(corpus_dir / repo / "kubernetes", {"CLOUDFLARE_TUNNEL_ID": "x"})
    for o in r.objects:
        if o.served and o.kind in ("HTTPRoute", "Gateway", "Service", "SecurityPolicy", "DNSEndpoint"):
            assert "${" not in json.dumps(o.raw), (o.kind, o.namespace, o.name)


def test_check_groups_problems_by_file(corpus_dir: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "homeplane", "check", str(corpus_dir / "onedr0p-home-ops" / "kubernetes"), "--set", "CLOUDFLARE_TUNNEL_ID=x"],
        capture_output=True, text=True, timeout=60,
    )
    out = r.stdout
    # the corpus copy lacks some components: reported under the file that names them
    assert "  kubernetes/apps/default/sonarr/ks.yaml" in out
    assert "component '../../../../components/zeroscaler' not found" in out
    assert "internet-facing route without authentication" in out  # e.g. plex on envoy-external


def test_get_backend_tls_policies_on_a_real_repo(corpus_dir: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "homeplane", "get", "backendtlspolicies", "-o", "wide", "-f", str(corpus_dir / "bjw-s-labs-home-ops" / "kubernetes")],
        capture_output=True, text=True, timeout=60,
    )
    lines = [line.split() for line in r.stdout.splitlines()]
    assert lines[0] == ["NAMESPACE", "NAME", "ACCEPTED", "HOSTNAME", "TARGETS"]
    assert lines[1] == ["security", "kanidm-upstream", "True", "idm.bjw-s.dev", "Service/kanidm"]


def test_route_values_of_charts_not_rendered_are_reported(bjws) -> None:
    # bjw-s's forgejo chart has tcpRoute values homeplane does not render: said, not dropped silently
    notes = [d for d in bjws.diagnostics if d.code == "ChartRouteNotRendered"]
    assert [(d.name, d.severity.value) for d in notes] == [("forgejo", "warning")] and "tcpRoute" in notes[0].message
