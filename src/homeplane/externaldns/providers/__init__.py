"""Provider construction from an instance's flags and (resolved) environment."""

from __future__ import annotations

import re
from typing import Mapping

from homeplane.externaldns.config import Instance
from homeplane.externaldns.providers.base import Provider, ProviderError

UNIFI_WEBHOOK_IMAGES = ("external-dns-unifi-webhook",)


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in container arguments."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def provider_kind(inst: Instance) -> str:
    """What homeplane will run for the instance: a native provider, or a webhook it drives."""
    if inst.provider == "webhook" and inst.webhook_image.rsplit("/", 1)[-1] in UNIFI_WEBHOOK_IMAGES:
        return "unifi"
    return inst.provider


def make_provider(inst: Instance, env: Mapping[str, str], webhook_env: Mapping[str, str] | None = None,
                  webhook_urls: Mapping[str, str] | None = None, timeout: float = 10.0) -> Provider:
    kind = provider_kind(inst)
    flag = lambda name, d="": expand(inst.flag(name, d), env)  # noqa: E731
    url = (webhook_urls or {}).get(inst.id) or (webhook_urls or {}).get(inst.name)
    if url:
        from homeplane.externaldns.providers.webhook import WebhookProvider

        return WebhookProvider(url, timeout=timeout)
    if kind == "rfc2136":
        from homeplane.externaldns.providers.rfc2136 import RFC2136Config, RFC2136Provider

        host = flag("rfc2136-host")
        if not host:
            raise ProviderError(f"{inst.id}: rfc2136 needs --rfc2136-host", permanent=True)
        try:
            port = int(flag("rfc2136-port", "53"))
            min_ttl = int(flag("rfc2136-min-ttl", "0").rstrip("s") or 0)
            batch = int(flag("rfc2136-batch-change-size", "50"))
        except ValueError as e:
            raise ProviderError(f"{inst.id}: rfc2136 flag is not a number: {e}", permanent=True) from None
        return RFC2136Provider(RFC2136Config(
            host=host, port=port, zones=tuple(expand(z, env) for z in inst.flag_list("rfc2136-zone")),
            key_name=flag("rfc2136-tsig-keyname"), secret=flag("rfc2136-tsig-secret") or env.get("EXTERNAL_DNS_RFC2136_TSIG_SECRET", ""),
            algorithm=flag("rfc2136-tsig-secret-alg", "hmac-sha256"), tsig_axfr=inst.flag_bool("rfc2136-tsig-axfr"),
            min_ttl=min_ttl, batch=batch, timeout=timeout,
        ))
    if kind == "cloudflare":
        from homeplane.externaldns.providers.cloudflare import CloudflareProvider, cloudflare_config

        return CloudflareProvider(cloudflare_config(inst, env, timeout))
    if kind == "unifi":
        from homeplane.externaldns.providers.unifi import UnifiProvider, unifi_config

        return UnifiProvider(unifi_config(inst, webhook_env or {}, timeout))
    if kind == "webhook":
        from homeplane.externaldns.providers.webhook import WebhookProvider

        target = flag("webhook-provider-url")
        if not target:
            raise ProviderError(
                f"{inst.id}: webhook provider {inst.webhook_image or '(no image)'} is not built into homeplane: run it and "
                f"give its address with --dns-webhook {inst.name}=http://HOST:8888", permanent=True,
            )
        return WebhookProvider(target, timeout=timeout)
    raise ProviderError(
        f"{inst.id}: provider {inst.provider!r} is not built into homeplane (built in: cloudflare, rfc2136, UniFi); "
        f"run its external-dns webhook and give --dns-webhook {inst.name}=http://HOST:8888", permanent=True,
    )
