"""The requests in a client's byte stream, as far as ingress rules need them (sans-IO).

The connector passes a public connection's bytes to its origin untouched; where the edge saw
them in clear it also reads each request's host and path here, so that every request — not
only the connection's first — belongs to the rule that chose the origin. HTTP/1.1 is read
with httptools (an absolute-form target's authority wins over Host, as RFC 9112 §3.2.2 says
and the gateway does); HTTP/2 by its frames and HPACK (every header block is decoded, in
order, to keep the dynamic table). Trailers and non-request frames are skipped.
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

import hpack
import httptools

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BLOCK = 256 * 1024  # a header block larger than this is not a request anyone serves
MAX_FRAME = 1 << 20

Request = tuple[str, str]  # (host without port, path)


class NotReadable(ValueError):
    """The bytes are not the protocol they should be (the connection is not served)."""


class Upgraded(Exception):
    """HTTP/1.1 switched protocols: what follows is not requests."""


def _host(authority: str) -> str:
    a = authority.strip().lower()
    if a.startswith("["):
        return a.split("]", 1)[0] + "]"
    return a.rsplit(":", 1)[0] if a.count(":") == 1 else a


def path_of(target: str) -> str:
    return urlsplit(target).path or "/"


class H1Requests:
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._host = b""
        self._done: list[Request] = []

    def on_message_begin(self) -> None:
        self._url = self._host = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self._host = value

    def on_headers_complete(self) -> None:
        target = self._url.decode("latin-1")
        if target.lower().startswith(("http://", "https://")):
            try:
                host = urlsplit(target).hostname or ""
            except ValueError:
                host = "\x00"
        else:
            host = _host(self._host.decode("latin-1"))
        self._done.append((host.lower(), path_of(target)))

    def feed(self, data: bytes) -> list[Request]:
        """The requests whose heads completed in data. Raises Upgraded after a protocol switch
        (the requests before it are in its args), NotReadable for what is not HTTP/1.1."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            done, self._done = self._done, []
            raise Upgraded(done) from None
        except httptools.HttpParserError as e:
            raise NotReadable(str(e)) from None
        done, self._done = self._done, []
        return done


class H2Requests:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._preface = False
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 20  # (the origin's SETTINGS may allow the client more)
        self._block = bytearray()

    def feed(self, data: bytes) -> list[Request]:
        buf = self._buf
        buf += data
        out: list[Request] = []
        if not self._preface:
            if buf[: len(PREFACE)] != PREFACE[: len(buf)]:
                raise NotReadable("not an HTTP/2 connection preface")
            if len(buf) < len(PREFACE):
                return out
            del buf[: len(PREFACE)]
            self._preface = True
        while len(buf) >= 9:
            length = int.from_bytes(buf[0:3], "big")
            if length > MAX_FRAME:
                raise NotReadable(f"a frame of {length} bytes")
            if len(buf) < 9 + length:
                break
            ftype, flags = buf[3], buf[4]
            payload = bytes(buf[9 : 9 + length])
            del buf[: 9 + length]
            if ftype == 0x1:  # HEADERS
                pos, pad = 0, 0
                if flags & 0x8:  # PADDED
                    if not payload:
                        raise NotReadable("a padded HEADERS frame with no padding length")
                    pad, pos = payload[0], 1
                if flags & 0x20:  # PRIORITY
                    pos += 5
                if pos + pad > len(payload):
                    raise NotReadable("HEADERS padding beyond the frame")
                self._block = bytearray(payload[pos : len(payload) - pad])
            elif ftype == 0x9:  # CONTINUATION
                self._block += payload
            else:
                continue
            if len(self._block) > MAX_BLOCK:
                raise NotReadable("a header block larger than 256 KiB")
            if flags & 0x4:  # END_HEADERS
                block, self._block = bytes(self._block), bytearray()
                try:
                    fields = dict(self._decoder.decode(block, raw=False))
                except hpack.HPACKError as e:
                    raise NotReadable(f"HPACK: {e}") from None
                if ":method" in fields:  # (trailers have none)
                    out.append((_host(fields.get(":authority") or fields.get("host", "")), path_of(fields.get(":path", "/"))))
        return out


def reader(alpn: str) -> Callable[[bytes], list[Request]]:
    return (H2Requests() if alpn == "h2" else H1Requests()).feed
