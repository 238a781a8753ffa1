"""The userspace L4 path on loopback: ClusterIPs and LB IPs from 127/8, real TCP and UDP flows."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvloop

from homeplane.l4.proxy import UserspaceProxy
from homeplane.l4.tables import compile_tables, flow_key
from homeplane.pipeline import allocate_lb_ips
from homeplane.translate import TranslateOptions, translate
from tests.conftest import load
from tests.gateway.harness import free_port


def free_tcp_udp_port() -> int:
    """A port free for both TCP and UDP (the kernel hands out TCP ports without looking at UDP)."""
    while True:
        port = free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()


class Backends:
    """N TCP+UDP servers that answer with their own name."""

    def __init__(self, n: int):
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.ports = [free_tcp_udp_port() for _ in range(n)]
        self.servers: dict[int, list] = {}
        for i, p in enumerate(self.ports):
            self.start(i)

    def start(self, i: int) -> None:
        port = self.ports[i]
        name = f"backend-{i}".encode()

        async def go():
            async def handle(r, w):
                try:
                    data = await r.read(100)
                    w.write(name + b":" + data)
                    await w.drain()
                    while data := await r.read(100):  # keep the connection open while the client writes
                        w.write(name + b":" + data)
                        await w.drain()
                finally:
                    w.close()

            tcp = await asyncio.start_server(handle, "127.0.0.1", port)

            class U(asyncio.DatagramProtocol):
                def connection_made(self, t):
                    self.t = t

                def datagram_received(self, data, addr):
                    self.t.sendto(name + b":" + data, addr)

            udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(U, local_addr=("127.0.0.1", port))
            return [tcp, udp]

        self.servers[i] = asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)

    def stop(self, i: int) -> None:
        async def go():
            for s in self.servers.pop(i):
                s.close()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)


def manifests(ports: list[int], affinity: str = "None", cluster_ip: str = "127.43.0.10") -> str:
    subsets = "\n".join(f"  - addresses: [{{ip: 127.0.0.1}}]\n    ports: [{{name: tcp, port: {p}}}, {{name: udp, port: {p}, protocol: UDP}}]" for p in ports)
    return f"""
apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {{name: loopback}}
spec: {{blocks: [{{cidr: 127.44.0.0/24}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: apps}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  sessionAffinity: {affinity}
  ports: [{{name: tcp, port: 7000, protocol: TCP}}, {{name: udp, port: 7001, protocol: UDP}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: echo, namespace: apps}}
subsets:
{subsets}
"""


def snapshot(text: str):
    loaded = load(text)
    assert not loaded.diagnostics.errors, [str(d) for d in loaded.diagnostics.errors]
    lb = allocate_lb_ips(loaded.objects, None)
    ips = {(o.namespace, o.name): o.model.spec.cluster_ip for o in loaded.objects if o.kind == "Service"}
    # UDP endpoints use the same port number as TCP ones, named "udp"
    return translate(loaded.objects, TranslateOptions(cluster_ips=ips, lb=lb)).snapshot


class Proxy:
    def __init__(self, **options):
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.p = UserspaceProxy(health_interval=0.2, **options)
        self.call(self.p.start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def apply(self, snap) -> None:
        self.call(self.p.apply(snap))

    def close(self) -> None:
        self.call(self.p.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


def tcp_ask(host: str, port: int, payload: bytes = b"hi") -> tuple[str, int]:
    with socket.create_connection((host, port), timeout=5) as s:
        local_port = s.getsockname()[1]
        s.sendall(payload)
        data = s.recv(100)
    return data.split(b":")[0].decode(), local_port


@pytest.fixture
def setup():
    b = Backends(3)
    p = Proxy()
    yield b, p
    p.close()


def test_cluster_ip_and_lb_ip_spread_per_maglev(setup) -> None:
    b, p = setup
    snap = snapshot(manifests(b.ports))
    p.apply(snap)
    (tcp,) = [t for t in compile_tables(snap) if t.protocol == "TCP"]
    assert tcp.vips == ("127.43.0.10", "127.44.0.0")
    seen = set()
    names = {f"127.0.0.1:{port}": f"backend-{i}" for i, port in enumerate(b.ports)}
    for vip in tcp.vips:
        for _ in range(40):
            who, lport = tcp_ask(vip, 7000)
            expected = tcp.pick(flow_key("127.0.0.1", lport, "TCP", False))
            assert who == names[expected.name]  # exactly the Maglev table's choice for this flow
            seen.add(who)
    assert seen == {"backend-0", "backend-1", "backend-2"}
    # every one of those 80 connections has ended at both ends: none is left open in the proxy
    deadline = time.monotonic() + 5
    while p.p.flows and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not p.p.flows


def test_udp(setup) -> None:
    b, p = setup
    p.apply(snapshot(manifests(b.ports)))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"ping", ("127.43.0.10", 7001))
    data, _ = s.recvfrom(100)
    assert data.endswith(b":ping") and data.startswith(b"backend-")
    s.close()


def test_session_affinity_client_ip(setup) -> None:
    b, p = setup
    p.apply(snapshot(manifests(b.ports, affinity="ClientIP")))
    assert len({tcp_ask("127.43.0.10", 7000)[0] for _ in range(20)}) == 1


def test_removing_a_backend_moves_only_its_flows(setup) -> None:
    b, p = setup
    before = [t for t in compile_tables(snapshot(manifests(b.ports))) if t.protocol == "TCP"][0]
    after = [t for t in compile_tables(snapshot(manifests(b.ports[:2]))) if t.protocol == "TCP"][0]
    gone = f"127.0.0.1:{b.ports[2]}"
    moved = kept = 0
    for port in range(20000, 24000):
        k = flow_key("10.0.0.1", port, "TCP", False)
        x, y = before.pick(k).name, after.pick(k).name
        if x == gone:
            moved += 1
        else:
            kept += x == y
    # Maglev moves a few other flows too (bounded disruption, not none): over 60 random backend
    # name sets the kept share was 0.985-1.0 (0.99 failed ~1 run in 40); a modulo hash keeps ~0.5
    assert moved > 0 and kept / (4000 - moved) > 0.97


def test_unhealthy_backend_is_skipped_and_drain(setup) -> None:
    b, p = setup
    p.apply(snapshot(manifests(b.ports)))
    # an established flow keeps working while its service changes
    s = socket.create_connection(("127.43.0.10", 7000), timeout=5)
    s.sendall(b"first")
    first = s.recv(100)
    b.stop(0)
    time.sleep(0.8)  # a few health-check rounds
    answers = {tcp_ask("127.43.0.10", 7000)[0] for _ in range(30)}
    assert "backend-0" not in answers and answers <= {"backend-1", "backend-2"}
    p.apply(snapshot(manifests(b.ports[1:])))
    who = first.split(b":")[0]
    if who != b"backend-0":
        s.sendall(b"again")
        assert s.recv(100) == who + b":again"
    s.close()
    # the service goes away: new connections are refused
    p.apply(snapshot(manifests(b.ports).replace("name: echo, namespace: apps}\nspec:", "name: other, namespace: apps}\nspec:").replace("clusterIP: 127.43.0.10", "clusterIP: 127.43.0.11")))
    with pytest.raises(OSError):
        socket.create_connection(("127.43.0.10", 7000), timeout=2)


def test_configured_maglev_table_size() -> None:
    b, p = Backends(3), Proxy(table_size=251)
    try:
        snap = snapshot(manifests(b.ports))
        p.apply(snap)
        assert {len(t.table) for t in p.p.tables} == {251}
        (tcp,) = [t for t in compile_tables(snap, 251) if t.protocol == "TCP"]
        names = {f"127.0.0.1:{port}": f"backend-{i}" for i, port in enumerate(b.ports)}
        for _ in range(20):
            who, lport = tcp_ask(tcp.vips[0], 7000)
            assert who == names[tcp.pick(flow_key("127.0.0.1", lport, "TCP", False)).name]
    finally:
        p.close()


def test_every_connection_is_a_flow() -> None:
    from homeplane.observe.flows import FlowFilter, FlowRing

    b = Backends(2)
    p = Proxy()
    p.p.flow_ring = ring = FlowRing(16, node_name="n1")
    try:
        p.apply(snapshot(manifests(b.ports)))
        who, lport = tcp_ask("127.43.0.10", 7000, b"hello")
        deadline = time.monotonic() + 5
        while not ring.entries and time.monotonic() < deadline:
            time.sleep(0.05)
        (w,) = ring.read()
        f = w["flow"]
        assert f["verdict"] == "FORWARDED" and f["Type"] == "L3_L4" and w["node_name"] == "n1"
        assert f["l4"]["TCP"]["source_port"] == lport and f["IP"]["source"] == "127.0.0.1"
        names = {f"backend-{i}": port for i, port in enumerate(b.ports)}
        assert f["l4"]["TCP"]["destination_port"] == names[who]  # the backend that answered
        assert f["homeplane"]["bytes_in"] == 5 and f["homeplane"]["bytes_out"] > 0
        assert f["destination_service"] == {"namespace": "apps", "name": "echo"} and f["destination"]["namespace"] == "apps"
        assert ring.read(flt=FlowFilter.parse({"protocol": ["tcp"], "to-port": [str(names[who])]})) == [w]
        assert ring.read(flt=FlowFilter.parse({"protocol": ["udp"]})) == []
    finally:
        p.close()
