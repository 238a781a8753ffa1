"""A DNSServer on loopback in a background loop, and an unbound upstream started by the test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import uvloop

from homeplane.api.loader import LoadOptions, LoadResult, load_text
from homeplane.dns.config import DNSConfig
from homeplane.dns.server import DNSServer
from homeplane.ipam.clusterip import ServiceRequest, allocate_cluster_ips
from homeplane.translate import TranslateOptions, translate
from tests.gateway.harness import free_port


def snapshot(manifests: str):
    loaded = LoadResult()
    load_text(textwrap.dedent(manifests), "test.yaml", LoadOptions(variables={}), loaded)
    assert not loaded.diagnostics.errors, [str(d) for d in loaded.diagnostics.errors]
    reqs = [ServiceRequest((o.namespace, o.name), o.model.spec.cluster_ip) for o in loaded.objects if o.kind == "Service" and o.model.spec.type != "ExternalName"]
    alloc = allocate_cluster_ips(reqs)
    return translate(loaded.objects, TranslateOptions(cluster_ips=alloc.addresses)).snapshot


class DNS:
    def __init__(self, manifests: str, cfg: DNSConfig):
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = free_port()
        self.server: DNSServer = self.call(self._make(cfg))
        self.apply(manifests)

    async def _make(self, cfg: DNSConfig) -> DNSServer:
        s = DNSServer(cfg, [("127.0.0.1", self.port)])
        await s.start()
        return s

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def apply(self, manifests: str) -> None:
        snap = snapshot(manifests)

        async def go() -> None:
            self.server.apply(snap)

        self.call(go())

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, **kw) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)
        if tcp:
            return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=5)
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=5, ignore_trailing=True)

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


class Unbound:
    """unbound on loopback serving a small local zone (upstream for forwarding tests)."""

    def __init__(self, tmp: Path, records: list[str]):
        self.port = free_port()
        self.dir = tmp
        conf = tmp / "unbound.conf"
        data = "\n".join(f'    local-data: "{r}"' for r in records)
        conf.write_text(
            textwrap.dedent(
                f"""\
                server:
                    interface: 127.0.0.1
                    port: {self.port}
                    do-daemonize: no
                    use-syslog: no
                    logfile: ""
                    username: ""
                    chroot: ""
                    directory: "{tmp}"
                    pidfile: "{tmp}/unbound.pid"
                    do-ip6: no
                    access-control: 127.0.0.0/8 allow
                    local-zone: "upstream.test." static
                """
            )
            + data
            + "\n"
        )
        self.proc = subprocess.Popen([shutil.which("unbound") or "unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                dns.query.udp(dns.message.make_query("upstream.test.", "SOA"), "127.0.0.1", port=self.port, timeout=0.5)
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError("unbound failed: " + self.proc.stderr.read().decode())
                time.sleep(0.1)
        raise RuntimeError("unbound did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
