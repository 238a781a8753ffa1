"""The tunnel across network namespaces: an "internet" client, an edge, and a home network the
internet has no route to. Requests reach home only through the tunnel, with the client's
address; connectors and the edge restart under load without failing a request.

    inet 10.77.1.2 ── 10.77.1.1  edge  10.77.2.1 ── 10.77.2.2 home
                     (public ports)   (tunnel port)   (homeplane run, backend; dials out)

The edge namespace does not forward, so nothing routes from the internet to home.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.tunnel.harness import CA, TOKEN, stop_process, wait_until, write_repo

REPO = Path(__file__).resolve().parents[2]
EDGE_PUBLIC, EDGE_TUNNEL, HOME, INET = "10.77.1.1", "10.77.2.1", "10.77.2.2", "10.77.1.2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2 (CI runs as root)")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


class Net:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.inet, self.edge, self.home = f"hpi{tag}", f"hpe{tag}", f"hph{tag}"
        for ns in (self.inet, self.edge, self.home):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for a, b, a_ip, b_ip, name in ((self.inet, self.edge, INET, EDGE_PUBLIC, "i"), (self.home, self.edge, HOME, EDGE_TUNNEL, "h")):
            va, vb = f"hp{name}{tag}a", f"hp{name}{tag}b"
            sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
            sh("ip", "-n", a, "addr", "add", f"{a_ip}/24", "dev", va)
            sh("ip", "-n", b, "addr", "add", f"{b_ip}/24", "dev", vb)
            sh("ip", "-n", a, "link", "set", va, "up")
            sh("ip", "-n", b, "link", "set", vb, "up")
        # the home network's only way out is through the edge (as a NAT'd home router would be)
        sh("ip", "-n", self.home, "route", "add", "default", "via", EDGE_TUNNEL)
        sh("ip", "-n", self.inet, "route", "add", "default", "via", EDGE_PUBLIC)
        sh("ip", "netns", "exec", self.edge, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        # a closing listener's queued connections go to its successor on the same port
        sh("ip", "netns", "exec", self.edge, "sysctl", "-qw", "net.ipv4.tcp_migrate_req=1")
        self.procs: list[subprocess.Popen[Any]] = []

    def spawn(self, ns: str, args: list[str], log: Path) -> subprocess.Popen[Any]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        self.procs.append(p)
        return p

    def run(self, ns: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def get(self, ns: str, url: str) -> Any:
        out = self.run(ns, "curl", "-sS", "--max-time", "5", url)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip().startswith(("{", "[")) else None

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in (self.inet, self.edge, self.home):
            sh("ip", "netns", "del", ns, check=False)


def wait(pred: Any, timeout: float = 30, what: str = "condition") -> Any:
    return wait_until(pred, timeout, what)


def stop(p: subprocess.Popen[Any], timeout: float = 40) -> int:
    return stop_process(p, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("netns")
    net = Net()
    try:
        ca = CA(tmp)
        # the backend lives at home, on home's loopback
        backend_log = tmp / "backend.log"
        net.spawn(net.home, [sys.executable, "-c", "from tests.gateway.backends import Backend; import time; b = Backend('app'); "
                             "print(b.port, flush=True); time.sleep(1e9)"], backend_log)
        backend_port = int(wait(lambda: backend_log.read_text().strip(), what="backend port"))
        repo = write_repo(tmp, ca, backend_port, 9)
        crt, key = ca.issue("edge-tunnel", EDGE_TUNNEL)
        pub_crt, pub_key = ca.issue("edge-public", "*.home.test")
        token_file = tmp / "token"
        token_file.write_text(TOKEN)

        def edge_config(name: str, admin: int) -> Path:
            p = tmp / f"{name}.yaml"
            p.write_text(json.dumps({
                "name": name,
                "tunnel": {"listen": f"{EDGE_TUNNEL}:7844", "certFile": str(crt), "keyFile": str(key),
                           "tokens": [{"name": "home", "token": TOKEN}]},
                "https": {"listen": f"{EDGE_PUBLIC}:443", "hostnames": [
                    {"hostname": "secure.home.test", "tls": "terminate", "certFile": str(pub_crt), "keyFile": str(pub_key)}]},
                "http": {"listen": f"{EDGE_PUBLIC}:80"},
                "admin": {"listen": f"127.0.0.1:{admin}"},
            }))
            return p

        def start_edge(name: str, admin: int) -> subprocess.Popen[Any]:
            p = net.spawn(net.edge, [sys.executable, "-m", "homeplane", "edge", "--config", str(edge_config(name, admin))],
                          tmp / f"{name}.log")
            wait(lambda: net.get(net.edge, f"http://127.0.0.1:{admin}/status"), what=f"{name} up")
            return p

        def start_home(name: str, admin: int, offset: int) -> subprocess.Popen[Any]:
            p = net.spawn(net.home, [
                sys.executable, "-m", "homeplane", "run", str(repo), "--admin", f"127.0.0.1:{admin}", "--state", str(tmp / f"{name}.db"),
                "--gateway-address", "network/envoy-external=127.0.0.1", "--port-map", f"80={18080 + offset},443={18443 + offset}",
                "--no-external-dns", "--no-certificates", "--node-name", name,
                "--tunnel-edge", f"{EDGE_TUNNEL}:7844", "--tunnel-token-file", str(token_file), "--tunnel-ca", str(ca.path),
                "--tunnel-connections", "2",
            ], tmp / f"{name}.log")
            wait(lambda: (st := net.get(net.home, f"http://127.0.0.1:{admin}/status")) and "runtime" in st and
                 all(c["state"] == "connected" for c in st["runtime"]["tunnel"]["connections"]), what=f"{name} connected")
            return p

        edge = start_edge("edge-1", 7845)
        homes = {"home-a": start_home("home-a", 9911, 0), "home-b": start_home("home-b", 9912, 1)}
        yield {"net": net, "tmp": tmp, "ca": ca, "edge": edge, "homes": homes, "start_edge": start_edge, "start_home": start_home}
    finally:
        net.close()


def inet_curl(world: dict[str, Any], host: str, path: str, *args: str, scheme: str = "https") -> tuple[int, str]:
    port = 443 if scheme == "https" else 80
    out = world["net"].run(world["net"].inet, "curl", "-sS", "--max-time", "60", "--resolve", f"{host}:{port}:{EDGE_PUBLIC}",
                           "--cacert", str(world["ca"].path), "-o", "-", "-w", "\n%{http_code}", *args, f"{scheme}://{host}{path}",
                           timeout=90)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


@pytest.mark.parametrize("host, http", [("app.home.test", "--http1.1"), ("app.home.test", "--http2"),
                                        ("secure.home.test", "--http2"), ("secure.home.test", "--http1.1")])
def test_home_is_reached_only_through_the_tunnel_with_the_clients_address(world: dict[str, Any], host: str, http: str) -> None:
    code, body = inet_curl(world, host, "/echo/ns", http)
    assert code == 200, body
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"].split(",")[-1].strip() == INET
    # and there is no other way: home's addresses are unreachable from the internet namespace
    net = world["net"]
    direct = net.run(net.inet, "curl", "-sS", "--max-time", "3", "-k", f"https://{HOME}:18443/")
    assert direct.returncode != 0


def test_upload_sse_and_plain_http(world: dict[str, Any]) -> None:
    net, tmp = world["net"], world["tmp"]
    blob = tmp / "blob"
    with blob.open("wb") as f:
        for i in range(50):
            f.write(bytes([i]) * (1024 * 1024))
    import hashlib

    code, body = inet_curl(world, "app.home.test", "/echo/upload", "--http2", "--data-binary", f"@{blob}")
    assert code == 200 and json.loads(body)["body_sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
    code, body = inet_curl(world, "app.home.test", "/stream?n=4&ms=100", "-N")
    assert code == 200 and body.count("data: event") == 4
    code, body = inet_curl(world, "app.home.test", "/echo/plain", scheme="http")
    assert code == 200 and json.loads(body)["target"] == "/echo/plain"
    # a WebSocket upgrade, from the internet namespace, on TLS passed through and on TLS the edge terminates
    script = (
        "import socket, ssl, sys\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "for host in ('app.home.test', 'secure.home.test'):\n"
        f"    s = ctx.wrap_socket(socket.create_connection(('{EDGE_PUBLIC}', 443), timeout=10), server_hostname=host)\n"
        "    s.sendall(f'GET /ws HTTP/1.1\\r\\nHost: {host}\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\n"
        "              'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n'.encode())\n"
        "    head = b''\n"
        "    while b'\\r\\n\\r\\n' not in head: head += s.recv(4096)\n"
        "    assert head.startswith(b'HTTP/1.1 101'), head\n"
        "    s.sendall(b'across namespaces')\n"
        "    got = b''\n"
        "    while len(got) < 17: got += s.recv(4096)\n"
        "    assert got == b'across namespaces', got\n"
        "print('ws ok')\n"
    )
    ws = net.run(net.inet, sys.executable, "-c", script, str(world["ca"].path))
    assert ws.stdout.strip() == "ws ok", ws.stderr


@pytest.mark.xfail(strict=False, reason="issue #15: on the CI machine image about half the runs see ~1 s of reset "
                   "connections during the rolling restart; the cause is being traced (see the closing note of stop 32)")
def test_rolling_restart_of_connectors_and_edge_fails_no_request(world: dict[str, Any]) -> None:
    net, tmp = world["net"], world["tmp"]
    stop_file, out = tmp / "stop", tmp / "load.json"
    gen = net.spawn(net.inet, [sys.executable, "-m", "tests.tunnel.loadgen", "--target", f"{EDGE_PUBLIC}:443", "--host",
                               "app.home.test", "--ca", str(world["ca"].path), "--stop", str(stop_file), "--out", str(out),
                               "--threads", "3"], tmp / "loadgen.log")
    time.sleep(1.5)
    # each home in turn: SIGTERM (its connector drains: requests in flight finish), start again
    for name, admin, offset in (("home-a", 9911, 0), ("home-b", 9912, 1)):
        assert stop(world["homes"][name]) == 0
        world["homes"][name] = world["start_home"](name, admin, offset)
        time.sleep(1.0)
    # the edge: a successor on the same ports first, then SIGTERM to the old one (it hands its
    # connectors over, closes its public ports, and lets its clients finish)
    new_edge = world["start_edge"]("edge-2", 7846)
    assert stop(world["edge"]) == 0
    world["edge"] = new_edge
    wait(lambda: len((net.get(net.edge, "http://127.0.0.1:7846/status") or {}).get("connections", [])) == 4,
         what="all four connections on the new edge")
    time.sleep(1.5)
    stop_file.write_text("")
    gen.wait(90)
    res = json.loads(out.read_text())
    assert res["failures"] == [], res["failures"][:10]
    assert res["ok"] > 50 and res["long_ok"] == res["long_started"] > 5, res
    log = (tmp / "edge-1.log").read_text()
    assert "draining" in log and "stopped" in log
