"""The operator's view: ``homeplane policy trace``/``check`` on a small repo of our own and on a
real one of the corpus, and ``homeplane trace URL`` showing the network policy step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from homeplane.cli import app
from homeplane.observe.trace import DENIED, FORWARDED, context_from, trace
from homeplane.pipeline import Inputs, run_pipeline
from tests.policy.test_gateway_enforcement import GATEWAYS, app as app_manifests, only_internal

runner = CliRunner()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    api_rules = """
              - {method: GET, path: "/public(/.*)?"}"""
    (tmp_path / "all.yaml").write_text(GATEWAYS + app_manifests("atuin", 8888) + only_internal("atuin", 8888)
                                       + app_manifests("api", 9000) + only_internal("api", 9000, api_rules))
    return tmp_path


def test_policy_trace_names_the_rule(repo: Path) -> None:
    r = runner.invoke(app, ["policy", "trace", "-f", str(repo), "--from", "gateway:network/envoy-external", "--to", "selfhosted/atuin:80"])
    assert r.exit_code == 1, r.output
    assert "Ingress  DENIED: default deny for pod selfhosted/atuin (CiliumNetworkPolicy/selfhosted/atuin)" in r.output
    assert r.output.rstrip().endswith("Final verdict: DENIED")
    r = runner.invoke(app, ["policy", "trace", "-f", str(repo), "--from", "gateway:network/envoy-internal",
                            "--to", "selfhosted/atuin:80/TCP", "-o", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["verdict"] == "ALLOWED" and doc["port"] == 8888  # the Service port, translated to the pods'
    assert doc["steps"][1] == {"direction": "ingress", "allowed": True, "policy": "CiliumNetworkPolicy/selfhosted/atuin",
                               "rule": "ingress[0]", "isolatedBy": ["CiliumNetworkPolicy/selfhosted/atuin"],
                               "reason": doc["steps"][1]["reason"]}
    # L7: the request decides
    base = ["policy", "trace", "-f", str(repo), "--from", "gateway:network/envoy-internal", "--to", "selfhosted/api:80"]
    assert runner.invoke(app, base + ["--http-path", "/public/x"]).exit_code == 0
    r = runner.invoke(app, base + ["--http-path", "/admin"])
    assert r.exit_code == 1 and "Request GET /admin: denied (403 Access denied)" in r.output
    assert runner.invoke(app, base + ["--http-path", "/public", "-X", "POST"]).exit_code == 1
    # bad input names what is wrong
    r = runner.invoke(app, ["policy", "trace", "-f", str(repo), "--from", "gateway:network/nope", "--to", "selfhosted/api:80"])
    assert r.exit_code == 2 and "no Gateway network/nope" in r.output
    r = runner.invoke(app, ["policy", "trace", "-f", str(repo), "--from", "world", "--to", "selfhosted/api"])
    assert r.exit_code == 2 and "needs a port" in r.output


def test_policy_check_lists_selections_and_gaps(repo: Path, tmp_path: Path) -> None:
    (repo / "more.yaml").write_text("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: orphan, namespace: selfhosted}
spec:
  podSelector: {matchLabels: {app: nothing-has-this}}
  ingress: [{from: [{podSelector: {matchLabels: {app: nor-this}}}]}]
""")
    r = runner.invoke(app, ["policy", "check", str(repo), "-o", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["CiliumNetworkPolicy/selfhosted/atuin"]["selects"] == ["pod selfhosted/atuin"]
    orphan = doc["NetworkPolicy/selfhosted/orphan"]
    assert orphan["selects"] == [] and any("matches nothing" in m for m in orphan["matchesNothing"])


def test_gateway_views_and_trace_url_show_the_network_policy(repo: Path) -> None:
    res = run_pipeline(Inputs((repo,), {}))
    snap = res.translation.snapshot
    ext = snap.gateway("network", "envoy-external")
    assert ext is not None
    pool = next(b.pool for ls in ext.listeners for vh in ls.vhosts for r in vh.rules for b in r.backends if "atuin" in (b.pool or ""))
    assert pool.endswith("@network/envoy-external") and not snap.pools[pool].endpoints
    assert "CiliumNetworkPolicy/selfhosted/atuin" in snap.pools[pool].policy_denied[0][1]
    internal = snap.gateway("network", "envoy-internal")
    assert internal is not None
    assert all("@" not in (b.pool or "") for ls in internal.listeners for vh in ls.vhosts for r in vh.rules for b in r.backends
               if "atuin" in (b.pool or ""))
    ctx = context_from(res)
    for gw, outcome in (("envoy-external", DENIED), ("envoy-internal", FORWARDED)):
        addr = snap.gateway("network", gw).reachable_addresses[0]
        port = 8000 if gw == "envoy-external" else 80
        t = trace(ctx, f"http://{addr}:{port}/", source="lan", headers=[("Host", "atuin.test")])
        assert t.outcome == outcome, t.render()
        assert "Network policy" in [s.layer for s in t.steps]


def test_corpus_policies_load_and_decide_real_cases(corpus: Path) -> None:
    repo = corpus / "bjw-s-labs-home-ops"
    snap = run_pipeline(Inputs((repo,), {})).translation.snapshot
    ps = snap.network_policy
    assert ps is not None
    ids = ps.identities
    paperless = ids.service_pods[("selfhosted", "paperless")]
    assert paperless.labels["app.kubernetes.io/component"] == "application"  # from the app-template controller's pod labels
    internal, external = ids.gateways["network/envoy-internal"], ids.gateways["network/envoy-external"]
    assert ps.decide(internal, paperless, 8000).allowed
    assert not ps.decide(external, paperless, 8000).allowed
    assert not ps.decide(internal, paperless, 8001).allowed  # only the app's port
    # the cluster-wide egress policies: pods reach kube-dns (homeplane's DNS); allow-dns-egress has
    # DNS rules, but allow-cluster-egress allows every endpoint without any, which (as in Cilium)
    # leaves DNS unrestricted
    d = ps.decide(paperless, ids.dns, 53, "UDP")
    assert d.allowed and d.dns is None
    assert "allow-cluster-egress" in d.steps[0].text
    # and the gateways' views of the pools follow
    ext = snap.gateway("network", "envoy-external")
    assert ext is not None
    r = runner.invoke(app, ["policy", "check", str(repo), "-o", "json"])
    doc = json.loads(r.output)
    assert "selfhosted/paperless" in " ".join(doc["CiliumNetworkPolicy/selfhosted/paperless"]["selects"])
    runner_doc = doc["CiliumNetworkPolicy/dev/forgejo-runner"]
    assert not any("CIDR groups" in p for p in runner_doc["problems"])  # cidrGroupRef resolves to the CiliumCIDRGroup


def test_status_and_report_show_network_policy(repo: Path) -> None:
    from homeplane.observe.status import OK, summarize

    report = run_pipeline(Inputs((repo,), {})).report
    views = {v["pool"]: v for v in report["networkPolicies"]["gatewayViews"]}
    assert set(views) == {"service/selfhosted/atuin:80@network/envoy-external", "service/selfhosted/api:80@network/envoy-external",
                          "service/selfhosted/api:80@network/envoy-internal"}
    assert views["service/selfhosted/api:80@network/envoy-internal"]["httpRules"] == [["method=GET path=/public(/.*)?"]]
    comp = next(c for c in summarize(report) if c.name == "Network policy")
    assert comp.state == OK and comp.detail == "2/2 enforced, 3 gateway backend views narrowed (2 closed)"
