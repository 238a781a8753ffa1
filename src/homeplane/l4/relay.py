"""Byte relays shared by the L4 proxies (Services' userspace path, Gateway TCP/UDP listeners).

:class:`Splice` joins an accepted TCP connection to one its owner opens to a backend: bytes
both ways with backpressure (a side whose send buffer fills stops reading the other side),
half-close passed on, and what the client sends before the backend is up kept and flushed.
:class:`UDPRelay` gives each client address its own connected socket towards a backend, so
answers come back to the right client; idle sessions are dropped by :meth:`UDPRelay.expire`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Protocol

UDP_IDLE = 60.0
MAX_UDP_SESSIONS = 16384  # per listener


class Stream(Protocol):
    """What an access log line tells about a relayed stream (a TCP Splice, a UDP session)."""

    peer: tuple[str, int]
    started: float
    bytes_in: int
    bytes_out: int


class Side(asyncio.Protocol):
    """One of the two connections of a :class:`Splice`."""

    def __init__(self, splice: Splice, name: str):
        self.splice = splice
        self.name = name
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.name == "client":
            self.splice.client_connected(transport)

    def data_received(self, data: bytes) -> None:
        self.splice.forward(self.name, data)

    def eof_received(self) -> bool:
        self.splice.half_close(self.name)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.close()

    def pause_writing(self) -> None:
        self.splice.pause(self.name)

    def resume_writing(self) -> None:
        self.splice.resume(self.name)


class Splice:
    """A client connection relayed to a backend connection.

    ``on_open(splice, peer)`` runs when the client is accepted (its reading is paused until
    :meth:`attach`); the owner picks a backend, connects ``backend_side()`` and attaches it, or
    closes the splice. ``on_close(splice)`` runs once when either side ends.
    """

    def __init__(self, on_open: Callable[[Splice, tuple[str, int]], None], on_close: Callable[[Splice], None]):
        self.on_open = on_open
        self.on_close = on_close
        self.client = Side(self, "client")
        self.backend: Side | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.context: Any = None  # the owner's per-connection state (e.g. the endpoint in use)
        self.peer: tuple[str, int] = ("", 0)
        self.peer_override: tuple[str, int] | None = None  # the client named by a PROXY protocol header
        self.started = time.monotonic()
        self.bytes_in = 0  # client -> backend
        self.bytes_out = 0  # backend -> client
        self.eof: set[str] = set()  # the sides that have finished sending

    def client_connected(self, transport: asyncio.BaseTransport) -> None:
        peer = self.peer_override or transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        transport.pause_reading()  # until the backend connection is up
        self.on_open(self, self.peer)

    def backend_side(self) -> Side:
        return Side(self, "backend")

    def attach(self, backend: Side) -> None:
        """The backend connection is up: send what the client already sent, then relay."""
        if self.closed:
            if backend.transport is not None:
                backend.transport.close()
            return
        self.backend = backend
        if self.pending and backend.transport is not None:
            backend.transport.write(b"".join(self.pending))
            self.pending = []
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def forward(self, side: str, data: bytes) -> None:
        if side == "client":
            self.bytes_in += len(data)
            if self.backend is not None and self.backend.transport is not None:
                self.backend.transport.write(data)
            else:
                self.pending.append(data)
        elif self.client.transport is not None:
            self.bytes_out += len(data)
            self.client.transport.write(data)

    def half_close(self, side: str) -> None:
        self.eof.add(side)
        if len(self.eof) == 2:
            self.close()  # both ends have finished sending: nothing more can come
            return
        other = self.backend if side == "client" else self.client
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()

    def pause(self, side: str) -> None:
        # the side's outbound buffer is full: stop reading from the other side
        other = self.backend if side == "client" else self.client
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume(self, side: str) -> None:
        other = self.backend if side == "client" else self.client
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in (self.client, self.backend):
            if p is not None and p.transport is not None:
                p.transport.close()
        self.on_close(self)


class UDPSession(asyncio.DatagramProtocol):
    """One client address's datagrams relayed to one backend (and the answers back)."""

    def __init__(self, client: Any, front: asyncio.DatagramTransport):
        self.client = client
        self.front = front
        self.transport: asyncio.DatagramTransport | None = None
        self.started = self.last = time.monotonic()
        self.context: Any = None
        self.peer: tuple[str, int] = (str(client[0]), int(client[1])) if isinstance(client, tuple) else (str(client), 0)
        self.bytes_in = 0  # client -> backend
        self.bytes_out = 0  # backend -> client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.bytes_in += len(data)
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = time.monotonic()
        self.bytes_out += len(data)
        self.front.sendto(data, self.client)


class UDPRelay(asyncio.DatagramProtocol):
    """The listening side of a UDP proxy. ``pick(client)`` gives the backend (host, port) for a
    new client, or None (its datagrams are dropped); ``on_end(session)`` runs for each session
    that ends; its ``context`` is what ``pick`` returned third."""

    def __init__(
        self, pick: Callable[[Any], tuple[str, int, Any] | None], on_end: Callable[[UDPSession], None] | None = None,
        max_sessions: int = MAX_UDP_SESSIONS,
    ):
        self.pick = pick
        self.on_end = on_end
        self.max_sessions = max_sessions
        self.sessions: dict[Any, UDPSession] = {}
        self.opening: dict[Any, list[bytes]] = {}  # clients whose session is being opened: their datagrams so far
        self.refused = 0  # datagrams dropped because the session table was full
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        sess = self.sessions.get(addr)
        if sess is not None and sess.transport is not None:
            sess.last = time.monotonic()
            sess.send(data)
            return
        waiting = self.opening.get(addr)
        if waiting is not None:
            waiting.append(data)  # the session is on its way: sent when it is up, in order
            return
        if len(self.sessions) + len(self.opening) >= self.max_sessions:
            self.refused += 1  # a flood of (perhaps spoofed) sources must not exhaust sockets
            return
        self.opening[addr] = [data]
        asyncio.ensure_future(self._open(addr))

    async def _open(self, addr: Any) -> None:
        chosen = self.pick(addr)
        if chosen is None or self.transport is None:
            self.opening.pop(addr, None)
            return
        host, port, context = chosen
        sess = UDPSession(addr, self.transport)
        sess.context = context
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: sess, remote_addr=(host, port))
        except OSError:
            self.opening.pop(addr, None)
            self._ended(sess)
            return
        self.sessions[addr] = sess
        for data in self.opening.pop(addr, []):
            sess.send(data)

    def _ended(self, sess: UDPSession) -> None:
        if self.on_end is not None:
            self.on_end(sess)

    def expire(self, now: float, idle: float = UDP_IDLE) -> None:
        for addr, sess in list(self.sessions.items()):
            if now - sess.last > idle:
                if sess.transport is not None:
                    sess.transport.close()
                del self.sessions[addr]
                self._ended(sess)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for sess in self.sessions.values():
            if sess.transport is not None:
                sess.transport.close()
            self._ended(sess)
        self.sessions.clear()
