"""cert-manager's semantics without an ACME server: self-signed and CA issuers, renewal times,
the Gateway shim, solver choice, bring-your-own Secrets, failures and backoff."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from homeplane.certs.controller import SECRET_PREFIX, CertController, issued_secrets
from homeplane.certs.spec import CertRequest, Solver, issuers, renewal_time, requests
from homeplane.pipeline import Inputs, run_pipeline
from homeplane.store import SQLiteStore
from tests.externaldns import manifests as m

ISSUERS = """
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: selfsigned}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: home-ca, namespace: cert-manager}
spec:
  isCA: true
  commonName: home-ca
  secretName: home-ca
  privateKey: {algorithm: ECDSA, size: 256}
  issuerRef: {name: selfsigned, kind: ClusterIssuer}
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: home-ca}
spec: {ca: {secretName: home-ca}}
"""


def _controller(repo: Path, store: SQLiteStore) -> tuple[CertController, list]:
    holder: list = [None]

    def current():
        return holder[0]

    issued: list[int] = []

    async def on_issued() -> None:
        issued.append(1)
        holder[0] = run_pipeline(Inputs(paths=(repo,)), issued_secrets=issued_secrets(store))

    holder[0] = run_pipeline(Inputs(paths=(repo,)), issued_secrets=issued_secrets(store))
    c = CertController(current, store, on_issued, environ={}, backoff_base=dt.timedelta(seconds=30))
    return c, issued


def test_self_signed_then_ca_signed_certificates_and_status(tmp_path):
    cert = """
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: app, namespace: default}
spec:
  secretName: app-tls
  secretTemplate: {labels: {team: home}, annotations: {reflector.v1.k8s.emberstack.com/reflection-allowed: "true"}}
  dnsNames: [app.home.example]
  duration: 720h
  renewBefore: 240h
  issuerRef: {name: home-ca, kind: ClusterIssuer}
"""
    repo = m.write(tmp_path / "repo", {"issuers.yaml": ISSUERS + cert})
    store = SQLiteStore(tmp_path / "state.db")
    c, issued = _controller(repo, store)
    asyncio.run(c.reconcile())  # the CA first, then the certificate it signs, in one pass
    st = c.status()
    assert st["cert-manager/home-ca"]["conditions"][0]["reason"] == "Ready"
    app = st["default/app"]
    assert {c["type"]: c["status"] for c in app["conditions"]} == {"Ready": "True"}
    assert app["revision"] == 1 and app["notAfter"] and app["renewalTime"]
    after, renew = (dt.datetime.fromisoformat(app[k].replace("Z", "+00:00")) for k in ("notAfter", "renewalTime"))
    assert after - renew == dt.timedelta(hours=240)
    doc = issued_secrets(store)[("default", "app-tls")]
    # as cert-manager: tls.crt the leaf (the CA is a root, so no intermediates), ca.crt the root
    (leaf,) = x509.load_pem_x509_certificates(doc["tls.crt"].encode())
    ca = x509.load_pem_x509_certificate(doc["ca.crt"].encode())
    assert leaf.issuer == ca.subject and ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    assert leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(x509.DNSName) == ["app.home.example"]
    assert isinstance(x509.load_pem_x509_certificate(doc["tls.crt"].encode()).public_key(), rsa.RSAPublicKey)
    ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    # the certificate reaches the Gateway's view of Secrets; nothing more to do on the next pass
    secret = [o for o in c._current().load.objects if o.kind == "Secret" and o.name == "app-tls"]
    assert secret and secret[0].source.file == "(issued by homeplane)"
    assert secret[0].labels == {"team": "home"} and secret[0].annotations["cert-manager.io/certificate-name"] == "app"
    assert secret[0].annotations["reflector.v1.k8s.emberstack.com/reflection-allowed"] == "true"
    before = len(issued)
    asyncio.run(c.reconcile())
    assert len(issued) == before
    # a CA that is an intermediate: the chain carries it, ca.crt is the root
    inter = """
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: inter, namespace: cert-manager}
spec: {isCA: true, commonName: inter, secretName: inter, issuerRef: {name: home-ca, kind: ClusterIssuer}}
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: inter}
spec: {ca: {secretName: inter}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: deep, namespace: default}
spec: {secretName: deep-tls, dnsNames: [deep.home.example], issuerRef: {name: inter, kind: ClusterIssuer}}
"""
    (repo / "issuers.yaml").write_text(ISSUERS + cert + inter)
    c._current = lambda: run_pipeline(Inputs(paths=(repo,)), issued_secrets=issued_secrets(store))
    asyncio.run(c.reconcile())
    asyncio.run(c.reconcile())
    deep = issued_secrets(store)[("default", "deep-tls")]
    subjects = [x.subject.rfc4514_string() for x in x509.load_pem_x509_certificates(deep["tls.crt"].encode())]
    assert subjects == ["", "CN=inter"] and x509.load_pem_x509_certificate(deep["ca.crt"].encode()).subject.rfc4514_string() == "CN=home-ca"
    # a spec change re-issues (revision 2)
    (repo / "issuers.yaml").write_text(ISSUERS + cert.replace("[app.home.example]", "[app.home.example, www.home.example]"))
    c._current = lambda: run_pipeline(Inputs(paths=(repo,)), issued_secrets=issued_secrets(store))
    asyncio.run(c.reconcile())
    assert c.status()["default/app"]["revision"] == 2


def test_bring_your_own_secret_wins_and_failures_back_off(tmp_path):
    byo = m.GATEWAYS.split("---")[3]  # the tls Secret in network
    cert = """
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: tls, namespace: network}
spec: {secretName: tls, dnsNames: [a.home.example], issuerRef: {name: selfsigned, kind: ClusterIssuer}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: lost, namespace: default}
spec: {secretName: lost-tls, dnsNames: [b.home.example], issuerRef: {name: nowhere, kind: ClusterIssuer}}
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: down}
spec:
  acme:
    server: https://127.0.0.1:1/directory
    privateKeySecretRef: {name: down-account}
    solvers: [{dns01: {rfc2136: {nameserver: 127.0.0.1}}}]
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: unlucky, namespace: default}
spec: {secretName: unlucky-tls, dnsNames: [c.home.example], issuerRef: {name: down, kind: ClusterIssuer}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: poison, namespace: default}
spec: {secretName: poison-tls, ipAddresses: [192.168.1.300], issuerRef: {name: selfsigned, kind: ClusterIssuer}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: good, namespace: default}
spec: {secretName: good-tls, dnsNames: [g.home.example], issuerRef: {name: selfsigned, kind: ClusterIssuer}}
"""
    repo = m.write(tmp_path / "repo", {"i.yaml": ISSUERS + "\n---" + byo + cert})
    store = SQLiteStore(tmp_path / "state.db")
    now = [dt.datetime.now(dt.timezone.utc)]
    c, _ = _controller(repo, store)
    c.now = lambda: now[0]
    asyncio.run(c.reconcile())
    st = c.status()
    assert "bring your own" in st["network/tls"]["conditions"][0]["message"]
    assert ("network", "tls") not in issued_secrets(store)
    # an issuer that does not exist: pending, as cert-manager keeps the request (no failure, no backoff)
    lost = {x["type"]: x for x in st["default/lost"]["conditions"]}
    assert lost["Issuing"]["status"] == "True" and "Waiting on issuer" in lost["Issuing"]["message"]
    assert "failedIssuanceAttempts" not in st["default/lost"]
    # one broken Certificate fails alone; the others are issued
    assert st["default/poison"]["failedIssuanceAttempts"] == 1 and ("default", "good-tls") in issued_secrets(store)
    # a CA that cannot be reached: a failure, then backoff
    unlucky = st["default/unlucky"]
    issuing = next(x for x in unlucky["conditions"] if x["type"] == "Issuing")
    assert issuing["status"] == "False" and issuing["reason"] == "Failed" and unlucky["failedIssuanceAttempts"] == 1
    now[0] += dt.timedelta(seconds=20)
    asyncio.run(c.reconcile())  # within the backoff: no second attempt
    assert c.status()["default/unlucky"]["failedIssuanceAttempts"] == 1
    # a manual renew is one attempt, then normal backoff again (no loop)
    assert c.renew("default/unlucky")
    asyncio.run(c.reconcile())
    asyncio.run(c.reconcile())
    now[0] += dt.timedelta(seconds=15)
    asyncio.run(c.reconcile())
    assert c.status()["default/unlucky"]["failedIssuanceAttempts"] == 2
    # the failure count survives a restart (state store)
    c2, _ = _controller(repo, store)
    c2.now = lambda: now[0]
    asyncio.run(c2.reconcile())
    assert c2.status()["default/unlucky"]["failedIssuanceAttempts"] == 2
    # a spec change since the failure: tried again at once (cert-manager re-issues on a new spec)
    (repo / "i.yaml").write_text((repo / "i.yaml").read_text().replace("[c.home.example]", "[c2.home.example]"))
    c3, _ = _controller(repo, store)
    c3.now = lambda: now[0]
    asyncio.run(c3.reconcile())
    assert c3.status()["default/unlucky"]["failedIssuanceAttempts"] == 1


def test_a_bad_shim_annotation_is_a_problem_not_a_crash(tmp_path):
    from homeplane.certs.spec import report

    gw = m.GATEWAYS.replace("  name: envoy-internal\n  namespace: network\n", "  name: envoy-internal\n  namespace: network\n"
                            "  annotations: {cert-manager.io/cluster-issuer: selfsigned, cert-manager.io/duration: 90d}\n")
    repo = m.write(tmp_path / "repo", {"g.yaml": gw + "\n---\n" + ISSUERS})
    objects = run_pipeline(Inputs(paths=(repo,))).load.objects
    problems = [p for c in report(objects) for p in c.get("problems", [])]
    assert any("Gateway network/envoy-internal: cert-manager annotations" in p for p in problems)


def test_renewal_time_rules():
    base = CertRequest("ns", "n", "s", "ClusterIssuer", "i", None, ("a",))
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    t1 = t0 + dt.timedelta(days=90)
    assert renewal_time(t0, t1, base) == t0 + dt.timedelta(days=60)  # 2/3 of the lifetime
    pct = CertRequest(**{**base.__dict__, "renew_before_percentage": 25})
    assert renewal_time(t0, t1, pct) == t1 - dt.timedelta(days=22.5)
    too_long = CertRequest(**{**base.__dict__, "renew_before": dt.timedelta(days=100)})
    assert renewal_time(t0, t1, too_long) == t0 + dt.timedelta(days=60)


def test_gateway_shim_and_solver_choice(tmp_path):
    gw = m.GATEWAYS.replace("  name: envoy-internal\n  namespace: network\n", "  name: envoy-internal\n  namespace: network\n"
                            "  annotations: {cert-manager.io/cluster-issuer: letsencrypt}\n")
    le = """
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: letsencrypt}
spec:
  acme:
    server: https://acme.example/dir
    privateKeySecretRef: {name: le-account}
    solvers:
      - dns01: {cloudflare: {apiTokenSecretRef: {name: cf, key: token}}}
      - dns01: {rfc2136: {nameserver: 127.0.0.1}}
        selector: {dnsZones: [lab.home.example]}
      - http01: {gatewayHTTPRoute: {parentRefs: [{name: envoy-external}]}}
        selector: {dnsNames: [www.lab.home.example]}
      - dns01: {route53: {}}
        selector: {matchLabels: {use: route53}}
"""
    repo = m.write(tmp_path / "repo", {"g.yaml": gw + le})
    objects = run_pipeline(Inputs(paths=(repo,))).load.objects
    (shim,) = [r for r in requests(objects) if r.source.startswith("Gateway")]
    assert (shim.namespace, shim.name, shim.secret_name, shim.issuer_kind, shim.issuer_name, shim.dns_names) == (
        "network", "tls", "tls", "ClusterIssuer", "letsencrypt", ("*.home.example",))
    iss = issuers(objects)[("ClusterIssuer", "", "letsencrypt")]
    assert iss.solver_for("a.home.example", {}).kind == "dns01-cloudflare"
    assert iss.solver_for("a.lab.home.example", {}).kind == "dns01-rfc2136"
    assert iss.solver_for("www.lab.home.example", {}).kind == "http01-gateway"
    assert iss.solver_for("x.home.example", {"use": "route53"}).kind == "unsupported"
    assert any("dns01.route53" in p for p in iss.problems)
    assert Solver("x", {}, dns_names=("a",)).score("b", {}) is None


def test_state_keeps_keys_private(tmp_path):
    repo = m.write(tmp_path / "repo", {"issuers.yaml": ISSUERS})
    store = SQLiteStore(tmp_path / "state.db")
    c, _ = _controller(repo, store)
    asyncio.run(c.reconcile())
    assert store.list(SECRET_PREFIX)
    assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0


def test_renewal_by_the_clock_and_a_restart_keeps_the_certificate(tmp_path):
    cert = """
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: short, namespace: default}
spec: {secretName: short-tls, dnsNames: [s.home.example], duration: 1h, issuerRef: {name: selfsigned, kind: ClusterIssuer}}
"""
    repo = m.write(tmp_path / "repo", {"issuers.yaml": ISSUERS + cert})
    store = SQLiteStore(tmp_path / "state.db")
    now = [dt.datetime.now(dt.timezone.utc)]
    c, _ = _controller(repo, store)
    c.now = lambda: now[0]
    asyncio.run(c.reconcile())
    first = issued_secrets(store)[("default", "short-tls")]
    assert c.status()["default/short"]["revision"] == 1
    now[0] += dt.timedelta(minutes=39)  # before 2/3 of the hour: nothing to do
    asyncio.run(c.reconcile())
    assert c.status()["default/short"]["revision"] == 1
    # a restart (a new controller on the same store) keeps it: no new issuance
    c2, issued = _controller(repo, store)
    c2.now = lambda: now[0]
    asyncio.run(c2.reconcile())
    assert not issued and c2.status()["default/short"]["revision"] == 1
    now[0] += dt.timedelta(minutes=2)  # past the renewal time
    asyncio.run(c2.reconcile())
    st = c2.status()["default/short"]
    assert st["revision"] == 2
    second = issued_secrets(store)[("default", "short-tls")]
    assert second["tls.key"] != first["tls.key"]  # rotationPolicy Always: a new key
    # kubectl's view, from the state store run uses
    from typer.testing import CliRunner

    from homeplane.cli import app

    out = CliRunner().invoke(app, ["get", "certificates", "-f", str(repo), "--state", str(tmp_path / "state.db"), "-n", "default"]).output
    row = next(line for line in out.splitlines() if line.startswith("default") and " short " in line)
    assert row.split()[2:4] == ["True", "short-tls"]
    # cmctl renew: a manual trigger re-issues at once
    assert c2.renew("default/short") and not c2.renew("default/nope")
    asyncio.run(c2.reconcile())
    assert c2.status()["default/short"]["revision"] == 3


def test_issued_certificates_reach_the_data_planes_while_the_files_do_not_load(tmp_path):
    """A certificate issued while someone's edit has broken the files is still served, on top
    of the last good configuration (and the files' problem stays reported)."""
    from homeplane.runtime import Runtime

    repo = m.write(tmp_path / "repo", {"issuers.yaml": ISSUERS})
    store = SQLiteStore(tmp_path / "state.db")

    async def go() -> None:
        rt = Runtime(Inputs(paths=(repo,)), store, admin_port=0)
        assert await rt.reload("start")
        (repo / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n")
        assert not await rt.reload("files changed") and rt.rejected is not None
        c = CertController(lambda: rt.current, store, lambda: rt.reload("certificates", controller=True), environ={})
        await c.reconcile()  # issues the CA certificate, then reloads as the controller
        assert any(o.kind == "Secret" and o.name == "home-ca" for o in rt.current.load.objects)
        assert rt.rejected is not None

    asyncio.run(go())
