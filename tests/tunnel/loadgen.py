"""A client that keeps HTTPS requests going until told to stop, and says how each ended.

Run inside the test's "internet" namespace: short requests on new connections from several
threads, and long ones (server-sent events) that must arrive whole. Results as JSON.

    python -m tests.tunnel.loadgen --target IP:PORT --host NAME --ca CA.pem --stop FILE --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import threading
import time


def request(target: tuple[str, int], host: str, ctx: ssl.SSLContext, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    with socket.create_connection(target, timeout=timeout) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--stop", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--long-every", type=float, default=0.5)
    a = ap.parse_args()
    ip, port = a.target.rsplit(":", 1)
    target = (ip, int(port))
    ctx = ssl.create_default_context(cafile=a.ca)
    lock = threading.Lock()
    results: dict[str, object] = {"ok": 0, "long_ok": 0, "failures": []}

    def fail(what: str) -> None:
        with lock:
            results["failures"].append(f"{time.strftime('%H:%M:%S')} {what}")  # type: ignore[union-attr]

    def short() -> None:
        while not os.path.exists(a.stop):
            try:
                status, body = request(target, a.host, ctx, "/echo/load")
                if status == 200 and json.loads(body)["target"] == "/echo/load":
                    with lock:
                        results["ok"] += 1  # type: ignore[operator]
                else:
                    fail(f"short: status {status} {body[:80]!r}")
            except Exception as e:  # noqa: BLE001 - every way a request can end badly is a failure to report
                fail(f"short: {type(e).__name__}: {e}")

    def long() -> None:
        try:
            status, body = request(target, a.host, ctx, "/stream?n=20&ms=100")
            if status == 200 and body.count(b"data: event") == 20:
                with lock:
                    results["long_ok"] += 1  # type: ignore[operator]
            else:
                fail(f"long: status {status}, {body.count(b'data: event')} of 20 events")
        except Exception as e:  # noqa: BLE001
            fail(f"long: {type(e).__name__}: {e}")

    workers = [threading.Thread(target=short) for _ in range(a.threads)]
    for w in workers:
        w.start()
    longs = []
    while not os.path.exists(a.stop):
        t = threading.Thread(target=long)
        t.start()
        longs.append(t)
        time.sleep(a.long_every)
    for t in workers + longs:
        t.join(60)
    results["long_started"] = len(longs)
    with open(a.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
