"""Opening a connection to an endpoint: HTTP/1.1, HTTP/2 cleartext (a stream on a shared
session) when the port says h2c, TLS when a BackendTLSPolicy says so."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from homeplane.gateway.upstreams.http1 import UpstreamConnection, check_subject_alt_names
from homeplane.gateway.upstreams.http2 import open_stream
from homeplane.gateway.upstreams.pool import PooledConnection

if TYPE_CHECKING:
    from homeplane.gateway.upstreams.cluster import EndpointState, UpstreamTLSContext


async def connect(
    loop: asyncio.AbstractEventLoop, endpoint: EndpointState, timeout: float, h2c: bool = False,
    tls: UpstreamTLSContext | None = None,
) -> PooledConnection:
    """A new connection to the endpoint: HTTP/1.1, HTTP/2 cleartext when the port says h2c, over
    TLS when a BackendTLSPolicy says so."""
    if h2c and tls is None:
        return await open_stream(endpoint, timeout, lambda session: _open(loop, endpoint, lambda: session, None))  # type: ignore[return-value]
    conn = UpstreamConnection(endpoint)
    await asyncio.wait_for(_open(loop, endpoint, lambda: conn, tls), timeout)
    if tls is not None and tls.subject_alt_names:
        check_subject_alt_names(conn, tls.subject_alt_names)
    return conn


def _open(loop: asyncio.AbstractEventLoop, endpoint: EndpointState, factory, tls: UpstreamTLSContext | None):  # type: ignore[no-untyped-def]
    if endpoint.address.startswith("unix:"):
        return loop.create_unix_connection(factory, endpoint.address[5:])
    if tls is not None:
        return loop.create_connection(factory, endpoint.address, endpoint.port, ssl=tls.context, server_hostname=tls.server_hostname)
    return loop.create_connection(factory, endpoint.address, endpoint.port)


