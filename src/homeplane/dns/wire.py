"""DNS wire format, the small part the hot path needs (RFC 1035, RFC 6891).

Parsing reads the header, the one question and an OPT record; anything else a
query carries is left to dnspython on the slow path. Building writes owner names
of answers as a compression pointer to the question (offset 12), so the answer
repeats the name with exactly the letter case the client used (DNS 0x20).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

QTYPE = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "OPT": 41, "ANY": 255}
TYPE_NAME = {v: k for k, v in QTYPE.items()}
CLASS_IN, CLASS_ANY = 1, 255
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # RFC 6891: 12 bits, the high 8 in the OPT record
RCODE_NAME = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}
# RFC 8914 extended DNS errors
EDE_BLOCKED, EDE_FILTERED, EDE_PROHIBITED = 15, 17, 18
POINTER_TO_QNAME = b"\xc0\x0c"
OUR_UDP_PAYLOAD = 1232  # RFC 9715 / DNS flag day 2020

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")


class FormatError(ValueError):
    pass


@dataclass(slots=True)
class Query:
    id: int
    flags: int
    qname: bytes  # wire labels as sent (case preserved), including the final zero
    key: bytes  # lower-case presentation name without the final dot, e.g. b"web.apps.svc.cluster.local"
    qtype: int
    qclass: int
    question_end: int
    edns: bool = False
    payload: int = 512
    do: bool = False
    edns_version: int = 0

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)


def parse_query(data: bytes) -> Query:
    """Header, question and OPT of a query; raises FormatError on anything malformed."""
    if len(data) < 12:
        raise FormatError("short header")
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0x8000:
        raise FormatError("a response, not a query")
    if qd != 1:
        raise FormatError(f"{qd} questions")
    pos = 12
    labels = []
    while True:
        if pos >= len(data):
            raise FormatError("truncated name")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0:
            raise FormatError("compression in the question")
        if pos + 1 + n > len(data):
            raise FormatError("truncated label")
        labels.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
        if pos - 12 > 255:
            raise FormatError("name too long")
    if pos + 4 > len(data):
        raise FormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    qend = pos + 4
    q = Query(qid, flags, data[12:pos], b".".join(labels).lower(), qtype, qclass, qend)
    if ar:
        pos = qend
        for _ in range(an + ns):  # a query has none; skipped so the OPT record is always read
            pos = skip_name(data, pos)
            if pos + 10 > len(data):
                raise FormatError("truncated record")
            pos += 10 + struct.unpack_from("!H", data, pos + 8)[0]
        _parse_opt(data, pos, ar, q)
    return q


def _parse_opt(data: bytes, pos: int, count: int, q: Query) -> None:
    opts = 0
    for _ in range(count):
        # owner name (root for OPT; skip anything else)
        while True:
            if pos >= len(data):
                raise FormatError("truncated additional record")
            n = data[pos]
            if n & 0xC0 == 0xC0:
                pos += 2
                break
            pos += 1 + n
            if n == 0:
                break
        if pos + 10 > len(data):
            raise FormatError("truncated additional record")
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        pos += 10 + rdlen
        if pos > len(data):
            raise FormatError("truncated rdata")
        if rtype == 41:
            opts += 1
            if opts > 1:
                raise FormatError("more than one OPT record")  # RFC 6891 §6.1.1
            q.edns = True
            q.payload = max(512, rclass)
            q.do = bool(ttl & 0x8000)
            q.edns_version = (ttl >> 16) & 0xFF


def encode_name(name: str) -> bytes:
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        b = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(b) < 64:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(b))
        out += b
    out.append(0)
    return bytes(out)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = CLASS_IN) -> bytes:
    return owner + _RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


def a_rdata(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    return (1 if addr.version == 4 else 28), addr.packed


def txt_rdata(*strings: str) -> bytes:
    out = b""
    for s in strings:
        b = s.encode()
        while True:
            out += bytes([min(len(b), 255)]) + b[:255]
            b = b[255:]
            if not b:
                break
    return out


def srv_rdata(priority: int, weight: int, port: int, target: str) -> bytes:
    return struct.pack("!HHH", priority, weight, port) + encode_name(target)


def soa_rdata(mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int, minimum: int) -> bytes:
    return encode_name(mname) + encode_name(rname) + struct.pack("!IIIII", serial, refresh, retry, expire, minimum)


def opt_rr(payload: int = OUR_UDP_PAYLOAD, ext_rcode: int = 0, ede: int | None = None) -> bytes:
    """Our OPT record: version 0, the high bits of an extended rcode, an RFC 8914 error."""
    options = struct.pack("!HHH", 15, 2, ede) if ede is not None else b""
    return b"\x00" + _RR_FIXED.pack(41, payload, (ext_rcode >> 4) << 24, len(options)) + options


def reply(data: bytes, q: Query, rcode: int, *, ede: int | None = None, tc: bool = False, aa: bool = False, ra: bool = True) -> bytes:
    """An answer with no records to a parsed query: its question, and an OPT record when the
    query had one (an extended rcode's high bits and an extended error go there)."""
    flags = 0x8000 | (q.flags & 0x7900) | (rcode & 0xF)
    if ra:
        flags |= 0x0080
    if aa:
        flags |= 0x0400
    if tc:
        flags |= 0x0200
    tail = opt_rr(ext_rcode=rcode, ede=ede) if q.edns else b""
    return header(q.id, flags, 1, 0, 0, 1 if q.edns else 0) + data[12 : q.question_end] + tail


def header(qid: int, flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    return _HEADER.pack(qid, flags, qd, an, ns, ar)


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def error_response(data: bytes, rcode: int) -> bytes | None:
    """A bare response with rcode for a query we cannot parse fully (FORMERR) or serve."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    if flags & 0x8000:
        return None  # never answer a response
    out_flags = 0x8000 | (flags & 0x7900) | rcode  # QR, opcode and RD copied
    return header(qid, out_flags, 0, 0, 0, 0)


def skip_name(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise FormatError("truncated name")
        n = data[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n
        if n == 0:
            return pos


@dataclass(slots=True)
class ResponseInfo:
    rcode: int
    answers: int
    ttl_offsets: list[int]  # where each record's TTL sits (OPT excluded), to age cached copies
    min_ttl: int
    soa_minimum: int | None  # negative-caching TTL from an SOA in the authority section


def inspect_response(data: bytes) -> ResponseInfo:
    """Walk a response's records once: rcode, TTL positions, smallest TTL, SOA minimum."""
    if len(data) < 12:
        raise FormatError("short response")
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    pos = 12
    for _ in range(qd):
        pos = skip_name(data, pos) + 4
    offsets: list[int] = []
    min_ttl = 2**31
    soa_min = None
    for i in range(an + ns + ar):
        pos = skip_name(data, pos)
        if pos + 10 > len(data):
            raise FormatError("truncated record")
        rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        if rtype != 41:
            offsets.append(pos + 4)
            min_ttl = min(min_ttl, ttl)
            if rtype == 6 and an <= i < an + ns:
                rd = pos + 10
                rd = skip_name(data, skip_name(data, rd))
                if rd + 20 <= len(data):
                    soa_min = min(ttl, struct.unpack_from("!I", data, rd + 16)[0])
        pos += 10 + rdlen
    return ResponseInfo(flags & 0xF, an, offsets, min_ttl if offsets else 0, soa_min)
