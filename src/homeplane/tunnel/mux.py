"""Streams multiplexed over one tunnel connection, on the h2 library.

:class:`Session` is the asyncio protocol of a tunnel connection after its handshake: the
edge's side is the HTTP/2 client (it opens streams), the connector's the server. A
:class:`Stream` carries bytes each way. Credit keeps memory bounded without letting one
stream stall the others: a stream's window (WINDOW_UPDATE on the stream) comes back only
once the local side took its bytes, so a slow client or origin holds at most STREAM_WINDOW
here; the connection's window comes back as soon as bytes arrive, so however many streams
are stalled, the rest of the connection flows.
:class:`Pipe` joins a stream to a local asyncio transport (a client, an origin).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Callable

import homeplane.h2speed  # noqa: F401 (h2's per-frame repr, made cheap)
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from homeplane.tunnel import wire

log = logging.getLogger("homeplane.tunnel")

STREAM_WINDOW = 512 * 1024  # what one stalled stream may hold at the receiver
CONNECTION_WINDOW = 16 * 1024 * 1024  # bytes in flight on the link (returned on arrival)
FRAME_SIZE = 64 * 1024
HIGH_WATER = 512 * 1024  # bytes waiting for credit before the local reader pauses
PING_EVERY = 5.0  # a dead peer is noticed within PING_EVERY + PING_TIMEOUT
PING_TIMEOUT = 5.0
PING_FLOOD = 100  # PING/SETTINGS frames a second above which a peer is cut off (ENHANCE_YOUR_CALM)
MAX_STREAMS = 512  # concurrent streams per connection: with STREAM_WINDOW, what stalled streams may hold


class Stream:
    def __init__(self, session: "Session", stream_id: int):
        self.session = session
        self.id = stream_id
        self.out = bytearray()  # waiting for the peer's credit
        self.end_pending = False
        self.local_ended = False
        self.remote_ended = False
        self.reset = False
        self.holding = False  # the local sink is full: received bytes are not credited yet
        self.uncredited = 0  # taken by the local side, window not yet given back (sent in quarters)
        self.owed = 0
        self.response: dict[str, str] | None = None
        # set by whoever consumes the stream; until then what arrives waits, uncredited
        self.on_data: Callable[[bytes], None] | None = None
        self.backlog: list[bytes] = []
        self.on_end: Callable[[], None] = lambda: None
        self.on_reset: Callable[[], None] = lambda: None
        self.on_response: Callable[[dict[str, str]], None] = lambda h: None
        self.on_pause: Callable[[], None] = lambda: None
        self.on_resume: Callable[[], None] = lambda: None
        self.on_local_end: Callable[[], None] = lambda: None  # our END_STREAM went out
        self.on_arrival: Callable[[], None] = lambda: None  # data (or the end) waits in backlog
        self.paused_reader = False
        self.headers_sent = True  # False on the accepting side until it responds: DATA waits
        self.queued = False  # waiting for the session's flush

    # --- what the local side does -------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.local_ended or self.reset:
            return
        self.out += data
        if len(self.out) > HIGH_WATER and not self.paused_reader:
            self.paused_reader = True
            self.on_pause()
        self.session.queue(self)

    def end(self) -> None:
        if self.local_ended or self.reset:
            return
        self.end_pending = True
        self.session.queue(self)

    def abort(self) -> None:
        if not self.reset and not (self.local_ended and self.remote_ended):
            self.reset = True
            self.session.reset_stream(self)

    def respond(self, status: int, extra: list[tuple[str, str]] | None = None, end: bool = False) -> None:
        self.session.respond(self, status, extra or [], end)
        if end:
            self.local_ended = True

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        if self.uncredited:
            n, self.uncredited = self.uncredited, 0
            self.session.credit(self, n)

    @property
    def done(self) -> bool:
        return self.reset or (self.local_ended and self.remote_ended)


class Session(asyncio.Protocol):
    """One tunnel connection, after the handshake. ``client_side``: the edge."""

    def __init__(
        self,
        client_side: bool,
        on_stream: Callable[["Session", Stream, list[tuple[str, str]]], None] | None = None,
        on_control: Callable[["Session", dict[str, Any]], None] | None = None,
        on_closed: Callable[["Session"], None] | None = None,
        name: str = "",
    ):
        # both ends are homeplane and parse what they need themselves (wire.parse_open): h2's
        # header validation and normalisation is most of a stream's cost, and buys nothing here
        cfg = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8", validate_inbound_headers=False,
                                        validate_outbound_headers=False, normalize_inbound_headers=False,
                                        normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(cfg)
        self.client_side = client_side
        self.on_stream = on_stream
        self.on_control = on_control or (lambda s, m: None)
        self.on_closed = on_closed or (lambda s: None)
        self.name = name
        self.streams: dict[int, Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.draining = False  # the peer (or we) asked for no new streams here
        self.drain_acked = False  # the edge confirmed our "drain": it opens no more streams here
        self.control: Stream | None = None
        self._control_buf = b""
        self._ping: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_event_loop()
        self.opened = 0  # streams ever opened (excluding control)
        self._write_scheduled = False
        self._conn_owed = 0
        self._queued: list[Stream] = []
        self._ping_payload = b""
        self._pings = 0  # PING and SETTINGS frames from the peer in the current second
        self._ping_window = 0.0
        self.write_paused = False

    # --- lifecycle ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.h2.update_settings({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: FRAME_SIZE,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        } if self.client_side else {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: FRAME_SIZE,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        })
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        if self.client_side:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", wire.CONTROL_AUTHORITY),
                                       (":path", wire.CONTROL_PATH)])
            self.control = self._new_stream(sid)
        self._write()
        self._ping = self.loop.call_later(PING_EVERY, self._send_ping)

    def pause_writing(self) -> None:
        """The tunnel's socket is full: every stream stops reading its local side until it drains
        (a peer that stops reading cannot make this side buffer without bound)."""
        self.write_paused = True
        for st in list(self.streams.values()):
            st.on_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        for st in list(self.streams.values()):
            if not st.paused_reader:
                st.on_resume()

    def feed(self, data: bytes) -> None:
        """Bytes read before this protocol took the transport over."""
        if data:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in (self._ping, self._ping_deadline):
            if t is not None:
                t.cancel()
        for s in list(self.streams.values()):
            if not s.done:
                s.reset = True
                s.on_reset()
        self.streams.clear()
        if self.transport is not None:
            self.transport.close()
        self.on_closed(self)

    def close(self) -> None:
        if not self.closed:
            try:
                self.h2.close_connection()
            except h2.exceptions.ProtocolError:
                pass
            self._flush()
        self._finish()

    def _send_ping(self) -> None:
        if self.closed:
            return
        self._ping_payload = os.urandom(8)
        try:
            self.h2.ping(self._ping_payload)
        except h2.exceptions.ProtocolError:
            return
        self._write()
        if self._ping_deadline is None:
            self._ping_deadline = self.loop.call_later(PING_TIMEOUT, self._dead)
        self._ping = self.loop.call_later(PING_EVERY, self._send_ping)

    def _count_ping(self) -> None:
        now = self.loop.time()
        if now - self._ping_window > 1.0:
            self._ping_window, self._pings = now, 0
        self._pings += 1

    def _dead(self) -> None:
        log.warning("tunnel %s: no answer to PING in %.0f s; closing it", self.name, PING_TIMEOUT)
        if self.transport is not None:
            self.transport.abort()
        self._finish()

    @property
    def has_room(self) -> bool:
        h = self.h2
        return h.open_outbound_streams < h.remote_settings.max_concurrent_streams

    @property
    def active_streams(self) -> int:
        return sum(1 for s in self.streams.values() if s is not self.control)

    # --- opening (edge) -----------------------------------------------------------------

    def open(self, headers: list[tuple[str, str]]) -> Stream:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers)
        self._write()
        self.opened += 1
        return self._new_stream(sid)

    def _new_stream(self, sid: int) -> Stream:
        s = Stream(self, sid)
        self.streams[sid] = s
        return s

    def send_control(self, kind: str, **fields: Any) -> None:
        if self.control is not None and not self.closed:
            self.control.send(wire.control_message(kind, **fields))

    # --- h2 plumbing --------------------------------------------------------------------

    def respond(self, s: Stream, status: int, extra: list[tuple[str, str]], end: bool) -> None:
        if self.closed or s.reset:
            return
        try:
            self.h2.send_headers(s.id, [(":status", str(status))] + extra, end_stream=end)
        except h2.exceptions.ProtocolError:
            return
        s.headers_sent = True
        if end:
            s.local_ended = True
            s.out.clear()
        self._write()
        if end:
            self._maybe_forget(s)
        elif s.out or s.end_pending:
            self.flush_stream(s)

    def credit(self, s: Stream, n: int) -> None:
        """The local side took n bytes of s: its window opens again (a quarter at a time)."""
        if self.closed or s.reset:
            return
        s.owed += n
        if s.owed >= STREAM_WINDOW // 4:
            try:
                self.h2.increment_flow_control_window(s.owed, stream_id=s.id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass  # (the stream ended meanwhile: nothing is owed any more)
            s.owed = 0
            self._write()

    def _arrived(self, n: int) -> None:
        """The connection's window: given back as bytes arrive (each stream's bounds its share)."""
        self._conn_owed += n
        if self._conn_owed >= CONNECTION_WINDOW // 4:
            self.h2.increment_flow_control_window(self._conn_owed)
            self._conn_owed = 0

    def reset_stream(self, s: Stream) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(s.id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass
        self.streams.pop(s.id, None)
        self._write()

    def flush_stream(self, s: Stream) -> None:
        if self.closed or s.reset or not s.headers_sent:
            return
        h = self.h2
        try:
            while s.out:
                room = min(h.local_flow_control_window(s.id), h.max_outbound_frame_size, len(s.out))
                if room <= 0:
                    break
                h.send_data(s.id, bytes(s.out[:room]))
                del s.out[:room]
            ended = s.end_pending and not s.out and not s.local_ended
            if ended:
                h.end_stream(s.id)
                s.local_ended = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            s.reset = True
            s.out.clear()
            self.streams.pop(s.id, None)
            s.on_reset()
            return
        self._write()
        if len(s.out) > HIGH_WATER and not s.paused_reader:
            s.paused_reader = True
            s.on_pause()
        elif s.paused_reader and len(s.out) <= HIGH_WATER // 2:
            s.paused_reader = False
            s.on_resume()
        self._maybe_forget(s)
        if ended:
            s.on_local_end()

    def _maybe_forget(self, s: Stream) -> None:
        if s.local_ended and s.remote_ended:
            self.streams.pop(s.id, None)

    def queue(self, s: Stream) -> None:
        """s has bytes (or its end) to send: framed on this loop turn's flush, with whatever
        else arrives for it meanwhile (reads of 16 KiB become frames of up to FRAME_SIZE)."""
        if not s.queued:
            s.queued = True
            self._queued.append(s)
            self._write()

    def _write(self) -> None:
        # one TLS write per loop turn for everything every stream had to send (a write per
        # frame would cost a TLS record and a system call each)
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._queued:
            queued, self._queued = self._queued, []
            self._write_scheduled = True  # (what flush_stream writes goes out just below)
            for st in queued:
                st.queued = False
                self.flush_stream(st)
        self._write_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("tunnel %s: protocol error from the peer: %s", self.name, e)
            self._flush()
            self._finish()
            return
        for ev in events:
            try:
                self._event(ev)
            except Exception:  # one stream's trouble (its local side gone) must not end the connection
                sid = getattr(ev, "stream_id", 0)
                log.exception("tunnel %s: handling %s on stream %s failed; resetting that stream", self.name, type(ev).__name__, sid)
                s = self.streams.get(sid)
                if s is not None and s is not self.control:
                    s.abort()
        if self._pings > PING_FLOOD:
            log.warning("tunnel %s: more than %d PING/SETTINGS frames in a second; closing it", self.name, PING_FLOOD)
            try:
                self.h2.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            except h2.exceptions.ProtocolError:
                pass
            self._flush()
            if self.transport is not None:
                self.transport.abort()
            self._finish()
            return
        self._write()

    def _event(self, ev: Any) -> None:
        if isinstance(ev, h2.events.DataReceived):
            n = ev.flow_controlled_length
            if n:
                self._arrived(n)
            s = self.streams.get(ev.stream_id)
            if s is None or s.reset:
                return
            if s is self.control:
                self._control_data(ev.data)
                self.credit(s, n)
            elif s.on_data is None:
                s.backlog.append(ev.data)
                s.uncredited += n
                s.holding = True
                s.on_arrival()
            else:
                s.on_data(ev.data)
                if s.holding:  # (or the sink filled on these bytes)
                    s.uncredited += n
                elif n:
                    self.credit(s, n)
        elif isinstance(ev, h2.events.RequestReceived):
            headers = list(ev.headers)
            hd = dict(headers)
            s = self._new_stream(ev.stream_id)
            s.headers_sent = False
            if hd.get(":path") == wire.CONTROL_PATH and self.control is None:
                self.control = s
                self.respond(s, 200, [], False)
                return
            # (a stream that crossed our "drain" on the wire is still served)
            if self.on_stream is None:
                s.reset = True
                self.reset_stream(s)
                return
            self.opened += 1
            self.on_stream(self, s, headers)
        elif isinstance(ev, h2.events.ResponseReceived):
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s.response = dict(ev.headers)
                s.on_response(s.response)
        elif isinstance(ev, h2.events.StreamEnded):
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s.remote_ended = True
                s.on_end()
                s.on_arrival()
                self._maybe_forget(s)
        elif isinstance(ev, h2.events.StreamReset):
            s = self.streams.pop(ev.stream_id, None)
            if s is not None and not s.reset:
                s.reset = True
                s.out.clear()
                s.on_reset()
                s.on_arrival()
        elif isinstance(ev, h2.events.WindowUpdated):
            targets = list(self.streams.values()) if ev.stream_id == 0 else [self.streams.get(ev.stream_id)]
            for s in targets:
                if s is not None and (s.out or s.end_pending):
                    self.flush_stream(s)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self._count_ping()
            for s in list(self.streams.values()):
                if s.out:
                    self.flush_stream(s)
        elif isinstance(ev, h2.events.PingAckReceived):
            # (the payload is fresh each time: acknowledging means having read the connection)
            if ev.ping_data == self._ping_payload and self._ping_deadline is not None:
                self._ping_deadline.cancel()
                self._ping_deadline = None
        elif isinstance(ev, (h2.events.PingReceived, h2.events.SettingsAcknowledged)):
            self._count_ping()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._finish()

    def _control_data(self, data: bytes) -> None:
        self._control_buf += data
        if len(self._control_buf) > 65536:
            self._control_buf = b""
            return
        while b"\n" in self._control_buf:
            line, _, self._control_buf = self._control_buf.partition(b"\n")
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                if msg.get("type") == "drain":
                    self.draining = True
                elif msg.get("type") == "drain-ack":
                    self.drain_acked = True
                self.on_control(self, msg)


class Pipe(asyncio.Protocol):
    """A local connection joined to a stream: bytes each way, half-closes and resets passed on."""

    def __init__(self, stream: Stream, on_done: Callable[["Pipe"], None] | None = None):
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self.on_done = on_done
        self.finished = False
        self.pending = stream.backlog[:]  # arrived before this pipe: written once connected
        stream.backlog.clear()
        self.bytes_in = 0  # from the local side
        self.bytes_out = 0
        stream.on_data = self._tunnel_data
        stream.on_end = self._tunnel_end
        stream.on_reset = self._tunnel_reset
        stream.on_pause = self._pause
        stream.on_resume = self._resume
        stream.on_local_end = self._check_done

    # local side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        s = self.stream
        loop = asyncio.get_event_loop()
        if s.reset:
            # (never closed from inside connection_made: uvloop's create_connection(sock=...) then
            # closes the descriptor a second time, perhaps another connection's by then)
            loop.call_soon(self._tunnel_reset)
            return
        for d in self.pending:
            Pipe._tunnel_data(self, d)  # (already seen by any subclass's reading, when it arrived)
        self.pending = []
        if s.remote_ended:
            loop.call_soon(self._tunnel_end)
        s.release()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.stream.send(data)

    def eof_received(self) -> bool:
        self.stream.end()
        self._check_done()
        # keep the other direction open (TLS cannot: its close_notify ends the connection)
        return self.transport is None or self.transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.stream
        if s.reset:
            pass
        elif s.local_ended or s.end_pending or (exc is None and s.remote_ended):
            # a clean end (TLS reports close_notify as a close): what we had goes out; whatever
            # still arrives has nowhere to go and is dropped, credited, so the peer never stalls
            s.end()
            s.release()
        else:
            s.abort()  # gone mid-way: the peer must stop sending, not wait for credit
        self._done()

    def pause_writing(self) -> None:
        self.stream.hold()

    def resume_writing(self) -> None:
        self.stream.release()

    # tunnel side
    def _tunnel_data(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            self.pending.append(data)
        elif not t.is_closing():
            self.bytes_out += len(data)
            t.write(data)

    def _tunnel_end(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
            self._check_done()
        else:
            t.close()

    def _tunnel_reset(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._done()

    def _pause(self) -> None:
        if self.transport is not None:
            try:
                self.transport.pause_reading()
            except RuntimeError:
                pass

    def _resume(self) -> None:
        if self.transport is not None:
            try:
                self.transport.resume_reading()
            except RuntimeError:
                pass

    def _check_done(self) -> None:
        if self.stream.local_ended and self.stream.remote_ended and self.transport is not None:
            self.transport.close()

    def _done(self) -> None:
        if not self.finished:
            self.finished = True
            if self.on_done is not None:
                self.on_done(self)
