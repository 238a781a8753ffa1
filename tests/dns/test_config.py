"""DNS configuration read from a real repo's CoreDNS HelmRelease values."""

from __future__ import annotations

from pathlib import Path

from homeplane.dns.config import from_coredns_values
from homeplane.importer.repo import load_repo
from homeplane.translate import translate

def test_coredns_values_from_the_onedr0p_repo(corpus: Path) -> None:
    r = load_repo(corpus / "onedr0p-home-ops" / "kubernetes", {"CLOUDFLARE_TUNNEL_ID": "x"})
    snap = translate(r.objects).snapshot
    cfg = from_coredns_values(snap.extras["coredns"])
    assert cfg.cluster_domain == "cluster.local"
    assert cfg.reverse_zones == ["in-addr.arpa", "ip6.arpa"] and cfg.reverse_fallthrough
    assert cfg.pods == "verified"
    assert cfg.cache.prefetch_amount == 20 and cfg.cache.serve_stale == 3600.0 and cfg.cache.servfail_ttl == 0
    (tpl,) = cfg.templates
    assert (tpl.qclass, tpl.qtype, tpl.zone) == ("ANY", "AAAA", ".")
    assert tpl.authority.startswith("{{ .Zone }} 60 IN SOA")
    assert set(cfg.ignored_plugins) == set()  # everything else is either served or harmless (health, log ...)


def test_forward_and_k8s_gateway_plugins() -> None:
    values = {
        "servers": [
            {
                "zones": [{"zone": "."}],
                "plugins": [
                    {"name": "kubernetes", "parameters": "cluster.example"},
                    {"name": "k8s_gateway", "parameters": "home.example", "configBlock": "ttl 30"},
                    {"name": "forward", "parameters": ". 1.1.1.1 tls://9.9.9.9 127.0.0.1:5300", "configBlock": "policy sequential\nmax_concurrent 1000"},
                    {"name": "cache", "parameters": "600", "configBlock": "success 100 300 10\ndenial 50 60"},
                    {"name": "rewrite", "parameters": "name foo bar"},
                ],
            }
        ]
    }
    cfg = from_coredns_values(values)
    assert cfg.cluster_domain == "cluster.example"
    assert cfg.gateway_domains == ["home.example"] and cfg.gateway_ttl == 30
    assert cfg.forward.upstreams == ["1.1.1.1:53", "9.9.9.9:53", "127.0.0.1:5300"]
    assert cfg.forward.policy == "sequential" and cfg.forward.max_concurrent == 1000
    c = cfg.cache
    assert (c.success_cap, c.max_ttl, c.min_ttl, c.denial_cap, c.denial_max_ttl) == (100, 300, 10, 50, 60)
    assert cfg.ignored_plugins == ["rewrite"]
