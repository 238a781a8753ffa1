"""`homeplane run` as a real process: admin endpoint, live reload, last good config on broken changes."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.conftest import EXAMPLE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Homeplane:
    def __init__(self, repo: Path, state: Path, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "homeplane", "run", str(repo),
                "--vars", str(repo / "cluster-secrets.env"),
                "--admin", f"127.0.0.1:{self.port}",
                "--state", str(state),
                "--gateway-address", "network/envoy-external=127.0.0.1",
                "--gateway-address", "network/envoy-internal=127.0.0.1",
                "--port-map", f"80={free_port()},443={free_port()}",
                *(extra or []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(lambda: httpx.get(self.url + "/readyz").status_code == 200, what="readyz")

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/status")
        r.raise_for_status()
        return r.json()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=15)
        return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    shutil.copytree(EXAMPLE, work)
    return work


@pytest.fixture
def hp(repo: Path, tmp_path: Path) -> Iterator[Homeplane]:
    h = Homeplane(repo, tmp_path / "state.db")
    yield h
    if h.proc.poll() is None:
        h.proc.kill()
        h.proc.wait()


def strip_volatile(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc.pop("runtime", None)
    doc["snapshot"].pop("version", None)

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            n.pop("lastTransitionTime", None)
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(doc)
    return doc


RADARR = """\
apiVersion: v1
kind: Service
metadata: {name: radarr, namespace: downloads}
spec:
  ports: [{name: http, port: 80, targetPort: 7878}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: radarr, namespace: downloads}
spec:
  parentRefs: [{name: envoy-internal, namespace: network, sectionName: https}]
  hostnames: ["radarr.${SECRET_DOMAIN}"]
  rules:
    - backendRefs: [{name: radarr, port: 80}]
"""


def route_names(status: dict[str, Any]) -> set[str]:
    return {r["name"] for r in status["routes"]}


def test_admin_endpoints_and_status_equals_check(hp: Homeplane, repo: Path) -> None:
    assert httpx.get(hp.url + "/healthz").text == "ok\n"
    status = hp.status()
    check = subprocess.run(
        [sys.executable, "-m", "homeplane", "check", str(repo), "--vars", str(repo / "cluster-secrets.env"), "-o", "json"],
        capture_output=True, text=True, check=True,
    )
    assert strip_volatile(status) == strip_volatile(json.loads(check.stdout))
    cond = status["gateways"][0]["conditions"][0]
    assert cond["lastTransitionTime"].endswith("Z")
    metrics = httpx.get(hp.url + "/metrics").text
    assert "homeplane_snapshot_version 1.0" in metrics
    assert 'homeplane_objects{kind="HTTPRoute",served="true"} 3.0' in metrics
    assert httpx.get(hp.url + "/nope").status_code == 404
    assert httpx.post(hp.url + "/status").status_code == 405
    # a malformed request gets a 400, and the server keeps answering
    with socket.create_connection(("127.0.0.1", hp.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert httpx.get(hp.url + "/healthz").status_code == 200


def test_live_reload_and_last_good_config(hp: Homeplane, repo: Path) -> None:
    first = hp.status()
    assert route_names(first) == {"sonarr", "whoami", "https-redirect"}
    t0 = first["gateways"][0]["conditions"][0]["lastTransitionTime"]

    # 1. a valid change is applied
    (repo / "downloads" / "radarr.yaml").write_text(RADARR)
    s2 = wait_for(lambda: (s := hp.status()) and "radarr" in route_names(s) and s, what="radarr route")
    assert s2["snapshot"]["version"] == 2
    radarr = next(r for r in s2["routes"] if r["name"] == "radarr")
    assert radarr["hostnames"] == ["radarr.home.example"] and radarr["parents"][0]["accepted"]
    # unchanged conditions keep their transition time
    assert s2["gateways"][0]["conditions"][0]["lastTransitionTime"] == t0

    # 2. a broken change is rejected; the last good configuration keeps serving
    (repo / "downloads" / "radarr.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: [broken\n")
    s3 = wait_for(lambda: (s := hp.status())["runtime"]["rejected"] and s, what="rejection")
    assert "radarr" in route_names(s3), "the broken change must not remove what was serving"
    assert s3["runtime"]["servingVersion"] == 2
    (d,) = s3["runtime"]["rejected"]["diagnostics"]
    assert d["file"] == "downloads/radarr.yaml" and d["code"] == "YAMLSyntax"
    assert d["line"] == 5 and "flow sequence that starts at line 4" in d["message"]
    assert "homeplane_reloads_total{result=\"rejected\"} 1.0" in httpx.get(hp.url + "/metrics").text

    # 3. removing the file is a valid change again
    (repo / "downloads" / "radarr.yaml").unlink()
    s4 = wait_for(lambda: (s := hp.status()) and "radarr" not in route_names(s) and s, what="radarr removed")
    assert s4["runtime"]["rejected"] is None and s4["snapshot"]["version"] == 3

    out = hp.stop()
    assert hp.proc.returncode == 0
    assert "reload rejected, still serving version 2" in out
    assert "downloads/radarr.yaml:5" in out


def test_snapshot_version_survives_restart(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    a = Homeplane(repo, state)
    assert a.status()["snapshot"]["version"] == 1
    a.stop()
    b = Homeplane(repo, state)
    try:
        assert b.status()["snapshot"]["version"] == 2
    finally:
        b.stop()


def test_dns_serves_the_manifests_and_follows_changes(repo: Path, tmp_path: Path) -> None:
    import dns.message
    import dns.query
    import dns.rcode

    dport = free_port()
    h = Homeplane(repo, tmp_path / "state.db", ["--dns", f"127.0.0.1:{dport}", "--dns-domain", "home.example", "--dns-upstream", "127.0.0.1:9"])

    def ask(name: str, rdtype: str = "A"):
        return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=dport, timeout=3)

    try:
        m = wait_for(lambda: ask("sonarr.downloads.svc.cluster.local"), what="dns answer")
        ip = m.answer[0][0].address
        assert ip.startswith("10.43.")
        sonarr = next(x for x in h.status()["services"] if x["name"] == "sonarr")
        assert sonarr["clusterIP"] == ip  # the same address in DNS and in the status
        # where the Gateway listens here (--gateway-address), not its declared 192.168.42.120
        assert str(ask("whoami.home.example").answer[0][0]) == "127.0.0.1"
        (repo / "downloads" / "radarr.yaml").write_text(RADARR)
        wait_for(lambda: ask("radarr.downloads.svc.cluster.local").rcode() == dns.rcode.NOERROR and ask("radarr.downloads.svc.cluster.local").answer, what="radarr in DNS")
        assert ask("radarr.home.example").answer[0][0].address == "127.0.0.1"
        metrics = httpx.get(h.url + "/metrics").text
        assert "coredns_dns_requests_total" in metrics
        assert h.status()["runtime"]["dns"]["listen"] == [f"127.0.0.1:{dport}"]
    finally:
        h.stop()
    # the ClusterIP survives a restart (it is in the state store)
    h2 = Homeplane(repo, tmp_path / "state.db", ["--dns", f"127.0.0.1:{dport}"])
    try:
        assert wait_for(lambda: ask("sonarr.downloads.svc.cluster.local")).answer[0][0].address == ip
    finally:
        h2.stop()


LB_POOL = """
apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata: {name: test-pool}
spec:
  blocks: [{start: 10.77.0.10, stop: 10.77.0.20}]
  serviceSelector: {matchLabels: {pool: test}}
---
apiVersion: v1
kind: Service
metadata: {name: mqtt, namespace: home, labels: {pool: test}}
spec: {type: LoadBalancer, ports: [{port: 1883}]}
"""
EARLIER = """
---
apiVersion: v1
kind: Service
metadata: {name: aaa-first, namespace: home, labels: {pool: test}}
spec: {type: LoadBalancer, ports: [{port: 1883}]}
"""


def test_allocated_lb_ips_survive_a_restart_and_a_new_neighbour(repo: Path, tmp_path: Path) -> None:
    def lb_ips(h: Homeplane) -> dict[str, list[str]]:
        return {s["name"]: s["loadBalancerIPs"] for s in h.status()["services"] if s["namespace"] == "home"}

    (repo / "lb.yaml").write_text(LB_POOL)
    a = Homeplane(repo, tmp_path / "state.db")
    try:
        first = lb_ips(a)["mqtt"]
        assert len(first) == 1 and first[0].startswith("10.77.0.")
    finally:
        a.stop()
    # a Service that sorts first now competes for the pool: without the store it would take mqtt's address
    (repo / "lb.yaml").write_text(LB_POOL + EARLIER)
    b = Homeplane(repo, tmp_path / "state.db")
    try:
        ips = lb_ips(b)
        assert ips["mqtt"] == first
        assert len(ips["aaa-first"]) == 1 and ips["aaa-first"] != first
    finally:
        b.stop()


def test_old_problems_do_not_block_reloads_new_ones_do(repo: Path, tmp_path: Path) -> None:
    # the configuration starts with a load error already in it (a file that does not parse)
    (repo / "downloads" / "old-broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [x\n")
    hp = Homeplane(repo, tmp_path / "state.db")
    try:
        assert hp.status()["summary"]["errors"] == 1
        # a valid change is applied despite the old problem
        (repo / "downloads" / "radarr.yaml").write_text(RADARR)
        wait_for(lambda: "radarr" in route_names(hp.status()), what="radarr applied")
        # a new problem refuses the reload, naming only the new problem
        (repo / "selfhosted" / "new-broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [y\n")
        s = wait_for(lambda: (s := hp.status())["runtime"]["rejected"] and s, what="rejection")
        assert [d["file"] for d in s["runtime"]["rejected"]["diagnostics"]] == ["selfhosted/new-broken.yaml"]
        # restoring the file brings reloads back
        (repo / "selfhosted" / "new-broken.yaml").unlink()
        (repo / "downloads" / "radarr.yaml").unlink()
        s = wait_for(lambda: (s := hp.status()) and "radarr" not in route_names(s) and s, what="reload after restore")
        assert s["runtime"]["rejected"] is None
    finally:
        out = hp.stop()
    assert "new-broken.yaml" in out and out.count("reload rejected") == 1


def test_http3_where_the_client_traffic_policy_asks(hp: Homeplane) -> None:
    """The example's ClientTrafficPolicy has ``http3: {}``: `homeplane run` serves QUIC on each
    HTTPS port and advertises it on the TCP answers."""
    from tests.gateway import h3client

    listeners = hp.status()["runtime"]["listeners"]
    https = [b for b in listeners if b["protocol"] == "HTTPS"]
    assert https and all(b["http3"]["listening"] for b in https)
    (port,) = [b["boundPort"] for b in https if b["gateway"] == "network/envoy-external"]
    over_tcp = httpx.get(f"https://127.0.0.1:{port}/", headers={"host": "whoami.home.example"}, verify=False)
    assert over_tcp.headers["alt-svc"] == f'h3=":{port}"; ma=86400'
    answer = h3client.get(port, "whoami.home.example", "/")
    # the same answer over QUIC as over TCP, from the same route and policies
    assert (answer.status, answer.body) == (over_tcp.status_code, over_tcp.content)
    assert answer.headers["alt-svc"] == over_tcp.headers["alt-svc"]
    out = hp.stop()
    assert f"HTTP/3 (QUIC) listening on udp 127.0.0.1:{port}" in out
