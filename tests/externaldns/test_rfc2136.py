"""RFC 2136 end to end against a real Knot server: records appear (``dig`` sees them), a record
someone else made is left alone, a second run changes nothing, an outage is survived."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from homeplane.externaldns.config import instances
from homeplane.externaldns.providers import make_provider
from homeplane.externaldns.providers.base import ProviderError
from homeplane.externaldns.sources import SourceInput
from homeplane.externaldns.sync import plan, sync
from homeplane.pipeline import Inputs, run_pipeline
from tests.externaldns import manifests as m
from tests.externaldns.knot import KEY_NAME, KEY_SECRET, Knot


@pytest.fixture
def knot(tmp_path):
    k = Knot(tmp_path / "knot", extra_records="legacy IN A 10.9.9.9\n")
    k.start()
    yield k
    k.stop()


def _repo(tmp_path: Path, port: int, routes: str) -> Path:
    args = ["--rfc2136-host=127.0.0.1", f"--rfc2136-port={port}", "--rfc2136-zone=home.example",
            f"--rfc2136-tsig-keyname={KEY_NAME}", "--rfc2136-tsig-secret-alg=hmac-sha256", "--rfc2136-tsig-axfr"]
    env = "\n    env: [{name: EXTERNAL_DNS_RFC2136_TSIG_SECRET, valueFrom: {secretKeyRef: {name: rfc2136, key: secret}}}]"
    secret = f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: rfc2136, namespace: network}}
stringData: {{secret: "{KEY_SECRET}"}}
"""
    return m.write(tmp_path / "repo", {
        "gateways.yaml": m.GATEWAYS,
        "routes.yaml": routes,
        "external-dns.yaml": m.external_dns("lan-dns", "rfc2136", ["gateway-httproute", "service"], "main",
                                            "k8s.main.%{record_type}-", args, env=env) + secret,
    })


def _load(repo: Path):
    result = run_pipeline(Inputs(paths=(repo,)))
    (inst,) = instances(result.load.objects)
    from homeplane.externaldns.config import resolve_env

    provider = make_provider(inst, resolve_env(inst, result.load.objects, environ={}))
    return inst, SourceInput.from_result(result), provider


ROUTES = (
    m.route("app", "default", "envoy-internal", ["app.home.example"])
    + m.route("web", "default", "envoy-external", ["web.home.example"], {"external-dns.alpha.kubernetes.io/ttl": "120"})
    + m.route("legacy", "default", "envoy-internal", ["legacy.home.example"])
)


def test_records_reach_a_real_server_and_a_second_run_changes_nothing(tmp_path, knot):
    inst, src, provider = _load(_repo(tmp_path, knot.port, ROUTES))
    result = asyncio.run(sync(inst, src, provider))
    assert result.error is None and result.changes
    # dig sees what the routes and the Gateway Services want
    assert knot.dig("app.home.example", "A") == ["192.168.42.121"]
    assert knot.dig("web.home.example", "CNAME") == ["external.home.example."]
    assert knot.dig("internal.home.example", "A") == ["192.168.42.121"]
    assert knot.dig("external.home.example", "A") == ["192.168.42.120"]
    # the ttl annotation reached the server; records without one get 300 s
    import dns.message, dns.query
    ttls = {n: dns.query.udp(dns.message.make_query(n, t), "127.0.0.1", port=knot.port, timeout=1).answer[0].ttl
            for n, t in (("web.home.example", "CNAME"), ("app.home.example", "A"))}
    assert ttls == {"web.home.example": 120, "app.home.example": 300}
    # the registry record, in external-dns's format and name
    assert knot.dig("k8s.main.a-app.home.example", "TXT") == [
        '"heritage=external-dns,external-dns/owner=main,external-dns/resource=httproute/default/app"'
    ]
    assert knot.dig("k8s.main.cname-web.home.example", "TXT") == [
        '"heritage=external-dns,external-dns/owner=main,external-dns/resource=httproute/default/web"'
    ]
    # a record made by someone else (no registry TXT) is left alone, and the plan says why
    assert knot.dig("legacy.home.example", "A") == ["10.9.9.9"]
    assert [(d.dns_name, c.targets) for d, c in result.blocked] == [("legacy.home.example", ("10.9.9.9",))]
    # idempotent
    again, _ = asyncio.run(plan(inst, src, provider))
    assert again.changes is not None and not again.changes, again.changes


def test_a_route_removed_takes_its_records_away_and_updates_follow(tmp_path, knot):
    repo = _repo(tmp_path, knot.port, ROUTES)
    inst, src, provider = _load(repo)
    asyncio.run(sync(inst, src, provider))
    assert knot.dig("app.home.example", "A") == ["192.168.42.121"]
    # app moves to the external gateway; web goes away
    (repo / "routes.yaml").write_text(
        m.route("app", "default", "envoy-external", ["app.home.example"])
        + m.route("legacy", "default", "envoy-internal", ["legacy.home.example"])
    )
    inst, src, provider = _load(repo)
    result = asyncio.run(sync(inst, src, provider))
    assert knot.dig("web.home.example", "CNAME") == []
    assert knot.dig("k8s.main.cname-web.home.example", "TXT") == []
    # A -> CNAME on the same name: the A and its TXT go, the CNAME and its TXT come
    assert knot.query("app.home.example", "A") == []  # (dig would follow the CNAME)
    assert knot.dig("app.home.example", "CNAME") == ["external.home.example."]
    assert knot.dig("k8s.main.a-app.home.example", "TXT") == []
    assert knot.dig("k8s.main.cname-app.home.example", "TXT") != []
    assert knot.dig("legacy.home.example", "A") == ["10.9.9.9"]
    assert result.changes is not None


def test_upsert_only_never_deletes(tmp_path, knot):
    repo = _repo(tmp_path, knot.port, ROUTES)
    text = (repo / "external-dns.yaml").read_text().replace("policy: sync", "policy: upsert-only")
    (repo / "external-dns.yaml").write_text(text)
    inst, src, provider = _load(repo)
    asyncio.run(sync(inst, src, provider))
    (repo / "routes.yaml").write_text(m.route("app", "default", "envoy-internal", ["app.home.example"]))
    inst, src, provider = _load(repo)
    result = asyncio.run(sync(inst, src, provider))
    assert result.changes is not None and not result.changes.delete
    assert knot.dig("web.home.example", "CNAME") == ["external.home.example."]


def test_server_outage_is_an_error_then_recovery_applies(tmp_path, knot):
    inst, src, provider = _load(_repo(tmp_path, knot.port, ROUTES))
    knot.stop()
    with pytest.raises(ProviderError, match="zone transfer of home.example"):
        asyncio.run(sync(inst, src, provider))
    knot.start()
    asyncio.run(sync(inst, src, provider))
    assert knot.dig("app.home.example", "A") == ["192.168.42.121"]


def test_a_wrong_tsig_key_is_refused_by_the_server(tmp_path, knot):
    repo = _repo(tmp_path, knot.port, ROUTES)
    text = (repo / "external-dns.yaml").read_text().replace(KEY_SECRET, "d3Jvbmd3cm9uZ3dyb25nd3Jvbmc=")
    (repo / "external-dns.yaml").write_text(text)
    inst, src, provider = _load(repo)
    with pytest.raises(ProviderError):
        asyncio.run(sync(inst, src, provider))
    assert knot.dig("app.home.example", "A") == []
