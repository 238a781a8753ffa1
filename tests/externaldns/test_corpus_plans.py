"""The shared corpus's external-dns instances: the records each would publish, record by record
(read by hand from the repos: each Gateway's target annotation, the envoy Services' hostname
annotations, the routes' parents and hostnames, the DNSEndpoints)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from homeplane.externaldns.config import instances
from homeplane.externaldns.endpoint import Endpoint
from homeplane.externaldns.plan import calculate
from homeplane.externaldns.sources import SourceInput
from homeplane.externaldns.sync import plan
from homeplane.pipeline import Inputs, run_pipeline


def _plans(repo: Path, domain: str) -> dict[str, set[tuple]]:
    result = run_pipeline(Inputs(paths=(repo,), variables={"SECRET_DOMAIN": domain}))
    src = SourceInput.from_result(result)
    out = {}
    for inst in instances(result.load.objects):
        res, _ = asyncio.run(plan(inst, src, None))
        out[inst.id] = {(e.dns_name, e.record_type, ",".join(e.targets), e.prop("external-dns.alpha.kubernetes.io/cloudflare-proxied"))
                        for e in res.desired}
        assert {t.dns_name for t in res.registry} == {
            inst.txt_prefix.replace("%{record_type}", e.record_type.lower()) + e.dns_name for e in res.desired
        }
    return out


def test_onedr0p_cloudflare_and_unifi(corpus: Path) -> None:
    plans = _plans(corpus / "onedr0p-home-ops" / "kubernetes", "turbo.ac")
    ext = "external.turbo.ac"
    # Cloudflare: crd + routes on envoy-external only (--gateway-name), proxied (--cloudflare-proxied)
    assert plans["network/cloudflare-dns"] == {
        (h, "CNAME", ext, "true") for h in
        ("echo.turbo.ac", "flux-webhook.turbo.ac", "hass.turbo.ac", "home-assistant.turbo.ac", "plex.turbo.ac",
         "requests.turbo.ac", "seerr.turbo.ac")
    } | {(ext, "CNAME", ".cfargotunnel.com", "true")}  # ${CLOUDFLARE_TUNNEL_ID} is not given here
    internal = ("alertmanager", "go2rtc", "hass-mcp", "home-assistant-mcp", "prometheus", "qbittorrent", "radarr", "rook", "sonarr")
    external = ("echo", "flux-webhook", "hass", "home-assistant", "plex", "requests", "seerr")
    # UniFi (the webhook, served natively): every route, plus Services with hostname annotations
    assert plans["network/unifi-dns"] == (
        {(f"{h}.turbo.ac", "CNAME", "internal.turbo.ac", None) for h in internal}
        | {(f"{h}.turbo.ac", "CNAME", ext, None) for h in external}
        | {(ext, "A", "192.168.69.126", None), ("internal.turbo.ac", "A", "192.168.69.121", None),
           ("k8s.turbo.ac", "A", "192.168.69.120", None), ("smtp-relay.turbo.ac", "A", "192.168.69.122", None)}
    )


def test_bjw_s_unifi_and_ovh(corpus: Path) -> None:
    plans = _plans(corpus / "bjw-s-labs-home-ops" / "kubernetes", "bjw-s.dev")
    edge = "135.125.53.129"  # the towonel agent's DNSEndpoint
    ovh = plans["network/externaldns-ovh"]
    assert ovh == {(f"{h}.bjw-s.dev", "CNAME", "ingress-ext.bjw-s.dev", None) for h in ("flux-webhook", "git", "idm")} | {
        (f"{h}.bjw-s.dev", "A", edge, None) for h in ("icarus-doco-cd", "icarus-gatus", "ingress-ext", "twnl")
    }
    unifi = plans["network/externaldns-unifi"]
    # the envoy-external Service and the DNSEndpoint both want ingress-ext: two candidates (sources are
    # not merged with each other), and the planner takes the lesser address, as external-dns does
    assert {("ingress-ext.bjw-s.dev", "A", "10.1.6.41", None), ("ingress-ext.bjw-s.dev", "A", edge, None)} <= unifi
    created = calculate([], [Endpoint(n, t, tuple(v.split(",")), labels={"resource": "x"}) for n, t, v, _ in unifi], "main").create
    assert [e.targets for e in created if e.dns_name == "ingress-ext.bjw-s.dev"] == [("10.1.6.41",)]
    assert ("ingress-int.bjw-s.dev", "A", "10.1.6.42", None) in unifi
    internal = {e for e in unifi if e[2] == "ingress-int.bjw-s.dev"}
    assert {e[0].split(".")[0] for e in internal} == {
        "actual", "bambuddy", "echo-server", "frigate-go2rtc", "frigate", "hass", "home-assistant", "hubble",
        "jellyfin", "navidrome", "paperless", "qbittorrent", "search", "sonarr",
    }
    assert len(unifi) == 23
