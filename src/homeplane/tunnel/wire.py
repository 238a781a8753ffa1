"""What the edge and the connector say to each other, apart from the HTTP/2 framing.

A tunnel connection is TLS from the connector (at home, dialling out) to the edge. It opens
with one HTTP/1.1 Upgrade request carrying the token; after ``101`` the roles turn around
and the *edge* is the HTTP/2 client: it opens one stream per public connection towards the
connector, as cloudflared's HTTP/2 transport does. Stream 1 is the control stream (JSON lines
each way: ``drain``). Every other stream is a ``CONNECT`` whose headers say what the edge
knows of the public connection. Pure functions only.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from hpack import NeverIndexedHeaderTuple

UPGRADE = "homeplane-tunnel/1"
MAX_HEAD = 8192
CONTROL_PATH = "/control"
CONTROL_AUTHORITY = "homeplane-tunnel"

# kinds of stream: what the bytes on it are
KIND_TLS = "tls"  # the client's TLS, passed through by SNI (the home gateway terminates it)
KIND_HTTP = "http"  # plaintext HTTP: from the edge's HTTP port, or TLS the edge terminated
KIND_TCP = "tcp"  # bytes of a TCP port the edge forwards
KINDS = (KIND_TLS, KIND_HTTP, KIND_TCP)


class HandshakeError(ValueError):
    pass


# what a stream may name: a DNS name, as a public client's SNI or Host says it (or none);
# anything else is refused at the edge and again at the connector
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def valid_hostname(name: str) -> bool:
    if name == "":
        return True
    if len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.removesuffix(".").split("."))


def connector_hello(edge_host: str, token: str, connector: str, index: int) -> bytes:
    return (
        f"GET /tunnel HTTP/1.1\r\nHost: {edge_host}\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE}\r\n"
        f"Authorization: Bearer {token}\r\nHomeplane-Connector: {connector}\r\nHomeplane-Connection: {index}\r\n\r\n"
    ).encode()


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HandshakeError("undecodable") from None
    lines = text.split("\r\n\r\n", 1)[0].split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError(f"bad header line {line[:40]!r}")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields


@dataclass(frozen=True)
class Hello:
    token: str
    connector: str
    index: int


def parse_hello(head: bytes) -> Hello:
    start, fields = _parse_head(head)
    parts = start.split(" ")
    if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/1."):
        raise HandshakeError("not a tunnel handshake")
    if fields.get("upgrade", "").lower() != UPGRADE:
        raise HandshakeError(f"Upgrade: {UPGRADE} expected")
    auth = fields.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise HandshakeError("no bearer token")
    try:
        index = int(fields.get("homeplane-connection", "0"))
    except ValueError:
        raise HandshakeError("bad Homeplane-Connection") from None
    return Hello(auth[7:].strip(), fields.get("homeplane-connector", "")[:128] or "connector", index)


def edge_accept(edge_name: str) -> bytes:
    return (
        f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE}\r\nHomeplane-Edge: {edge_name}\r\n\r\n"
    ).encode()


def edge_refuse(status: int, reason: str, message: str) -> bytes:
    body = message.encode() + b"\n"
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def parse_accept(head: bytes) -> str:
    """The edge's name from its answer; HandshakeError with its message when it refused."""
    start, fields = _parse_head(head)
    parts = start.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeError(f"edge refused the tunnel: {start}")
    return fields.get("homeplane-edge", "edge")


@dataclass(frozen=True)
class Open:
    """A public connection, as the edge tells the connector."""

    kind: str
    hostname: str  # SNI, Host, or the TCP port's configured name
    client: tuple[str, int]
    alpn: str = ""  # for KIND_HTTP from a TLS the edge terminated: what the client chose
    plain: bool = False  # KIND_HTTP from the edge's HTTP port: the client used no TLS

    def headers(self) -> list[tuple[str, str]]:
        # the client's address differs on every stream: never indexed, so it does not churn
        # HPACK's dynamic table (whose search is linear) for the names that do repeat
        h = [(":method", "CONNECT"), (":authority", self.hostname or "_"), ("hp-kind", self.kind),
             NeverIndexedHeaderTuple("hp-client", f"{self.client[0]} {self.client[1]}")]
        if self.alpn:
            h.append(("hp-alpn", self.alpn))
        if self.plain:
            h.append(("hp-scheme", "http"))
        return h


def parse_open(headers: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> Open:
    h = {(k.decode() if isinstance(k, bytes) else k): (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in headers}
    if h.get(":method") != "CONNECT":
        raise ValueError("tunnel stream: CONNECT expected")
    kind = h.get("hp-kind", "")
    if kind not in KINDS:
        raise ValueError(f"tunnel stream: unknown kind {kind!r}")
    ip, _, port = h.get("hp-client", "").partition(" ")
    try:
        client = (str(ipaddress.ip_address(ip)), int(port))
    except ValueError:
        raise ValueError(f"tunnel stream: bad hp-client {h.get('hp-client', '')[:60]!r}") from None
    if not 0 <= client[1] <= 65535:
        raise ValueError(f"tunnel stream: bad hp-client port {client[1]}")
    name = h.get(":authority", "")
    name = "" if name == "_" else name.lower()
    if not valid_hostname(name):
        raise ValueError(f"tunnel stream: bad hostname {name[:80]!r}")
    alpn = h.get("hp-alpn", "")
    if alpn not in ("", "h2", "http/1.1"):
        raise ValueError(f"tunnel stream: bad hp-alpn {alpn[:40]!r}")
    return Open(kind, name, client, alpn, h.get("hp-scheme") == "http")


def control_message(kind: str, **fields: object) -> bytes:
    return json.dumps({"type": kind, **fields}, separators=(",", ":")).encode() + b"\n"
