"""QUIC for an HTTPS port (ClientTrafficPolicy ``http3``): one UDP socket, many connections.

aioquic is the QUIC stack, used sans-IO: :class:`QuicEndpoint` owns the socket, gives each
datagram to its connection by connection ID, drives each connection's timer with the event loop
(``loop.call_at`` on ``QuicConnection.get_timer()``, as aioquic's own asyncio layer does), and
hands QUIC events to the HTTP/3 session (``frontends/http3.py``). It is our own rather than
``aioquic.asyncio.serve`` because a gateway needs what that server does not do: the
certificate chosen by the ClientHello's server name, the same limits as TCP (connections in
all, handshakes per source address), stateless Retry when handshakes pile up, and 0-RTT
accepted only where the request is safe to replay.

The limits before a handshake completes (RFC 9000 §8): aioquic sends at most three times what
an unvalidated address sent; on top of that one source address may hold
``HALF_OPEN_PER_SOURCE`` unfinished handshakes, and above ``RETRY_ABOVE`` unfinished
handshakes in all every new connection must first echo a Retry token (which proves the
address) - the shape of Envoy's and quiche's defences.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_quic_retry, encode_quic_version_negotiation, pull_quic_header
from aioquic.tls import AlertDecodeError, SessionTicket, pull_client_hello
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from homeplane.gateway.tls import choose
from homeplane.translate import snapshot as ir

log = logging.getLogger("homeplane.gateway")
# aioquic logs every connection's version and ALPN at INFO: a line per client is noise in a
# gateway's log (the access log already has one per request); its warnings still show
logging.getLogger("quic").setLevel(logging.WARNING)

HALF_OPEN_PER_SOURCE = 16  # unfinished handshakes one address (IPv6: one /64) may hold
HANDSHAKE_TIMEOUT = 10.0  # seconds a handshake may take before its connection is dropped
RETRY_ABOVE = 256  # unfinished handshakes in all above which new connections must echo a Retry token
RETRY_TOKEN_LIFETIME = 10.0  # seconds
MAX_IDLE = 300.0  # seconds: Envoy's QUIC idle_network_timeout default; a listener's own is used when shorter
TICKETS = 4096  # session tickets remembered for resumption (and 0-RTT)
SOCKET_BUFFER = 4 << 20  # bytes, each way

QuicCert = tuple[Any, list[Any], Any]  # certificate, chain, private key (cryptography objects)


def socket_buffers(sock: Any, size: int = SOCKET_BUFFER) -> None:
    """Room for bursts: one socket carries every connection's datagrams, and what overflows
    the kernel's default (about 200 KiB) is loss that QUIC's congestion control pays for. The
    FORCE options pass net.core.rmem_max where the process may (CAP_NET_ADMIN)."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


def load_cert(cert: ir.TLSCert) -> QuicCert:
    """A listener certificate in the form aioquic signs with (parsed once per Snapshot)."""
    chain = x509.load_pem_x509_certificates(cert.cert_pem)
    key = load_pem_private_key(bytes(cert.key_pem), password=None)
    return chain[0], chain[1:], key


class _RetryTokens:
    """Stateless Retry tokens (RFC 9000 §8.1.2): the client address, both connection IDs and
    the time, sealed with a key only this endpoint knows."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=128))

    def create(self, addr: Any, odcid: bytes, scid: bytes) -> bytes:
        nonce = os.urandom(12)
        plain = struct.pack("!dB", time.time(), len(odcid)) + odcid + scid
        return nonce + self._aead.encrypt(nonce, plain, _addr_bytes(addr))

    def validate(self, addr: Any, token: bytes) -> tuple[bytes, bytes] | None:
        if len(token) < 12 + 16 + 9:
            return None
        try:
            plain = self._aead.decrypt(token[:12], token[12:], _addr_bytes(addr))
        except InvalidTag:
            return None
        made, n = struct.unpack_from("!dB", plain)
        if not 0 <= time.time() - made <= RETRY_TOKEN_LIFETIME:
            return None
        return plain[9 : 9 + n], plain[9 + n :]


def _addr_bytes(addr: Any) -> bytes:
    return f"{addr[0]}|{addr[1]}".encode()


class _Tickets:
    """Session tickets this endpoint issued, for resumption (bounded, oldest forgotten first)."""

    def __init__(self) -> None:
        self._store: OrderedDict[bytes, SessionTicket] = OrderedDict()

    def add(self, ticket: SessionTicket) -> None:
        self._store[ticket.ticket] = ticket
        while len(self._store) > TICKETS:
            self._store.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        return self._store.pop(label, None)  # single use: a replayed ticket finds nothing


def source_key(addr: Any) -> str:
    """Whom the per-source handshake limit counts: an IPv4 address, or an IPv6 /64 (one host
    has a whole /64 to pick addresses from)."""
    host = str(addr[0])
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))


class ServerConnection(QuicConnection):
    """aioquic's connection with what a gateway adds: the certificate chosen from the
    ClientHello's server name, and flow control that follows the application as HTTP/2's
    does. aioquic would double a peer's credit as data arrives; here a stream may have
    ``stream_window`` bytes beyond what was consumed, and the connection ``conn_window``
    beyond all that was consumed - where a request body the upstream cannot take yet is not
    consumed (``hold``/``release``) - so a slow upstream stalls its own stream and bounds the
    memory, not the other streams. Open request streams are capped at ``max_streams``, and
    the peer's unidirectional streams at what it was first allowed (HTTP/3 needs three)."""

    def __init__(self, *, pick: Callable[[str], QuicCert | None], max_streams: int, stream_window: int, conn_window: int, **kw: Any):
        super().__init__(**kw)
        self.pick = pick
        self.sni: str | None = None
        self.held: set[int] = set()  # request streams whose body the upstream cannot take now
        self.unconsumed: dict[int, int] = {}  # bytes received on held streams, not yet consumed
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.conn_window = conn_window
        self._local_max_streams_bidi.value = max_streams  # no setting for it in QuicConfiguration

    def hold(self, stream_id: int) -> None:
        self.held.add(stream_id)

    def received(self, stream_id: int, n: int) -> None:
        """Body bytes handed to the application: unconsumed while the stream is held."""
        if stream_id in self.held:
            self.unconsumed[stream_id] = self.unconsumed.get(stream_id, 0) + n

    def release(self, stream_id: int) -> None:
        self.held.discard(stream_id)
        self.unconsumed.pop(stream_id, None)

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        data, streams, uni = self._local_max_data, self._local_max_streams_bidi, self._local_max_streams_uni
        target = data.used - sum(self.unconsumed.values()) + self.conn_window
        if target - data.value >= self.conn_window // 2:  # (not a MAX_DATA per packet)
            data.value = target
        if streams.used + self.max_streams > streams.value:
            # the peer's streams so far, less those still open (aioquic forgets a stream once
            # both its directions are done): MAX_STREAMS lets max_streams be open at once
            open_now = sum(1 for sid in self._streams if sid % 4 == 0)
            streams.value = max(streams.value, streams.used - open_now + self.max_streams)
        used = (data.used, streams.used, uni.used)
        data.used = streams.used = uni.used = 0  # aioquic's own rule (double at half used) stays out
        try:
            super()._write_connection_limits(builder, space)
        finally:
            data.used, streams.used, uni.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if stream.max_stream_data_local:
            received = stream.receiver.highest_offset
            target = received - self.unconsumed.get(stream.stream_id, 0) + self.stream_window
            if target - stream.max_stream_data_local >= self.stream_window // 2:
                stream.max_stream_data_local = target
            stream.receiver.highest_offset = 0  # aioquic's doubling rule stays out (read there only)
            try:
                super()._write_stream_limits(builder, space, stream)
            finally:
                stream.receiver.highest_offset = received
        else:
            super()._write_stream_limits(builder, space, stream)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        ctx = self.tls
        handle = ctx._server_handle_hello

        def with_sni(input_buf: Buffer, *out: Buffer) -> None:
            # read the ClientHello once to learn the name, then let aioquic read it for real
            start = input_buf.tell()
            try:
                name = pull_client_hello(input_buf).server_name
            except Exception as e:  # (a name that is not ASCII raises UnicodeDecodeError)
                raise AlertDecodeError(f"unreadable ClientHello: {e}") from None
            input_buf.seek(start)
            self.sni = name.lower() if name else None
            chosen = self.pick(self.sni or "")
            if chosen is not None:
                ctx.certificate, ctx.certificate_chain, ctx.certificate_private_key = chosen
            handle(input_buf, *out)

        ctx._server_handle_hello = with_sni  # type: ignore[method-assign]


class QuicEndpoint(asyncio.DatagramProtocol):
    """One UDP port serving QUIC. ``session_factory(endpoint, connection, addr)`` makes the
    application's object for a new connection (``frontends.http3.H3Session``), or None to
    refuse it; a session is given the connection's datagrams (``datagram``) and reports back
    through ``handshake_done``, ``cid_issued``, ``cid_retired`` and ``ended``."""

    def __init__(self, session_factory: Callable[[QuicEndpoint, ServerConnection, Any], Any], max_connections: int = 10_000):
        self.session_factory = session_factory
        self.max_connections = max_connections
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("", 0)
        self.by_cid: dict[bytes, Any] = {}  # connection ID -> session
        self.sessions: set[Any] = set()
        self.half_open: dict[str, int] = {}  # source address -> handshakes not finished
        self.retry = _RetryTokens()
        self.tickets = _Tickets()
        self.certs: list[tuple[str | None, list[tuple[ir.TLSCert, QuicCert]]]] = []
        self.idle_timeout = MAX_IDLE
        self.max_streams = 100
        self.stream_window = 1 << 20
        self.conn_window = 16 << 20
        self.stats = {"retries": 0, "refused": 0, "version_negotiations": 0}
        self.draining = False

    # --- configuration --------------------------------------------------------------------

    def configure(self, listeners: Sequence[tuple[str | None, Sequence[ir.TLSCert]]], idle_timeout: float | None, max_streams: int,
                  stream_window: int = 1 << 20, conn_window: int = 16 << 20) -> None:
        """The port's certificates (by listener hostname, as the TCP side chooses them) and
        limits (the listener's HTTP/2 settings: streams and windows); connections made from
        now on use them."""
        self.certs = [(hostname, [(c, load_cert(c)) for c in certs]) for hostname, certs in listeners if certs]
        self.idle_timeout = min(idle_timeout or MAX_IDLE, MAX_IDLE)
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.conn_window = max(conn_window, stream_window)

    def pick(self, name: str) -> QuicCert | None:
        return choose(self.certs, name) or (self.certs[0][1][0][1] if self.certs else None)

    def configuration(self) -> QuicConfiguration:
        first = self.pick("")
        assert first is not None
        return QuicConfiguration(
            is_client=False, alpn_protocols=["h3"], idle_timeout=self.idle_timeout,
            max_data=self.conn_window, max_stream_data=self.stream_window,
            certificate=first[0], certificate_chain=first[1], private_key=first[2],
            max_datagram_frame_size=None,
        )

    # --- sockets --------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        await self.loop.create_datagram_endpoint(lambda: self, local_addr=(host, port), family=fam)

    def drain(self) -> None:
        """Stop taking connections; idle ones close now, the others when their last request
        ends (``session_idle``), and the socket when no connection is left."""
        self.draining = True
        for s in list(self.sessions):
            s.goaway()
        self._close_if_drained()

    def session_idle(self, session: Any) -> None:
        if self.draining:
            session.close()

    def _close_if_drained(self) -> None:
        if self.draining and not self.sessions and self.transport is not None:
            self.transport.close()
            self.transport = None

    @property
    def address(self) -> tuple[str, int]:
        return self.local

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = transport.get_extra_info("sockname")[:2]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            socket_buffers(sock)

    # --- datagrams ------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            return  # not QUIC: dropped, as every QUIC server does (no answer to amplify)
        session = self.by_cid.get(header.destination_cid)
        if session is not None:
            self._deliver(session, data, addr)
            return
        if header.version is not None and header.version not in QuicConfiguration().supported_versions:
            if len(data) >= SMALLEST_MAX_DATAGRAM_SIZE:  # only a padded Initial earns an answer
                self.stats["version_negotiations"] += 1
                self._send(encode_quic_version_negotiation(
                    source_cid=header.destination_cid, destination_cid=header.source_cid,
                    supported_versions=QuicConfiguration().supported_versions,
                ), addr)
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE or not self.certs or self.draining:
            return
        source = source_key(addr)
        if len(self.sessions) >= self.max_connections or self.half_open.get(source, 0) >= HALF_OPEN_PER_SOURCE:
            self.stats["refused"] += 1
            return
        odcid, retry_scid = header.destination_cid, None
        if header.token:
            ids = self.retry.validate(addr, header.token)
            if ids is None:
                return  # a forged, stale or other address's token
            odcid, retry_scid = ids
        elif sum(self.half_open.values()) >= RETRY_ABOVE:
            scid = os.urandom(8)
            self.stats["retries"] += 1
            self._send(encode_quic_retry(
                version=header.version, source_cid=scid, destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=self.retry.create(addr, header.destination_cid, scid),
            ), addr)
            return
        conn = ServerConnection(
            pick=self.pick, max_streams=self.max_streams, stream_window=self.stream_window, conn_window=self.conn_window,
            configuration=self.configuration(), original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid, session_ticket_fetcher=self.tickets.pop, session_ticket_handler=self.tickets.add,
        )
        session = self.session_factory(self, conn, addr)
        if session is None:
            self.stats["refused"] += 1
            return
        self.sessions.add(session)
        self.half_open[source] = self.half_open.get(source, 0) + 1
        session.source = source
        session.cids = {header.destination_cid, conn.host_cid}
        for cid in session.cids:
            self.by_cid[cid] = session
        session.handshake_timer = self.loop.call_later(HANDSHAKE_TIMEOUT, session.handshake_expired)
        self._deliver(session, data, addr)

    def _deliver(self, session: Any, data: bytes, addr: Any) -> None:
        """A datagram to its connection; a connection that raises is dropped, not the endpoint."""
        try:
            session.datagram(data, addr)
        except Exception:
            log.exception("QUIC connection from %s failed; dropped", addr[0])
            session.abort()

    def _send(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for one peer (port unreachable): its connection times out

    # --- what sessions report -------------------------------------------------------------

    def handshake_done(self, session: Any) -> None:
        session.handshake_timer.cancel()
        self._unhalf(session.source)

    def cid_issued(self, cid: bytes, session: Any) -> None:
        session.cids.add(cid)
        self.by_cid[cid] = session

    def cid_retired(self, cid: bytes, session: Any) -> None:
        session.cids.discard(cid)
        self.by_cid.pop(cid, None)

    def ended(self, session: Any, handshake_done: bool) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        for cid in session.cids:
            if self.by_cid.get(cid) is session:
                del self.by_cid[cid]
        if not handshake_done:
            session.handshake_timer.cancel()
            self._unhalf(session.source)
        self._close_if_drained()

    def _unhalf(self, source: str) -> None:
        n = self.half_open.get(source, 0) - 1
        if n > 0:
            self.half_open[source] = n
        else:
            self.half_open.pop(source, None)


class QuicDriver:
    """The I/O half of one QUIC connection: datagrams in and out, its timer on the event
    loop, its events to ``on_event``. Sending waits for the end of the loop turn
    (``schedule``): the datagrams read in one turn and the answers written in it leave as one
    pass of packets (fewer, fuller packets; one ACK for several)."""

    def __init__(self, endpoint: QuicEndpoint, conn: ServerConnection, addr: Any, on_event: Callable[[Any], None]):
        self.endpoint = endpoint
        self.quic = conn
        self.addr = addr
        self.on_event = on_event
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.scheduled = False
        self.stopped = False

    def datagram(self, data: bytes, addr: Any) -> None:
        self.quic.receive_datagram(data, addr, now=self.endpoint.loop.time())
        self.process()

    def process(self) -> None:
        """Events first, then (at the end of the turn) what they made to send."""
        quic = self.quic
        event = quic.next_event()
        while event is not None:
            self.on_event(event)
            event = quic.next_event()
        self.schedule()

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.endpoint.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        if not self.stopped:
            self.transmit()

    def transmit(self) -> None:
        loop = self.endpoint.loop
        for data, addr in self.quic.datagrams_to_send(now=loop.time()):
            self.endpoint._send(data, addr)
        at = self.quic.get_timer()
        if at != self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(at, self._fire) if at is not None else None
            self.timer_at = at

    def _fire(self) -> None:
        self.timer = self.timer_at = None
        self.quic.handle_timer(now=self.endpoint.loop.time())
        self.process()

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
