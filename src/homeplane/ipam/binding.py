"""Where each Gateway listens on this machine (pure; facts about the machine are inputs).

Decided before translation, so the Snapshot carries it (``ir.Gateway.bind_address``) and every
data plane - the gateway, its worker processes, DNS for a Gateway without an address of its own -
reads the same answer from there. In order:

1. ``--gateway-address NS/NAME=IP``;
2. the Gateway's own address (``spec.addresses``, ``lbipam.cilium.io/ips``, what LB IPAM gave
   its Service) when this machine has it;
3. ``--bind-address``;
4. a loopback address of its own, 127.0.1.x: any 127/8 address can be bound on Linux, so
   ``envoy-external`` and ``envoy-internal`` can both listen on 443. Loopback addresses handed
   out before are kept first (the runtime keeps them in the state store), so a restart or a new
   Gateway sorted in front never moves one.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

LOOPBACK_BASE = "127.0.1."


@dataclass(frozen=True)
class BindingOptions:
    explicit: Mapping[str, str] = field(default_factory=dict)  # "ns/name" -> address (--gateway-address)
    default_address: str | None = None  # --bind-address
    previous: Mapping[str, str] = field(default_factory=dict)  # loopback addresses handed out before


@dataclass
class Bindings:
    addresses: dict[str, str] = field(default_factory=dict)  # "ns/name" -> where it listens
    loopback: dict[str, str] = field(default_factory=dict)  # the loopback ones, to keep


def is_local(addr: str) -> bool:
    """Can this machine bind the address?"""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, 0))
            return True
        except OSError:
            return False


def plan(gateways: Iterable[tuple[str, list[str]]], options: BindingOptions, local: Callable[[str], bool] = is_local) -> Bindings:
    """``gateways``: ("ns/name", its addresses) for every served Gateway."""
    out = Bindings()
    need_loopback: list[str] = []
    for key, addresses in sorted(gateways):
        if key in options.explicit:
            out.addresses[key] = options.explicit[key]
        elif (own := next((a for a in addresses if local(a)), None)) is not None:
            out.addresses[key] = own
        elif options.default_address:
            out.addresses[key] = options.default_address
        else:
            need_loopback.append(key)
    used = set()
    for key in need_loopback:  # previous loopback addresses first
        prev = options.previous.get(key)
        if prev is not None and prev.startswith(LOOPBACK_BASE) and prev not in used:
            out.addresses[key] = out.loopback[key] = prev
            used.add(prev)
    free = (f"{LOOPBACK_BASE}{i}" for i in range(1, 255) if f"{LOOPBACK_BASE}{i}" not in used)
    for key in need_loopback:
        if key in out.addresses:
            continue
        ip = next(free, None)
        if ip is None:
            out.addresses[key] = "127.0.0.1"  # 254 Gateways on one machine: share the usual address
            continue
        out.addresses[key] = out.loopback[key] = ip
    return out
