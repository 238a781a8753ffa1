"""A real Knot DNS server for RFC 2136 tests: one zone, a TSIG key allowed to update and transfer it."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdatatype

KEY_NAME = "externaldns"
KEY_SECRET = base64.b64encode(b"homeplane-test-tsig-secret-32byt").decode()


def free_udp_tcp_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class Knot:
    def __init__(self, workdir: Path, zone: str = "home.example", extra_records: str = ""):
        self.dir = workdir
        self.zone = zone
        self.port = free_udp_tcp_port()
        self.extra = extra_records
        self.proc: subprocess.Popen | None = None

    def write(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "knot.conf").write_text(f"""
server:
    listen: 127.0.0.1@{self.port}
    rundir: {d}
    pidfile: {d}/knot.pid
log:
  - target: stderr
    any: warning
database:
    storage: {d}
key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {KEY_SECRET}
acl:
  - id: edns
    key: {KEY_NAME}
    action: [update, transfer]
control:
    listen: {d}/knot.sock
zone:
  - domain: {self.zone}
    storage: {d}
    file: {self.zone}.zone
    acl: edns
    zonefile-sync: -1
""")
        zf = d / f"{self.zone}.zone"
        if not zf.exists():
            zf.write_text(
                f"$TTL 300\n@ IN SOA ns1.{self.zone}. admin.{self.zone}. 1 3600 600 86400 300\n"
                f"@ IN NS ns1.{self.zone}.\nns1 IN A 127.0.0.1\n{self.extra}"
            )

    def start(self) -> None:
        knotd = shutil.which("knotd") or "/usr/sbin/knotd"
        self.write()
        self.proc = subprocess.Popen([knotd, "-c", str(self.dir / "knot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.query(f"ns1.{self.zone}", "A"):
                    return
            except Exception:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            time.sleep(0.05)
        raise RuntimeError("knotd did not answer")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def query(self, name: str, rtype: str) -> list[str]:
        q = dns.message.make_query(name, rtype)
        r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=1)
        want = dns.name.from_text(name)
        return sorted(
            rd.to_text() for rrset in r.answer
            if rrset.rdtype == dns.rdatatype.from_text(rtype) and rrset.name == want for rd in rrset
        )

    def dig(self, name: str, rtype: str) -> list[str]:
        """What the real ``dig`` sees."""
        out = subprocess.run(["dig", "+short", "-p", str(self.port), "@127.0.0.1", name, rtype],
                             capture_output=True, text=True, timeout=10).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())
