"""The admin endpoint on loopback: ``/healthz``, ``/readyz``, ``/status``, ``/metrics``.

A small HTTP/1.1 server on h11 (the admin API is not a hot path; h11's strict
parsing matters more than speed here). Handlers are plain functions from path to
``(status, content_type, body)``, registered by the runtime.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import h11

log = logging.getLogger("homeplane.admin")

Handler = Callable[[str], tuple[int, str, bytes]]

_MAX_REQUEST = 16 * 1024


class AdminServer:
    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.routes: dict[str, Handler] = {}
        self._server: asyncio.base_events.Server | None = None

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
        request: h11.Request | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await asyncio.wait_for(reader.read(8192), timeout=30))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    pass  # admin requests carry no meaningful body
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    status, ctype, body = self._dispatch(request)
                    head = h11.Response(
                        status_code=status,
                        headers=[("content-type", ctype), ("content-length", str(len(body))), ("cache-control", "no-store")],
                    )
                    payload = body if request.method != b"HEAD" else b""
                    writer.write(conn.send(head) + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    if conn.our_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                    request = None
                else:
                    break
        except h11.RemoteProtocolError as e:
            self._bad_request(conn, writer, e)
        except (asyncio.TimeoutError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _bad_request(conn: h11.Connection, writer: asyncio.StreamWriter, e: h11.RemoteProtocolError) -> None:
        body = f"bad request: {e}\n".encode()
        try:
            writer.write(
                conn.send(
                    h11.Response(
                        status_code=e.error_status_hint,
                        headers=[("content-type", "text/plain"), ("content-length", str(len(body))), ("connection", "close")],
                    )
                )
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
        except h11.LocalProtocolError:
            pass

    def _dispatch(self, req: h11.Request) -> tuple[int, str, bytes]:
        target = req.target.decode("latin-1")
        path = target.split("?", 1)[0]
        if req.method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        handler = self.routes.get(path)
        if handler is None:
            return 404, "text/plain", f"not found: {path}\n".encode()
        try:
            return handler(target)
        except Exception:  # an admin handler bug must not take the process down
            log.exception("admin handler for %s failed", path)
            return 500, "text/plain", b"internal error\n"
