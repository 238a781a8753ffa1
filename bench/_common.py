"""Helpers shared by the benchmarks: processes, CPU accounting, free ports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not open")


def descendants(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out += descendants(int(c))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "requests": total,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sum(int(x) for x in sock_err.groups()) if sock_err else 0,
    }


def run_wrk(url: str, seconds: int, connections: int, threads: int = 1, host: str | None = None, close: bool = False) -> dict[str, float]:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    if close:  # a new connection (and TLS handshake) for every request
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def run_h2load(url: str, seconds: int, connections: int, host: str | None = None, streams: int = 10) -> dict[str, float]:
    """HTTP/2 (h2c with prior knowledge for http:// URLs): h2load with ``streams`` concurrent
    streams per connection. h2load reports no percentiles: p99_ms is the mean latency."""
    cmd = ["h2load", "-D", str(seconds), "-c", str(connections), "-m", str(streams), url]
    if host:
        cmd[1:1] = ["-H", f":authority: {host}"]
    # h2load has been seen to outlive -D against a slow server: bound it
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds * 3 + 30).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    return {
        "rps": rps,
        "requests": int(done.group(1)) if done else 0,
        "p99_ms": float(mean.group(1)) * scale[mean.group(2)] if mean else float("nan"),
        "non2xx": sum(int(x) for x in codes.groups()[1:]) if codes else 0,
        "socket_errors": int(done.group(3)) + int(done.group(4)) if done else 0,
    }


def run_s_time(url: str, seconds: int, connections: int, host: str | None = None, reuse: bool = True, version: str = "-tls1_3") -> dict[str, float]:
    """TLS connections per second with session resumption (openssl s_time -reuse: one full
    handshake, then each connection resumes that session), one connection at a time, each with
    one HTTP/1.0 request for ``/``. ``requests`` counts connections; a run in which the server
    did not resume sessions counts every connection as an error."""
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    cmd = ["openssl", "s_time", "-connect", hostport, "-time", str(seconds), "-reuse" if reuse else "-new", version, "-www", "/"]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    secs = time.monotonic() - started
    m = re.findall(r"(\d+) connections in [\d.]+ real seconds", out)
    conns = m[-1] if m else "0"
    # s_time prints one character per connection: "r" when the session was resumed
    marks = out.split("Now timing with session id reuse.", 1)[-1]
    fresh = marks.count("*") if reuse else 0
    return {"rps": int(conns) / secs, "requests": int(conns), "p99_ms": float("nan"), "non2xx": 0, "socket_errors": fresh}


def measure(pids_fn, url: str, seconds: int, connections: int, host: str | None = None, h2: bool = False, run=None) -> dict[str, float]:
    """wrk (or h2load, or ``run``) against url; CPU time of the proxy processes (µs per request)."""
    run = run or (run_h2load if h2 else run_wrk)
    run(url, 2, connections, host=host)  # warm up: pools, caches
    pids = pids_fn()
    before = cpu_seconds(pids)
    res = run(url, seconds, connections, host=host)
    used = cpu_seconds(pids) - before
    res["cpu_s"] = used
    res["cpu_us_per_req"] = used / res["requests"] * 1e6 if res["requests"] else float("nan")
    return res


def stop_all(procs: list[subprocess.Popen], root: Path | None = None) -> None:
    """Terminate the benchmark's processes (SIGTERM, then SIGKILL after 10 s) and remove its folder."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
