"""PROXY protocol v1 and v2 (HAProxy's spec), sans-IO: bytes in, the client's address out
(and :func:`encode_v2` for a sender: the tunnel's connector towards a dialled origin).

ClientTrafficPolicy ``proxyProtocol`` (and the older ``enableProxyProtocol``) makes a
listener expect this header before anything else, TLS included; with
``optional: true`` a connection without it is served as is.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
MAX_V1 = 107


class ProxyProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    client_ip: str | None  # None: LOCAL / UNKNOWN (health checks): keep the peer address
    client_port: int
    length: int  # bytes of header consumed


def parse(data: bytes) -> ProxyInfo | None:
    """The header at the start of data; None if more bytes are needed.

    Raises ProxyProtocolError if data does not start with a valid header.
    """
    if data.startswith(V2_SIGNATURE[: len(data)]) and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError("unsupported PROXY v2 version")
        total = 16 + length
        if len(data) < total:
            return None
        cmd = ver_cmd & 0xF
        if cmd == 0:  # LOCAL
            return ProxyInfo(None, 0, total)
        if fam >> 4 == 1 and length >= 12:  # AF_INET
            src = ipaddress.IPv4Address(data[16:20])
            sport = struct.unpack_from("!H", data, 24)[0]
            return ProxyInfo(str(src), sport, total)
        if fam >> 4 == 2 and length >= 36:  # AF_INET6
            src6 = ipaddress.IPv6Address(data[16:32])
            sport = struct.unpack_from("!H", data, 48)[0]
            return ProxyInfo(str(src6), sport, total)
        return ProxyInfo(None, 0, total)
    if V1_PREFIX.startswith(data[:6]) and len(data) < 6:
        return None
    if data.startswith(V1_PREFIX):
        end = data.find(b"\r\n")
        if end < 0:
            if len(data) > MAX_V1:
                raise ProxyProtocolError("PROXY v1 header too long")
            return None
        parts = data[:end].decode("ascii", "replace").split(" ")
        if len(parts) >= 2 and parts[1] == "UNKNOWN":
            return ProxyInfo(None, 0, end + 2)
        if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
            raise ProxyProtocolError(f"malformed PROXY v1 header: {data[:end]!r}")
        try:
            ip = ipaddress.ip_address(parts[2])
            port = int(parts[4])
        except ValueError:
            raise ProxyProtocolError(f"malformed PROXY v1 address: {data[:end]!r}") from None
        return ProxyInfo(str(ip), port, end + 2)
    raise ProxyProtocolError("no PROXY protocol header")


def looks_like_proxy(data: bytes) -> bool:
    """Could data be (the start of) a PROXY header? For ``optional: true``."""
    n = min(len(data), 12)
    return data[:n] == V2_SIGNATURE[:n] or data[: min(len(data), 6)] == V1_PREFIX[: min(len(data), 6)]


def wanted(settings: Any) -> tuple[bool, bool]:
    """(expected, optional) from a listener's ClientTrafficPolicy settings (``proxyProtocol``,
    optional or not, or the older ``enableProxyProtocol``, lowered by translate)."""
    if settings is None or not settings.proxy_protocol:
        return False, False
    return True, settings.proxy_protocol_optional



def take(buf: bytes, optional: bool) -> tuple[bool, ProxyInfo | None]:
    """The header at the start of a connection: (complete, info). ``complete`` is False while more
    bytes are needed; ``info`` is None when an optional header is absent. Raises
    ProxyProtocolError for a malformed (or, when required, missing) header."""
    if optional and not looks_like_proxy(buf):
        return True, None
    info = parse(buf)
    return info is not None, info


def encode_v2(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """A v2 PROXY header for a TCP connection from client to server (a server address of the
    other family is sent as that family's any-address)."""
    src = ipaddress.ip_address(client[0])
    try:
        dst = ipaddress.ip_address(server[0])
    except ValueError:
        dst = ipaddress.ip_address("::" if src.version == 6 else "0.0.0.0")
    if dst.version != src.version:
        dst = ipaddress.ip_address("::" if src.version == 6 else "0.0.0.0")
    fam = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", client[1], server[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(body)) + body
