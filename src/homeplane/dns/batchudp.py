"""UDP in batches: many datagrams per system call.

A DNS answer from the precomputed tables costs about a microsecond of Python; the
``recvfrom``/``sendto`` pair around it cost more than that. Linux's ``recvmmsg(2)`` and
``sendmmsg(2)`` move a whole batch per call, which is how knot and unbound keep the
per-query system-call cost down. The standard library has neither, so they are called
through ctypes on buffers allocated once: the per-datagram work is slicing bytes out of
one arena and copying answers into another (memoryview stores, no ctypes objects made).

:func:`open_batch` returns a :class:`MMsgBatch` where the platform has the calls (64-bit
Linux) and a :class:`SimpleBatch` (``recvfrom``/``sendto`` one at a time) elsewhere; both
have the same methods, so the server has one receive path.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from typing import Any

BATCH = 64
SLOT = 4096  # bytes per received query (a query this long is dropped) and per queued answer (longer: sent alone)
_MSG_DONTWAIT = 0x40
_NAME = 128  # sizeof(struct sockaddr_storage)
# struct mmsghdr on LP64 Linux: msghdr (56 bytes) + msg_len (4) + padding
_HDR = 64
_OFF_NAMELEN, _OFF_IOV, _OFF_IOVLEN, _OFF_LEN = 8, 16, 24, 56


def _libc_calls() -> tuple[Any, Any] | None:
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recv.restype = send.restype = ctypes.c_int
    return recv, send


_CALLS = _libc_calls()


def sockaddr(raw: bytes | memoryview) -> tuple[Any, ...]:
    """A kernel sockaddr_in / sockaddr_in6 as the address tuple Python's socket methods take."""
    family = struct.unpack_from("=H", raw, 0)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        flow, scope = struct.unpack_from("!I", raw, 4)[0], struct.unpack_from("=I", raw, 24)[0]
        return (socket.inet_ntop(socket.AF_INET6, bytes(raw[8:24])), port, flow, scope)
    return (socket.inet_ntop(socket.AF_INET, bytes(raw[4:8])), port)


def packed(ip: str) -> bytes:
    """An address's 4 or 16 bytes (the key MMsgBatch.client_key gives)."""
    ip = ip.split("%", 1)[0]
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


class MMsgBatch:
    """One socket's receive and send arenas for recvmmsg/sendmmsg.

    Use: ``datagrams = recv()``; answer datagram ``i`` with ``queue(i, answer)``; then
    ``flush()`` before the next ``recv()`` (queued answers point at the senders' addresses in
    the receive arena). Answer slot ``i`` is fixed to receive slot ``i``, so the send headers
    are written once; a run of answered datagrams goes out in one sendmmsg, and a query left
    unanswered (forwarded) only splits the run.
    """

    def __init__(self, sock: socket.socket, batch: int = BATCH):
        assert _CALLS is not None
        self._recvmmsg, self._sendmmsg = _CALLS
        self.sock = sock
        self.fd = sock.fileno()
        self.batch = batch
        self._arenas = [ctypes.create_string_buffer(size) for size in (batch * _HDR, batch * _HDR, batch * 16, batch * 16, batch * SLOT, batch * SLOT, batch * _NAME)]
        rhdr, shdr, riov, siov, rbuf, sbuf, names = self._arenas
        self._rhdr_addr, self._shdr_addr = ctypes.addressof(rhdr), ctypes.addressof(shdr)
        self._rbuf = memoryview(rbuf).cast("B")
        self._sbuf = memoryview(sbuf).cast("B")
        self._names = memoryview(names).cast("B")
        self._r32 = memoryview(rhdr).cast("B").cast("I")
        self._siov64 = memoryview(siov).cast("B").cast("Q")
        r64 = memoryview(rhdr).cast("B").cast("Q")
        s64 = memoryview(shdr).cast("B").cast("Q")
        s32 = memoryview(shdr).cast("B").cast("I")
        riov64 = memoryview(riov).cast("B").cast("Q")
        # every sender on this socket has an address of the socket's family: one length for all
        namelen = 28 if sock.family == socket.AF_INET6 else 16
        self._ipv6 = sock.family == socket.AF_INET6
        for i in range(batch):
            name = ctypes.addressof(names) + i * _NAME
            # receive slot i: its own name, one iovec onto its own SLOT of the arena
            r64[i * 8] = name
            r64[(i * _HDR + _OFF_IOV) // 8] = ctypes.addressof(riov) + i * 16
            r64[(i * _HDR + _OFF_IOVLEN) // 8] = 1
            riov64[i * 2] = ctypes.addressof(rbuf) + i * SLOT
            riov64[i * 2 + 1] = SLOT
            # send slot i: back to receive slot i's sender, from its own SLOT of the send arena
            s64[i * 8] = name
            s32[(i * _HDR + _OFF_NAMELEN) // 4] = namelen
            s64[(i * _HDR + _OFF_IOV) // 8] = ctypes.addressof(siov) + i * 16
            s64[(i * _HDR + _OFF_IOVLEN) // 8] = 1
            self._siov64[i * 2] = ctypes.addressof(sbuf) + i * SLOT
        self._namelens = memoryview(struct.pack(f"={batch}I", *([_NAME] * batch))).cast("I")
        self._run_start = 0  # the queued answers are slots [_run_start, _run_end)
        self._run_end = 0
        self.dropped = 0  # answers the kernel would not take (socket buffer full)

    def recv(self) -> list[bytes | None]:
        """The datagrams now waiting, up to the batch size; None for one too big for a slot (a
        query never is: dropped)."""
        self._r32[_OFF_NAMELEN // 4 :: _HDR // 4] = self._namelens  # the kernel shortens these
        n = self._recvmmsg(self.fd, self._rhdr_addr, self.batch, _MSG_DONTWAIT, None)
        if n <= 0:
            err = ctypes.get_errno() if n < 0 else 0
            # EAGAIN: nothing waiting; ECONNREFUSED: an ICMP error for an earlier answer
            if err in (0, errno.EAGAIN, errno.EINTR, errno.ECONNREFUSED):
                return []
            raise OSError(err, "recvmmsg: " + errno.errorcode.get(err, str(err)))
        buf = self._rbuf
        return [bytes(buf[i * SLOT : i * SLOT + ln]) if ln < SLOT else None for i, ln in enumerate(self._r32[_OFF_LEN // 4 :: _HDR // 4][:n].tolist())]

    def address(self, i: int) -> tuple[Any, ...]:
        return sockaddr(self._names[i * _NAME : (i + 1) * _NAME])

    def client_key(self, i: int) -> bytes:
        """The sender's address bytes without its port: a cheap key for per-client state."""
        at = i * _NAME
        if self._ipv6:
            return bytes(self._names[at + 8 : at + 24])
        return bytes(self._names[at + 4 : at + 8])

    def queue(self, i: int, data: bytes) -> None:
        """Answer datagram i (sent by the next flush)."""
        n = len(data)
        if n > SLOT:
            self.send_to(data, self.address(i))
            return
        if i != self._run_end:
            self.flush()
            self._run_start = i
        self._sbuf[i * SLOT : i * SLOT + n] = data
        self._siov64[i * 2 + 1] = n
        self._run_end = i + 1

    def flush(self) -> None:
        start, end = self._run_start, self._run_end
        while start < end:
            sent = self._sendmmsg(self.fd, self._shdr_addr + start * _HDR, end - start, _MSG_DONTWAIT)
            if sent <= 0:
                if sent < 0 and ctypes.get_errno() == errno.EINTR:
                    continue
                # the socket buffer is full or this datagram's peer is unreachable: like a lost
                # UDP answer (the client retries); skip it and send the rest
                self.dropped += 1
                sent = 1
            start += sent
        self._run_start = self._run_end = 0

    def send_to(self, data: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            self.dropped += 1


class SimpleBatch:
    """The same interface over recvfrom/sendto, where recvmmsg is not available."""

    def __init__(self, sock: socket.socket, batch: int = BATCH):
        self.sock = sock
        self.batch = batch
        self._got: list[tuple[bytes, Any]] = []
        self.dropped = 0

    def recv(self) -> list[bytes | None]:
        self._got = []
        for _ in range(self.batch):
            try:
                self._got.append(self.sock.recvfrom(SLOT))
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                break
        return [d if len(d) < SLOT else None for d, _ in self._got]

    def address(self, i: int) -> tuple[Any, ...]:
        return self._got[i][1]

    def client_key(self, i: int) -> bytes:
        return packed(self._got[i][1][0])

    def queue(self, i: int, data: bytes) -> None:
        self.send_to(data, self._got[i][1])

    def flush(self) -> None:
        pass

    def send_to(self, data: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            self.dropped += 1


def open_batch(sock: socket.socket, batch: int = BATCH) -> MMsgBatch | SimpleBatch:
    return MMsgBatch(sock, batch) if _CALLS is not None else SimpleBatch(sock, batch)
