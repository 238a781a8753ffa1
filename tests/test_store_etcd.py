"""The state store on a real etcd (Debian ``etcd-server``) started by the tests on loopback: the
same contract as the embedded store, compare-and-swap that holds between processes (an address
is never given twice, even when two nodes claim at once), and two ``homeplane run`` nodes that
share their allocations through it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from homeplane.store import SQLiteStore, StoreError, Txn
from homeplane.store.etcd import EtcdOptions, EtcdStore
from tests.conftest import REPO
from tests.integration.test_run import free_port, wait_for


class Etcd:
    def __init__(self, tmp: Path):
        self.client, peer = free_port(), free_port()
        self.url = f"127.0.0.1:{self.client}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "t", "--data-dir", str(tmp / "etcd"), "--listen-client-urls", f"http://{self.url}",
             "--advertise-client-urls", f"http://{self.url}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}", "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._healthy, what="etcd")

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, "etcd exited"
        try:
            return httpx.get(f"http://{self.url}/health", timeout=1).json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    e = Etcd(tmp_path_factory.mktemp("etcd"))
    yield e
    e.stop()


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path, etcd: Etcd) -> Iterator:
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "state.db")
    else:  # each test its own prefix in the shared etcd
        s = EtcdStore(EtcdOptions.parse(f"etcd://{etcd.url}/t-{tmp_path.name}"))
    yield s
    s.close()


def test_the_same_contract_on_both_stores(store) -> None:
    r1 = store.put("lbipam/a", b"10.0.0.1")
    r2 = store.put("lbipam/b", b"10.0.0.2")
    store.put("lbipam%/x", b"literal percent")
    store.put("lbipam0", b"after the prefix")
    assert r2 > r1 and store.revision() >= r2
    assert store.get("lbipam/a").value == b"10.0.0.1" and store.get("lbipam/a").mod_revision == r1
    assert [e.key for e in store.list("lbipam/")] == ["lbipam/a", "lbipam/b"]
    assert store.delete("lbipam/a") and not store.delete("lbipam/a")
    assert store.get("lbipam/a") is None and store.get("nothing") is None
    assert store.put("bin", bytes(range(256))) and store.get("bin").value == bytes(range(256))
    # compare-and-swap: create if absent, lose a race, swap on the revision seen
    assert store.commit(Txn(compares=[("ip/1", 0)], puts=[("ip/1", b"svc-a")]))
    assert not store.commit(Txn(compares=[("ip/1", 0)], puts=[("ip/1", b"svc-b")]))
    assert store.get("ip/1").value == b"svc-a"
    rev = store.get("ip/1").mod_revision
    assert store.commit(Txn(compares=[("ip/1", rev)], puts=[("ip/2", b"x")], deletes=["ip/1"]))
    assert store.get("ip/1") is None and store.get("ip/2").value == b"x"
    assert not store.commit(Txn(compares=[("ip/2", rev)], deletes=["ip/2"])) and store.get("ip/2") is not None


CLAIMER = """
import sys
from homeplane.store import Txn
from homeplane.store.etcd import EtcdOptions, EtcdStore
s = EtcdStore(EtcdOptions.parse(sys.argv[1]))
won = []
for n in range(60):  # claim each address if nobody has, as an allocator does
    if s.commit(Txn(compares=[(f"ip/{n}", 0)], puts=[(f"ip/{n}", sys.argv[2].encode())])):
        won.append(n)
print(" ".join(map(str, won)))
"""


def test_two_nodes_claiming_at_once_never_share_an_address(etcd: Etcd, tmp_path: Path) -> None:
    spec = f"etcd://{etcd.url}/race-{tmp_path.name}"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, spec, f"node-{i}"], stdout=subprocess.PIPE, text=True) for i in range(3)]
    won = [set(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(len(w) for w in won) == 60 and set().union(*won) == set(range(60))  # each once, none lost
    s = EtcdStore(EtcdOptions.parse(spec))
    owners = {int(e.key.split("/")[1]): e.value.decode() for e in s.list("ip/")}
    assert all(owners[n] == f"node-{i}" for i, w in enumerate(won) for n in w)


def test_unreachable_endpoints_are_skipped_and_named(etcd: Etcd) -> None:
    dead = f"127.0.0.1:{free_port()}"
    s = EtcdStore(EtcdOptions.parse(f"etcd://{dead},{etcd.url}/skip"))
    assert s.put("k", b"v") and s.get("k").value == b"v"
    with pytest.raises(StoreError, match=dead):
        EtcdStore(EtcdOptions.parse(f"etcd://{dead}"))
    with pytest.raises(StoreError, match="etcd://HOST:PORT"):
        EtcdOptions.parse("http://x")


def test_two_run_nodes_share_their_allocations(etcd: Etcd, tmp_path: Path) -> None:
    """Two `homeplane run` on the same manifests and one etcd: the ClusterIPs the first
    allocated are the second's too, and they live in etcd under the prefix."""
    example = REPO / "examples" / "home"
    spec = f"etcd://{etcd.url}/nodes-{tmp_path.name}"

    def start() -> tuple[subprocess.Popen, int]:
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "homeplane", "run", str(example), "--vars", str(example / "cluster-secrets.env"),
                              "--admin", f"127.0.0.1:{port}", "--state", spec, "--port-map", f"80={free_port()},443={free_port()}",
                              "--bind-address", "127.0.0.1", "--no-external-dns", "--no-certificates", "--log-level", "warning"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, what="readyz")
        return p, port

    def cluster_ips(port: int) -> dict[str, str]:
        return {s["name"]: s["clusterIP"] for s in httpx.get(f"http://127.0.0.1:{port}/status").json()["services"]}

    a, pa = start()
    try:
        first = cluster_ips(pa)
    finally:
        a.terminate()
        a.wait(20)
    s = EtcdStore(EtcdOptions.parse(spec))
    stored = {e.key: e.value.decode() for e in s.list("")}
    assert any(k.startswith("ipam/cluster-ip/") for k in stored) and set(first.values()) <= set(stored.values())
    b, pb = start()
    try:
        assert cluster_ips(pb) == first
    finally:
        b.terminate()
        b.wait(20)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "homeplane", "run", str(example), "--state", f"etcd://127.0.0.1:{free_port()}",
                          "--admin", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no etcd endpoint answered" in out.stderr and time.monotonic() - t0 < 30


def test_an_allocation_another_node_made_meanwhile_wins(tmp_path: Path) -> None:
    """Addresses are written by compare-and-swap against what they were computed from: when
    another node wrote first (here, just before this node's write), this node allocates again
    from what is in the store, and serves that."""
    import asyncio

    from homeplane.api.variables import load_vars_file
    from homeplane.pipeline import Inputs
    from homeplane.runtime import Runtime

    class Racing:
        def __init__(self, inner: SQLiteStore):
            self.inner, self.raced = inner, False

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def commit(self, txn: Txn) -> bool:
            if not self.raced and any(k.startswith("ipam/cluster-ip/") for k, _ in txn.puts):
                self.raced = True
                self.inner.put("ipam/cluster-ip/downloads/sonarr", b"10.43.0.99")  # the other node's choice
            return self.inner.commit(txn)

    example = REPO / "examples" / "home"
    store = Racing(SQLiteStore(tmp_path / "state.db"))

    async def go() -> dict:
        rt = Runtime(Inputs(paths=(example,), variables=load_vars_file(example / "cluster-secrets.env")), store, admin_port=0)
        assert await rt.reload("start")
        return rt.current.cluster_ips

    ips = asyncio.run(go())
    assert store.raced and ips[("downloads", "sonarr")] == "10.43.0.99"
    assert store.get("ipam/cluster-ip/downloads/sonarr").value == b"10.43.0.99"
    assert len(set(ips.values())) == len(ips)  # and no address twice


def test_one_leader_at_a_time_and_a_handover_when_it_dies(etcd: Etcd, tmp_path: Path) -> None:
    """Two nodes on one etcd: one leads the controllers (DNS automation, certificates), the
    other stands by; `get nodes` lists both; the leader is killed (SIGKILL: no goodbye) and the
    other takes over when its lease runs out, and the dead node leaves the list."""
    import json as jsonlib
    import signal

    example = REPO / "examples" / "home"
    spec = f"etcd://{etcd.url}/lead-{tmp_path.name}"

    def start(name: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "homeplane", "run", str(example), "--vars", str(example / "cluster-secrets.env"),
                              "--admin", f"127.0.0.1:{port}", "--state", spec, "--node-name", name, "--leader-lease", "2",
                              "--port-map", f"80={free_port()},443={free_port()}", "--bind-address", "127.0.0.1",
                              "--no-external-dns", "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, what=f"node {name}")
        return p, port

    def leader(port: int) -> dict:
        return httpx.get(f"http://127.0.0.1:{port}/status").json()["runtime"]["leader"]

    def get_nodes() -> dict[str, bool]:
        out = subprocess.run([sys.executable, "-m", "homeplane", "get", "nodes", "--state", spec, "-o", "json"],
                             capture_output=True, text=True, timeout=60)
        return {n["name"]: n["leader"] for n in jsonlib.loads(out.stdout)["items"]}

    a, pa = start("node-a")
    b = None
    try:
        wait_for(lambda: leader(pa)["isLeader"], what="node-a elected")
        b, pb = start("node-b")
        wait_for(lambda: leader(pb)["leader"] == "node-a", what="node-b sees node-a lead")
        assert not leader(pb)["isLeader"]
        wait_for(lambda: get_nodes() == {"node-a": True, "node-b": False}, what="both nodes listed")
        table = subprocess.run([sys.executable, "-m", "homeplane", "get", "nodes", "--state", spec], capture_output=True, text=True).stdout
        assert table.splitlines()[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "ADDRESS"]
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        wait_for(lambda: leader(pb)["isLeader"], timeout=30, what="node-b takes over")
        wait_for(lambda: get_nodes() == {"node-b": True}, timeout=30, what="node-a leaves the list")
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(20)
