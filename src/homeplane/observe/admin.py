"""The admin endpoint on loopback: ``/healthz``, ``/readyz``, ``/status``, ``/metrics``.

A small HTTP/1.1 server on h11 (the admin API is not a hot path; h11's strict
parsing matters more than speed here). Handlers are plain functions from path to
``(status, content_type, body)``, registered by the runtime.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Awaitable, Callable

import h11

log = logging.getLogger("homeplane.admin")

Handler = Callable[[str], tuple[int, str, bytes]]
# method, target, body, headers -> status, content type, body (for APIs that take requests with bodies)
AsyncHandler = Callable[[str, str, bytes, dict[str, str]], Awaitable[tuple[int, str, bytes]]]

_MAX_REQUEST = 16 * 1024
OPEN_PATHS = frozenset(("/metrics", "/healthz", "/readyz"))  # for scrapers and probes, by any name


class AdminServer:
    def __init__(self, host: str, port: int, max_body: int = 0, check_host: bool = False):
        self.host = host
        self.check_host = check_host  # see host_allowed (not for webhooks other sites call by name)
        self.port = port
        self.max_body = max_body  # request bodies are read (up to this) only when > 0
        self.routes: dict[str, Handler] = {}
        self.api_routes: dict[str, AsyncHandler] = {}
        self._names: set[str] | None = None
        self._server: asyncio.base_events.Server | None = None

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def api_route(self, path: str, handler: AsyncHandler) -> None:
        """``path`` ending in "/" serves every path under it."""
        self.api_routes[path] = handler

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
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await asyncio.wait_for(reader.read(8192), timeout=30))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    if not self.max_body:
                        continue  # admin requests carry no meaningful body
                    if len(body) + len(event.data) > self.max_body:
                        await self._reply(conn, writer, 413, "text/plain", b"request body too large\n", close=True)
                        break
                    body += event.data
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    status, ctype, out = await self._dispatch_any(request, bytes(body))
                    body.clear()
                    head = h11.Response(
                        status_code=status,
                        headers=[("content-type", ctype), ("content-length", str(len(out))), ("cache-control", "no-store")],
                    )
                    payload = out if request.method != b"HEAD" and status not in (204, 304) else b""
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
    async def _reply(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, close: bool = False) -> None:
        headers = [("content-type", ctype), ("content-length", str(len(body)))] + ([("connection", "close")] if close else [])
        try:
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
        except h11.LocalProtocolError:
            pass

    def host_allowed(self, req: h11.Request) -> bool:
        """DNS rebinding: a web page the user opens could name its own domain and reach this
        endpoint through the browser. The status page, flows and APIs answer only a Host that is
        an address, localhost, this machine's name, or the name --admin gave."""
        raw = next((v for k, v in req.headers if k == b"host"), b"").decode("latin-1").strip().lower()
        host = raw[1:raw.find("]")] if raw.startswith("[") else raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
        if not host:
            return True  # HTTP/1.0 without Host: not a browser
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
        if self._names is None:
            self._names = {"localhost", self.host.lower(), socket.gethostname().lower(), socket.getfqdn().lower()}
        return host.rstrip(".") in self._names

    async def _dispatch_any(self, req: h11.Request, body: bytes) -> tuple[int, str, bytes]:
        target = req.target.decode("latin-1")
        path = target.split("?", 1)[0]
        if self.check_host and path not in OPEN_PATHS and not self.host_allowed(req):
            return 403, "text/plain", b"Host not allowed: use an address, localhost or this machine's name\n"
        api = self.api_routes.get(path)
        if api is None and "/" in path[1:]:
            api = self.api_routes.get(path[: path.index("/", 1) + 1])
        if api is None:
            return self._dispatch(req)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        try:
            return await api(req.method.decode("latin-1"), target, body, headers)
        except Exception:  # a handler bug must not take the process down
            log.exception("API handler for %s failed", target)
            return 500, "text/plain", b"internal error\n"

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
