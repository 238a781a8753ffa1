"""Extra data-plane processes (``homeplane run --workers N``).

The main process keeps the control plane (loading, translation, watching, the
admin endpoint, the state store) and one data plane. Each extra worker is a
separate Python process running only a data plane; all of them bind the same
sockets with SO_REUSEPORT, and the kernel spreads connections over them. A new
Snapshot reaches the workers pickled over their stdin (with the bind addresses
the main process decided in it), so every process serves the same configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
from typing import Any

from homeplane.translate import snapshot as ir

log = logging.getLogger("homeplane.workers")
_HEADER = struct.Struct("!I")


class WorkerPool:
    def __init__(self, count: int, settings: Any, port_map: dict[int, int]):
        self.procs: list[subprocess.Popen[bytes]] = []
        config = pickle.dumps((settings, port_map))
        for i in range(count):
            p = subprocess.Popen(
                [sys.executable, "-m", "homeplane.gateway.workers", str(i + 1)],
                stdin=subprocess.PIPE,
            )
            assert p.stdin is not None
            p.stdin.write(_HEADER.pack(len(config)) + config)
            p.stdin.flush()
            self.procs.append(p)
        log.info("started %d extra data-plane workers: pids %s", count, [p.pid for p in self.procs])

    def apply(self, snapshot: ir.Snapshot) -> None:
        data = pickle.dumps(snapshot)
        frame = _HEADER.pack(len(data)) + data
        for p in self.procs:
            if p.poll() is None and p.stdin is not None:
                try:
                    p.stdin.write(frame)
                    p.stdin.flush()
                except BrokenPipeError:
                    log.error("data-plane worker %d is gone", p.pid)

    def close(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(_HEADER.size)
    (n,) = _HEADER.unpack(head)
    return pickle.loads(await reader.readexactly(n))


async def _worker_main(index: int) -> None:
    from homeplane.gateway.server import BindPlan, DataPlane

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    settings, port_map = await _read_frame(reader)
    settings.http3 = False  # QUIC is the main process's (see Settings.http3)
    dp = DataPlane(settings, BindPlan(port_map, {}, None))
    await dp.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def feed() -> None:
        try:
            while True:
                snapshot = await _read_frame(reader)
                await dp.apply(snapshot)
        except (asyncio.IncompleteReadError, ConnectionError):
            stop.set()  # the main process is gone

    task = asyncio.ensure_future(feed())
    await stop.wait()
    task.cancel()
    await dp.close()


if __name__ == "__main__":
    from homeplane.observe.logs import setup_logging

    setup_logging(logging.INFO, prefix=f"worker-{sys.argv[1]}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import uvloop

    uvloop.install()
    asyncio.run(_worker_main(int(sys.argv[1])))
