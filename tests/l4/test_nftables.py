"""The nftables data path in network namespaces made by the test (needs root, as CI has).

client namespace (10.99.1.2) --veth-- router namespace (10.99.1.1; backends on 10.99.2.11-13;
homeplane's nftables rules). Service addresses (a ClusterIP and an LB IP) exist only as DNAT rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from homeplane.l4.nftables import NftDataPlane
from homeplane.l4.tables import compile_tables
from tests.l4.test_userspace import snapshot

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None,
    reason="network namespaces and nftables need root and the nft/ip tools (CI runs as root with them installed)",
)

BACKENDS = ["10.99.2.11", "10.99.2.12", "10.99.2.13"]

SERVER = textwrap.dedent(
    """
    import socket, threading, sys
    def serve(ip):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 8080)); s.listen(512)
        while True:
            c, _ = s.accept()
            def talk(c=c):
                try:
                    while True:
                        d = c.recv(100)
                        if not d or d == b"bye":
                            break
                        c.sendall(ip.encode() + b"\\n")
                finally:
                    c.close()
            threading.Thread(target=talk, daemon=True).start()
    for ip in sys.argv[1:]:
        threading.Thread(target=serve, args=(ip,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys, json
    target, port = sys.argv[1], int(sys.argv[2])
    out = {}
    for sport in map(int, sys.argv[3:]):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(3)
        if sport:
            s.bind(("10.99.1.2", sport))
        try:
            s.connect((target, port)); s.sendall(b"who"); out[sport or len(out)] = s.recv(100).decode().strip()
            s.sendall(b"bye")
            while s.recv(100):  # the server closes first: no TIME_WAIT here, the port can be reused
                pass
        except OSError as e:
            out[sport or len(out)] = "error: " + str(e)
        s.close()
    print(json.dumps(out))
    """
)


def sh(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:6])} ... failed: {p.stderr.strip()[-2000:]}")
    return p.stdout


@pytest.fixture
def net():
    tag = uuid.uuid4().hex[:6]
    client, router = f"hpc-{tag}", f"hpr-{tag}"
    sh("ip", "netns", "add", client)
    sh("ip", "netns", "add", router)
    try:
        sh("ip", "link", "add", f"c{tag}", "type", "veth", "peer", "name", f"r{tag}")
        sh("ip", "link", "set", f"c{tag}", "netns", client)
        sh("ip", "link", "set", f"r{tag}", "netns", router)
        for ns, dev, addr in ((client, f"c{tag}", "10.99.1.2/24"), (router, f"r{tag}", "10.99.1.1/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", client, "route", "add", "default", "via", "10.99.1.1")
        for ip in BACKENDS:
            sh("ip", "-n", router, "addr", "add", f"{ip}/32", "dev", "lo")
        server = subprocess.Popen(["ip", "netns", "exec", router, sys.executable, "-c", SERVER, *BACKENDS], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield client, router
        server.kill()
        server.wait()
    finally:
        subprocess.run(["ip", "netns", "del", client])
        subprocess.run(["ip", "netns", "del", router])


def manifests(backends: list[str], affinity: str = "None", etp: str = "Cluster", nodes: dict[str, str] | None = None) -> str:
    nodes = nodes or {}
    subsets = "\n".join(
        f"  - addresses: [{{ip: {ip}{', nodeName: ' + nodes[ip] if ip in nodes else ''}}}]\n    ports: [{{name: http, port: 8080}}]"
        for ip in backends
    )
    return f"""
apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {{name: lan}}
spec: {{blocks: [{{start: 10.99.3.100, stop: 10.99.3.120}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: apps, annotations: {{lbipam.cilium.io/ips: 10.99.3.110}}}}
spec:
  type: LoadBalancer
  clusterIP: 10.43.0.50
  sessionAffinity: {affinity}
  externalTrafficPolicy: {etp}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: apps}}
subsets:
{subsets if backends else "  []"}
"""


def ask(client: str, target: str, ports: list[int]) -> dict[str, str]:
    out = sh("ip", "netns", "exec", client, sys.executable, "-c", CLIENT, target, "80", *map(str, ports))
    return json.loads(out)


def test_cluster_ip_and_lb_ip_via_maglev_maps(net) -> None:
    client, router = net
    dp = NftDataPlane(command=["ip", "netns", "exec", router, "nft"])
    snap = snapshot(manifests(BACKENDS))
    dp.apply_tables(compile_tables(snap, dp.table_size))
    ruleset = sh("ip", "netns", "exec", router, "nft", "list", "table", "ip", "homeplane")
    assert "jhash ip saddr . tcp sport mod 1021" in ruleset and "10.43.0.50" in ruleset and "10.99.3.110" in ruleset
    ports = list(range(30000, 30120))
    by_cluster_ip = ask(client, "10.43.0.50", ports)
    assert set(by_cluster_ip.values()) == set(BACKENDS)  # spread over all three
    sh("ip", "netns", "exec", router, "conntrack", "-F")
    assert ask(client, "10.43.0.50", ports) == by_cluster_ip  # the same flow hash picks the same backend
    sh("ip", "netns", "exec", router, "conntrack", "-F")
    assert ask(client, "10.99.3.110", ports) == by_cluster_ip  # the LB IP shares the Service's table

    # remove a backend: only its flows move
    gone = BACKENDS[2]
    dp.apply_tables(compile_tables(snapshot(manifests(BACKENDS[:2])), dp.table_size))
    sh("ip", "netns", "exec", router, "conntrack", "-F")
    after = ask(client, "10.43.0.50", ports)
    assert gone not in after.values()
    stayed = [p for p, b in by_cluster_ip.items() if b != gone]
    kept = sum(1 for p in stayed if after[p] == by_cluster_ip[p])
    assert kept / len(stayed) > 0.95


def test_established_flow_keeps_its_backend_and_affinity(net) -> None:
    client, router = net
    dp = NftDataPlane(command=["ip", "netns", "exec", router, "nft"])
    dp.apply_tables(compile_tables(snapshot(manifests(BACKENDS)), dp.table_size))
    script = textwrap.dedent(
        """
        import socket, sys, time
        s = socket.create_connection(("10.43.0.50", 80), timeout=5)
        s.sendall(b"who"); first = s.recv(100).decode().strip()
        print(first, flush=True)
        sys.stdin.readline()          # the test changes the rules meanwhile
        s.sendall(b"again"); print(s.recv(100).decode().strip(), flush=True)
        """
    )
    p = subprocess.Popen(["ip", "netns", "exec", client, sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = p.stdout.readline().strip()
    remaining = [b for b in BACKENDS if b != first]
    dp.apply_tables(compile_tables(snapshot(manifests(remaining)), dp.table_size))  # its backend left the table
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == first  # conntrack keeps the established flow where it was
    p.wait(5)
    # sessionAffinity: ClientIP hashes the client address only
    dp.apply_tables(compile_tables(snapshot(manifests(BACKENDS, affinity="ClientIP")), dp.table_size))
    sh("ip", "netns", "exec", router, "conntrack", "-F")
    assert len(set(ask(client, "10.43.0.50", list(range(31000, 31030))).values())) == 1


def test_a_rejected_ruleset_leaves_the_old_one(net) -> None:
    client, router = net
    dp = NftDataPlane(command=["ip", "netns", "exec", router, "nft"])
    dp.apply_tables(compile_tables(snapshot(manifests(BACKENDS)), dp.table_size))
    from homeplane.l4.nftables import NftError

    bad = NftDataPlane(command=["ip", "netns", "exec", router, "nft"], seed=-1)  # an invalid seed: nft refuses
    with pytest.raises(NftError):
        bad.apply_tables(compile_tables(snapshot(manifests(BACKENDS[:1])), dp.table_size))
    time.sleep(0.1)
    assert set(ask(client, "10.43.0.50", list(range(32000, 32060))).values()) == set(BACKENDS)


def test_no_endpoints_refuses_at_once_and_local_policy_keeps_lb_traffic_on_the_node(net) -> None:
    client, router = net
    dp = NftDataPlane(command=["ip", "netns", "exec", router, "nft"], node_name="here")
    dp.apply_tables(compile_tables(snapshot(manifests([])), dp.table_size))
    # kube-proxy's behaviour: a Service without endpoints refuses (RST), it does not hang
    for target in ("10.43.0.50", "10.99.3.110"):
        assert "refused" in ask(client, target, [0])["0"].lower()

    # externalTrafficPolicy: Local: the LB IP uses this node's endpoints only; the ClusterIP all
    nodes = {BACKENDS[0]: "here", BACKENDS[1]: "elsewhere", BACKENDS[2]: "elsewhere"}
    dp.apply_tables(compile_tables(snapshot(manifests(BACKENDS, etp="Local", nodes=nodes)), dp.table_size, node_name="here"))
    ports = list(range(32000, 32040))
    assert set(ask(client, "10.99.3.110", ports).values()) == {BACKENDS[0]}
    sh("ip", "netns", "exec", router, "conntrack", "-F")
    assert set(ask(client, "10.43.0.50", ports).values()) == set(BACKENDS)
    # no local endpoint: the LB IP drops (the balancer in front sees this node as down)
    nodes = {ip: "elsewhere" for ip in BACKENDS}
    dp.apply_tables(compile_tables(snapshot(manifests(BACKENDS, etp="Local", nodes=nodes)), dp.table_size, node_name="here"))
    sh("ip", "netns", "exec", router, "conntrack", "-F")
    assert "timed out" in ask(client, "10.99.3.110", [0])["0"]
    assert ask(client, "10.43.0.50", [0])["0"] in BACKENDS
