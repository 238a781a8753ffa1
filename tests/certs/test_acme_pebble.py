"""ACME DNS-01 end to end: a real Pebble validates against a real Knot that homeplane updates
(RFC 2136 with TSIG), as cert-manager's rfc2136 solver does it; the wildcard certificate is then
served by the gateway of a running homeplane, which had no certificate before."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import socket
import ssl

import pytest
from cryptography import x509

from homeplane.certs.controller import CertController, issued_secrets
from homeplane.pipeline import Inputs, run_pipeline
from homeplane.store import SQLiteStore
from tests.certs.pebble import Pebble
from tests.externaldns import manifests as m
from tests.externaldns.knot import KEY_NAME, KEY_SECRET, Knot


@pytest.fixture
def acme(tmp_path):
    knot = Knot(tmp_path / "knot")
    knot.start()
    pebble = Pebble(tmp_path / "pebble", f"127.0.0.1:{knot.port}")
    yield knot, pebble
    pebble.stop()
    knot.stop()


def acme_issuer(pebble: Pebble, name: str, solvers: str) -> str:
    """A ClusterIssuer for this Pebble (its listener's CA as caBundle) with these solvers (YAML list items)."""
    return f"""
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {{name: {name}}}
spec:
  acme:
    server: {pebble.directory}
    email: ops@home.example
    caBundle: {base64.b64encode(pebble.listener_ca).decode()}
    privateKeySecretRef: {{name: {name}}}
    solvers:
{solvers}"""


def issuer(pebble: Pebble, knot: Knot) -> str:
    return acme_issuer(pebble, "letsencrypt-production", f"""      - dns01:
          rfc2136:
            nameserver: 127.0.0.1:{knot.port}
            tsigKeyName: {KEY_NAME}
            tsigAlgorithm: HMACSHA256
            tsigSecretSecretRef: {{name: rfc2136-tsig, key: secret}}
        selector: {{dnsZones: [home.example]}}
""") + f"""---
apiVersion: v1
kind: Secret
metadata: {{name: rfc2136-tsig, namespace: cert-manager}}
stringData: {{secret: "{KEY_SECRET}"}}
"""


WILDCARD = """
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: home-example, namespace: network}
spec:
  secretName: home-example-tls
  dnsNames: [home.example, "*.home.example"]
  privateKey: {algorithm: ECDSA, size: 256}
  issuerRef: {name: letsencrypt-production, kind: ClusterIssuer}
"""


def test_wildcard_certificate_by_dns01_through_rfc2136(tmp_path, acme):
    knot, pebble = acme
    repo = m.write(tmp_path / "repo", {"issuer.yaml": issuer(pebble, knot) + WILDCARD})
    store = SQLiteStore(tmp_path / "state.db")
    result = run_pipeline(Inputs(paths=(repo,)))
    c = CertController(lambda: result, store, None, environ={}, acme_timeout=60)
    asyncio.run(c.reconcile())
    st = c.status()["network/home-example"]
    assert {x["type"]: x["reason"] for x in st["conditions"]} == {"Ready": "Ready"}, st
    doc = issued_secrets(store)[("network", "home-example-tls")]
    chain = x509.load_pem_x509_certificates(doc["tls.crt"].encode())
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(san) == ["*.home.example", "home.example"]
    # Pebble's intermediate signed it, and the renewal is at 2/3 of the lifetime Pebble gave
    assert chain[0].issuer == chain[1].subject
    nb, na = chain[0].not_valid_before_utc, chain[0].not_valid_after_utc
    renewal = dt.datetime.fromisoformat(st["renewalTime"].replace("Z", "+00:00"))
    assert abs((renewal - nb) - (na - nb) * 2 / 3) < dt.timedelta(seconds=2)
    # the challenge records are gone from the zone
    assert knot.query("_acme-challenge.home.example", "TXT") == []
    # the account was registered once and is reused
    accounts = store.list("certs/acme-account/")
    assert len(accounts) == 1


def test_a_ca_outage_keeps_the_old_certificate_and_backs_off(tmp_path, acme):
    knot, pebble = acme
    repo = m.write(tmp_path / "repo", {"issuer.yaml": issuer(pebble, knot) + WILDCARD})
    store = SQLiteStore(tmp_path / "state.db")
    result = run_pipeline(Inputs(paths=(repo,)))
    now = [dt.datetime.now(dt.timezone.utc)]
    c = CertController(lambda: result, store, None, environ={}, acme_timeout=60, clock=lambda: now[0])
    asyncio.run(c.reconcile())
    first = issued_secrets(store)[("network", "home-example-tls")]
    pebble.stop()
    renewal = dt.datetime.fromisoformat(c.status()["network/home-example"]["renewalTime"].replace("Z", "+00:00"))
    now[0] = renewal + dt.timedelta(minutes=1)
    asyncio.run(c.reconcile())
    st = c.status()["network/home-example"]
    conds = {x["type"]: x for x in st["conditions"]}
    assert conds["Ready"]["status"] == "True"  # the old certificate is still good, and still served
    assert conds["Issuing"]["status"] == "False" and conds["Issuing"]["reason"] == "Failed"
    assert st["failedIssuanceAttempts"] == 1 and issued_secrets(store)[("network", "home-example-tls")] == first
    now[0] += dt.timedelta(minutes=30)  # within the hour of backoff: the CA is left alone
    asyncio.run(c.reconcile())
    assert c.status()["network/home-example"]["failedIssuanceAttempts"] == 1
    pebble.start()
    now[0] += dt.timedelta(minutes=31)
    asyncio.run(c.reconcile())
    st = c.status()["network/home-example"]
    assert st["revision"] == 2 and "failedIssuanceAttempts" not in st


def test_dns01_through_the_cloudflare_api(tmp_path, monkeypatch):
    from tests.externaldns.fakes.cloudflare import FakeCloudflare

    seen: list[tuple[str, str]] = []
    with FakeCloudflare("cf-token") as cf:
        monkeypatch.setenv("HOMEPLANE_CLOUDFLARE_API_URL", cf.url)
        orig = cf._create

        def spy(zid, body):  # what the ACME server would have found in DNS
            seen.append((body["name"], body["content"]))
            return orig(zid, body)

        cf._create = spy
        pebble = Pebble(tmp_path / "pebble", "127.0.0.1:1", always_valid=True)
        try:
            cf_issuer = acme_issuer(pebble, "letsencrypt-production",
                                    "      - dns01: {cloudflare: {apiTokenSecretRef: {name: cloudflare-issuer-secret, key: api-token}}}\n")
            repo = m.write(tmp_path / "repo", {"issuer.yaml": cf_issuer + WILDCARD})
            result = run_pipeline(Inputs(paths=(repo,)))
            # the records must show at the zone's nameservers before the CA is asked: a nameserver
            # that never shows them fails the attempt
            silent = CertController(lambda: result, SQLiteStore(tmp_path / "silent.db"), None, variables={"api-token": "cf-token"},
                                    environ={}, acme_timeout=60, dns01_nameservers=(("127.0.0.1", 9),), propagation_timeout=1)
            asyncio.run(silent.reconcile())
            failed = next(x for x in silent.status()["network/home-example"]["conditions"] if x["type"] == "Issuing")
            assert "not yet propagated" in failed["message"]
            assert cf.find("_acme-challenge.home.example") == []  # cleaned up after the failure too
            seen.clear()
            c = CertController(lambda: result, SQLiteStore(tmp_path / "state.db"), None, variables={"api-token": "cf-token"},
                               environ={}, acme_timeout=60, dns01_nameservers=(("127.0.0.1", cf.serve_dns()),))
            asyncio.run(c.reconcile())
            assert c.status()["network/home-example"]["conditions"][0]["reason"] == "Ready"
        finally:
            pebble.stop()
        # both challenges (the apex and the wildcard share the name) were presented, then removed
        assert {n for n, _ in seen} == {"_acme-challenge.home.example"} and len({v for _, v in seen}) == 2
        assert cf.find("_acme-challenge.home.example") == []


def test_a_running_gateway_starts_serving_the_issued_certificate(tmp_path, acme):
    from tests.integration.test_run import Homeplane, free_port, wait_for

    knot, pebble = acme
    https = free_port()
    gw = m.GATEWAYS.replace("certificateRefs: [{name: tls}]", "certificateRefs: [{name: home-example-tls}]")
    repo = m.write(tmp_path / "repo", {"gw.yaml": gw, "issuer.yaml": issuer(pebble, knot) + WILDCARD,
                                       "routes.yaml": m.route("app", "default", "envoy-internal", ["app.home.example"]),
                                       "cluster-secrets.env": ""})
    hp = Homeplane(repo, tmp_path / "state.db", ["--port-map", f"80={free_port()},443={https}", "--no-external-dns"])
    try:
        st = wait_for(lambda: (hp.status()["runtime"]["certificates"].get("network/home-example") or {}).get("revision"),
                      timeout=90, what="certificate issued")
        assert st == 1
        roots = pebble.roots()

        def handshake() -> list[str]:
            ctx = ssl.create_default_context(cadata=roots.decode())
            with socket.create_connection(("127.0.0.1", https), timeout=3) as s, ctx.wrap_socket(s, server_hostname="app.home.example") as t:
                cert = t.getpeercert()
                return sorted(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")

        names = wait_for(lambda: _try(handshake), timeout=30, what="the gateway serving the issued certificate")
        assert names == ["*.home.example", "home.example"]
        # cmctl's habits: status, then a manual renewal that the listener picks up
        from typer.testing import CliRunner

        from homeplane.cli import app

        out = CliRunner().invoke(app, ["certs", "status", "home-example", "--admin", f"127.0.0.1:{hp.port}"]).output
        assert "Ready: True, Reason: Ready" in out and "Served by: network/envoy-external/https, network/envoy-internal/https" in out
        r = CliRunner().invoke(app, ["certs", "renew", "home-example", "-n", "network", "--admin", f"127.0.0.1:{hp.port}"])
        assert r.exit_code == 0, r.output
        wait_for(lambda: hp.status()["runtime"]["certificates"]["network/home-example"].get("revision") == 2, timeout=60, what="renewal")
        listener = next(ls for g in hp.status()["gateways"] if g["name"] == "envoy-internal" for ls in g["listeners"] if ls["name"] == "https")
        assert listener["ready"] is True and listener["tls"]["certificates"][0]["secret"] == "network/home-example-tls"
    finally:
        out = hp.stop()
        assert "BEGIN" not in out  # no key or certificate in the logs


def _try(fn):
    try:
        return fn()
    except (OSError, ssl.SSLError):
        return None


def test_http01_answered_by_the_running_gateway(tmp_path):
    """HTTP-01 as cert-manager's gatewayHTTPRoute solver does it: a route on the solver's
    parentRefs answers the challenge; Pebble resolves the name through Knot and fetches it from
    homeplane's gateway; the route is gone afterwards."""
    from tests.integration.test_run import Homeplane, free_port, wait_for

    knot = Knot(tmp_path / "knot", extra_records="www IN A 127.0.0.1\n")
    knot.start()
    pebble = Pebble(tmp_path / "pebble", f"127.0.0.1:{knot.port}")
    http_issuer = acme_issuer(pebble, "letsencrypt-http", """      - http01:
          gatewayHTTPRoute:
            parentRefs: [{name: envoy-external, namespace: network, sectionName: http, kind: Gateway}]
""") + """---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: www, namespace: network}
spec:
  secretName: www-tls
  dnsNames: [www.home.example]
  issuerRef: {name: letsencrypt-http, kind: ClusterIssuer}
"""
    repo = m.write(tmp_path / "repo", {"gw.yaml": m.GATEWAYS, "issuer.yaml": http_issuer, "cluster-secrets.env": "",
                                       "redirect.yaml": REDIRECT})
    hp = Homeplane(repo, tmp_path / "state.db", ["--port-map", f"80={pebble.http_port},443={free_port()}", "--no-external-dns"])
    try:
        wait_for(lambda: (hp.status()["runtime"]["certificates"].get("network/www") or {}).get("revision"), timeout=90,
                 what="certificate issued over HTTP-01")
        wait_for(lambda: not [r for r in hp.status()["routes"] if r["name"].startswith("cm-acme-http-solver")], what="solver route removed")
        import urllib.request

        # the rest of port 80 still redirects (the challenge route was more specific, and is gone)
        req = urllib.request.Request(f"http://127.0.0.1:{pebble.http_port}/.well-known/acme-challenge/x", headers={"Host": "www.home.example"})
        opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,), {"redirect_request": lambda *a: None}))
        try:
            opener.open(req, timeout=5)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 301
    finally:
        hp.stop()
        pebble.stop()
        knot.stop()


REDIRECT = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: https-redirect, namespace: network}
spec:
  parentRefs: [{name: envoy-external, sectionName: http}]
  rules: [{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]}]
"""
