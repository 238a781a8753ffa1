"""The DNS server as a part of ``homeplane run``: configuration from flags and manifests."""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterable

from homeplane.dns.config import DNSConfig, from_coredns_values, resolv_conf_upstreams
from homeplane.dns.server import DNSServer
from homeplane.translate.snapshot import Snapshot

log = logging.getLogger("homeplane.dns")


class DNSService:
    """Owns a DNSServer; rebuilds its configuration when the manifests' CoreDNS values change.

    Flags win over the manifests: ``--dns-upstream`` replaces the ``forward`` plugin's
    upstreams, ``--dns-domain`` the gateway domains.
    """

    def __init__(
        self,
        listen: list[tuple[str, int]],
        domains: list[str],
        gateways: list[str],
        upstreams: list[str],
        cluster_domain: str | None,
        recursion: tuple[Any, ...] = (),
        rrl: float | None = None,
    ):
        self.flags = (domains, gateways, upstreams, cluster_domain)
        self.recursion = recursion  # --dns-allow-recursion: replaces the private ranges
        self.rrl = rrl  # --dns-rrl: responses per second, for every client
        self.server = DNSServer(self.config(None), listen)
        self._coredns: Any = None

    def config(self, coredns: dict[str, Any] | None) -> DNSConfig:
        domains, gateways, upstreams, cluster_domain = self.flags
        cfg = from_coredns_values(copy.deepcopy(coredns), DNSConfig()) if coredns else DNSConfig()
        if cluster_domain:
            cfg.cluster_domain = cluster_domain
        if domains:
            cfg.gateway_domains = list(domains)
        if gateways:
            cfg.gateways = list(gateways)
        if upstreams:
            cfg.forward.upstreams = [u if ":" in u and not u.startswith("[") else f"{u}:53" for u in upstreams]
        elif not cfg.forward.upstreams:
            cfg.forward.upstreams = resolv_conf_upstreams()
        if self.recursion:
            cfg.recursion = tuple(self.recursion)
        if self.rrl is not None:
            cfg.rrl.responses_per_second = self.rrl
            cfg.rrl_exempt_private = False
        if cfg.ignored_plugins:
            log.info("CoreDNS plugins not served by homeplane: %s", ", ".join(cfg.ignored_plugins))
        for p in cfg.problems:
            log.error("CoreDNS values: %s", p)
        return cfg

    async def apply(self, snap: Snapshot) -> None:
        coredns = snap.extras.get("coredns")
        if coredns != self._coredns:
            self._coredns = coredns
            cfg = self.config(coredns)
            self.server.reconfigure(cfg)
        self.server.apply(snap)

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    def collect(self) -> Iterable[Any]:
        return self.server.collect()

    def status(self) -> dict[str, Any]:
        cfg = self.server.cfg
        return {
            "listen": [f"{h}:{p}" for h, p in self.server.bound],
            "clusterDomain": cfg.cluster_domain,
            "gatewayDomains": cfg.gateway_domains,
            "upstreams": [u.name for u in self.server.forwarder.upstreams],
            "cacheEntries": len(self.server.cache),
        }
