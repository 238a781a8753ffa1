"""Header handling shared by both client protocols: hop-by-hop headers, Envoy command
operators in configured header values, client IP detection, X-Forwarded-*.

On the hot path header names are lower-case ``bytes`` and values ``bytes``, as
they come off the wire.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable, Sequence

# RFC 9110 §7.6.1 connection-specific fields, plus the ones Envoy also drops.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
)


@dataclass(slots=True)
class RequestInfo:
    """What command operators and access logs may refer to."""

    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    protocol: str  # "HTTP/1.1", "HTTP/2"
    sni: str | None
    headers: dict[bytes, bytes]


Part = bytes | Callable[[RequestInfo], bytes]


def _req(name: str) -> Callable[[RequestInfo], bytes]:
    n = name.lower().encode()
    return lambda info: info.headers.get(n, b"")


def _addr(ip: str, port: int) -> bytes:
    return (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()


_HOST = socket.gethostname().encode()
_OPERATORS: dict[str, Callable[[RequestInfo], bytes]] = {
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda i: i.client_ip.encode(),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda i: _addr(i.client_ip, i.client_port),
    "DOWNSTREAM_REMOTE_PORT": lambda i: str(i.client_port).encode(),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda i: i.local_ip.encode(),
    "DOWNSTREAM_LOCAL_ADDRESS": lambda i: _addr(i.local_ip, i.local_port),
    "DOWNSTREAM_LOCAL_PORT": lambda i: str(i.local_port).encode(),
    "PROTOCOL": lambda i: i.protocol.encode(),
    "REQUESTED_SERVER_NAME": lambda i: (i.sni or "").encode(),
    "HOSTNAME": lambda i: _HOST,
    "START_TIME": lambda i: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode(),
}


class TemplateError(ValueError):
    pass


def compile_value(value: str) -> tuple[Part, ...] | bytes:
    """Compile an Envoy header value: ``%OPERATOR%`` and ``%REQ(name)%`` become functions,
    ``%%`` a literal ``%``. Plain values stay plain bytes (the common, fast case)."""
    if "%" not in value:
        return value.encode()
    parts: list[Part] = []
    i = 0
    buf = []
    while i < len(value):
        c = value[i]
        if c != "%":
            buf.append(c)
            i += 1
            continue
        if value.startswith("%%", i):
            buf.append("%")
            i += 2
            continue
        end = value.find("%", i + 1)
        if end < 0:
            raise TemplateError(f"unterminated command operator in {value!r}")
        op = value[i + 1 : end]
        if buf:
            parts.append("".join(buf).encode())
            buf = []
        if op.startswith("REQ(") and op.endswith(")"):
            parts.append(_req(op[4:-1].split(":")[0]))
        elif op in _OPERATORS:
            parts.append(_OPERATORS[op])
        else:
            raise TemplateError(f"unsupported command operator %{op}% in {value!r}")
        i = end + 1
    if buf:
        parts.append("".join(buf).encode())
    return tuple(parts)


def render(compiled: tuple[Part, ...] | bytes, info: RequestInfo) -> bytes:
    if isinstance(compiled, bytes):
        return compiled
    return b"".join(p if isinstance(p, bytes) else p(info) for p in compiled)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidrs(cidrs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _in(ip: str, nets: Sequence[Network]) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(a in n for n in nets)


def detect_client_ip(remote_ip: str, xff: str | None, trusted_hops: int | None, trusted: Sequence[Network]) -> str:
    """The client address per ClientTrafficPolicy ``clientIPDetection.xForwardedFor``.

    ``numTrustedHops: N`` - the N-th address from the right of X-Forwarded-For (after the
    immediate peer), as Envoy's ``xff_num_trusted_hops``. ``trustedCIDRs`` - walk
    X-Forwarded-For from the right while the addresses are trusted; the first
    untrusted one is the client. Without either, the peer address is the client.
    """
    if not xff:
        return remote_ip
    hops = [h.strip() for h in xff.split(",") if h.strip()]
    if trusted:
        if not _in(remote_ip, trusted):
            return remote_ip
        for h in reversed(hops):
            if not _in(h, trusted):
                return h
        return hops[0] if hops else remote_ip
    if trusted_hops:
        if len(hops) >= trusted_hops:
            return hops[len(hops) - trusted_hops]
        return remote_ip
    return remote_ip


_rand = random.Random(os.urandom(32))
_ID_BLOCK = 4096


class _RequestIds:
    """UUID-shaped (version 4) ids for x-request-id, as Envoy sets them.

    Ids need uniqueness, not secrecy or unpredictability: every block of 4096 shares 80 random
    bits (PRNG seeded from the kernel) and counts up from a random start in the last group,
    which costs a fraction of formatting 128 fresh bits per request."""

    __slots__ = ("prefix", "n", "left")

    def __init__(self) -> None:
        self.left = 0

    def new_block(self) -> None:
        h = b"%032x" % _rand.getrandbits(128)
        variant = b"89ab"[h[16] & 3 : (h[16] & 3) + 1]
        self.prefix = h[:8] + b"-" + h[8:12] + b"-4" + h[13:16] + b"-" + variant + h[17:20] + b"-"
        self.n = int(h[20:], 16)
        self.left = _ID_BLOCK


_ids = _RequestIds()


def request_id() -> bytes:
    ids = _ids
    if ids.left == 0:
        ids.new_block()
    ids.left -= 1
    ids.n = (ids.n + 1) & 0xFFFFFFFFFFFF
    return b"%s%012x" % (ids.prefix, ids.n)
