"""L2 announcements for real: three `homeplane run` nodes, etcd and a client in network namespaces on
a bridge the test makes (needs root, as CI has). Each node serves the LoadBalancer IP with the
nftables path or the userspace proxy (to a pod address of its own, which answers with the node's name); only the
node holding the Service's lease answers ARP for the IP. The client's traffic moves to the other
node when the leader's link goes down (it loses etcd too: it stops announcing) and when the
leader's homeplane is killed; the measured failover times are printed (timings are not asserted:
`bench` is where they belong). A node cut off from etcd but not from the link goes quiet: only one
node ever answers ARP for the address."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "etcd")),
    reason="network namespaces, nftables and etcd need root and the ip/nft/etcd tools (CI runs as root with them installed)",
)

VIP = "10.80.0.100"
NODES = {"node-a": "10.80.0.11", "node-b": "10.80.0.12", "node-c": "10.80.0.13"}
ETCDS = ["10.80.0.2", "10.80.0.3", "10.80.0.4"]  # a three-member etcd, in one namespace
STATE = "etcd://" + ",".join(f"{ip}:2379" for ip in ETCDS) + "/l2"

MANIFESTS = f"""
apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {{name: lan}}
spec: {{blocks: [{{cidr: {VIP}/32}}]}}
---
apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata: {{name: lan}}
spec:
  interfaces: ["^eth[0-9]+"]
  loadBalancerIPs: true
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: apps, annotations: {{lbipam.cilium.io/ips: {VIP}}}}}
spec: {{type: LoadBalancer, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: apps}}
subsets: [{{addresses: [{{ip: 10.80.9.1}}], ports: [{{port: 8080}}]}}]
"""

# the "pod" of each node: 10.80.9.1:8080 on its loopback, answering with the node's name
POD = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.80.9.1", 8080)); s.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        try:
            c.recv(10); c.sendall(sys.argv[1].encode())
        except OSError:
            pass
        c.close()
    """
)

# the client: asks the VIP every 50 ms and prints who answered (or "-"), with a timestamp
CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    while True:
        s = socket.socket(); s.settimeout(0.15)
        try:
            s.connect((sys.argv[1], 80)); s.sendall(b"who"); who = s.recv(20).decode() or "-"
        except OSError:
            who = "-"
        s.close()
        print(f"{time.time():.3f} {who}", flush=True)
        time.sleep(0.05)
    """
)


def sh(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:8])} failed: {p.stderr.strip()[-1500:]}")
    return p.stdout


class Lan:
    def __init__(self, tmp: Path, l4: str = "nftables"):
        tag = uuid.uuid4().hex[:5]
        self.tmp, self.l4 = tmp, l4
        self.ns = {name: f"hl2{tag}-{name}" for name in ("lan", "etcd", "client", *NODES)}
        self.procs: list[subprocess.Popen] = []
        self.homeplane: dict[str, subprocess.Popen] = {}
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        lan = self.ns["lan"]
        sh("ip", "-n", lan, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", lan, "link", "set", "br0", "up")
        for i, (name, addr) in enumerate([("etcd", ETCDS[0]), ("client", "10.80.0.50"), *NODES.items()]):
            side, peer = f"p{tag}{i}", f"e{tag}{i}"
            sh("ip", "link", "add", side, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", side, "netns", lan)
            sh("ip", "-n", lan, "link", "set", side, "master", "br0", "up")
            sh("ip", "link", "set", peer, "netns", self.ns[name])
            sh("ip", "-n", self.ns[name], "link", "set", peer, "name", "eth0")
            sh("ip", "-n", self.ns[name], "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", self.ns[name], "link", "set", "eth0", "up")
        self.bridge_port = {name: f"p{tag}{i + 2}" for i, name in enumerate(NODES)}
        self.client_mac = None
        cluster = ",".join(f"e{i}=http://{ip}:2380" for i, ip in enumerate(ETCDS))
        self.etcd: list[subprocess.Popen] = []
        for i, ip in enumerate(ETCDS):
            if i:
                sh("ip", "-n", self.ns["etcd"], "addr", "add", f"{ip}/24", "dev", "eth0")
            self.etcd.append(subprocess.Popen(
                ["ip", "netns", "exec", self.ns["etcd"], "etcd", "--name", f"e{i}", "--data-dir", str(tmp / f"etcd{i}"),
                 "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
                 "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.procs += self.etcd
        (tmp / "m").mkdir()
        (tmp / "m" / "all.yaml").write_text(MANIFESTS)
        for name in NODES:
            ns = self.ns[name]
            sh("ip", "-n", ns, "addr", "add", "10.80.9.1/32", "dev", "lo")
            pod = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", POD, name], stdout=subprocess.PIPE, text=True)
            assert pod.stdout is not None and pod.stdout.readline().strip() == "ready"
            self.procs.append(pod)
            self.start(name)

    def start(self, name: str) -> None:
        ns = self.ns[name]
        log = open(self.tmp / f"{name}.log", "a")
        self.homeplane[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "homeplane", "run", str(self.tmp / "m"), "--admin", "127.0.0.1:9911",
             "--state", STATE, "--node-name", name, "--l4", self.l4, "--l2-announcements",
             "--no-access-log"], cwd=REPO, stderr=log, stdout=log)

    def close(self) -> None:
        for p in [*self.homeplane.values(), *self.procs]:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns])


@pytest.fixture
def lan(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lan]:
    net = Lan(tmp_path, getattr(request, "param", "nftables"))
    yield net
    net.close()


class Client:
    def __init__(self, lan: Lan):
        self.proc = subprocess.Popen(["ip", "netns", "exec", lan.ns["client"], sys.executable, "-c", CLIENT, VIP],
                                     stdout=subprocess.PIPE, text=True)

    def next_answer(self, want: set[str], timeout: float) -> tuple[float, str]:
        """The first answer in ``want`` (its time and who), reading the client's lines."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            t, who = line.split()
            if who in want:
                return float(t), who
        raise AssertionError(f"no answer from {want} within {timeout} s")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


# who answers ARP for the address: a request from the client, and the replies within a second
WHO_HAS = textwrap.dedent(
    """
    import socket, sys, time, json
    sys.path.insert(0, sys.argv[2])
    from homeplane.l2 import arp
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(arp.ETH_P_ARP))
    s.bind(("eth0", arp.ETH_P_ARP)); s.settimeout(0.2)
    mac = s.getsockname()[4]
    req = arp.Arp(arp.REQUEST, mac, "10.80.0.50", bytes(6), sys.argv[1])
    s.send(arp._frame(arp.BROADCAST, mac, arp.REQUEST, mac, "10.80.0.50", bytes(6), sys.argv[1]))
    seen = set()
    end = time.time() + 1.0
    while time.time() < end:
        try:
            got = arp.parse(s.recv(2048))
        except OSError:
            continue
        if got and got.oper == arp.REPLY and got.sender_ip == sys.argv[1]:
            seen.add(arp.mac_text(got.sender_mac))
    print(json.dumps(sorted(seen)))
    """
)


def arp_answers(lan: Lan) -> list[str]:
    return json.loads(sh("ip", "netns", "exec", lan.ns["client"], sys.executable, "-c", WHO_HAS, VIP, str(REPO / "src")))


def node_mac(lan: Lan, name: str) -> str:
    return sh("ip", "-n", lan.ns[name], "-j", "link", "show", "eth0").split('"address":"', 1)[1].split('"', 1)[0]


def leases(lan: Lan) -> dict:
    out = sh("ip", "netns", "exec", lan.ns["node-a"], sys.executable, "-m", "homeplane", "get", "l2announcements",
             "--state", STATE, "-o", "json")
    return {i["lease"]: i for i in json.loads(out)["items"]}


def test_the_lb_ip_moves_to_another_node(lan: Lan) -> None:
    client = Client(lan)
    try:
        _, leader = client.next_answer(set(NODES), 60)
        lease = leases(lan)["cilium-l2announce-apps-web"]
        assert lease["holder"] == leader and lease["valid"]
        assert lease["service"] == "apps/web" and lease["ips"] == [VIP] and lease["interfaces"] == ["eth0"]
        times = []
        # 1. the leader's link goes down: it loses the client and etcd, another node takes over
        down = time.time()
        sh("ip", "-n", lan.ns["lan"], "link", "set", "dev", lan.bridge_port[leader], "down")
        t, other = client.next_answer(set(NODES) - {leader}, 20)
        times.append(t - down)
        # back on the link it stays quiet: it lost the lease, so it does not answer ARP for the IP
        sh("ip", "-n", lan.ns["lan"], "link", "set", "dev", lan.bridge_port[leader], "up")
        time.sleep(1.5)
        sh("ip", "-n", lan.ns["client"], "neigh", "flush", "dev", "eth0")
        _, who = client.next_answer(set(NODES), 10)
        assert who == other and leases(lan)["cilium-l2announce-apps-web"]["holder"] == other
        # 2. the new leader's homeplane is killed: one of the others takes the IP
        killed = time.time()
        lan.homeplane[other].send_signal(signal.SIGKILL)
        lan.homeplane[other].wait(10)
        t, who = client.next_answer(set(NODES) - {other}, 20)
        times.append(t - killed)
        assert leases(lan)["cilium-l2announce-apps-web"]["holder"] == who
        print(f"\nL2 failover: link down {times[0]:.2f} s, SIGKILL {times[1]:.2f} s")
    finally:
        client.close()


@pytest.mark.parametrize("lan", ["userspace"], indirect=True)
def test_a_node_cut_off_from_etcd_goes_quiet(lan: Lan) -> None:
    """(With the userspace L4 proxy: the announcing node takes the address as its own, a local
    route, so the proxy listening there gets the packets; the others do not.)"""
    client = Client(lan)
    try:
        _, leader = client.next_answer(set(NODES), 60)
        assert arp_answers(lan) == [node_mac(lan, leader)]
        # etcd stops hearing the leader; the link still carries its ARP replies
        etcd = lan.ns["etcd"]
        sh("ip", "netns", "exec", etcd, "nft", "add", "table", "inet", "cut")
        sh("ip", "netns", "exec", etcd, "nft", "add", "chain", "inet", "cut", "in", "{ type filter hook input priority 0 ; }")
        sh("ip", "netns", "exec", etcd, "nft", "add", "rule", "inet", "cut", "in", "ip", "saddr", NODES[leader], "drop")
        _, who = client.next_answer(set(NODES) - {leader}, 20)
        for _ in range(3):  # one node answers, the new leader, however often the client asks
            assert arp_answers(lan) == [node_mac(lan, who)]
        # etcd hears it again: it sees the other node's lease and stays quiet
        sh("ip", "netns", "exec", etcd, "nft", "delete", "table", "inet", "cut")
        time.sleep(1.5)
        assert arp_answers(lan) == [node_mac(lan, who)]
        assert leases(lan)["cilium-l2announce-apps-web"]["holder"] == who
        routes = {n: sh("ip", "-n", lan.ns[n], "route", "show", "table", "local", VIP) for n in NODES}
        assert [n for n, r in routes.items() if r.strip()] == [who]
    finally:
        client.close()


def test_losing_an_etcd_member_is_tolerated(lan: Lan) -> None:
    """The three-member etcd loses the member every node asks first: the leases live on, and the
    address stays where it is (no failover, no flapping)."""
    client = Client(lan)
    try:
        _, leader = client.next_answer(set(NODES), 60)
        lan.etcd[0].send_signal(signal.SIGKILL)
        lan.etcd[0].wait(10)
        start = time.monotonic()
        answers = []
        while time.monotonic() - start < 5:
            answers.append(client.next_answer(set(NODES) | {"-"}, 5)[1])
        assert set(answers) - {"-"} == {leader}, answers
        assert answers[-5:] == [leader] * 5
        lease = leases(lan)["cilium-l2announce-apps-web"]
        assert lease["holder"] == leader and lease["valid"]
    finally:
        client.close()
