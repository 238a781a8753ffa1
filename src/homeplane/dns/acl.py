"""Who may ask what (pure; no I/O): CoreDNS's ``acl`` plugin, and who may have names forwarded.

``acl [ZONES...] { ACTION [type QTYPE...] [net SOURCE...] }``, ACTION ``allow``, ``block``
(REFUSED with extended error 15, Blocked), ``filter`` (an empty NOERROR with extended error 17,
Filtered) or ``drop`` (no answer). Rules are tried in order, a rule only for names in its
zones; inside a rule the first line whose types and nets both match decides; ``allow`` ends
the search; no match anywhere allows. Omitted ``type`` means every type, omitted ``net`` every
address (``*`` means the same).

Forwarding is separate: a name homeplane is not authoritative for is forwarded only for the
clients in ``recursion`` - by default loopback and private ranges, as BIND's default
``allow-recursion { localhost; localnets; }`` - others get REFUSED (extended error 18,
Prohibited), so a server reachable from outside is not an open resolver. An ``acl`` line that
allows a client by its ``net`` lets it forward too.

What a client may do is worked out once per address (:meth:`Acl.client`): the query path
asks a :class:`Client` which verdict a name and type get.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Union

from homeplane.dns import wire

ALLOW, BLOCK, FILTER, DROP = 0, 1, 2, 3
ACTIONS = {"allow": ALLOW, "block": BLOCK, "filter": FILTER, "drop": DROP}

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# loopback, RFC 1918, CGNAT (RFC 6598), link-local, IPv6 ULA and link-local
PRIVATE_NETS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
              "::1/128", "fc00::/7", "fe80::/10")
)


class AclError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Policy:
    action: int
    qtypes: frozenset[int] | None  # None: every type
    nets: tuple[Network, ...] | None  # None: every address


@dataclass(frozen=True, slots=True)
class Rule:
    zones: tuple[bytes, ...]  # lower-case apexes without the final dot; b"" is the root
    policies: tuple[Policy, ...]


def _in_zone(key: bytes, zone: bytes) -> bool:
    return not zone or key == zone or key.endswith(b"." + zone)


def parse_rule(zones: Iterable[str], block: Iterable[list[str]]) -> Rule:
    """One ``acl`` block, already split into lines of words. Raises AclError."""
    policies = []
    for words in block:
        if not words:
            continue
        action = ACTIONS.get(words[0].lower())
        if action is None:
            raise AclError(f"acl: unknown action {words[0]!r} (allow, block, filter or drop)")
        qtypes: set[int] | None = None
        nets: list[Network] | None = None
        section = None
        for w in words[1:]:
            if w in ("type", "net"):
                section = w
                if w == "type" and qtypes is None:
                    qtypes = set()
                if w == "net" and nets is None:
                    nets = []
                continue
            if section == "type":
                assert qtypes is not None
                if w == "*":
                    qtypes = None
                    section = "skip"
                    continue
                code = wire.QTYPE.get(w.upper())
                if code is None:
                    try:
                        import dns.rdatatype

                        code = int(dns.rdatatype.from_text(w.upper()))
                    except Exception:
                        raise AclError(f"acl: unknown query type {w!r}") from None
                qtypes.add(code)
            elif section == "net":
                assert nets is not None
                if w == "*":
                    nets = None
                    section = "skip"
                    continue
                try:
                    nets.append(ipaddress.ip_network(w, strict=False))
                except ValueError:
                    raise AclError(f"acl: {w!r} is not an address or a CIDR") from None
            elif section == "skip":
                continue
            else:
                raise AclError(f"acl: expected 'type' or 'net' before {w!r}")
        if qtypes is not None and not qtypes or nets is not None and not nets:
            raise AclError(f"acl: {' '.join(words)}: 'type' and 'net' need at least one value")
        policies.append(Policy(action, frozenset(qtypes) if qtypes is not None else None, tuple(nets) if nets is not None else None))
    z = tuple(x.rstrip(".").lower().encode() for x in zones) or (b"",)
    return Rule(z, tuple(policies))


@dataclass(frozen=True, slots=True)
class Client:
    """What one client address may do: the acl lines that apply to it (nets already matched)
    and whether names are forwarded for it."""

    rules: tuple[tuple[tuple[bytes, ...], tuple[tuple[int, frozenset[int] | None], ...]], ...]
    recursion: bool
    private: bool  # loopback or a private range (exempt from response rate limiting by default)
    # network policy (homeplane.policy.enforce.DNSPolicy): None, "drop", or a Decision whose DNS
    # rules say which names the client may ask
    netpol: object = None

    def verdict(self, key: bytes, qtype: int) -> int:
        for zones, lines in self.rules:
            if not any(_in_zone(key, z) for z in zones):
                continue
            for action, qtypes in lines:
                if qtypes is None or qtype in qtypes:
                    return action  # allow ends the search as much as the others
        return ALLOW


@dataclass
class Acl:
    rules: list[Rule] = field(default_factory=list)
    recursion: tuple[Network, ...] = PRIVATE_NETS
    _clients: dict[str, Client] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def client(self, ip: str) -> Client:
        got = self._clients.get(ip)
        if got is not None:
            return got
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            got = Client(((((b"",), ((BLOCK, None),)),)), False, False)  # CoreDNS: unparseable source is blocked
        else:
            if addr.version == 6 and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            rules = []
            for r in self.rules:
                lines = tuple((p.action, p.qtypes) for p in r.policies if p.nets is None or any(addr in n for n in p.nets))
                if lines:
                    rules.append((r.zones, lines))
            private = any(addr in n for n in PRIVATE_NETS)
            # an acl line that allows this address by its net lets it forward as well
            named = any(p.action == ALLOW and p.nets is not None and any(addr in n for n in p.nets) for r in self.rules for p in r.policies)
            recursion = named or any(addr in n for n in self.recursion)
            got = Client(tuple(rules), recursion, private)
        if len(self._clients) >= 65536:
            self._clients.clear()
        self._clients[ip] = got
        return got
