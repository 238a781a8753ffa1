"""Real home-ops repos (../shared/corpus): everything loads, served kinds parse into typed models."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from homeplane.api.loader import LoadOptions, find_manifest_files, load_paths
from homeplane.api.models.cilium import CiliumLoadBalancerIPPool, CiliumNetworkPolicy
from homeplane.api.models.envoy import BackendTrafficPolicy, ClientTrafficPolicy
from homeplane.api.models.gateway import Gateway, HTTPRoute
from homeplane.translate import translate

# Counted independently (grep '^kind: X$' over the corpus); every one must parse.
EXPECTED_SERVED = {
    "Backend": 1,
    "BackendTLSPolicy": 1,
    "BackendTrafficPolicy": 3,
    "Certificate": 3,
    "CiliumClusterwideNetworkPolicy": 2,
    "CiliumLoadBalancerIPPool": 2,
    "CiliumNetworkPolicy": 17,
    "ClientTrafficPolicy": 2,
    "ClusterIssuer": 1,
    "DNSEndpoint": 2,
    "EnvoyExtensionPolicy": 1,
    "EnvoyProxy": 2,
    "Gateway": 4,
    "GatewayClass": 2,
    "HTTPRoute": 7,
    "Namespace": 3,
    "NetworkPolicy": 1,
    "Service": 2,
}


def test_every_corpus_file_loads_and_served_kinds_parse(corpus: Path) -> None:
    files = find_manifest_files(corpus)
    assert len(files) > 250
    result = load_paths([corpus], LoadOptions(variables={}))
    assert len(result.files) == len(files)
    served = Counter(o.kind for o in result.objects if o.served)
    assert dict(served) == EXPECTED_SERVED
    # no served object failed validation or carried a field the models do not know
    bad = [d for d in result.diagnostics if d.code in ("InvalidField", "UnknownField")]
    assert bad == [], [str(d) for d in bad]
    assert Counter(o.kind for o in result.objects)["HelmRelease"] == 46


def test_corpus_models_carry_the_values(corpus: Path) -> None:
    result = load_paths([corpus / "onedr0p-home-ops"], LoadOptions(variables={}))
    by = {(o.kind, o.name): o.model for o in result.objects if o.served}
    ext = by[("Gateway", "envoy-external")]
    assert isinstance(ext, Gateway)
    assert [(ls.name, ls.protocol, ls.port) for ls in ext.spec.listeners] == [("http", "HTTP", 80), ("https", "HTTPS", 443)]
    assert ext.spec.infrastructure.annotations["lbipam.cilium.io/ips"] == "192.168.69.126"
    assert ext.spec.listeners[1].tls.certificate_refs[0].name == "turbo-ac-tls"
    ctp = by[("ClientTrafficPolicy", "envoy")]
    assert isinstance(ctp, ClientTrafficPolicy)
    assert ctp.spec.client_ip_detection.x_forwarded_for.trusted_cidrs == ["10.42.0.0/16"]
    assert ctp.spec.tls.alpn_protocols == ["h2", "http/1.1"]
    btp = by[("BackendTrafficPolicy", "envoy")]
    assert isinstance(btp, BackendTrafficPolicy)
    assert [c.type for c in btp.spec.compressors()] == ["Zstd", "Brotli", "Gzip"]
    assert btp.spec.retry.retry_on.triggers == ["reset"]
    pool = by[("CiliumLoadBalancerIPPool", "pool")]
    assert isinstance(pool, CiliumLoadBalancerIPPool) and pool.spec.allow_first_last_i_ps == "No"
    redirect = by[("HTTPRoute", "https-redirect")]
    assert isinstance(redirect, HTTPRoute)
    assert redirect.spec.rules[0].filters[0].request_redirect.status_code == 301
    cnp = by[("CiliumNetworkPolicy", "home-ops-runner")]
    assert isinstance(cnp, CiliumNetworkPolicy)
    assert cnp.rules()[0].egress_deny[0].to_cidr_set[0].except_ == ["10.42.0.0/16", "10.43.0.0/16"]


def test_corpus_translates_without_crashing(corpus: Path) -> None:
    result = load_paths([corpus], LoadOptions(variables={}))
    tr = translate(result.objects)
    assert len(tr.snapshot.gateways) == 4
    # the bjw-s gateway's ssh listener is TCP: reported, not served
    bjws = [g for g in tr.snapshot.gateways if any(ls.name == "ssh" for ls in g.listeners)]
    assert len(bjws) == 1


def test_the_bjw_s_lua_bot_blocker_is_served(corpus: Path) -> None:
    """bjw-s blocks AI crawlers with a Lua EnvoyExtensionPolicy on envoy-external, its script in a
    kustomize-generated ConfigMap: it must be accepted and reach every rule of that Gateway."""
    from homeplane.pipeline import Inputs, run_pipeline

    res = run_pipeline(Inputs((corpus / "bjw-s-labs-home-ops" / "kubernetes",), {"SECRET_DOMAIN": "lab.test"}))
    pol = next(p for p in res.report["policies"] if p["kind"] == "EnvoyExtensionPolicy")
    assert (pol["name"], pol["accepted"]) == ("envoy-external", True)
    ext = next(g for g in res.translation.snapshot.gateways if g.ref.name == "envoy-external")
    rules = [r for ls in ext.listeners if ls.protocol == "HTTPS" for vh in ls.vhosts for r in vh.rules]
    assert rules and all(r.extension is not None and "GPTBot" in r.extension.lua[0][1] for r in rules)
