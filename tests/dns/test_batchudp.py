"""Batched UDP (recvmmsg/sendmmsg through ctypes) on real loopback sockets, and the DNS server
answering a burst through it."""

from __future__ import annotations

import socket
import time

import dns.message
import pytest

from homeplane.dns import batchudp
from homeplane.dns.batchudp import SLOT, MMsgBatch, SimpleBatch
from tests.dns.test_dns import APPS, config
from tests.dns.harness import DNS

KINDS = [SimpleBatch] + ([MMsgBatch] if batchudp._CALLS is not None else [])


def wait_readable(sock: socket.socket) -> None:
    import select

    assert select.select([sock], [], [], 5)[0], "nothing arrived"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_batch_in_and_the_answers_back_to_each_sender(kind, family: int, host: str) -> None:
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        io = kind(server, batch=8)
        port = server.getsockname()[1]
        # 10 datagrams: more than one batch; one too big for a slot
        sent = []
        for n in range(10):
            c = clients[n % 3]
            payload = b"x" * (SLOT + 10) if n == 4 else f"q{n}".encode()
            c.sendto(payload, (host, port))
            sent.append((c.getsockname()[1], payload))
        wait_readable(server)
        time.sleep(0.05)
        got = io.recv()
        assert len(got) == 8
        assert got[4] is None  # the oversized one is dropped, the rest are intact
        assert [g for g in got if g is not None] == [p for _, p in sent[:8] if len(p) < SLOT]
        assert [io.address(i)[1] for i in range(8)] == [p for p, _ in sent[:8]]
        # answer all but datagrams 2 and 4: the gap splits the run, nothing is misaddressed
        for i, g in enumerate(got):
            if g is not None and i != 2:
                io.queue(i, b"answer-" + g)
        io.flush()
        rest = io.recv()
        assert rest == [b"q8", b"q9"]
        for i, g in enumerate(rest):
            io.queue(i, b"answer-" + g)
        io.flush()
        assert io.recv() == []
        answers: dict[int, set[bytes]] = {}
        for c in clients:
            c.settimeout(0.5)
            while True:
                try:
                    data, addr = c.recvfrom(100)
                except socket.timeout:
                    break
                assert addr[1] == port
                answers.setdefault(c.getsockname()[1], set()).add(data)
        expected: dict[int, set[bytes]] = {}
        for n, (p, payload) in enumerate(sent):
            if n not in (2, 4):
                expected.setdefault(p, set()).add(b"answer-" + payload)
        assert answers == expected
    finally:
        server.close()
        for c in clients:
            c.close()


def test_a_burst_of_queries_from_many_clients_all_answered_with_their_ids() -> None:
    s = DNS(APPS, config())
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    try:
        if batchudp._CALLS is not None:  # Linux: the server takes the recvmmsg path
            assert isinstance(s.server._udp[0], MMsgBatch)
        queries = {}
        # 200 queries in flight at once (cluster names, a forwarded-nowhere name, NXDOMAIN)
        for n in range(200):
            name = ["web.apps.svc.cluster.local", "nope.apps.svc.cluster.local", "db.apps.svc.cluster.local"][n % 3]
            q = dns.message.make_query(name, "A")
            q.id = n  # unique: random IDs could repeat within a client and confuse the bookkeeping
            c = clients[n % 20]
            c.sendto(q.to_wire(), ("127.0.0.1", s.port))
            queries[(c.getsockname()[1], q.id)] = q
        answered = 0
        for c in clients:
            c.settimeout(2)
            for _ in range(10):
                data = c.recv(4096)
                r = dns.message.from_wire(data)
                q = queries[(c.getsockname()[1], r.id)]
                assert r.question == q.question
                assert r.rcode() == (3 if q.question[0].name.labels[0] == b"nope" else 0)
                answered += 1
        assert answered == 200
    finally:
        for c in clients:
            c.close()
        s.close()
