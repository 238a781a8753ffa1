"""Response rate limiting (pure; time is an input): BIND's RRL, as CoreDNS's ``rrl`` plugin
takes it (``responses-per-second``, ``window``, ``slip-ratio``, ``ipv4-prefix-length``,
``ipv6-prefix-length``, ``nxdomains-per-second``, ``errors-per-second``, ``max-table-size``).

A DNS server answers a forged source address with more bytes than it was sent; RRL keeps it
from being used to flood someone else. Every response has an account keyed by the client's
network (a /24 or /56) and what the response is: the name and type for an answer, the name
for NODATA, the zone for NXDOMAIN, one per network for errors. An account earns its rate in
credits each second (never more than one second's worth), and each response spends one;
below zero the response is not sent, down to ``-window * rate``. Of the responses held back,
every ``slip``-th is sent truncated instead (TC set, no records): a real client behind a
forged flood retries over TCP, which cannot be forged. Only UDP is limited.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

SEND, DROP, SLIP = 0, 1, 2


@dataclass
class RRLConfig:
    responses_per_second: float = 0.0  # 0: off
    window: float = 15.0
    slip: int = 2  # 0: never slip, 1: slip every limited response, N: every Nth
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    nxdomains_per_second: float | None = None  # None: responses_per_second
    errors_per_second: float | None = None
    max_table_size: int = 100_000

    @property
    def enabled(self) -> bool:
        return self.responses_per_second > 0


class _Account:
    __slots__ = ("balance", "time", "slipped")

    def __init__(self, balance: float, now: float):
        self.balance = balance
        self.time = now
        self.slipped = 0


class RateLimiter:
    def __init__(self, cfg: RRLConfig):
        self.cfg = cfg
        self.accounts: dict[tuple[bytes, object], _Account] = {}
        self._prefixes: dict[str | bytes, bytes] = {}
        self.dropped = 0
        self.slipped = 0

    def prefix(self, ip: str) -> bytes:
        """The client's network as a key (``/24`` of IPv4, ``/56`` of IPv6 by default)."""
        got = self._prefixes.get(ip)
        if got is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return ip.encode()
            bits = self.cfg.ipv4_prefix if addr.version == 4 else self.cfg.ipv6_prefix
            got = ipaddress.ip_network(f"{addr}/{bits}", strict=False).network_address.packed
            if len(self._prefixes) > 65536:
                self._prefixes.clear()
            self._prefixes[ip] = got
        return got

    def prefix_of_key(self, key: bytes) -> bytes:
        """The network of an address given as its packed bytes (4 or 16) or its text."""
        got = self._prefixes.get(key)  # type: ignore[call-overload]
        if got is None:
            if len(key) == 16 and key[:12] == b"\x00" * 10 + b"\xff\xff":
                key = key[12:]  # an IPv4 client on a dual-stack socket: its own /24, not a /56 of all of IPv4
            if len(key) in (4, 16):
                bits = self.cfg.ipv4_prefix if len(key) == 4 else self.cfg.ipv6_prefix
                n = int.from_bytes(key, "big") >> (len(key) * 8 - bits) << (len(key) * 8 - bits)
                got = n.to_bytes(len(key), "big")
            else:
                got = self.prefix(key.decode(errors="replace"))
            if len(self._prefixes) > 65536:
                self._prefixes.clear()
            self._prefixes[key] = got  # type: ignore[index]
        return got

    def rate(self, kind: str) -> float:
        c = self.cfg
        if kind == "nxdomain" and c.nxdomains_per_second is not None:
            return c.nxdomains_per_second
        if kind == "error" and c.errors_per_second is not None:
            return c.errors_per_second
        return c.responses_per_second

    def check(self, prefix: bytes, what: object, kind: str, now: float) -> int:
        """SEND, DROP or SLIP for one response of class ``what`` (``kind``: "answer",
        "nxdomain" or "error") to the network ``prefix``."""
        rate = self.rate(kind)
        if rate <= 0:
            return SEND
        key = (prefix, what)
        acct = self.accounts.get(key)
        if acct is None:
            if len(self.accounts) >= self.cfg.max_table_size:
                self._expire(now)
            acct = self.accounts[key] = _Account(rate, now)
        else:
            acct.balance = min(rate, acct.balance + (now - acct.time) * rate)
            acct.time = now
        acct.balance = max(acct.balance - 1, -self.cfg.window * rate)
        if acct.balance >= 0:
            return SEND
        slip = self.cfg.slip
        if slip > 0:
            acct.slipped += 1
            if acct.slipped % slip == 1 or slip == 1:  # the first limited response slips, then every Nth
                self.slipped += 1
                return SLIP
        self.dropped += 1
        return DROP

    def _expire(self, now: float) -> None:
        """Make room: accounts back at full credit hold nothing worth keeping; if that is not
        enough, the least recently used tenth goes (an account under attack is in use, so a
        flood of new accounts cannot reset it)."""
        full = [k for k, a in self.accounts.items() if a.balance + (now - a.time) * self.rate("answer") >= self.rate("answer")]
        for k in full:
            del self.accounts[k]
        if len(self.accounts) >= self.cfg.max_table_size:
            oldest = sorted(self.accounts.items(), key=lambda kv: kv[1].time)[: max(1, len(self.accounts) // 10)]
            for k, _ in oldest:
                del self.accounts[k]
