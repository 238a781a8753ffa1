"""The truth table through real sockets: the userspace L4 proxy on the Services' ClusterIPs, each
pod a TCP server on a loopback address of its own, each client connecting from a pod's address.
A connection policy refuses is closed without reaching any pod, and its flow says POLICY_DENIED."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import uvloop

from homeplane.l4.proxy import UserspaceProxy
from homeplane.observe.flows import FlowRing
from tests.conftest import translate_text
from tests.gateway.harness import free_port
from tests.policy.cluster import ALL, address, cluster_manifests
from tests.policy.test_truth_table import CASES_CNP, CASES_NP, Expect


class Pods:
    """A TCP server per pod that answers with the pod's name."""

    def __init__(self, port: int):
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.servers = [self.call(self._serve(pod, port)) for pod in ALL]

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _serve(self, pod: str, port: int):  # type: ignore[no-untyped-def]
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read(10)
            w.write(pod.encode())
            await w.drain()
            w.close()

        return await asyncio.start_server(handle, address(pod), port)

    def close(self) -> None:
        for s in self.servers:
            self.loop.call_soon_threadsafe(s.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def answer(src: str, vip: str, port: int) -> bytes:
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((address(src), 0))
        s.connect((vip, port))
        s.sendall(b"ping")
        try:
            return s.recv(100)
        except ConnectionResetError:
            return b""


@pytest.fixture(scope="module")
def rig():  # type: ignore[no-untyped-def]
    pod_port, svc_port = free_port(), free_port()
    pods = Pods(pod_port)
    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    proxy = UserspaceProxy(health_interval=3600)
    proxy.flow_ring = FlowRing(4095)

    def apply(policies: str) -> None:
        _, tr = translate_text(cluster_manifests("127.3", (pod_port, pod_port + 1), (svc_port, svc_port + 1)) + "---\n" + policies)
        asyncio.run_coroutine_threadsafe(proxy.apply(tr.snapshot), loop).result(10)

    yield apply, svc_port, proxy
    asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    pods.close()


PICKED = [c for c in CASES_NP + CASES_CNP if c[3] == 80 and "named port" not in c[0] and "endPort" not in c[0]
          and "UDP" not in c[0]][:12]


@pytest.mark.parametrize("title,policies,expect,port", PICKED, ids=[c[0] for c in PICKED])
def test_reachability_through_the_l4_proxy(rig, title: str, policies: str, expect: Expect, port: int) -> None:  # type: ignore[no-untyped-def]
    apply, svc_port, proxy = rig
    apply(policies)
    wrong = []
    for src in ALL:
        for dst in ALL:
            if src == dst:
                continue
            ns_i, pod_i = address(dst).split(".")[2:]
            got = answer(src, f"127.3.{ns_i}.{pod_i}", svc_port)
            want = dst.encode() if expect(src, dst) else b""
            if got != want:
                wrong.append(f"{src} -> {dst}: got {got!r}, want {want!r}")
    assert not wrong, "\n".join(wrong)
    denied = [w["flow"] for w in proxy.flow_ring.read(last=200) if w["flow"]["verdict"] == "DROPPED"]
    if any(not expect(s, d) for s in ALL for d in ALL if s != d):
        assert denied and all(f["drop_reason_desc"] == "POLICY_DENIED" for f in denied)
