"""The tunnel's commands: ``homeplane edge`` and the connector options of ``homeplane run``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import yaml

from homeplane.tunnel.connector import Connector
from homeplane.tunnel.ingress import Ingress, IngressError, parse_ingress

log = logging.getLogger("homeplane.tunnel")


class TunnelOptionError(ValueError):
    pass


def parse_edges(values: list[str]) -> list[tuple[str, int]]:
    out = []
    for v in values:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise TunnelOptionError(f"--tunnel-edge {v!r}: expected HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return out


def read_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise TunnelOptionError(f"--tunnel-token-file: {e}") from None
    else:
        token = os.environ.get("HOMEPLANE_TUNNEL_TOKEN", "").strip()
    if not token:
        raise TunnelOptionError("the tunnel needs a token: --tunnel-token-file FILE or $HOMEPLANE_TUNNEL_TOKEN")
    return token


def read_ingress(path: Path) -> Ingress:
    try:
        doc = yaml.safe_load(path.read_text())
        ing = parse_ingress(doc)
    except (OSError, yaml.YAMLError, IngressError) as e:
        raise TunnelOptionError(f"--tunnel-config {path}: {e}") from None
    for w in ing.warnings:
        log.warning("--tunnel-config %s: %s", path, w)
    return ing


def attach_connector(rt: Any, dp: Any, edges: list[str], token_file: Path | None, ca: Path | None, connections: int,
                     config: Path | None, name: str | None, cluster_domain: str | None, gateways: list[str] = ()) -> Connector:
    """A connector inside ``homeplane run``: its ingress follows ``--tunnel-config``, else the
    repo's cloudflared config, else the routes of ``--tunnel-gateway``s or of the Gateways whose
    DNS target is the tunnel; its Gateway origins are this process's data plane."""
    from homeplane.tunnel.discover import default_ingress
    from homeplane.tunnel.local import GatewayOrigins

    for g in gateways:
        if g.count("/") != 1:
            raise TunnelOptionError(f"--tunnel-gateway {g!r}: expected NAMESPACE/NAME")

    explicit = read_ingress(config) if config is not None else None
    conn = Connector(parse_edges(edges), read_token(token_file), name=name or socket.gethostname(), connections=connections,
                     ca_file=ca, local=GatewayOrigins(dp, cluster_domain or "cluster.local"))
    if explicit is not None:
        conn.set_ingress(explicit, str(config))
    conn.flow_ring = getattr(dp, "flow_ring", None)

    async def follow(snapshot: Any) -> None:
        if explicit is None:
            found = [f for f in snapshot.extras.get("cloudflared", ()) if f.ingress is not None]
            if len(found) > 1:
                log.warning("several cloudflared configs in the manifests; the tunnel uses %s", found[0].origin)
            named = default_ingress((), snapshot.gateways, cluster_domain or "cluster.local", gateways) if gateways else None
            if named is not None:
                conn.set_ingress(*named)
            elif found:
                conn.set_ingress(found[0].ingress, found[0].origin)
            elif "tunnelIngress" in snapshot.extras:
                conn.set_ingress(*snapshot.extras["tunnelIngress"])
            else:
                conn.set_ingress(None, "")
        if not conn.tasks:
            # dial out only once the first configuration is served (the data plane subscribed
            # first): a stream must never find the Gateways or the rules missing
            await conn.start()

    rt.subscribe(follow)

    async def drain() -> None:
        await conn.drain()

    rt.on_stop.insert(0, drain)  # before the data plane closes: streams in flight finish first
    rt.registry.register(conn.collector)
    rt.status_extras["tunnel"] = conn.status
    return conn


def run_edge(config: Path) -> None:
    from homeplane.tunnel.edge import Edge
    from homeplane.tunnel.edge_config import load_edge_config

    cfg = load_edge_config(config)

    async def main() -> None:
        edge = Edge(cfg)
        await edge.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("edge %s: draining (%d connections open)", cfg.name, len(edge.pipes))
        await edge.drain()
        await edge.close()
        log.info("edge %s: stopped", cfg.name)

    asyncio.run(main())
