"""A JSON API on a real loopback socket, in a thread: the plumbing the provider fakes share."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class Reply(Exception):
    """Raised by a fake's handler to answer with this status, JSON body and headers."""

    def __init__(self, status: int, doc: Any, headers: dict[str, str] | None = None):
        self.status, self.doc, self.headers = status, doc, headers or {}


class JsonServer:
    """Subclasses implement ``handle(method, path, query, headers, body) -> (status, doc, headers)``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):  # noqa: ANN204
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: Any) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _do(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        raise Reply(400, {"error": "malformed JSON"}) from None
                    status, doc, headers = fake.handle(self.command, url.path, parse_qs(url.query), self.headers, body)
                except Reply as r:
                    status, doc, headers = r.status, r.doc, r.headers
                data = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _do

        return Handler
