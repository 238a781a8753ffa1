"""The ARP responder: answers, on one interface, for the addresses this node announces.

An AF_PACKET socket sees every ARP frame on the link (the addresses are on no interface: the
kernel would not answer for them). A request for an announced address gets a reply with this
interface's MAC; taking an address over sends gratuitous ARPs, so neighbours that knew the old
announcer move to this one at once instead of waiting for their cache to expire.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from homeplane.l2 import arp

log = logging.getLogger("homeplane.l2")
# sll_pkttype: PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST (not OTHERHOST nor OUTGOING, which are
# frames for another host or sent by this one)
LINK_DELIVERED = (0, 1, 2)


class Responder:
    def __init__(self, interface: str):
        self.interface = interface
        self.ips: set[str] = set()
        self.mac = b""
        self.sock: socket.socket | None = None
        self.answered = 0
        self.announced = 0

    def open(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(arp.ETH_P_ARP))
        try:
            sock.bind((self.interface, arp.ETH_P_ARP))
            sock.setblocking(False)
            self.mac = sock.getsockname()[4]
        except OSError:
            sock.close()
            raise
        self.sock = sock
        (loop or asyncio.get_running_loop()).add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(64):
            try:
                frame, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("ARP on %s: %s", self.interface, e)
                return
            if addr[0] != self.interface or addr[2] not in LINK_DELIVERED:
                continue  # ours (outgoing), another VLAN's or device's, or for another host
            req = arp.parse(frame)
            if req is None or req.oper != arp.REQUEST or req.gratuitous or req.target_ip not in self.ips:
                continue
            try:
                sock.send(arp.reply(req, self.mac))
                self.answered += 1
            except OSError as e:
                log.warning("ARP reply on %s: %s", self.interface, e)

    def announce(self, ip: str) -> None:
        """Answer for ``ip`` from now on, and tell the link (twice: one frame may be lost)."""
        self.ips.add(ip)
        if self.sock is not None:
            frame = arp.gratuitous(ip, self.mac)
            for _ in range(2):
                try:
                    self.sock.send(frame)
                    self.announced += 1
                except OSError as e:
                    log.warning("gratuitous ARP for %s on %s: %s", ip, self.interface, e)

    def withdraw(self, ip: str) -> None:
        self.ips.discard(ip)

    def close(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self.sock is not None:
            try:
                (loop or asyncio.get_running_loop()).remove_reader(self.sock.fileno())
            except RuntimeError:
                pass
            self.sock.close()
            self.sock = None
