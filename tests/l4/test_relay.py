"""The UDP relay shared by the L4 proxies: sessions per client, a burst before the session is up,
and a cap on sessions."""

from __future__ import annotations

import asyncio
import socket
import time

import uvloop

from homeplane.l4.relay import UDPRelay


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.sources.append(addr)
        self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]


async def scenario() -> tuple[list[bytes], list[bytes], int, int, int]:
    loop = asyncio.get_running_loop()
    echo = Echo()
    et, _ = await loop.create_datagram_endpoint(lambda: echo, local_addr=("127.0.0.1", 0))
    eport = et.get_extra_info("sockname")[1]
    ended: list[object] = []
    relay = UDPRelay(lambda addr: ("127.0.0.1", eport, addr), ended.append, max_sessions=2)
    rt, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    rport = rt.get_extra_info("sockname")[1]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for c in clients:
        c.setblocking(False)
    # a burst of five datagrams from one client before its session can exist
    for i in range(5):
        clients[0].sendto(b"q%d" % i, ("127.0.0.1", rport))
    clients[1].sendto(b"second", ("127.0.0.1", rport))
    await asyncio.sleep(0.3)
    clients[2].sendto(b"third", ("127.0.0.1", rport))  # the table is full (2 sessions)
    await asyncio.sleep(0.3)

    def drain(c: socket.socket) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(c.recv(100))
            except BlockingIOError:
                return out

    first, second, third = (drain(c) for c in clients)
    sources = len(set(echo.sources))
    relay.expire(time.monotonic() + 1, idle=0)  # everything idle: sessions end
    n_ended = len(ended)
    rt.close()
    et.close()
    for c in clients:
        c.close()
    return first, second + third, sources, relay.refused, n_ended


def test_udp_relay_sessions_burst_and_cap() -> None:
    loop = uvloop.new_event_loop()
    try:
        first, rest, sources, refused, ended = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert first == [b"echo:q%d" % i for i in range(5)]  # all of the burst, in order, one session
    assert rest == [b"echo:second"] and refused == 1  # the third client found the table full
    assert sources == 2  # two sessions towards the backend, not one per datagram
    assert ended == 2  # expiry ends both and tells the owner (endpoint counts go down)
