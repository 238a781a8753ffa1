"""The truth table through the kernel: the nine pods of x/y/z × a/b/c on addresses of their own in
a network namespace made by the test, homeplane's nftables rules there (Maglev DNAT for each
pod's Service and the policy filter chains), and every pod asking every other pod's ClusterIP
from its own address (needs root, as CI has)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

from homeplane.l4.nftables import NftDataPlane
from tests.l4.test_nftables import pytestmark, sh  # noqa: F401  (root, nft and ip, as the kernel-path tests)
from tests.l4.test_userspace import snapshot
from tests.policy.cluster import ALL, NAMESPACES, PODS, cluster_manifests
from tests.policy.test_truth_table import CASES_CNP, CASES_NP, Expect


def pod_address(pod: str) -> str:
    ns, name = pod.split("/")
    return f"10.71.{NAMESPACES.index(ns) + 1}.{PODS.index(name) + 1}"


SERVE_AND_ASK = textwrap.dedent(
    """
    import socket, sys, json, threading
    pods = json.loads(sys.argv[1])            # pod -> (its address, its Service's ClusterIP)
    def serve(pod, ip):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 80)); s.listen(64)
        while True:
            c, _ = s.accept()
            try:
                c.recv(10); c.sendall(pod.encode())
            finally:
                c.close()
    for pod, (ip, _) in pods.items():
        threading.Thread(target=serve, args=(pod, ip), daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:                    # one round per line: every pod asks every other
        out = {}
        for src, (sip, _) in pods.items():
            for dst, (_, vip) in pods.items():
                if src == dst:
                    continue
                s = socket.socket(); s.settimeout(0.4)
                try:
                    s.bind((sip, 0)); s.connect((vip, 80)); s.sendall(b"hi"); out[src + ">" + dst] = s.recv(10).decode()
                except OSError:
                    out[src + ">" + dst] = ""
                finally:
                    s.close()
        print(json.dumps(out), flush=True)
    """
)


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    ns = f"hpt-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for pod in ALL:
            sh("ip", "-n", ns, "addr", "add", f"{pod_address(pod)}/32", "dev", "lo")
        sh("ip", "-n", ns, "route", "add", "10.72.0.0/16", "dev", "lo")  # the ClusterIPs: routed, then DNATed
        pods = {pod: (pod_address(pod), pod_address(pod).replace("10.71.", "10.72.")) for pod in ALL}
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVE_AND_ASK, json.dumps(pods)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield ns, proc
        proc.kill()
        proc.wait()
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def manifests(policies: str) -> str:
    text = cluster_manifests("10.72", (80, 81), (80, 81)) + "---\n" + policies
    for pod in ALL:  # the pods' loopback addresses of the userspace tests become this namespace's
        ns_i, pod_i = pod_address(pod).split(".")[2:]
        text = text.replace(f'"127.1.{ns_i}.{pod_i}"', f'"{pod_address(pod)}"')
    return text


PICKED = [c for c in CASES_NP + CASES_CNP if c[3] == 80 and "UDP" not in c[0]][::2]


@pytest.mark.parametrize("title,policies,expect,port", PICKED, ids=[c[0] for c in PICKED])
def test_reachability_through_the_kernel(cluster, title: str, policies: str, expect: Expect, port: int) -> None:  # type: ignore[no-untyped-def]
    ns, proc = cluster
    dp = NftDataPlane(command=["ip", "netns", "exec", ns, "nft"])
    dp.apply_snapshot(snapshot(manifests(policies)))
    sh("ip", "netns", "exec", ns, "conntrack", "-F")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    got = json.loads(proc.stdout.readline())
    wrong = []
    for src in ALL:
        for dst in ALL:
            if src != dst:
                want = dst if expect(src, dst) else ""
                if got[f"{src}>{dst}"] != want:
                    wrong.append(f"{src} -> {dst}: got {got[f'{src}>{dst}']!r}, want {want!r}")
    assert not wrong, "\n".join(wrong)
