"""A programmable HTTP/1.1 backend for gateway tests (h11 on asyncio, in a thread).

Paths:
  /echo...            200, JSON: method, target, headers, body length and sha256, connection id
  /status/N           answers status N
  /hang               never answers
  /reset              closes the connection without answering
  /garbage            answers bytes that are not HTTP
  /stream?n=K&ms=M    K chunks (server-sent events), M ms apart
  /big?bytes=N        N bytes of body
  /ws                 101 Switching Protocols, then echoes bytes back (upgrade pass-through)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11


class Backend:
    def __init__(self, name: str = "backend", ssl_context: Any = None):
        self.name = name
        self.ssl_context = ssl_context  # serve HTTPS instead of HTTP
        self.port = 0
        self.connections = 0
        self.requests: list[dict] = []
        self.fail_all = False  # answer 500 to everything
        self._ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = next(self._ids)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = None
                body = bytearray()
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(ev, h11.Request):
                        req = ev
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    elif isinstance(ev, h11.ConnectionClosed):
                        return
                assert req is not None
                target = req.target.decode()
                path = urlsplit(target).path
                q = parse_qs(urlsplit(target).query)
                info = {
                    "backend": self.name,
                    "method": req.method.decode(),
                    "target": target,
                    "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
                    "body_len": len(body),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                    "connection": conn_id,
                }
                self.requests.append(info)
                if self.fail_all:
                    path = "/status/500"
                if path == "/hang":
                    await asyncio.sleep(3600)
                if path == "/reset":
                    writer.transport.abort()
                    return
                if path == "/garbage":
                    writer.write(b"this is not http\r\n\r\n")
                    await writer.drain()
                    writer.close()
                    return
                if path == "/ws":
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                    while True:
                        data = await reader.read(65536)
                        if not data:
                            writer.close()
                            return
                        writer.write(data)
                if path.startswith("/status/"):
                    status = int(path.rsplit("/", 1)[1])
                    payload = json.dumps(info).encode()
                    writer.write(conn.send(h11.Response(status_code=status, headers=[("content-length", str(len(payload))), ("x-backend", self.name)])))
                    writer.write(conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
                elif path == "/stream":
                    n = int(q.get("n", ["3"])[0])
                    ms = int(q.get("ms", ["100"])[0])
                    writer.write(conn.send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream")])))
                    for i in range(n):
                        writer.write(conn.send(h11.Data(data=f"data: event {i}\n\n".encode())))
                        await writer.drain()
                        await asyncio.sleep(ms / 1000)
                    writer.write(conn.send(h11.EndOfMessage()))
                elif path == "/big":
                    n = int(q.get("bytes", ["1000000"])[0])
                    writer.write(conn.send(h11.Response(status_code=200, headers=[("content-length", str(n))])))
                    block = b"x" * 65536
                    left = n
                    while left:
                        piece = block[: min(left, len(block))]
                        writer.write(conn.send(h11.Data(data=piece)))
                        left -= len(piece)
                        await writer.drain()
                    writer.write(conn.send(h11.EndOfMessage()))
                else:
                    payload = json.dumps(info).encode()
                    writer.write(
                        conn.send(
                            h11.Response(
                                status_code=200,
                                headers=[
                                    ("content-type", "application/json"),
                                    ("content-length", str(len(payload))),
                                    ("x-backend", self.name),
                                    ("x-upstream-secret", "hop"),
                                    ("connection", "x-upstream-secret"),
                                ],
                            )
                        )
                    )
                    writer.write(conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    writer.close()
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
