"""ClusterIP allocation and LB IPAM (Cilium semantics)."""

from __future__ import annotations

from homeplane.api.models.base import LabelSelector
from homeplane.ipam.clusterip import ServiceRequest, allocate_cluster_ips
from homeplane.ipam.lbipam import PoolInput, ServiceInput, allocate


def test_cluster_ips_fixed_conflicts_and_stability() -> None:
    reqs = [
        ServiceRequest(("kube-system", "kube-dns"), "10.43.0.10"),
        ServiceRequest(("apps", "web"), None),
        ServiceRequest(("zz", "dup"), "10.43.0.10"),  # sorts after kube-system: loses the address
        ServiceRequest(("apps", "headless"), "None"),
        ServiceRequest(("apps", "outside"), "192.168.1.1"),
    ]
    a = allocate_cluster_ips(reqs)
    assert a.addresses[("kube-system", "kube-dns")] == "10.43.0.10"
    assert "already the address of Service kube-system/kube-dns" in a.problems[("zz", "dup")]
    assert "outside the service CIDR" in a.problems[("apps", "outside")]
    assert ("apps", "headless") not in a.addresses
    web = a.addresses[("apps", "web")]
    assert web.startswith("10.43.") and web not in ("10.43.0.0", "10.43.0.1", "10.43.255.255")
    # order does not matter; previous allocations are kept even if the hash would say otherwise
    assert allocate_cluster_ips(list(reversed(reqs))).addresses == a.addresses
    kept = allocate_cluster_ips(reqs, previous={("apps", "web"): "10.43.7.7"})
    assert kept.addresses[("apps", "web")] == "10.43.7.7"


def svc(ns: str, name: str, ips: str | None = None, ports=((80, "TCP"),), **kw) -> ServiceInput:
    ann = kw.pop("annotations", {})
    if ips:
        ann["lbipam.cilium.io/ips"] = ips
    return ServiceInput((ns, name), kw.pop("labels", {}), ann, list(ports), **kw)


def test_pools_requests_and_first_last() -> None:
    pools = [PoolInput("lan", [{"cidr": "192.0.2.0/30"}], allow_first_last=False)]
    res = allocate(pools, [svc("a", "one"), svc("a", "two"), svc("a", "three")])
    got = {k[1]: r.addresses for k, r in res.services.items()}
    # /30 without first/last: only .1 and .2 are usable
    assert got["one"] == ["192.0.2.1"] and got["three"] == ["192.0.2.2"] and got["two"] == []
    r = res.services[("a", "two")]
    assert (r.satisfied, r.reason) == (False, "out_of_ips")
    assert (res.pools["lan"].total, res.pools["lan"].used, res.pools["lan"].available) == (2, 2, 0)


def test_requested_ips_and_already_allocated() -> None:
    pools = [PoolInput("p", [{"start": "10.1.6.30", "stop": "10.1.6.199"}])]
    res = allocate(pools, [svc("a", "x", "10.1.6.50"), svc("b", "y", "10.1.6.50"), svc("c", "z", "10.9.9.9")])
    assert res.services[("a", "x")].addresses == ["10.1.6.50"]
    assert res.services[("b", "y")].reason == "already_allocated"
    assert res.services[("c", "z")].reason == "no_pool"


def test_sharing_key_and_cross_namespace() -> None:
    pools = [PoolInput("p", [{"cidr": "10.0.0.0/29"}])]
    share = {"lbipam.cilium.io/sharing-key": "dns"}
    res = allocate(
        pools,
        [
            svc("a", "dns-tcp", "10.0.0.5", ports=[(53, "TCP")], annotations=dict(share)),
            svc("a", "dns-udp", "10.0.0.5", ports=[(53, "UDP")], annotations=dict(share)),
            svc("b", "other-ns", "10.0.0.5", ports=[(853, "TCP")], annotations=dict(share)),
            svc("a", "z-clash", "10.0.0.5", ports=[(53, "TCP")], annotations=dict(share)),
        ],
    )
    assert res.services[("a", "dns-tcp")].addresses == ["10.0.0.5"]
    assert res.services[("a", "dns-udp")].addresses == ["10.0.0.5"]  # same key, ports do not clash
    assert res.services[("b", "other-ns")].reason == "already_allocated"  # no sharing-cross-namespace
    assert res.services[("a", "z-clash")].reason == "already_allocated"  # 53/TCP twice
    cross = {"lbipam.cilium.io/sharing-key": "dns", "lbipam.cilium.io/sharing-cross-namespace": "*"}
    res2 = allocate(
        pools,
        [svc("a", "t", "10.0.0.5", ports=[(53, "TCP")], annotations=dict(cross)), svc("b", "u", "10.0.0.5", ports=[(53, "UDP")], annotations=dict(cross))],
    )
    assert res2.services[("b", "u")].addresses == ["10.0.0.5"]


def test_selectors_pseudo_labels_disabled_conflicts_and_classes() -> None:
    pools = [
        PoolInput("media", [{"cidr": "10.0.1.0/24"}], selector=LabelSelector(matchLabels={"io.kubernetes.service.namespace": "media"})),
        PoolInput(
            "general",
            [{"cidr": "10.0.2.0/24"}],
            selector=LabelSelector(matchExpressions=[{"key": "io.kubernetes.service.namespace", "operator": "NotIn", "values": ["media"]}]),
        ),
        PoolInput("overlap", [{"cidr": "10.0.2.128/25"}]),
        PoolInput("off", [{"cidr": "10.0.3.0/24"}], selector=LabelSelector(matchLabels={"pool": "off"}), disabled=True),
    ]
    res = allocate(
        pools,
        [
            svc("media", "plex"),
            svc("apps", "web"),
            svc("apps", "wants-off", labels={"pool": "off"}),
            svc("apps", "other-class", lb_class="metallb"),
        ],
    )
    assert res.services[("media", "plex")].addresses == ["10.0.1.0"]  # allowFirstLastIPs defaults to Yes
    # services are satisfied in name order: wants-off, then web; the disabled pool gives nothing new
    assert res.services[("apps", "wants-off")].addresses == ["10.0.2.0"]
    assert res.services[("apps", "web")].addresses == ["10.0.2.1"]
    assert res.pools["overlap"].conflict == "general"
    assert ("apps", "other-class") not in res.services


def test_previous_allocations_survive_reordering() -> None:
    pools = [PoolInput("p", [{"cidr": "10.0.0.0/28"}])]
    first = allocate(pools, [svc("a", "b"), svc("a", "c")])
    prev = {k: r.addresses for k, r in first.services.items()}
    # a new service sorting before both must not move them
    second = allocate(pools, [svc("a", "a"), svc("a", "b"), svc("a", "c")], previous=prev)
    assert second.services[("a", "b")].addresses == prev[("a", "b")]
    assert second.services[("a", "c")].addresses == prev[("a", "c")]
    assert second.services[("a", "a")].addresses and second.services[("a", "a")].addresses[0] not in sum(prev.values(), [])


def test_dual_stack() -> None:
    pools = [PoolInput("p", [{"cidr": "10.0.0.0/29"}, {"cidr": "2001:db8::/125"}])]
    res = allocate(pools, [svc("a", "ds", ip_family_policy="RequireDualStack"), svc("a", "v6", ip_families=["IPv6"])])
    assert res.services[("a", "ds")].addresses == ["10.0.0.0", "2001:db8::"]
    assert res.services[("a", "v6")].addresses == ["2001:db8::1"]


def test_service_status_carries_the_condition_under_both_cilium_names() -> None:
    from homeplane.pipeline import allocate_lb_ips
    from homeplane.translate import TranslateOptions, translate
    from tests.conftest import load

    loaded = load(
        """
apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata: {name: lan}
spec: {blocks: [{cidr: 192.0.2.0/30}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {type: LoadBalancer, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: pinned, namespace: apps, annotations: {lbipam.cilium.io/ips: 198.51.100.1}}
spec: {type: LoadBalancer, ports: [{port: 80}]}
"""
    )
    tr = translate(loaded.objects, TranslateOptions(lb=allocate_lb_ips(loaded.objects, None)))
    web = tr.status[("", "Service", "apps", "web")]
    assert web["loadBalancer"]["ingress"][0]["ip"].startswith("192.0.2.")
    conds = {c["type"]: (c["status"], c["reason"]) for c in web["conditions"]}
    assert conds == {"cilium.io/IPAMRequestSatisfied": ("True", "satisfied"), "io.cilium/lb-ipam-request-satisfied": ("True", "satisfied")}
    pinned = {c["type"]: c["status"] for c in tr.status[("", "Service", "apps", "pinned")]["conditions"]}
    assert set(pinned.values()) == {"False"} and len(pinned) == 2  # no pool has 198.51.100.1


def test_new_services_that_sort_first_never_take_an_existing_address() -> None:
    # a tiny CIDR makes hash collisions certain: the existing Service must keep its address
    # however many new ones arrive with names that sort before it (they are placed after it)
    cidr = "10.9.0.0/28"
    first = allocate_cluster_ips([ServiceRequest(("apps", "zz-existing"))], cidr)
    kept = first.addresses[("apps", "zz-existing")]
    newcomers = [ServiceRequest(("apps", f"a{i:02d}")) for i in range(12)]
    again = allocate_cluster_ips(newcomers + [ServiceRequest(("apps", "zz-existing"))], cidr, first.addresses)
    assert again.addresses[("apps", "zz-existing")] == kept
    assert len(set(again.addresses.values())) == len(again.addresses)
    # a fixed request for an address a Service already has is refused, not moved
    taken = allocate_cluster_ips([ServiceRequest(("apps", "b"), kept), ServiceRequest(("apps", "zz-existing"))], cidr, first.addresses)
    assert taken.addresses[("apps", "zz-existing")] == kept and "already the address" in taken.problems[("apps", "b")]
