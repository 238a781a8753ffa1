"""Installed as a service: the systemd unit (and its drop-in) pass ``systemd-analyze verify``;
``homeplane run`` tells systemd when it is ready and when it stops (``Type=notify``), and
reloads on SIGHUP (``ExecReload``)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO
from tests.integration.test_run import free_port, wait_for

UNIT = REPO / "packaging" / "systemd" / "homeplane.service"


def test_the_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "homeplane.service"
    # the unit names where the package is installed; here, this checkout's command
    unit.write_text(UNIT.read_text().replace("/opt/homeplane/bin/homeplane", str(Path(sys.executable).parent / "homeplane")))
    shutil.copytree(UNIT.parent / "homeplane.service.d", tmp_path / "homeplane.service.d")
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "homeplane.service" not in r.stderr, r.stderr
    text = UNIT.read_text()
    for hardening in ("DynamicUser=yes", "ProtectSystem=strict", "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
                      "StateDirectory=homeplane", "NoNewPrivileges=yes", "Type=notify", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert hardening in text
    assert "CAP_NET_ADMIN" in (UNIT.parent / "homeplane.service.d" / "l4-nftables.conf").read_text()


def test_ready_reload_and_stopping_reach_systemd(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    port = free_port()
    example = REPO / "examples" / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "homeplane", "run", str(example), "--vars", str(example / "cluster-secrets.env"),
         "--admin", f"127.0.0.1:{port}", "--state", str(tmp_path / "state.db"), "--port-map", f"80={free_port()},443={free_port()}",
         "--no-external-dns", "--no-certificates"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "PATH": "/usr/bin:/bin"})
    try:
        ready = sock.recv(1000).decode()
        assert ready.startswith("READY=1") and "STATUS=serving snapshot" in ready
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200  # ready means serving
        def reloads() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("homeplane_reloads_total{"))
        before = reloads()
        proc.send_signal(signal.SIGHUP)
        assert sock.recv(1000).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(1000).decode().startswith("READY=1")
        wait_for(lambda: reloads() > before, what="a reload on SIGHUP")
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(1000).decode() == "STOPPING=1"
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
