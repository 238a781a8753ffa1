"""Response compression (BackendTrafficPolicy ``compressor`` / ``compression``), as Envoy does it.

A response is compressed when the policy lists an encoding the client accepts
(``Accept-Encoding``, honouring ``q=0``), the response is not already encoded,
its content type is one of Envoy's defaults, and it is not tiny (Envoy's
``min_content_length``: 30 bytes). The compressed response loses its
Content-Length (it is streamed) and gains ``Vary: Accept-Encoding``. The
policy's order is the server's preference when the client accepts several.
"""

from __future__ import annotations

import zlib
from typing import Callable

import brotli
import zstandard

# Envoy's default compressible content types.
COMPRESSIBLE = (
    b"text/html", b"text/plain", b"text/css", b"application/javascript", b"application/x-javascript",
    b"text/javascript", b"text/x-javascript", b"text/ecmascript", b"text/js", b"text/jscript", b"text/x-js",
    b"application/ecmascript", b"application/x-json", b"application/xml", b"application/json",
    b"image/svg+xml", b"text/xml", b"application/xhtml+xml",
)
MIN_LENGTH = 30
TOKENS = {"Gzip": b"gzip", "Brotli": b"br", "Zstd": b"zstd"}


class Encoder:
    """Streaming encoder: ``feed`` returns what can be sent now, ``finish`` the rest."""

    def __init__(self, token: bytes):
        self.token = token
        if token == b"gzip":
            c = zlib.compressobj(5, zlib.DEFLATED, 31)
            self._feed: Callable[[bytes], bytes] = lambda d: c.compress(d) + c.flush(zlib.Z_SYNC_FLUSH)
            self._finish: Callable[[], bytes] = c.flush
        elif token == b"br":
            b = brotli.Compressor(quality=4)
            self._feed = lambda d: b.process(d) + b.flush()
            self._finish = b.finish
        else:
            z = zstandard.ZstdCompressor(level=3).compressobj()
            self._feed = lambda d: z.compress(d) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            self._finish = z.flush

    def feed(self, data: bytes) -> bytes:
        return self._feed(data)

    def finish(self) -> bytes:
        return self._finish()


def accepted(accept_encoding: bytes | None, offered: tuple[bytes, ...]) -> bytes | None:
    """The first offered encoding the client accepts (q > 0), or None."""
    if not accept_encoding or not offered:
        return None
    prefs: dict[bytes, float] = {}
    for part in accept_encoding.lower().split(b","):
        token, _, params = part.strip().partition(b";")
        q = 1.0
        for p in params.split(b";"):
            k, _, v = p.strip().partition(b"=")
            if k == b"q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        prefs[token.strip()] = q
    for enc in offered:
        q = prefs.get(enc, prefs.get(b"*", 0.0))
        if q > 0:
            return enc
    return None


def compressible(status: int, headers: list[tuple[bytes, bytes]], length: int | None) -> bool:
    if status < 200 or status in (204, 304):
        return False
    if length is not None and length < MIN_LENGTH:
        return False
    ctype = b""
    for n, v in headers:
        if n == b"content-encoding":
            return False
        if n == b"content-type":
            ctype = v.split(b";", 1)[0].strip().lower()
        if n == b"cache-control" and b"no-transform" in v.lower():
            return False
    return ctype in COMPRESSIBLE
