#!/usr/bin/env python3
"""What seeing costs: the gateway and DNS with flows and Envoy's request metrics on (the default)
and off (``--flows 0 --no-request-stats``), beside nginx and unbound in the same run.

Every request the gateway serves is reported to Python once (also from the C fast lane, which
otherwise finishes simple requests without a Python call when the access log is off): Envoy's
counters and histograms, and a tuple in the flow ring. Every DNS query appends its query and
answer bytes to the ring. The difference in CPU per request between "observing" and "quiet" is
the cost of one record; nginx/unbound give the ratio users compare against. The three run in
turn, several rounds, and the median of each is shown: one run against another on this
machine varies more than the cost measured.

    python bench/observe.py [--seconds 10] [--connections 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_seconds, descendants, free_port, measure, stop_all, wait_port  # noqa: E402
from dns import dnsperf, unbound, wait_dns, write_inputs  # noqa: E402
from gateway import DESCRIPTION, ROUTES, make_certificate, manifests, nginx_conf, runner  # noqa: E402

QUIET = ["--flows", "0", "--no-request-stats"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per row; the median is shown")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "h2load", "openssl", "dnsperf", "unbound"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install nginx wrk nghttp2-client openssl dnsperf unbound)")
    root = Path(tempfile.mkdtemp(prefix="hp-obsbench-"))
    procs: list[subprocess.Popen] = []
    try:
        crt, key = make_certificate(root)
        backend = free_port()
        procs.append(subprocess.Popen(["nginx", "-c", str(nginx_conf(root, backend, body="hello from the backend\\n"))]))
        wait_port("127.0.0.1", backend)
        tree = manifests(root, backend, crt, key)
        (root / "dns").mkdir()
        dns_tree, queries = write_inputs(root / "dns")
        ub_port = free_port()
        ub = unbound(root / "dns", ub_port)
        procs.append(ub)
        wait_dns(ub_port)

        def homeplane(name: str, extra: list[str]) -> tuple[subprocess.Popen, int, int, int]:
            port, tls_port, admin, dns_port = free_port(), free_port(), free_port(), free_port()
            p = subprocess.Popen(
                [sys.executable, "-m", "homeplane", "run", str(tree), str(dns_tree), "--admin", f"127.0.0.1:{admin}",
                 "--state", str(root / f"{name}.db"), "--gateway-address", "network/bench=127.0.0.1", "--bind-address", "127.0.0.1",
                 "--port-map", f"80={port},443={tls_port}", "--no-access-log", "--dns", f"127.0.0.1:{dns_port}",
                 "--dns-domain", "home.test", "--dns-upstream", f"127.0.0.1:{ub_port}", *extra],
                stderr=open(root / f"{name}.log", "w"))
            procs.append(p)
            wait_port("127.0.0.1", tls_port)
            wait_dns(dns_port)
            return p, port, tls_port, dns_port

        observing = homeplane("observing", [])
        quiet = homeplane("quiet", QUIET)
        ng_port, ng_h2c, ng_tls = free_port(), free_port(), free_port()
        ng = subprocess.Popen(["nginx", "-c", str(nginx_conf(root, ng_port, upstream=backend, h2c=ng_h2c, tls=(ng_tls, crt, key)))])
        procs.append(ng)
        wait_port("127.0.0.1", ng_tls)
        host = f"app{ROUTES - 1}.bench.test"
        print(f"{ROUTES} HTTPRoutes, {args.connections} connections, {args.seconds} s per run, median of {args.rounds} alternating rounds")
        print(f"{'traffic':<40} {'proxy':<10} {'req/s':>9} {'CPU µs/req':>10} {'vs nginx':>8} {'errors':>6}")
        for row in ("plain", "https", "h2"):
            runs: dict[str, list[dict[str, float]]] = {"observing": [], "quiet": [], "nginx": []}
            for _ in range(args.rounds):  # alternated, the median kept: this machine drifts ±25 % between runs
                for name, proc, plain, tls in (("observing", observing[0], observing[1], observing[2]),
                                               ("quiet", quiet[0], quiet[1], quiet[2]), ("nginx", ng, ng_port, ng_tls)):
                    url = f"http://127.0.0.1:{plain}/api/items" if row == "plain" else f"https://127.0.0.1:{tls}/api/items"
                    runs[name].append(measure(lambda proc=proc: descendants(proc.pid), url, args.seconds, args.connections, host,
                                              run=runner(row)))
            got = {name: sorted(rs, key=lambda r: r["cpu_us_per_req"])[len(rs) // 2] for name, rs in runs.items()}
            n = got["nginx"]["cpu_us_per_req"]
            for name, r in got.items():
                errs = int(r["non2xx"] + r["socket_errors"])
                print(f"{DESCRIPTION[row][:40]:<40} {name:<10} {r['rps']:>9.0f} {r['cpu_us_per_req']:>10.1f} "
                      f"{r['cpu_us_per_req'] / n:>8.2f} {errs:>6}")
            cost = got["observing"]["cpu_us_per_req"] - got["quiet"]["cpu_us_per_req"]
            print(f"{'':<40} one record costs {cost:.1f} µs CPU per request (observing - quiet)")
        qfile = root / "served.txt"
        qfile.write_text("\n".join(queries["cluster"]) + "\n")
        print(f"\n{'DNS (dnsperf -c 8, names it serves)':<40} {'server':<10} {'qps':>9} {'CPU µs/q':>10} {'vs unbound':>10}")
        dns_rows = {}
        for name, proc, port in (("observing", observing[0], observing[3]), ("quiet", quiet[0], quiet[3]), ("unbound", ub, ub_port)):
            dnsperf(port, qfile, 2)
            pids = descendants(proc.pid)
            before = cpu_seconds(pids)
            qps, done = dnsperf(port, qfile, args.seconds)
            dns_rows[name] = (qps, (cpu_seconds(pids) - before) / max(done, 1) * 1e6)
        for name, (qps, cpu) in dns_rows.items():
            print(f"{'':<40} {name:<10} {qps:>9.0f} {cpu:>10.2f} {cpu / dns_rows['unbound'][1]:>10.2f}")
        print(f"{'':<40} one DNS flow costs {dns_rows['observing'][1] - dns_rows['quiet'][1]:.2f} µs CPU per query")
    finally:
        stop_all(procs, root)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
