#!/usr/bin/env python3
"""DNS benchmark: dnsperf against homeplane, knot and unbound serving the same names, same run.

Three query sets:
  * cluster   - <svc>.<ns>.svc.cluster.local A records (1000 Services): homeplane, knot, unbound
  * gateway   - route hostnames in the gateway zone (200 names): homeplane, knot, unbound
  * forwarded - names homeplane forwards (to the same unbound) and answers from its cache:
                homeplane, unbound (knot is authoritative only)
Every server runs one worker thread. Reported: queries/s, server CPU µs per query
(user+system from /proc) and homeplane's ratio to each peer.
CPU figures are what matters on a shared 2-core box; queries/s is bounded by dnsperf sharing it.

    python bench/dns.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_seconds, descendants, free_port, stop_all  # noqa: E402

N_SERVICES = 1000
N_ROUTES = 200


def write_inputs(root: Path) -> tuple[Path, dict[str, list[str]]]:
    m = root / "manifests"
    m.mkdir()
    docs = [
        textwrap.dedent(
            """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: envoy-internal, namespace: network}
            spec:
              gatewayClassName: envoy
              addresses: [{value: 192.0.2.10}]
              listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]
            """
        )
    ]
    queries: dict[str, list[str]] = {"cluster": [], "gateway": [], "forwarded": []}
    local: list[str] = []
    zones: dict[str, list[str]] = {"cluster.local": [], "home.test": []}
    for i in range(N_SERVICES):
        ip = f"10.43.{i // 250}.{i % 250 + 2}"
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: ns{i % 20}}}\nspec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")
        name = f"svc{i}.ns{i % 20}.svc.cluster.local"
        queries["cluster"].append(f"{name} A")
        local.append(f'local-data: "{name}. 5 IN A {ip}"')
        zones["cluster.local"].append(f"{name}. 5 IN A {ip}")
    for i in range(N_ROUTES):
        host = f"app{i}.home.test"
        docs.append(
            f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: ns0}}\n"
            f"spec: {{parentRefs: [{{name: envoy-internal, namespace: network}}], hostnames: [{host}], rules: [{{backendRefs: [{{name: svc0, port: 80}}]}}]}}\n"
        )
        queries["gateway"].append(f"{host} A")
        local.append(f'local-data: "{host}. 60 IN A 192.0.2.10"')
        zones["home.test"].append(f"{host}. 60 IN A 192.0.2.10")
    for i in range(200):
        host = f"host{i}.upstream.test"
        queries["forwarded"].append(f"{host} A")
        local.append(f'local-data: "{host}. 3600 IN A 198.51.100.{i % 250}"')
    (m / "all.yaml").write_text("\n---\n".join(docs))
    (root / "local.conf").write_text("\n".join("    " + x for x in local) + "\n")
    for zone, records in zones.items():
        soa = f"{zone}. 30 IN SOA ns.dns.{zone}. hostmaster.{zone}. 1 7200 1800 86400 30\n{zone}. 30 IN NS ns.dns.{zone}.\n"
        (root / f"{zone}.zone").write_text(soa + "\n".join(records) + "\n")
    return m, queries


def knot(root: Path, port: int) -> subprocess.Popen:
    conf = root / "knot.conf"
    conf.write_text(
        textwrap.dedent(
            f"""            server:
                listen: 127.0.0.1@{port}
                rundir: {root}
                udp-workers: 1
                tcp-workers: 1
                background-workers: 1
            database:
                storage: {root}/knotdb
            log:
              - target: stderr
                any: error
            template:
              - id: default
                storage: {root}
            zone:
              - domain: cluster.local
                file: cluster.local.zone
              - domain: home.test
                file: home.test.zone
            """
        )
    )
    return subprocess.Popen(["knotd", "-c", str(conf)])


def unbound(root: Path, port: int) -> subprocess.Popen:
    conf = root / "unbound.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            server:
                interface: 127.0.0.1
                port: {port}
                do-daemonize: no
                use-syslog: no
                logfile: ""
                username: ""
                chroot: ""
                directory: "{root}"
                pidfile: "{root}/unbound.pid"
                do-ip6: no
                num-threads: 1
                access-control: 127.0.0.0/8 allow
                local-zone: "cluster.local." static
                local-zone: "home.test." static
                local-zone: "upstream.test." static
            """
        )
        + (root / "local.conf").read_text()
    )
    return subprocess.Popen(["unbound", "-d", "-c", str(conf)])


def dnsperf(port: int, qfile: Path, seconds: int) -> tuple[float, int]:
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(seconds), "-c", "8", "-T", "1", "-q", "200"],
        capture_output=True, text=True,
    ).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    return qps, done


def wait_dns(port: int) -> None:
    for _ in range(100):
        if subprocess.run(["dig", "+short", "+tries=1", "+time=1", "-p", str(port), "@127.0.0.1", "svc0.ns0.svc.cluster.local"], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"no DNS on {port}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    for tool in ("dnsperf", "unbound", "knotd", "dig"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install dnsperf unbound knot dnsutils)")
    root = Path(tempfile.mkdtemp(prefix="hp-dnsbench-"))
    procs: list[subprocess.Popen] = []
    try:
        manifests, queries = write_inputs(root)
        ub_port, hp_port, kn_port, admin = free_port(), free_port(), free_port(), free_port()
        ub = unbound(root, ub_port)
        procs.append(ub)
        wait_dns(ub_port)
        kn = knot(root, kn_port)
        procs.append(kn)
        wait_dns(kn_port)
        hp = subprocess.Popen(
            [sys.executable, "-m", "homeplane", "run", str(manifests), "--admin", f"127.0.0.1:{admin}",
             "--state", str(root / "state.db"), "--no-access-log", "--bind-address", "127.0.0.1",
             "--port-map", f"80={free_port()}", "--dns", f"127.0.0.1:{hp_port}", "--dns-domain", "home.test",
             "--dns-upstream", f"127.0.0.1:{ub_port}"],
            stderr=open(root / "homeplane.log", "w"),
        )
        procs.append(hp)
        wait_dns(hp_port)
        print(f"dnsperf -c 8, {args.seconds}s per run; {N_SERVICES} Services, {N_ROUTES} routes")
        print(f"{'set':<10} {'server':<10} {'qps':>9} {'CPU µs/q':>9}")
        for name, qs in queries.items():
            qfile = root / f"{name}.txt"
            qfile.write_text("\n".join(qs) + "\n")
            results = {}
            servers = [("homeplane", hp_port, hp), ("knot", kn_port, kn), ("unbound", ub_port, ub)]
            for server, port, proc in servers if name != "forwarded" else [servers[0], servers[2]]:
                dnsperf(port, qfile, 2)  # warm up (and fill homeplane's cache for forwarded names)
                pids = descendants(proc.pid)
                before = cpu_seconds(pids)
                qps, done = dnsperf(port, qfile, args.seconds)
                cpu = (cpu_seconds(pids) - before) / max(done, 1) * 1e6
                results[server] = (qps, cpu)
                print(f"{name:<10} {server:<10} {qps:>9.0f} {cpu:>9.1f}")
            h = results["homeplane"]
            for peer in ("knot", "unbound"):
                if peer in results:
                    p = results[peer]
                    print(f"{name:<10} ratio      qps {h[0] / p[0]:.2f}, CPU per query {h[1] / p[1]:.2f} (homeplane/{peer})")
    finally:
        stop_all(procs, root)


if __name__ == "__main__":
    main()
