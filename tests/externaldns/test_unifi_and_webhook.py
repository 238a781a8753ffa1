"""UniFi as a built-in provider (the repo's UniFi webhook HelmRelease, served natively), and the
external-dns webhook protocol both ways: homeplane serving a provider, homeplane driving one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from homeplane.externaldns.config import instances, resolve_env
from homeplane.externaldns.endpoint import DomainFilter, Endpoint
from homeplane.externaldns.plan import Changes
from homeplane.externaldns.providers import make_provider, provider_kind
from homeplane.externaldns.providers.base import ProviderError
from homeplane.externaldns.providers.unifi import UnifiConfig, UnifiProvider
from homeplane.externaldns.providers.webhook import MEDIA_TYPE, WebhookProvider, serve
from homeplane.externaldns.sources import SourceInput
from homeplane.externaldns.sync import plan, sync
from homeplane.pipeline import Inputs, run_pipeline
from tests.externaldns import manifests as m
from tests.externaldns.fakes.unifi import FakeUnifi

UNIFI_HR = """
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {name: unifi-dns, namespace: network}
spec:
  chartRef: {kind: OCIRepository, name: unifi-dns}
  values:
    provider:
      name: webhook
      webhook:
        image: {repository: ghcr.io/home-operations/external-dns-unifi-webhook, tag: 0.10.11}
        env:
          - {name: UNIFI_HOST, value: "%s"}
          - {name: EXCLUDE_DOMAIN_FILTER, value: lab.home.example}
          - name: UNIFI_API_KEY
            valueFrom: {secretKeyRef: {name: unifi-dns-secret, key: UNIFI_API_KEY}}
    triggerLoopOnEvent: true
    policy: sync
    sources: [gateway-httproute, service]
    txtOwnerId: main
    txtPrefix: k8s.main.%%{record_type}-
    domainFilters: [home.example]
"""
ROUTES = (
    # a Cloudflare annotation too: a UniFi instance must not see it as a change on every loop
    m.route("app", "default", "envoy-internal", ["app.home.example"], {"external-dns.alpha.kubernetes.io/cloudflare-proxied": "true"})
    + m.route("web", "default", "envoy-external", ["web.home.example"])
    + m.route("lab", "default", "envoy-internal", ["x.lab.home.example"])
)


def _setup(tmp_path: Path, host: str, key: str = "unifi-key"):
    repo = m.write(tmp_path / "repo", {"gateways.yaml": m.GATEWAYS, "routes.yaml": ROUTES, "dns.yaml": UNIFI_HR % host})
    result = run_pipeline(Inputs(paths=(repo,)))
    (inst,) = instances(result.load.objects)
    env = resolve_env(inst, result.load.objects, {"UNIFI_API_KEY": key}, environ={}, webhook=True)
    return inst, SourceInput.from_result(result), make_provider(inst, {}, webhook_env=env)


def test_the_unifi_webhook_release_is_served_natively(tmp_path):
    with FakeUnifi() as unifi:
        inst, src, provider = _setup(tmp_path, unifi.base)
        assert provider_kind(inst) == "unifi" and isinstance(provider, UnifiProvider)
        asyncio.run(sync(inst, src, provider))
        assert unifi.find("app.home.example", "A") == ["192.168.42.121"]
        assert unifi.find("web.home.example", "CNAME") == ["external.home.example"]
        assert unifi.find("internal.home.example", "A") == ["192.168.42.121"]
        assert unifi.find("k8s.main.a-app.home.example", "TXT") == [
            '"heritage=external-dns,external-dns/owner=main,external-dns/resource=httproute/default/app"']
        again, _ = asyncio.run(plan(inst, src, provider))
        assert again.changes is not None and not again.changes, again.changes.to_json()
        # the webhook's own EXCLUDE_DOMAIN_FILTER: nothing created or deleted under lab.home.example
        assert unifi.find("x.lab.home.example") == []


def test_unifi_hand_made_records_stay_and_a_wrong_key_is_refused(tmp_path):
    with FakeUnifi() as unifi:
        unifi.add("app.home.example", "A", "10.0.0.5")  # the router's own entry
        inst, src, provider = _setup(tmp_path, unifi.base)
        result = asyncio.run(sync(inst, src, provider))
        assert unifi.find("app.home.example") == ["10.0.0.5"]
        assert [d.dns_name for d, _ in result.blocked] == ["app.home.example"]
        _, _, bad = _setup(tmp_path / "b", unifi.base, key="wrong")
        with pytest.raises(ProviderError, match="401") as e:
            asyncio.run(bad.records())
        assert e.value.permanent


def test_unifi_legacy_login_with_csrf_and_an_external_controller():
    async def go(unifi: FakeUnifi) -> None:
        p = UnifiProvider(UnifiConfig(unifi.base, user="admin", password="pw", external_controller=True))
        ch = Changes(create=[Endpoint("nas.home.example", "A", ("192.168.1.5", "192.168.1.6"), 300)])
        await p.apply_changes(ch)
        assert unifi.find("nas.home.example") == ["192.168.1.5", "192.168.1.6"]
        (ep,) = await p.records()
        assert ep.targets == ("192.168.1.5", "192.168.1.6") and ep.ttl == 300
        unifi.sessions.clear()  # the session expires: the provider logs in again
        await p.apply_changes(Changes(delete=[ep]))
        assert unifi.find("nas.home.example") == []
        await p.close()

    with FakeUnifi(api_key="", user="admin", password="pw", external=True) as unifi:
        asyncio.run(go(unifi))


def test_webhook_both_ways(tmp_path):
    """homeplane serves its UniFi provider as an external-dns webhook; homeplane's webhook client
    drives it: negotiation, records, changes, adjustendpoints, and errors as external-dns sees them."""

    async def go(unifi: FakeUnifi) -> None:
        inner = UnifiProvider(UnifiConfig(unifi.base, api_key="unifi-key"))
        server = await serve(inner, DomainFilter(["home.example"]), port=0)
        url = f"http://127.0.0.1:{server.port}"
        try:
            async with httpx.AsyncClient(base_url=url) as c:
                neg = await c.get("/", headers={"Accept": MEDIA_TYPE})
                assert neg.headers["content-type"] == MEDIA_TYPE and neg.json() == {"include": ["home.example"]}
                assert (await c.post("/records", content=b"{not json")).status_code == 400
                # external-dns >= 0.18 spells the keys in lower camel case
                body = {"create": [{"dnsName": "lc.home.example", "recordType": "A", "targets": ["192.168.1.7"]}],
                        "updateOld": [], "updateNew": [], "delete": []}
                assert (await c.post("/records", json=body)).status_code == 204
                assert unifi.find("lc.home.example") == ["192.168.1.7"]
                assert (await c.post("/records", content=b"x" * (9 * 1024 * 1024))).status_code == 413
                assert (await c.get("/healthz")).status_code == 200
            client = WebhookProvider(url)
            assert (await client.negotiate()).include == ("home.example",)
            await client.apply_changes(Changes(create=[Endpoint("tv.home.example", "A", ("192.168.1.9",))]))
            assert unifi.find("tv.home.example") == ["192.168.1.9"]
            recs = await client.records()
            assert sorted((e.dns_name, e.targets) for e in recs) == [("lc.home.example", ("192.168.1.7",)), ("tv.home.example", ("192.168.1.9",))]
            adjusted = await client.adjust_remote([Endpoint("x.home.example", "A", ("1.2.3.4",))])
            assert adjusted[0].dns_name == "x.home.example"
            unifi.down = True  # the provider behind the webhook fails: external-dns sees a 500 (retryable)
            with pytest.raises(ProviderError) as e:
                await client.records()
            assert not e.value.permanent
            await client.close()
        finally:
            await server.close()
            await inner.close()

    with FakeUnifi() as unifi:
        asyncio.run(go(unifi))


def test_an_unknown_webhook_needs_its_address(tmp_path):
    hr = (UNIFI_HR % "x").replace("external-dns-unifi-webhook", "external-dns-pihole-webhook")
    repo = m.write(tmp_path / "r", {"dns.yaml": hr})
    result = run_pipeline(Inputs(paths=(repo,)))
    (inst,) = instances(result.load.objects)
    with pytest.raises(ProviderError, match="--dns-webhook unifi-dns=http"):
        make_provider(inst, {})
    assert isinstance(make_provider(inst, {}, webhook_urls={"unifi-dns": "http://127.0.0.1:1"}), WebhookProvider)
    assert json.dumps(inst.to_json())  # printable, with no secret in it
