"""L2 announcements without a network: the ARP wire format, which Services a node may announce
under CiliumL2AnnouncementPolicies, and the per-Service lease on both stores (a real etcd too),
with Kubernetes Lease semantics on a clock the test moves."""

from __future__ import annotations

import threading
from pathlib import Path


from homeplane.l2 import arp
from homeplane.l2.lease import ServiceLease, Timing, lease_key
from homeplane.l2.policy import announcements
from homeplane.store.etcd import EtcdOptions, EtcdStore
from tests.test_store_etcd import Etcd

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def test_arp_reply_and_gratuitous_frames_round_trip() -> None:
    req = arp.gratuitous("10.0.0.9", MAC_B).replace(b"\xff" * 6, MAC_A, 1)  # any request-shaped frame
    asked = arp.Arp(arp.REQUEST, MAC_B, "10.0.0.2", b"\0" * 6, "10.0.0.50")
    frame = arp.reply(asked, MAC_A)
    got = arp.parse(frame)
    assert got == arp.Arp(arp.REPLY, MAC_A, "10.0.0.50", MAC_B, "10.0.0.2") and frame[:6] == MAC_B and len(frame) == 60
    g = arp.parse(arp.gratuitous("10.0.0.50", MAC_A))
    assert g is not None and g.gratuitous and g.oper == arp.REQUEST and g.sender_mac == MAC_A
    assert arp.parse(req[:20]) is None  # short
    assert arp.parse(req[:12] + b"\x08\x00" + req[14:]) is None  # IPv4, not ARP
    assert arp.mac_text(MAC_A) == "02:00:00:00:00:01"


MANIFESTS = """
apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata: {name: a-lan}
spec:
  serviceSelector: {matchLabels: {announce: lan}}
  nodeSelector: {matchExpressions: [{key: node-role, operator: NotIn, values: [storage]}]}
  interfaces: ["^eth[0-9]+", "^br-lan$"]
  loadBalancerIPs: true
---
apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata: {name: b-external}
spec:
  serviceSelector: {matchLabels: {io.kubernetes.service.namespace: edge}}
  externalIPs: true
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps, labels: {announce: lan}, annotations: {lbipam.cilium.io/ips: "192.168.9.10,fd00::10"}}
spec: {type: LoadBalancer, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: apps, labels: {announce: lan}, annotations: {lbipam.cilium.io/ips: 192.168.9.11}}
spec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: local, namespace: apps}
subsets: [{addresses: [{ip: 10.0.0.5, nodeName: node-b}], ports: [{port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: edge}
spec: {type: ClusterIP, externalIPs: [192.168.9.20], ports: [{port: 80}]}
---
apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {name: lan}
spec: {blocks: [{cidr: 192.168.9.0/24}, {cidr: "fd00::/64"}]}
"""


def test_which_services_a_node_may_announce() -> None:
    from homeplane.pipeline import allocate_lb_ips
    from homeplane.translate import TranslateOptions, translate
    from tests.conftest import load

    loaded = load(MANIFESTS)
    assert not loaded.diagnostics.errors, [str(d) for d in loaded.diagnostics.errors]
    snap = translate(loaded.objects, TranslateOptions(lb=allocate_lb_ips(loaded.objects, None))).snapshot
    pols = snap.extras["l2policies"]

    def got(node: str, labels: dict[str, str], ifaces: list[str]) -> dict[str, tuple]:
        return {a.service.name: (a.ips, a.interfaces, a.policies) for a in announcements(snap, pols, node, labels, ifaces)}

    a = got("node-a", {}, ["eth0", "eth1", "wlan0", "br-lan", "br-lan2"])
    assert a["web"] == (("192.168.9.10",), ("eth0", "eth1", "br-lan"), ("a-lan",))  # IPv4 only; anchored patterns
    assert "local" not in a  # externalTrafficPolicy: Local without an endpoint on node-a
    assert a["ext"] == (("192.168.9.20",), ("eth0", "eth1", "wlan0", "br-lan", "br-lan2"), ("b-external",))
    b = got("node-b", {}, ["eth0"])
    assert b["local"][0] == ("192.168.9.11",)
    assert set(got("node-c", {"node-role": "storage"}, ["eth0"])) == {"ext"}  # the nodeSelector leaves it out
    assert set(got("node-a", {}, ["wlan0"])) == {"ext"}  # no interface of the first policy here


def test_every_policy_that_selects_a_service_adds_its_pairs() -> None:
    from homeplane.pipeline import allocate_lb_ips
    from homeplane.translate import TranslateOptions, translate
    from tests.conftest import load

    loaded = load(MANIFESTS + "\n---\napiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata: {name: c-all}\n"
                  "spec: {interfaces: [wlan], loadBalancerIPs: true}\n")
    snap = translate(loaded.objects, TranslateOptions(lb=allocate_lb_ips(loaded.objects, None))).snapshot
    got = {a.service.name: a for a in announcements(snap, snap.extras["l2policies"], "node-a", {}, ["eth0", "wlan0"])}
    assert set(got["web"].pairs) == {("eth0", "192.168.9.10"), ("wlan0", "192.168.9.10")}
    assert got["web"].policies == ("a-lan", "c-all")
    # endpoints that name no node count as local to every node, as for the L4 data paths
    assert "local" not in got
    snap2 = translate(load(MANIFESTS.replace(", nodeName: node-b", "")).objects,
                      TranslateOptions(lb=allocate_lb_ips(load(MANIFESTS).objects, None))).snapshot
    assert "local" in {a.service.name for a in announcements(snap2, snap2.extras["l2policies"], "node-a", {}, ["eth0"])}


def test_a_bad_interface_pattern_is_a_load_error() -> None:
    from tests.conftest import load

    r = load("apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata: {name: x}\nspec: {interfaces: ['eth(']}\n")
    assert r.diagnostics.errors and "interface pattern" in r.diagnostics.errors[0].message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lease_semantics(store) -> None:
    clock = Clock()
    t = Timing(0.8, 0.5, 0.1)
    key = lease_key("apps", "web")
    a, b = ServiceLease(store, key, "node-a", t, clock), ServiceLease(store, key, "node-b", t, clock)
    assert a.tick() and a.held and not b.tick() and b.holder.node == "node-a"
    clock.now += 0.3
    assert a.tick() and not b.tick()  # renewed: still a's
    clock.now += 0.6  # a's last renewal was 0.6 s ago: a must stop announcing (renewDeadline) ...
    assert not a.held
    assert not b.tick()  # ... but b waits for leaseDuration
    clock.now += 0.3
    assert b.tick() and b.held  # 0.9 s: b takes it over
    assert not a.tick() and not a.held and a.holder.node == "node-b"
    b.release()
    assert a.tick()  # released: a takes it at once


def test_lease_ignores_clock_skew(store) -> None:
    """Each node times the lease on its own clock from when it saw the record change: a node whose
    clock runs far ahead does not take the lease from a healthy holder."""
    ca, cb = Clock(), Clock()
    cb.now += 3600.0
    t = Timing(0.8, 0.5, 0.1)
    key = lease_key("apps", "skew")
    a, b = ServiceLease(store, key, "node-a", t, ca), ServiceLease(store, key, "node-b", t, cb)
    assert a.tick() and not b.tick()
    for _ in range(5):
        ca.now += 0.3
        cb.now += 0.3
        assert a.tick() and not b.tick()
    cb.now += 0.9  # a stopped renewing: b takes over after leaseDuration on its own clock
    assert b.tick()


def test_lease_is_held_by_one_node_at_a_time_under_races(etcd: Etcd, tmp_path: Path) -> None:
    """Three nodes ticking as fast as they can against a real etcd: at no moment do two of them
    hold the lease, and it moves when its holder stops."""
    t = Timing(0.4, 0.25, 0.05)
    key = lease_key("apps", "race")
    stores = [EtcdStore(EtcdOptions.parse(f"etcd://{etcd.url}/race-{tmp_path.name}")) for _ in range(3)]
    leases = [ServiceLease(s, key, f"node-{i}", t) for i, s in enumerate(stores)]
    stop = [threading.Event() for _ in leases]
    holding: list[set[int]] = [set() for _ in range(1)]
    overlaps: list[tuple[int, ...]] = []
    holders: list[int] = []
    lock = threading.Lock()

    def node(i: int) -> None:
        while not stop[i].is_set():
            won = leases[i].tick()
            with lock:
                if won:
                    holding[0].add(i)
                    holders.append(i)
                    if len(holding[0]) > 1:
                        overlaps.append(tuple(sorted(holding[0])))
                else:
                    holding[0].discard(i)
            stop[i].wait(0.01)
        with lock:
            holding[0].discard(i)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    import time

    time.sleep(1.0)
    first = holders[0]
    stop[first].set()  # the holder dies (no release)
    threads[first].join()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not holders or holders[-1] == first):
        time.sleep(0.02)
    for i in range(3):
        stop[i].set()
    for th in threads:
        th.join()
    for s in stores:
        s.close()
    assert not overlaps, overlaps[:5]
    assert holders[-1] != first  # another node took over
    assert len(set(holders[: holders.index(next(h for h in holders if h != first))])) == 1
