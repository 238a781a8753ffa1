"""An h2c (HTTP/2 with prior knowledge) backend for gateway tests, on the h2 library."""

from __future__ import annotations

import asyncio
import json
import threading

import h2.config
import h2.connection
import h2.events


class H2Backend:
    """Answers every request with JSON: method, path, authority, headers, body length."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.connections = 0
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
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, dict] = {}
        while data := await reader.read(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    h = dict(ev.headers)
                    streams[ev.stream_id] = {
                        "method": h[":method"], "path": h[":path"], "authority": h.get(":authority"),
                        "headers": [[n, v] for n, v in ev.headers if not n.startswith(":")], "body_len": 0,
                    }
                elif isinstance(ev, h2.events.DataReceived):
                    streams[ev.stream_id]["body_len"] += len(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    req = streams.pop(ev.stream_id)
                    self.requests.append(req)
                    body = json.dumps({**req, "protocol": "HTTP/2"}).encode()
                    conn.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/json"), ("content-length", str(len(body)))])
                    conn.send_data(ev.stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
        writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
