"""The kernel L4 data path: nftables DNAT with each Service's Maglev table as a map.

As Cilium keeps its Maglev table in a BPF map, homeplane installs one nftables
map per Service port, keyed by the table slot (``typeof numgen inc mod M``,
the form nft 1.0 accepts for a hash-keyed map) with ``address . port`` values;
the rule hashes the flow (``jhash ip saddr . tcp sport``, or ``ip saddr`` alone
for ``sessionAffinity: ClientIP``) into a slot and DNATs there. The whole table
is replaced in one nft transaction, so a change is atomic; flows already
established keep their backend through conntrack. Only ready endpoints are in
the maps. A Service port without endpoints is refused (TCP reset / ICMP port
unreachable) by a filter chain after DNAT, as kube-proxy does; the LB IPs of an
``externalTrafficPolicy: Local`` Service map to this node's endpoints only and
drop when it has none. Network policy adds filter chains: an endpoint policy closes to
someone accepts new connections only from an interval set of allowed sources. IPv4 only for now.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import subprocess
from dataclasses import dataclass, field

from homeplane.l4.tables import ServiceTable, compile_tables
from homeplane.policy.enforce import KernelFilter, kernel_filters
from homeplane.translate.snapshot import Snapshot

log = logging.getLogger("homeplane.l4.nft")
TABLE = "homeplane"


class NftError(RuntimeError):
    pass


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def _policy_chains(filters: list[KernelFilter]) -> tuple[list[str], str]:
    """Network policy in the kernel: for each endpoint policy closes to someone, an interval set
    of the sources that may open connections, checked after DNAT (so on the endpoint's address)
    on the input, forward and output hooks; established flows pass."""
    sets, rules = [], []
    named: dict[tuple[tuple[int, int], ...], str] = {}  # endpoints with the same sources share a set
    for f in filters:
        name = named.get(f.allowed)
        if name is None:
            name = named[f.allowed] = f"policy{len(named)}"
            elems = ", ".join(_ip(lo) if lo == hi else f"{_ip(lo)}-{_ip(hi)}" for lo, hi in f.allowed)
            sets.append(f"  set {name} {{\n    type ipv4_addr\n    flags interval\n" + (f"    elements = {{ {elems} }}\n" if elems else "") + "  }")
        comment = f.comment.replace('"', "'")[:120]
        rules.append(f"    ip daddr {f.address} meta l4proto {f.protocol.lower()} th dport {f.port} ip saddr != @{name} "
                     f'counter drop comment "{comment}"')
    if not rules:
        return [], ""
    body = "    ct state established,related accept\n" + "\n".join(rules)
    chains = "".join(
        f"  chain policy_{hook} {{\n    type filter hook {hook} priority filter; policy accept;\n{body}\n  }}\n"
        for hook in ("input", "forward", "output")
    )
    return sets, chains


def render(tables: list[ServiceTable], seed: int = 0, table: str = TABLE, filters: list[KernelFilter] | None = None) -> str:
    maps: list[str] = []
    rules: list[str] = []
    no_endpoints: dict[str, list[str]] = {"reject": [], "drop": []}
    for i, t in enumerate(tables):
        vips = [v for v in t.vips if ipaddress.ip_address(v).version == 4]
        backends = [b for b in t.backends if ipaddress.ip_address(b.address).version == 4]
        if not vips:
            continue
        proto = t.protocol.lower()
        if not backends:
            # no ready endpoint: refuse at once, as kube-proxy does, instead of letting clients
            # time out; an externalTrafficPolicy: Local LB IP without local endpoints drops, so
            # the balancer in front sees the node as down
            verdict = "drop" if t.local_only else "reject"
            no_endpoints[verdict] += [f"{vip} . {proto} . {t.port}" for vip in vips]
            continue
        m = len(t.table)
        name = f"svc{i}"
        elements = ", ".join(f"{slot} : {t.backends[b].address} . {t.backends[b].port}" for slot, b in enumerate(t.table))
        maps.append(
            f"  map {name} {{\n    typeof numgen inc mod {m} : ip daddr . {proto} dport\n    elements = {{ {elements} }}\n  }}"
        )
        key = "ip saddr" if t.session_affinity else f"ip saddr . {proto} sport"
        comment = f'comment "{t.service.namespace}/{t.service.name}:{t.port}/{t.protocol}"'
        for vip in vips:
            rules.append(f"    ip daddr {vip} {proto} dport {t.port} dnat ip to jhash {key} mod {m} seed {seed:#x} map @{name} {comment}")
    body = "\n".join(maps)
    chain_rules = "\n".join(rules)
    # after DNAT (priority dstnat + 10) a packet still addressed to a service is one without endpoints
    sets, filter_rules = [], []
    for verdict, elems in no_endpoints.items():
        if elems:
            sets.append(f"  set no_endpoints_{verdict} {{\n    type ipv4_addr . inet_proto . inet_service\n    elements = {{ {', '.join(elems)} }}\n  }}")
            match = f"ip daddr . meta l4proto . th dport @no_endpoints_{verdict}"
            if verdict == "reject":
                filter_rules += [f"    {match} meta l4proto tcp reject with tcp reset", f"    {match} reject"]
            else:
                filter_rules.append(f"    {match} drop")
    policy_sets, policy_chains = _policy_chains(filters or [])
    sets += policy_sets
    filters_text = ""
    if filter_rules:
        fr = "\n".join(filter_rules)
        filters_text = (
            f"  chain no_endpoints_pre {{\n    type filter hook prerouting priority dstnat + 10; policy accept;\n{fr}\n  }}\n"
            f"  chain no_endpoints_out {{\n    type filter hook output priority -90; policy accept;\n{fr}\n  }}\n"
        )
    return (
        f"add table ip {table}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n{body}\n" + "".join(x + "\n" for x in sets) +
        f"  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{chain_rules}\n  }}\n"
        f"  chain output {{\n    type nat hook output priority -100; policy accept;\n{chain_rules}\n  }}\n"
        f"{filters_text}{policy_chains}"
        f"}}\n"
    )


@dataclass
class NftDataPlane:
    """Applies Snapshots to the kernel; ``command`` may carry a prefix such as ``ip netns exec NS``."""

    command: list[str] = field(default_factory=lambda: ["nft"])
    table_size: int = 1021  # a prime Cilium accepts; keeps the maps small for a home cluster
    seed: int = 0
    node_name: str | None = None  # this machine's node, for externalTrafficPolicy: Local
    last: str = ""

    def apply_tables(self, tables: list[ServiceTable], filters: list[KernelFilter] | None = None) -> None:
        text = render(tables, self.seed, filters=filters)
        if text == self.last:
            return
        proc = subprocess.run([*self.command, "-f", "-"], input=text, capture_output=True, text=True)
        if proc.returncode != 0:
            # nft applies a file as one transaction: on error nothing changed, the old rules stay
            raise NftError(f"nft rejected the ruleset: {proc.stderr.strip()}")
        self.last = text

    def apply_snapshot(self, snap: Snapshot) -> None:
        tables = compile_tables(snap, self.table_size, node_name=self.node_name)
        self.apply_tables(tables, kernel_filters(snap.network_policy, snap, tables))

    async def apply(self, snap: Snapshot) -> None:
        try:
            # off the event loop: compiling the tables and filters and running nft take their time
            await asyncio.to_thread(self.apply_snapshot, snap)
        except NftError as e:
            log.error("%s; the previous rules stay in place", e)

    def clear(self) -> None:
        subprocess.run([*self.command, "-f", "-"], input=f"add table ip {TABLE}\ndelete table ip {TABLE}\n", text=True, capture_output=True)

    async def close(self) -> None:
        self.clear()

