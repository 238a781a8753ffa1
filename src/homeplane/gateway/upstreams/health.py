"""Active health checks (BackendTrafficPolicy ``healthCheck.active``): HTTP and TCP probes.

Each checked cluster gets one task that probes every endpoint each ``interval``;
an endpoint turns unhealthy after ``unhealthyThreshold`` failures in a row and
healthy again after ``healthyThreshold`` successes. Unhealthy endpoints get no
requests (unless all are, Envoy's panic mode).
"""

from __future__ import annotations

import asyncio
import logging

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from homeplane.gateway.upstreams.cluster import Cluster, EndpointState

log = logging.getLogger("homeplane.health")


async def probe(ep: EndpointState, cluster: Cluster) -> bool:
    hc = cluster.config.active
    assert hc is not None
    timeout = hc.timeout
    try:
        tls = cluster.tls()  # probes go the way requests do: over TLS for a BackendTLSPolicy
        opened = (
            asyncio.open_connection(ep.address, ep.port, ssl=tls.context, server_hostname=tls.server_hostname)
            if tls is not None else asyncio.open_connection(ep.address, ep.port)
        )
        r, w = await asyncio.wait_for(opened, timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        if hc.type == "TCP" or hc.path is None:
            return True
        host = hc.hostname or ep.address
        method = hc.method
        if cluster.h2c and tls is None:
            # a prior-knowledge HTTP/2 backend may not speak HTTP/1.1 at all: ask in its protocol
            status = await asyncio.wait_for(_h2c_status(r, w, method, host, hc.path), timeout)
        else:
            w.write(f"{method} {hc.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: homeplane-health-check\r\nConnection: close\r\n\r\n".encode())
            line = await asyncio.wait_for(r.readline(), timeout)
            parts = line.split()
            status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        return status in hc.expected_statuses
    except (OSError, asyncio.TimeoutError, h2.exceptions.ProtocolError):
        return False
    finally:
        w.close()


async def _h2c_status(r: asyncio.StreamReader, w: asyncio.StreamWriter, method: str, host: str, path: str) -> int | None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    headers = [(":method", method), (":scheme", "http"), (":authority", host), (":path", path), ("user-agent", "homeplane-health-check")]
    conn.send_headers(1, headers, end_stream=True)
    w.write(conn.data_to_send())
    while data := await r.read(65536):
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                status = dict(ev.headers).get(b":status", b"")
                return int(status) if status.isdigit() else None
            if isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                return None
        w.write(conn.data_to_send())
    return None


async def run_checks(cluster: Cluster) -> None:
    while True:
        hc = cluster.config.active
        if hc is None:
            return
        eps = list(cluster.endpoints)
        results = await asyncio.gather(*(probe(ep, cluster) for ep in eps), return_exceptions=True)
        for ep, ok in zip(eps, results):
            if ok is True:
                ep.hc_ok += 1
                ep.hc_fail = 0
                if not ep.healthy and ep.hc_ok >= hc.healthy_threshold:
                    ep.healthy = True
                    log.info("endpoint %s of %s is healthy again", ep.name, cluster.name)
            else:
                ep.hc_fail += 1
                ep.hc_ok = 0
                if ep.healthy and ep.hc_fail >= hc.unhealthy_threshold:
                    ep.healthy = False
                    log.warning("endpoint %s of %s failed %d health checks: unhealthy", ep.name, cluster.name, ep.hc_fail)
        cluster.refresh_availability()
        await asyncio.sleep(hc.interval)
