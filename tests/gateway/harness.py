"""Run the gateway data plane in a background event loop, fed from manifest text."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
from typing import Any

import uvloop

from homeplane.api.loader import LoadOptions, LoadResult, load_text
from homeplane.gateway.server import BindPlan, DataPlane, Settings
from homeplane.translate import Translation, translate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A DataPlane on loopback. Listener ports are mapped to free local ports: ``port(80)``."""

    def __init__(self, manifests: str, settings: Settings | None = None, **variables: str):
        self.loop = uvloop.new_event_loop()
        self.ports: dict[int, int] = {}
        self.settings = settings or Settings(access_log=False)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.dp: DataPlane = self.call(self._make())
        self.apply(manifests, **variables)

    async def _make(self) -> DataPlane:
        dp = DataPlane(self.settings, BindPlan(self.ports, {}, "127.0.0.1"))
        await dp.start()
        return dp

    def call(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def translate(self, manifests: str, **variables: str) -> Translation:
        loaded = LoadResult()
        load_text(textwrap.dedent(manifests), "test.yaml", LoadOptions(variables=variables), loaded)
        assert not loaded.diagnostics.errors, [str(d) for d in loaded.diagnostics.errors]
        return translate(loaded.objects)

    def apply(self, manifests: str, **variables: str) -> Translation:
        tr = self.translate(manifests, **variables)
        for g in tr.snapshot.gateways:
            for ls in g.listeners:
                self.ports.setdefault(ls.port, free_port())
        self.call(self.dp.apply(tr.snapshot))
        return tr

    def port(self, listener_port: int) -> int:
        return self.ports[listener_port]

    def url(self, listener_port: int = 80, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port(listener_port)}{path}"

    def close(self) -> None:
        self.call(self.dp.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()  # its selector and wakeup descriptors: the suite runs in one process


def closed_without_answer(port: int) -> bool:
    """Does a new connection to the port get closed before any answer (a connection cap)?"""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n\r\n")
            return s.recv(100) == b""
        except ConnectionResetError:
            return True
