"""The server name (SNI) of a TLS ClientHello, read from the first bytes of a connection.

Sans-IO: :func:`client_hello_sni` takes the bytes received so far and says "need more",
"no name", or the name. Used to pass TLS connections through by TLSRoute hostname without
decrypting them (RFC 8446 §4.1.2, RFC 6066 §3). The ClientHello may span several records.
"""

from __future__ import annotations

MAX_HELLO = 64 * 1024  # larger than any real ClientHello; more is an attack or not TLS
NEED_MORE = object()


class NotTLS(ValueError):
    """The bytes are not the start of a TLS handshake."""


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake-layer bytes carried by the complete records in data; None if the first
    record is not complete yet."""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != 22 or major != 3:
            raise NotTLS("not a TLS handshake record")
        if length == 0 or length > 16384 + 2048:
            raise NotTLS("bad TLS record length")
        if pos + 5 + length > len(data):
            break
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out) if pos else None


def client_hello_sni(data: bytes) -> str | None | object:
    """The SNI host name (lower case), None when the ClientHello names none, or NEED_MORE.
    Raises NotTLS for bytes that cannot be a ClientHello."""
    if data and data[0] != 22:
        raise NotTLS("not a TLS handshake record")
    if len(data) > MAX_HELLO:
        raise NotTLS("ClientHello too large")
    hs = _handshake_bytes(data)
    if hs is None or len(hs) < 4:
        return NEED_MORE
    if hs[0] != 1:
        raise NotTLS("first handshake message is not a ClientHello")
    body_len = int.from_bytes(hs[1:4], "big")
    if len(hs) < 4 + body_len:
        return NEED_MORE
    b = hs[4 : 4 + body_len]
    try:
        p = 2 + 32  # legacy_version, random
        p += 1 + b[p]  # legacy_session_id
        p += 2 + int.from_bytes(b[p : p + 2], "big")  # cipher_suites
        p += 1 + b[p]  # legacy_compression_methods
        if p >= len(b):
            return None  # no extensions
        end = p + 2 + int.from_bytes(b[p : p + 2], "big")
        p += 2
        while p + 4 <= min(end, len(b)):
            etype, elen = int.from_bytes(b[p : p + 2], "big"), int.from_bytes(b[p + 2 : p + 4], "big")
            p += 4
            if etype == 0:  # server_name: list of (type, name); type 0 is host_name
                q, qend = p + 2, p + 2 + int.from_bytes(b[p : p + 2], "big")
                while q + 3 <= qend:
                    ntype, nlen = b[q], int.from_bytes(b[q + 1 : q + 3], "big")
                    if ntype == 0:
                        return b[q + 3 : q + 3 + nlen].decode("ascii").lower().rstrip(".")
                    q += 3 + nlen
                return None
            p += elen
    except (IndexError, UnicodeDecodeError) as e:
        raise NotTLS(f"malformed ClientHello: {e}") from e
    return None
