"""The Cloudflare provider against a fake written from Cloudflare's API documentation, and
contract tests that hold the fake to that documentation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from homeplane.externaldns.config import instances, resolve_env
from homeplane.externaldns.providers import make_provider
from homeplane.externaldns.providers.base import ProviderError
from homeplane.externaldns.sources import SourceInput
from homeplane.externaldns.sync import plan, sync
from homeplane.pipeline import Inputs, run_pipeline
from tests.externaldns import manifests as m
from tests.externaldns.fakes.cloudflare import FakeCloudflare

TOKEN = "cf-test-token"
TUNNEL = """
---
apiVersion: externaldns.k8s.io/v1alpha1
kind: DNSEndpoint
metadata: {name: cloudflared, namespace: network}
spec:
  endpoints:
    - dnsName: external.home.example
      recordType: CNAME
      targets: [6f1e2d3c.cfargotunnel.com]
"""


@pytest.fixture
def cf(monkeypatch):
    with FakeCloudflare(TOKEN) as fake:
        monkeypatch.setenv("HOMEPLANE_CLOUDFLARE_API_URL", fake.url)
        yield fake


def _setup(tmp_path: Path, routes: str, extra_args: list[str] | None = None):
    repo = m.write(tmp_path / "repo", {
        "gateways.yaml": m.GATEWAYS,
        "routes.yaml": routes + TUNNEL,
        "external-dns.yaml": m.external_dns(
            "cloudflare-dns", "cloudflare", ["crd", "gateway-httproute"], "default", "k8s.%{record_type}-",
            ["--cloudflare-proxied", "--gateway-name=envoy-external", "--cloudflare-dns-records-per-page=1000",
             "--crd-source-apiversion=externaldns.k8s.io/v1alpha1", "--crd-source-kind=DNSEndpoint", *(extra_args or [])],
            env="\n    env: [{name: CF_API_TOKEN, valueFrom: {secretKeyRef: {name: cloudflare-dns-secret, key: CF_API_TOKEN}}}]",
        ),
    })
    result = run_pipeline(Inputs(paths=(repo,)))
    (inst,) = instances(result.load.objects)
    provider = make_provider(inst, resolve_env(inst, result.load.objects, {"CF_API_TOKEN": TOKEN}, environ={}))
    return inst, SourceInput.from_result(result), provider


ROUTES = (
    m.route("echo", "default", "envoy-external", ["echo.home.example"])
    + m.route("lan", "default", "envoy-internal", ["lan.home.example"])
    + m.route("plain", "default", "envoy-external", ["plain.home.example"], {"external-dns.alpha.kubernetes.io/cloudflare-proxied": "false"})
    + m.route("noted", "default", "envoy-external", ["noted.home.example"], {
        "external-dns.alpha.kubernetes.io/cloudflare-record-comment": "managed by homeplane",
        "external-dns.alpha.kubernetes.io/cloudflare-tags": "team:b, env:home",
        "external-dns.alpha.kubernetes.io/cloudflare-region-key": "us"})
)


def test_public_routes_become_proxied_cnames_with_their_registry_records(tmp_path, cf):
    inst, src, provider = _setup(tmp_path, ROUTES)
    asyncio.run(sync(inst, src, provider))
    (echo,) = cf.find("echo.home.example")
    assert (echo["type"], echo["content"], echo["proxied"], echo["ttl"]) == ("CNAME", "external.home.example", True, 1)
    (plain,) = cf.find("plain.home.example")
    assert plain["proxied"] is False
    # the tunnel's DNSEndpoint (crd source)
    assert [r["content"] for r in cf.find("external.home.example", "CNAME")] == ["6f1e2d3c.cfargotunnel.com"]
    # only routes on envoy-external (--gateway-name)
    assert cf.find("lan.home.example") == []
    (txt,) = cf.find("k8s.cname-echo.home.example", "TXT")
    assert txt["content"] == '"heritage=external-dns,external-dns/owner=default,external-dns/resource=httproute/default/echo"'
    assert txt["proxied"] is False
    (noted,) = cf.find("noted.home.example")
    assert noted["comment"] == "managed by homeplane" and noted["tags"] == ["env:home", "team:b"]
    # one list of zones, one of records, one batch
    assert [p for _, p in cf.requests if "batch" in p] and len(cf.requests) == 3
    cf.requests.clear()
    again, _ = asyncio.run(plan(inst, src, provider))
    assert again.changes is not None and not again.changes, again.changes.to_json()


def test_records_someone_else_owns_are_left_alone(tmp_path, cf):
    cf.add("home.example", "echo.home.example", "A", "203.0.113.7")  # hand-made, no registry record
    cf.add("home.example", "plain.home.example", "CNAME", "elsewhere.example.net")
    cf.add("home.example", "k8s.cname-plain.home.example", "TXT", '"heritage=external-dns,external-dns/owner=other,external-dns/resource=x"')
    inst, src, provider = _setup(tmp_path, ROUTES)
    result = asyncio.run(sync(inst, src, provider))
    assert [r["content"] for r in cf.find("echo.home.example")] == ["203.0.113.7"]
    assert [r["content"] for r in cf.find("plain.home.example")] == ["elsewhere.example.net"]
    blocked = {d.dns_name: c.labels.get("owner", "") for d, c in result.blocked}
    assert blocked == {"echo.home.example": "", "plain.home.example": "other"}


def test_an_owned_record_follows_its_route_and_goes_with_it(tmp_path, cf):
    inst, src, provider = _setup(tmp_path, ROUTES)
    asyncio.run(sync(inst, src, provider))
    # plain becomes proxied, echo goes away
    inst, src, provider = _setup(tmp_path, m.route("plain", "default", "envoy-external", ["plain.home.example"]))
    asyncio.run(sync(inst, src, provider))
    assert cf.find("echo.home.example") == [] and cf.find("k8s.cname-echo.home.example") == []
    (plain,) = cf.find("plain.home.example")
    assert plain["proxied"] is True


def test_pagination_reads_every_record(tmp_path, cf):
    for i in range(230):
        cf.add("home.example", f"host{i}.home.example", "A", f"198.51.100.{i % 250}")
    inst, src, provider = _setup(tmp_path, ROUTES, ["--cloudflare-dns-records-per-page=100"])
    records = asyncio.run(provider.records())
    assert len([r for r in records if r.dns_name.startswith("host")]) == 230
    assert provider.calls == 1 + 3  # zones, then 3 pages


def test_private_addresses_and_txt_are_never_proxied(tmp_path, cf):
    private = """
---
apiVersion: externaldns.k8s.io/v1alpha1
kind: DNSEndpoint
metadata: {name: lan, namespace: network}
spec:
  endpoints:
    - {dnsName: nas.home.example, recordType: A, targets: [192.168.1.10]}
    - {dnsName: pub.home.example, recordType: A, targets: [9.9.9.9], recordTTL: 300}
"""
    inst, src, provider = _setup(tmp_path, private)
    asyncio.run(sync(inst, src, provider))
    assert cf.find("nas.home.example")[0]["proxied"] is False
    assert cf.find("pub.home.example")[0]["proxied"] is True and cf.find("pub.home.example")[0]["ttl"] == 1
    assert all(r["proxied"] is False for r in cf.records.values() if r["type"] == "TXT")


def test_rate_limit_is_a_retry_after_and_an_outage_is_retryable(tmp_path, cf):
    inst, src, provider = _setup(tmp_path, ROUTES)
    cf.rate_limit = 0
    with pytest.raises(ProviderError) as err:
        asyncio.run(sync(inst, src, provider))
    assert err.value.retry_after and err.value.retry_after > 0
    cf.rate_limit = 1200
    # the provider keeps itself under Cloudflare's limit without waiting for a 429
    from homeplane.externaldns.providers import cloudflare as cfmod

    provider._sent.extend([__import__("time").monotonic()] * cfmod.RATE_LIMIT)
    calls = len(cf.requests)
    with pytest.raises(ProviderError) as err:
        asyncio.run(sync(inst, src, provider))
    assert err.value.retry_after and len(cf.requests) == calls
    provider._sent.clear()
    cf.fail_with = 503
    with pytest.raises(ProviderError) as err:
        asyncio.run(sync(inst, src, provider))
    assert not err.value.permanent
    cf.fail_with = None
    asyncio.run(sync(inst, src, provider))
    assert cf.find("echo.home.example")


def test_a_refused_batch_falls_back_to_single_calls(tmp_path, cf):
    # a record in the way of one create makes the atomic batch fail; the rest still lands
    cf.add("home.example", "k8s.cname-echo.home.example", "CNAME", "in-the-way.example.net")
    inst, src, provider = _setup(tmp_path, ROUTES)
    with pytest.raises(ProviderError, match="81053"):
        asyncio.run(sync(inst, src, provider))
    assert cf.find("plain.home.example") and cf.find("echo.home.example")


def test_missing_token_is_a_clear_error(tmp_path, cf):
    repo = m.write(tmp_path / "r", {"e.yaml": m.external_dns("cloudflare-dns", "cloudflare", ["crd"], "default", "", [])})
    result = run_pipeline(Inputs(paths=(repo,)))
    (inst,) = instances(result.load.objects)
    with pytest.raises(ProviderError, match="CF_API_TOKEN"):
        make_provider(inst, resolve_env(inst, result.load.objects, {}, environ={}))


# --- the fake, held to the documentation ---------------------------------------------------


def test_fake_contract_auth_pagination_batch_and_errors(cf):
    zid = cf.zone_id("home.example")
    h = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=cf.url, headers=h) as c:
        assert c.get("/zones", headers={"Authorization": "Bearer wrong"}).json()["errors"][0]["code"] == 10000
        for i in range(12):
            assert c.post(f"/zones/{zid}/dns_records", json={"type": "A", "name": f"h{i}.home.example", "content": "192.0.2.1", "ttl": 1}).json()["success"]
        p = c.get(f"/zones/{zid}/dns_records", params={"per_page": 5, "page": 3}).json()
        assert p["result_info"] == {"page": 3, "per_page": 5, "count": 2, "total_count": 12, "total_pages": 3}
        assert c.get(f"/zones/{zid}/dns_records", params={"per_page": 2}).status_code == 400
        bad = c.post(f"/zones/{zid}/dns_records", json={"type": "TXT", "name": "t.home.example", "content": "x", "proxied": True})
        assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == 9004
        cname = c.post(f"/zones/{zid}/dns_records", json={"type": "CNAME", "name": "h1.home.example", "content": "x.example.net"})
        assert cname.json()["errors"][0]["code"] == 81053
        assert c.post(f"/zones/{zid}/dns_records", json={"type": "A", "name": "h1.home.example", "content": "192.0.2.1"}).json()["errors"][0]["code"] == 81058
        assert c.post(f"/zones/{zid}/dns_records", json={"type": "A", "name": "x.other.example", "content": "192.0.2.1"}).status_code == 400
        assert c.delete(f"/zones/{zid}/dns_records/{'0' * 32}").json()["errors"][0]["code"] == 81044
        # the batch is all or nothing
        first = c.get(f"/zones/{zid}/dns_records", params={"name": "h0.home.example"}).json()["result"][0]["id"]
        r = c.post(f"/zones/{zid}/dns_records/batch", json={"deletes": [{"id": first}], "posts": [{"type": "CNAME", "name": "h2.home.example", "content": "y"}]})
        assert r.status_code == 400 and c.get(f"/zones/{zid}/dns_records/{first}").json()["success"]
        ok = c.post(f"/zones/{zid}/dns_records/batch", json={"deletes": [{"id": first}], "posts": [{"type": "A", "name": "n.home.example", "content": "192.0.2.9", "ttl": 120}]}).json()
        assert ok["success"] and ok["result"]["posts"][0]["ttl"] == 120
        cf.rate_limit = len(cf._hits)
        limited = c.get("/zones")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
