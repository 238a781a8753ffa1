"""Network policy in the kernel: the nftables path's filter chains, in network namespaces made by the
test (needs root, as CI has). Clients on 10.99.1.2-4 (10.99.1.4 is a pod: a Service's endpoint),
the router namespace holding the Service's pods 10.99.2.11-13 and homeplane's rules."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from homeplane.l4.nftables import NftDataPlane
from homeplane.l4.tables import compile_tables
from homeplane.policy.enforce import kernel_filters
from tests.l4.test_nftables import BACKENDS, pytestmark, sh  # noqa: F401  (root and nft, as the kernel-path tests)
from tests.l4.test_userspace import snapshot

CLIENTS = ["10.99.1.2", "10.99.1.3", "10.99.1.4"]

ASK = textwrap.dedent(
    """
    import socket, sys, json
    target, port = sys.argv[1], int(sys.argv[2])
    out = {}
    for src in sys.argv[3:]:
        s = socket.socket(); s.settimeout(1.5)
        s.bind((src, 0))
        try:
            s.connect((target, port)); s.sendall(b"who"); out[src] = s.recv(100).decode().strip()
            s.sendall(b"bye")
        except OSError as e:
            out[src] = "refused" if isinstance(e, (TimeoutError, socket.timeout)) else "error: " + str(e)
        s.close()
    print(json.dumps(out))
    """
)

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  clusterIP: 10.43.0.50
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: apps}
subsets:
  - addresses: [{ip: 10.99.2.11}, {ip: 10.99.2.12}, {ip: 10.99.2.13}]
    ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: client, namespace: apps}
spec:
  clusterIP: 10.43.0.51
  selector: {app: client}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: client, namespace: apps}
subsets:
  - addresses: [{ip: 10.99.1.4}]
    ports: [{name: http, port: 80}]
"""

CNP = """
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: apps}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDR: [10.99.1.3/32]
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""

NP = """
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: apps}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 10.99.1.0/24, except: [10.99.1.3/32]}}]}]
"""


def ask(client: str, target: str, port: int) -> dict[str, str]:
    return json.loads(sh("ip", "netns", "exec", client, sys.executable, "-c", ASK, target, str(port), *CLIENTS))


def apply(dp: NftDataPlane, text: str) -> None:
    snap = snapshot(text)
    tables = compile_tables(snap, dp.table_size)
    dp.apply_tables(tables, kernel_filters(snap.network_policy, snap, tables))


@pytest.mark.parametrize("policy,allowed", [(CNP, {"10.99.1.3", "10.99.1.4"}), (NP, {"10.99.1.2"}), ("", set(CLIENTS))],
                         ids=["cnp-cidr-and-pod", "np-ipblock-except", "no-policy"])
def test_kernel_filters_follow_the_policy(net, policy: str, allowed: set[str]) -> None:  # type: ignore[no-untyped-def]
    client, router = net
    for ip in CLIENTS[1:]:
        sh("ip", "-n", client, "addr", "add", f"{ip}/32", "dev", "lo")
    dp = NftDataPlane(command=["ip", "netns", "exec", router, "nft"])
    apply(dp, SERVICES + policy)
    for target, port in (("10.43.0.50", 80), ("10.99.2.12", 8080)):  # through the Service, and straight to a pod
        got = ask(client, target, port)
        reached = {src for src, answer in got.items() if answer in BACKENDS}
        assert reached == allowed, (target, got)
        assert all(got[src] == "refused" for src in set(CLIENTS) - allowed), got
    ruleset = sh("ip", "netns", "exec", router, "nft", "list", "table", "ip", "homeplane")
    assert ("policy_forward" in ruleset) is bool(policy)
    if policy:
        # the refused connections were counted by the drop rules
        assert any("counter packets" in line and "packets 0 " not in line for line in ruleset.splitlines() if "drop" in line)
