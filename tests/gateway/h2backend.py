"""An h2c (HTTP/2 with prior knowledge) backend for gateway tests, on the h2 library."""

from __future__ import annotations

import asyncio
import json
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


class H2Backend:
    """Answers every request with JSON: method, path, authority, headers, body length.

    ``/slow...`` answers after 0.3 s; ``/reset...`` resets its stream; ``/grpc...`` answers as
    gRPC does (a length-prefixed message, then trailers with grpc-status); ``max_streams`` is sent as
    SETTINGS_MAX_CONCURRENT_STREAMS. ``most_in_flight`` is the most streams open at once on
    one connection; ``cancelled`` counts streams the client reset.
    """

    def __init__(self, max_streams: int | None = None) -> None:
        self.requests: list[dict] = []
        self.connections = 0
        self.max_streams = max_streams
        self.most_in_flight = 0
        self.cancelled = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        if self.max_streams is not None:
            conn.local_settings = h2.settings.Settings(client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, dict] = {}
        open_streams: set[int] = set()

        def answer(sid: int, req: dict) -> None:
            open_streams.discard(sid)
            if writer.is_closing():
                return
            body = json.dumps({**req, "protocol": "HTTP/2"}).encode()
            if req["path"].startswith("/grpc"):
                message = b"\x00" + len(body).to_bytes(4, "big") + body
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                conn.send_data(sid, message)
                conn.send_headers(sid, [("grpc-status", "0"), ("grpc-message", "fine")], end_stream=True)
                writer.write(conn.data_to_send())
                return
            try:
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"), ("content-length", str(len(body)))])
                conn.send_data(sid, body, end_stream=True)
            except h2.exceptions.StreamClosedError:
                return
            writer.write(conn.data_to_send())

        while data := await reader.read(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    h = dict(ev.headers)
                    streams[ev.stream_id] = {
                        "method": h[":method"], "path": h[":path"], "authority": h.get(":authority"),
                        "headers": [[n, v] for n, v in ev.headers if not n.startswith(":")], "body_len": 0,
                    }
                    open_streams.add(ev.stream_id)
                    self.most_in_flight = max(self.most_in_flight, len(open_streams))
                elif isinstance(ev, h2.events.DataReceived):
                    streams[ev.stream_id]["body_len"] += len(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    self.cancelled += 1
                    open_streams.discard(ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    req = streams.pop(ev.stream_id)
                    self.requests.append(req)
                    if req["path"].startswith("/reset"):
                        open_streams.discard(ev.stream_id)
                        conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    elif req["path"].startswith("/slow"):
                        self.loop.call_later(0.3, answer, ev.stream_id, req)
                    else:
                        answer(ev.stream_id, req)
            writer.write(conn.data_to_send())
            await writer.drain()
        writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
