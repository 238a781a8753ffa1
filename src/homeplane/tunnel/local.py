"""Which of this process's Gateways an ingress rule's service URL names.

A home-ops cloudflared config points at the Gateway's Service:
``https://envoy-external.network.svc.cluster.local:443``. Here there is no Service: the
name means the Gateway ``network/envoy-external`` (or Envoy Gateway's generated
``envoy-<namespace>-<name>-<hash>``), and the port its listener's port in the manifests
(before any ``--port-map``). An address and port the Gateway is bound to also match.
Plain HTTP that reached the edge's HTTP port goes to the same Gateway's HTTP listener.
"""

from __future__ import annotations

from typing import Any


def service_name(host: str, cluster_domain: str = "cluster.local") -> tuple[str, str] | None:
    """(namespace, name) of ``name.namespace[.svc[.cluster-domain]]``; None for other hosts."""
    h = host.lower().rstrip(".")
    for suffix in (f".svc.{cluster_domain}", ".svc"):
        if h.endswith(suffix):
            h = h[: -len(suffix)]
            break
    else:
        if h.count(".") != 1:
            return None
    name, _, ns = h.partition(".")
    if not name or not ns or "." in ns:
        return None
    return ns, name


class GatewayOrigins:
    def __init__(self, dp: Any, cluster_domain: str = "cluster.local"):
        self.dp = dp
        self.cluster_domain = cluster_domain

    def find(self, host: str, port: int) -> Any:
        named = service_name(host, self.cluster_domain)
        servers = list(self.dp.servers.items())
        if named is not None:
            ns, name = named
            for _, srv in servers:
                g = srv.table.gateway
                if srv.table.port != port or (g.namespace or "default") != ns:
                    continue
                if g.name == name or name.startswith(f"envoy-{ns}-{g.name}-"):
                    return srv
            return None
        for (addr, bound), srv in servers:
            if addr == host and port in (bound, srv.table.port):
                return srv
        return None

    def plain_twin(self, srv: Any) -> Any:
        """The same Gateway's plain-HTTP listener port (80 first), for a request that reached the
        edge without TLS: its redirects and ACME HTTP-01 routes live there, as on the LAN."""
        g = srv.table.gateway
        plain = [s for s in self.dp.servers.values() if s.table.gateway == g and s.table.protocol == "HTTP"]
        return min(plain, key=lambda s: (s.table.port != 80, s.table.port)) if plain else None
