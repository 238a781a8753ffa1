"""``homeplane trace``: the path of a request through the example, a real repo of the corpus and
small repos of our own — DNS, tunnel, listener and certificate, route, filters, policies
(forward auth, authorization by client address), backend and endpoint, and where it stops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from homeplane.observe.trace import (ANSWERED, DENIED, FAILED, FORWARDED, NOT_FOUND, REDIRECTED, UNREACHABLE, TraceError,
                                     context_from, trace)
from homeplane.pipeline import Inputs, run_pipeline
from tests.conftest import EXAMPLE

EXAMPLE_VARS = {"SECRET_DOMAIN": "home.example"}


@pytest.fixture(scope="module")
def example():
    return context_from(run_pipeline(Inputs((EXAMPLE,), EXAMPLE_VARS)))


def layers(t) -> list[str]:
    return [s.layer for s in t.steps]


def test_lan_request_to_an_internal_app(example) -> None:
    t = trace(example, "https://sonarr.home.example/api", source="lan")
    assert t.outcome == FORWARDED and t.summary == "to 127.0.0.1:8989"
    assert layers(t) == ["DNS", "Gateway", "Listener", "Route", "Policy", "Backend", "Endpoint", "Network policy"]
    dns, gw, listener, route = t.steps[:4]
    assert dns.decision == "sonarr.home.example A 192.168.42.121" and dns.by == "external-dns network/unifi-dns (unifi)"
    assert "sonarr.home.example CNAME internal.home.example (from httproute/downloads/sonarr)" in dns.details
    assert gw.by == "Gateway network/envoy-internal"
    assert listener.decision.startswith("https (port 443, HTTPS") and "SNI sonarr.home.example" in listener.decision
    assert listener.details[0].startswith("certificate: Secret network/home-example-tls (home.example, *.home.example")
    assert route.by == "HTTPRoute downloads/sonarr" and route.decision == "rule 0, match 0: PathPrefix /"
    assert t.steps[4].by == "BackendTrafficPolicy network/envoy" and "2 retries" in t.steps[4].decision


def test_plain_http_is_redirected_by_the_redirect_route(example) -> None:
    t = trace(example, "http://sonarr.home.example/x?y=1")
    assert (t.outcome, t.status) == (REDIRECTED, 301)
    assert t.steps[-1].decision == "RequestRedirect 301 to https://sonarr.home.example/x?y=1"
    assert t.steps[-1].by == "HTTPRoute network/https-redirect"


def test_forward_auth_is_named_with_its_service(example) -> None:
    t = trace(example, "https://whoami.home.example/")
    auth = [s for s in t.steps if s.by == "SecurityPolicy selfhosted/whoami"]
    assert auth and auth[0].decision == "forward auth: asks service/security/authentik-outpost:9000/outpost.goauthentik.io/auth/envoy first"
    assert t.outcome == FORWARDED and t.steps[1].by == "Gateway network/envoy-external"


def test_where_requests_stop(example) -> None:
    t = trace(example, "https://nope.home.example/")
    assert t.outcome == UNREACHABLE and t.summary == "nope.home.example does not resolve"
    t = trace(example, "https://sonarr.home.example/", source="internet")
    assert t.outcome == UNREACHABLE and t.steps[0].decision == "sonarr.home.example: no record in the public DNS"
    t = trace(example, "https://192.168.42.121/")  # no listener for that SNI? the listener has no hostname: it takes it
    assert t.steps[0].decision == "192.168.42.121:443 is Gateway network/envoy-internal"
    t = trace(example, "https://192.168.42.121:8443/")
    assert t.outcome == UNREACHABLE and "no ready HTTP(S) listener on port 8443 (it has: 80/HTTP, 443/HTTPS)" in t.steps[-1].decision
    t = trace(example, "https://192.168.42.200/")
    assert t.outcome == UNREACHABLE and t.summary == "192.168.42.200 is not served by homeplane"
    t = trace(example, "https://sonarr.home.example/a/..%2f../b")
    assert [s.decision for s in t.steps if s.layer == "Path"] == ["/a/..%2f../b is normalized to /b"]
    with pytest.raises(TraceError, match="internet, lan, an address or a CIDR"):
        trace(example, "https://sonarr.home.example/", source="mars")
    with pytest.raises(TraceError, match="http:// or https://"):
        trace(example, "ftp://sonarr.home.example/")


OWN = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: network}
spec:
  gatewayClassName: envoy
  addresses: [{value: 1.2.3.4}]
  listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: apps}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-1, namespace: apps, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints: [{addresses: [10.1.0.5], conditions: {ready: true}}, {addresses: [10.1.0.6], conditions: {ready: false}}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: apps}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: apps}
spec:
  parentRefs: [{name: edge, namespace: network}]
  hostnames: [app.example.org]
  rules:
    - matches: [{path: {type: PathPrefix, value: /admin}, method: POST}]
      backendRefs: [{name: app, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: app, port: 80, weight: 3}, {name: empty, port: 80, weight: 1}]
    - matches: [{path: {type: Exact, value: /gone}}]
      backendRefs: [{name: missing, port: 80}]
    - matches: [{path: {type: Exact, value: /empty}}]
      backendRefs: [{name: empty, port: 80}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: lan-only, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  authorization:
    defaultAction: Deny
    rules:
      - action: Allow
        principal: {clientCIDRs: [192.168.0.0/16, 10.0.0.0/8]}
"""


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("own")
    (d / "all.yaml").write_text(OWN)
    return context_from(run_pipeline(Inputs((d,), {})))


def test_routes_rules_and_authorization_by_client_address(own) -> None:
    t = trace(own, "http://1.2.3.4/api/v1", source="192.168.7.7")
    assert t.outcome == NOT_FOUND and "no route on listener http has hostname 1.2.3.4" in t.steps[-1].decision
    # a Host header names the virtual host, as with curl -H 'Host: …'
    t = trace(own, "http://1.2.3.4/api/v1", headers=[("Host", "app.example.org")], source="192.168.7.7")
    assert t.outcome == FORWARDED and [s.by for s in t.steps if s.layer == "Route"] == ["HTTPRoute apps/app"]
    t = trace(own, "http://app.example.org/api/v1", source="192.168.7.7")
    assert t.outcome == UNREACHABLE  # nothing publishes the name


def test_rules_through_the_address(own) -> None:
    from homeplane.observe.trace import Published

    ctx = own.__class__(**{**own.__dict__, "published": (Published("network/public", "cloudflare", "app.example.org", "A", ("1.2.3.4",)),)})
    t = trace(ctx, "http://app.example.org/api/v1", source="192.168.7.7")
    assert t.outcome == FORWARDED and t.steps[0].by == "external-dns network/public (cloudflare)"
    route = [s for s in t.steps if s.layer == "Route"][0]
    assert route.decision == "rule 1, match 0: PathPrefix /api" and route.by == "HTTPRoute apps/app"
    assert [s.decision for s in t.steps if s.layer == "Policy"] == ["authorization rule 0 allows 192.168.7.7"]
    backend = [s for s in t.steps if s.layer == "Backend"][0]
    assert backend.decision == "Service apps/app takes 3/4 of the requests"
    endpoint = [s for s in t.steps if s.layer == "Endpoint"][0]
    assert endpoint.decision == "10.1.0.5:9000 (LeastRequest over the ready endpoints)" and endpoint.details == ["1 endpoints not ready"]

    t = trace(ctx, "http://app.example.org/api/v1", source="internet")
    assert (t.outcome, t.status) == (DENIED, 403) and t.steps[-1].decision.startswith("authorization: no rule matches 203.0.113.10")
    t = trace(ctx, "http://app.example.org/admin", source="10.2.3.4")
    assert t.outcome == NOT_FOUND and "none of their matches takes GET /admin" in t.steps[-1].decision
    t = trace(ctx, "http://app.example.org/admin", method="POST", source="10.2.3.4")
    assert t.outcome == FORWARDED and [s for s in t.steps if s.layer == "Route"][0].decision == "rule 0, match 0: PathPrefix /admin, method POST"
    t = trace(ctx, "http://app.example.org/gone", source="10.2.3.4")
    assert (t.outcome, t.status) == (FAILED, 500)
    t = trace(ctx, "http://app.example.org/empty", source="10.2.3.4")
    assert (t.outcome, t.status) == (FAILED, 503) and t.summary == "no healthy upstream (UH)"
    live = ctx.__class__(**{**ctx.__dict__, "health": lambda pool: {"10.1.0.5:9000": False}})
    t = trace(live, "http://app.example.org/api/v1", source="10.2.3.4")
    assert (t.outcome, t.status) == (FAILED, 503) and t.steps[-1].details[0] == "health: 10.1.0.5:9000 down"


def test_the_corpus_tunnel_path(corpus: Path) -> None:
    """onedr0p's repo: a public name is a CNAME to external.<domain>, a CNAME to the tunnel; the
    cloudflared rules send it to envoy-external, whose HTTPS listener waits for its certificate."""
    ctx = context_from(run_pipeline(Inputs((corpus / "onedr0p-home-ops" / "kubernetes",), {"SECRET_DOMAIN": "lab.test"})))
    public = sorted(r.name for r in ctx.published if r.public and r.resource.startswith("httproute/"))
    assert public, "the corpus publishes routes through cloudflare"
    t = trace(ctx, f"https://{public[0]}/", source="internet")
    assert layers(t)[:3] == ["DNS", "Tunnel", "Gateway"]
    assert t.steps[0].decision.endswith(": the tunnel") and t.steps[0].by == "external-dns network/cloudflare-dns (cloudflare)"
    assert "→ https://envoy-external.network.svc.cluster.local:443" in t.steps[1].decision
    assert t.steps[2].by == "Gateway network/envoy-external"
    assert t.outcome == UNREACHABLE and any("InvalidCertificateRef" in d for d in t.steps[3].details)
    lan = trace(ctx, f"https://{public[0]}/", source="lan")
    assert lan.steps[0].by == "external-dns network/unifi-dns (unifi)" and lan.steps[1].by == "Gateway network/envoy-external"


def test_the_command_offline_and_its_exit_code(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "homeplane", "trace", *args, "-f", str(EXAMPLE), "--vars",
                               str(EXAMPLE / "cluster-secrets.env")], capture_output=True, text=True, timeout=60)

    ok = run("https://sonarr.home.example/")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "GET https://sonarr.home.example/ from lan (192.168.1.10)"
    assert ok.stdout.splitlines()[-1] == "=> FORWARDED: to 127.0.0.1:8989"
    missing = run("https://nope.home.example/", "-o", "json")
    assert missing.returncode == 1 and '"outcome": "UNREACHABLE"' in missing.stdout
    bad = run("https://sonarr.home.example/", "--from", "moon")
    assert bad.returncode == 2 and "--from 'moon'" in bad.stderr


def test_answers_from_a_direct_response_filter(tmp_path: Path) -> None:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "all.yaml").write_text(OWN.replace("addresses: [{value: 1.2.3.4}]", "addresses: [{value: 192.168.5.5}]") + """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: HTTPRouteFilter
metadata: {name: teapot, namespace: apps}
spec: {directResponse: {statusCode: 418, body: {type: Inline, inline: "no"}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: tea, namespace: apps}
spec:
  parentRefs: [{name: edge, namespace: network}]
  hostnames: [tea.example.org]
  rules:
    - filters: [{type: ExtensionRef, extensionRef: {group: gateway.envoyproxy.io, kind: HTTPRouteFilter, name: teapot}}]
""")
    ctx = context_from(run_pipeline(Inputs((d,), {})))
    t = trace(ctx, "http://192.168.5.5/", headers=[], source="lan")
    assert t.outcome == NOT_FOUND
    from homeplane.observe.trace import Published

    ctx = ctx.__class__(**{**ctx.__dict__, "published": (Published("n/u", "unifi", "tea.example.org", "A", ("192.168.5.5",)),)})
    t = trace(ctx, "http://tea.example.org/", source="lan")
    assert (t.outcome, t.status) == (ANSWERED, 418) and t.steps[-1].decision == "answers 418 by itself: directResponse (HTTPRouteFilter)"
    t = trace(ctx, "http://tea.example.org/", source="internet")
    assert t.outcome == UNREACHABLE and t.steps[-1].decision == "tea.example.org: no record in the public DNS"


def test_odd_urls_are_refused_or_traced_not_crashed(example) -> None:
    for url in ("https://a..b.home.example/", "https://" + "x" * 70 + ".home.example/", "https://[::1/", "https://bad host/"):
        with pytest.raises(TraceError):
            trace(example, url)
    t = trace(example, "https://192.168.42.121:0/")
    assert t.outcome == UNREACHABLE and "port 0" in t.steps[-1].decision
    t = trace(example, "https://bücher.home.example/")
    assert t.summary == "xn--bcher-kva.home.example does not resolve"
    # the documentation ranges are the internet (Python's is_private counts them as private)
    assert trace(example, "https://sonarr.home.example/", source="203.0.113.5").steps[0].decision == \
        "sonarr.home.example: no record in the public DNS"


def test_a_gateway_is_found_where_it_listens_on_this_machine(example) -> None:
    """`homeplane run` binds a Gateway with LB-IPAM addresses on loopback, and its DNS answers
    with that address: the live trace must know it."""
    import dataclasses

    gws = tuple(dataclasses.replace(g, bind_address="127.0.1.2") if g.ref.name == "envoy-internal" else g
                for g in example.snapshot.gateways)
    ctx = dataclasses.replace(example, snapshot=dataclasses.replace(example.snapshot, gateways=gws))
    t = trace(ctx, "https://127.0.1.2/", headers=[("Host", "sonarr.home.example")])
    assert t.steps[0].decision == "127.0.1.2:443 is Gateway network/envoy-internal" and t.outcome == FORWARDED
