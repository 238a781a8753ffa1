"""ARP over Ethernet (RFC 826), sans-IO: read a frame, write replies and gratuitous announcements."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
REQUEST, REPLY = 1, 2
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype, ptype, hlen, plen, oper, sha, spa, tha, tpa


@dataclass(frozen=True, slots=True)
class Arp:
    oper: int
    sender_mac: bytes
    sender_ip: str
    target_mac: bytes
    target_ip: str

    @property
    def gratuitous(self) -> bool:
        return self.sender_ip == self.target_ip


def parse(frame: bytes) -> Arp | None:
    """An Ethernet/IPv4 ARP frame, or None for anything else (short, other protocols, VLAN tags)."""
    if len(frame) < _ETH.size + _ARP.size:
        return None
    _, _, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4 or oper not in (REQUEST, REPLY):
        return None
    return Arp(oper, sha, socket.inet_ntoa(spa), tha, socket.inet_ntoa(tpa))


def _frame(dst: bytes, src: bytes, oper: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    body = _ARP.pack(1, 0x0800, 6, 4, oper, sha, socket.inet_aton(spa), tha, socket.inet_aton(tpa))
    return (_ETH.pack(dst, src, ETH_P_ARP) + body).ljust(60, b"\0")  # the Ethernet minimum


def reply(request: Arp, mac: bytes) -> bytes:
    """The answer to a request for an address this node announces: it is at ``mac``."""
    return _frame(request.sender_mac, mac, REPLY, mac, request.target_ip, request.sender_mac, request.sender_ip)


def gratuitous(ip: str, mac: bytes) -> bytes:
    """A gratuitous ARP (a broadcast request for its own address): neighbours that know the
    address update where it is — what a new announcer sends when it takes an IP over."""
    return _frame(BROADCAST, mac, REQUEST, mac, ip, b"\0" * 6, ip)


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
