"""A running homeplane seen the way a home-ops user looks at Cilium and Envoy: ``homeplane
observe`` with Hubble's filters (following live too), and a real VictoriaMetrics scraping
``/metrics`` and answering PromQL with the counts of the traffic that was sent."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import dns.message
import dns.query
import httpx
import pytest

from tests.gateway.backends import Backend
from tests.gateway.manifests import gateway, route, service
from tests.integration.test_run import free_port, wait_for

HTTP_OK, HTTP_MISSING, DNS_QUERIES = 7, 3, 5


class Running:
    def __init__(self, tmp: Path, backend_port: int, extra: list[str] = (), manifests: str = ""):
        repo = tmp / "repo"
        repo.mkdir()
        (repo / "all.yaml").write_text(gateway() + service("a", backend_port) + route("r", "[app.home.test]") + manifests)
        self.admin = f"127.0.0.1:{free_port()}"
        self.http = free_port()
        self.dns = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "homeplane", "run", str(repo), "--admin", self.admin, "--state", str(tmp / "state.db"),
             "--gateway-address", "network/gw=127.0.0.1", "--port-map", f"80={self.http}", "--no-access-log",
             "--dns", f"127.0.0.1:{self.dns}", "--dns-domain", "home.test", "--dns-upstream", "127.0.0.1:9",
             "--no-external-dns", "--node-name", "node-a", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: httpx.get(f"http://{self.admin}/readyz").status_code == 200, what="readyz")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def observe(admin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeplane", "observe", "--server", admin, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    backend = Backend("a")
    r = Running(tmp_path_factory.mktemp("observe"), backend.port)
    try:
        for _ in range(HTTP_OK):
            assert httpx.get(f"http://127.0.0.1:{r.http}/echo", headers={"host": "app.home.test"}).status_code == 200
        for _ in range(HTTP_MISSING):
            assert httpx.get(f"http://127.0.0.1:{r.http}/x", headers={"host": "nothing.test"}).status_code == 404
        for i in range(DNS_QUERIES):
            q = dns.message.make_query("app.home.test" if i % 2 == 0 else "gone.home.test", "A")
            dns.query.udp(q, "127.0.0.1", port=r.dns, timeout=5)
        yield r
    finally:
        r.close()
        backend.close()


def test_observe_filters_like_hubble(running: Running) -> None:
    dns_flows = [json.loads(x)["flow"] for x in observe(running.admin, "-o", "json", "--protocol", "dns").stdout.splitlines()]
    assert [f["l7"]["dns"]["query"] for f in dns_flows] == ["app.home.test.", "gone.home.test."] * 2 + ["app.home.test."]
    assert [f["l7"]["dns"]["rcode"] for f in dns_flows] == [0, 3, 0, 3, 0]
    assert dns_flows[0]["l7"]["dns"]["ips"] == ["127.0.0.1"] and dns_flows[0]["node_name"] == "node-a"
    assert dns_flows[0]["l4"]["UDP"]["destination_port"] == running.dns

    dropped = observe(running.admin, "--verdict", "DROPPED").stdout.splitlines()
    assert len(dropped) == HTTP_MISSING and all("DROPPED NO_ROUTE" in x and "http://nothing.test/x" in x for x in dropped)

    both = observe(running.admin, "--protocol", "http", "--http-status", "2+", "--to-service", "apps/a", "--last", "100")
    assert len(both.stdout.splitlines()) == HTTP_OK and "apps/a" in both.stdout

    table = observe(running.admin, "--last", "2", "-o", "table").stdout.splitlines()
    assert table[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"] and len(table) == 3
    assert observe(running.admin, "--since", "10m", "--last", "1000").stdout.count("\n") == HTTP_OK + HTTP_MISSING + DNS_QUERIES
    assert observe(running.admin, "--until", "10m").stdout == ""  # nothing is that old

    bad = observe(running.admin, "--verdict", "MAYBE")
    assert bad.returncode == 1 and "--verdict 'MAYBE'" in bad.stderr
    bad = observe(running.admin, "--http-status", "2xx")
    assert bad.returncode == 1 and "a code (404) or a class (5+)" in bad.stderr
    gone = observe(f"127.0.0.1:{free_port()}")
    assert gone.returncode == 1 and "cannot reach homeplane's admin endpoint" in gone.stderr
    refused = httpx.get(f"http://{running.admin}/api/v1/flows?color=blue")
    assert refused.status_code == 400 and "unknown filter 'color'" in refused.json()["error"]
    # DNS rebinding: another site's name reaches nothing but the scrape and probe paths
    assert httpx.get(f"http://{running.admin}/api/v1/flows", headers={"host": "rebind.example"}).status_code == 403
    assert httpx.get(f"http://{running.admin}/ui", headers={"host": "rebind.example:80"}).status_code == 403
    assert httpx.get(f"http://{running.admin}/metrics", headers={"host": "scraper-name"}).status_code == 200


def test_observe_follows_new_flows(running: Running) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "homeplane", "observe", "--server", running.admin, "-f", "-o", "json",
                             "--http-path", "^/follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        poll = select.poll()  # not select(): the suite's process may hold descriptors above 1024
        poll.register(fd, select.POLLIN)
        pending = b""

        def lines_within(ms: int) -> list[dict]:
            """Whole lines the follower wrote within ``ms`` (read unbuffered: two flows often come in one write)."""
            nonlocal pending
            if not poll.poll(ms):
                return []
            pending += os.read(fd, 65536)
            *whole, pending = pending.split(b"\n")
            return [json.loads(x) for x in whole if x]

        # follow/0 until the follower shows one: then it is following (however long it took to start)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            httpx.get(f"http://127.0.0.1:{running.http}/follow/0", headers={"host": "app.home.test"})
            if lines_within(500):
                break
        while lines_within(700):  # the rest of the follow/0 flows
            pass
        for path in ("/skip", "/follow/1", "/follow/2"):
            httpx.get(f"http://127.0.0.1:{running.http}{path}", headers={"host": "app.home.test"})
        lines: list[dict] = []
        deadline = time.monotonic() + 15
        while len(lines) < 2 and time.monotonic() < deadline:
            lines += lines_within(500)
        assert [w["flow"]["l7"]["http"]["url"] for w in lines] == ["http://app.home.test/follow/1", "http://app.home.test/follow/2"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_no_flows_kept_is_said_plainly(tmp_path: Path) -> None:
    backend = Backend("a")
    r = Running(tmp_path, backend.port, ["--flows", "0"])
    try:
        out = observe(r.admin)
        assert out.returncode == 1 and "keeps no flows" in out.stderr
    finally:
        r.close()
        backend.close()


@pytest.mark.skipif(shutil.which("victoria-metrics") is None, reason="needs Debian's victoria-metrics (scripts/install-test-deps.sh)")
def test_victoriametrics_scrapes_envoy_and_coredns_names(running: Running, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "scrape.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n- job_name: homeplane\n  static_configs: [{{targets: ['{running.admin}']}}]\n")
    vm = subprocess.Popen(["victoria-metrics", f"-storageDataPath={tmp_path / 'vm'}", f"-httpListenAddr=127.0.0.1:{port}",
                           f"-promscrape.config={tmp_path / 'scrape.yml'}", "-search.latencyOffset=0s", "-loggerLevel=ERROR"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "TZ": "UTC"})

    def query(expr: str) -> float | None:
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5)
        result = r.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    from prometheus_client.parser import text_string_to_metric_families

    families = [f.name for f in text_string_to_metric_families(httpx.get(f"http://{running.admin}/metrics").text)]
    assert len(families) == len(set(families)), "one TYPE line per name, or Prometheus refuses the scrape"
    try:
        # at least what the fixture sent (the follow test may add to the HTTP ones)
        assert wait_for(lambda: (query("sum(envoy_http_downstream_rq_xx{envoy_response_code_class='4'})") or 0) >= HTTP_MISSING,
                        timeout=60, what="a scrape")
        assert query("sum(envoy_http_downstream_rq_xx{envoy_response_code_class='4', gateway='network/gw'})") == HTTP_MISSING
        ok = query("sum(envoy_cluster_upstream_rq{envoy_response_code='200', envoy_cluster_name='service/apps/a:80'})")
        assert ok is not None and ok >= HTTP_OK
        assert query("sum(envoy_http_downstream_rq_total)") == query("sum(envoy_http_downstream_rq_xx)")
        assert query("sum(coredns_dns_requests_total)") == DNS_QUERIES
        assert query("sum(coredns_dns_responses_total{rcode='NXDOMAIN'})") == 2
        median = query("histogram_quantile(0.5, sum(envoy_cluster_upstream_rq_time_bucket) by (le))")  # ms, Envoy's unit
        assert median is not None and 0 < median <= 1000
        assert query("envoy_cluster_membership_healthy{envoy_cluster_name='service/apps/a:80'}") == 1
    finally:
        vm.terminate()
        vm.wait(10)


def test_status_on_one_screen(running: Running) -> None:
    out = subprocess.run([sys.executable, "-m", "homeplane", "status", "--admin", running.admin], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {ln.split(":", 1)[0]: ln.split(":", 1)[1].split() for ln in out.stdout.splitlines()[1:] if not ln.startswith(" ")}
    assert lines["Gateways"][:2] == ["OK", "1/1"] and lines["Routes"][:2] == ["OK", "1/1"]
    assert lines["DNS"][:3] == ["OK", "on", f"127.0.0.1:{running.dns},"]
    assert lines["Flows"][0] == "OK" and lines["Tunnel"][0] == "disabled"
    seen = json.loads(subprocess.run([sys.executable, "-m", "homeplane", "status", "--admin", running.admin, "-o", "json"],
                                     capture_output=True, text=True, timeout=30).stdout)
    flows = [c for c in seen["components"] if c["name"] == "Flows"][0]
    assert int(flows["detail"].split()[-2]) >= HTTP_OK + HTTP_MISSING + DNS_QUERIES  # "... N seen"
    down = subprocess.run([sys.executable, "-m", "homeplane", "status", "--admin", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_trace_asks_the_running_instance(running: Running) -> None:
    out = subprocess.run([sys.executable, "-m", "homeplane", "trace", "http://app.home.test/echo", "--admin", running.admin],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    # homeplane's own DNS answers from its gateway zone, then the Gateway it bound on loopback
    assert lines[1].split()[1:] == ["DNS", "app.home.test", "A", "127.0.0.1", "[homeplane", "DNS,", "zone", "home.test]"]
    assert "Gateway network/gw" in lines[2] and lines[-1].startswith("=> FORWARDED: to 127.0.0.1:")
    assert "health: 127.0.0.1:" in out.stdout and " up" in out.stdout
    missing = subprocess.run([sys.executable, "-m", "homeplane", "trace", "http://gone.home.test/", "--admin", running.admin],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "NXDOMAIN from homeplane's DNS" in missing.stdout
    bad = subprocess.run([sys.executable, "-m", "homeplane", "trace", "http://app.home.test/", "--admin", running.admin,
                          "-H", "no-colon"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "expected 'Name: value'" in bad.stderr


def test_connectivity_test_finds_the_broken_backend(tmp_path: Path) -> None:
    backend = Backend("a")
    dead = free_port()
    broken = (service("dead", dead) + route("broken", "[broken.home.test]", "\n    - backendRefs: [{name: dead, port: 80}]")
              + service("idle", backend.port, ready=False)
              + route("idle", "[idle.home.test]", "\n    - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]"
                      "\n      backendRefs: [{name: idle, port: 80}]")
              + route("rx", "[rx.home.test]", "\n    - matches: [{headers: [{type: RegularExpression, name: x-v, value: 'v[0-9]+'}]}]"
                      "\n      backendRefs: [{name: a, port: 80}]")
              + route("q", "[q.home.test]", "\n    - matches: [{queryParams: [{name: who, value: 'a b&c'}]}]"
                      "\n      backendRefs: [{name: a, port: 80}]"))
    r = Running(tmp_path, backend.port, manifests=broken)
    try:
        out = subprocess.run([sys.executable, "-m", "homeplane", "connectivity", "test", "--admin", r.admin],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        ok = [ln for ln in lines if ln.startswith("[ok]")]
        fail = [ln for ln in lines if ln.startswith("[FAIL]")]
        assert any("route    apps/r: GET http://app.home.test:" in ln and ln.endswith("— 200") for ln in ok), lines
        assert any("route    apps/broken" in ln and "503 ERROR, UF: upstream connect error" in ln and ln.endswith("(Service apps/dead)") for ln in fail), lines
        # the route's own match: POST /api; its Service has no ready endpoint
        assert any("route    apps/idle: POST http://idle.home.test:" in ln and "/api" in ln and "503 DROPPED NO_SERVICE, UH: no healthy upstream" in ln
                   for ln in fail), lines
        assert any(ln.startswith("[ok]   dns      route apps/r: app.home.test A") and ln.endswith("127.0.0.1") for ln in ok), lines
        assert any("dns      Service apps/a: a.apps.svc.cluster.local A" in ln for ln in ok), lines
        skip = [ln for ln in lines if ln.startswith("[skip]")]
        assert [ln.split()[2] for ln in skip] == ["apps/rx:"]  # only a regular expression could match it
        assert any(ln.startswith("[ok]   route    apps/q: GET http://q.home.test:") and "/?who=a%20b%26c" in ln for ln in ok), lines
        assert lines[-1] == f"{len(ok)} passed, {len(fail)} failed, 1 skipped" and len(fail) == 2
        as_json = json.loads(subprocess.run([sys.executable, "-m", "homeplane", "connectivity", "test", "--admin", r.admin,
                                             "-o", "json", "--only", "route"], capture_output=True, text=True, timeout=120).stdout)
        assert {c["kind"] for c in as_json["checks"]} == {"route"} and as_json["failed"] == 2
    finally:
        r.close()
        backend.close()
