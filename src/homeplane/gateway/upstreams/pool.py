"""What every upstream connection shares, whatever its protocol: the pooled-connection base,
TCP_NODELAY, the port protocols that mean h2c, and :class:`ResponseHandler` - the interface an
upstream connection calls back (an exchange, or the extAuth client), so connections never
import the exchange."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

H2C_PROTOCOLS = frozenset({"kubernetes.io/h2c", "h2c", "gateway.envoyproxy.io/h2c"})


class ResponseHandler(Protocol):
    """Who receives a response from an upstream connection."""

    status: int  # the status already passed on (0: none yet)

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None: ...
    def upstream_data(self, data: bytes) -> None: ...
    def upstream_end(self, reusable: bool) -> None: ...
    def upstream_lost(self, conn: "PooledConnection") -> None: ...
    def upstream_failed(self, kind: str, message: str) -> None: ...
    def upstream_write_paused(self) -> None: ...
    def upstream_write_resumed(self) -> None: ...
    def upstream_flush(self) -> None: ...
    def upstream_tunnel_data(self, data: bytes) -> None: ...
    def upstream_tunnel_closed(self) -> None: ...


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small writes (a request head, a response) go out at once: no Nagle delay on TCP."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class PooledConnection(asyncio.Protocol):
    """What every upstream connection offers the exchange, whatever its protocol."""

    __slots__ = ()
    transport: asyncio.Transport | None
    closed: bool
    exchange: ResponseHandler | None  # who gets the response being read
    endpoint: Any  # the EndpointState it belongs to
    head_only: bool  # the request was HEAD: a response has no body whatever it says
    reused: bool  # it served a request before (a close by the backend is then no real attempt)
    idle_since: float

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Close without flushing what is still buffered for the backend."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


