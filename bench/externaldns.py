#!/usr/bin/env python3
"""DNS automation: how soon a route change reaches the provider, and how many API calls it costs.

homeplane runs (``homeplane run``) on a repo with 100 HTTPRoutes on envoy-external and a
Cloudflare external-dns instance (``--cloudflare-proxied``, 1000 records per page), against the
Cloudflare API fake the tests use (real HTTP on loopback). Measured:

- the first sync: time until all 100 CNAMEs and their 100 TXT records exist, and the calls it took;
- a new route: time from writing its file to the record's arrival at the API, and the calls, N times;
- a resync with nothing to do: the calls.

The peer is external-dns itself, by its documented algorithm on the same inputs (it cannot run
here: no Go toolchain or image registry): every loop lists the zones (1 call), the records
(ceil(records / per_page) calls) and sends changes in batches of 200; a change is seen on the next
loop, ``--interval`` later (1 m by default), or ``--min-event-sync-interval`` later (5 s) with
``--events`` (triggerLoopOnEvent), so its delay is at best that interval.

    python bench/externaldns.py [--routes 100] [--changes 10]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port  # noqa: E402

from tests.externaldns import manifests as m  # noqa: E402
from tests.externaldns.fakes.cloudflare import FakeCloudflare  # noqa: E402

TOKEN = "bench-token"
EVENTS_MIN_INTERVAL = 5.0  # external-dns --min-event-sync-interval default
POLL_INTERVAL = 60.0  # external-dns --interval default (the chart's too)
PER_PAGE = 1000
BATCH = 200


def wait(pred, timeout: float = 60.0, step: float = 0.002) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(step)
    raise RuntimeError("timed out")


def external_dns_calls(records: int, changes: int) -> int:
    """One external-dns loop on the same inputs: list zones, list records, batch the changes."""
    return 1 + max(1, math.ceil(records / PER_PAGE)) + (math.ceil(changes / BATCH) if changes else 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--changes", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeCloudflare(TOKEN) as cf:
        repo = m.write(Path(tmp) / "repo", {
            "gateways.yaml": m.GATEWAYS,
            "routes.yaml": "".join(m.route(f"app{i}", "default", "envoy-external", [f"app{i}.home.example"]) for i in range(args.routes)),
            "dns.yaml": m.external_dns("cloudflare-dns", "cloudflare", ["gateway-httproute"], "default", "k8s.%{record_type}-",
                                       ["--cloudflare-proxied", "--gateway-name=envoy-external", f"--cloudflare-dns-records-per-page={PER_PAGE}"]),
        })
        env = {**os.environ, "HOMEPLANE_CLOUDFLARE_API_URL": cf.url, "CF_API_TOKEN": TOKEN}
        admin = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "homeplane", "run", str(repo), "--admin", f"127.0.0.1:{admin}", "--state", f"{tmp}/state.db",
             "--port-map", f"80={free_port()},443={free_port()}", "--gateway-address", "network/envoy-external=127.0.0.1",
             "--gateway-address", "network/envoy-internal=127.0.0.1", "--log-level", "warning", "--no-access-log"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            started = time.monotonic()
            want = 2 * args.routes
            try:
                wait(lambda: len(cf.records) >= want, timeout=60)
            except RuntimeError:
                import httpx

                print(httpx.get(f"http://127.0.0.1:{admin}/status").json()["runtime"].get("externalDNS"), file=sys.stderr)
                raise
            first = time.monotonic() - started
            first_calls = len(cf.requests)
            delays, calls = [], []
            time.sleep(1.0)
            for k in range(args.changes):
                before = len(cf.requests)
                name = f"new{k}.home.example"
                t0 = time.monotonic()
                (repo / f"new{k}.yaml").write_text(m.route(f"new{k}", "default", "envoy-external", [name]))
                wait(lambda: any(r["name"] == name for r in list(cf.records.values())))
                delays.append(time.monotonic() - t0)
                time.sleep(0.8)  # let the sync finish before the next change
                calls.append(len(cf.requests) - before)
            # a resync with nothing to do, in process, on the same manifests and provider state
            from homeplane.externaldns.config import instances, resolve_env
            from homeplane.externaldns.providers import make_provider
            from homeplane.externaldns.sources import SourceInput
            from homeplane.externaldns.sync import sync
            from homeplane.pipeline import Inputs, run_pipeline
            import asyncio

            os.environ["HOMEPLANE_CLOUDFLARE_API_URL"] = cf.url
            result = run_pipeline(Inputs(paths=(repo,)))
            (inst,) = instances(result.load.objects)
            provider = make_provider(inst, resolve_env(inst, result.load.objects, {"CF_API_TOKEN": TOKEN}))
            before = len(cf.requests)
            res = asyncio.run(sync(inst, SourceInput.from_result(result), provider))
            noop_calls = len(cf.requests) - before
            assert res.changes is not None and not res.changes
        finally:
            proc.terminate()
            proc.wait(10)
        n_records = 2 * (args.routes + args.changes) + 0
        ref_first = external_dns_calls(0, want)
        ref_change = external_dns_calls(n_records, 2)
        ref_noop = external_dns_calls(n_records, 0)
        med = statistics.median(delays)
        p95 = sorted(delays)[max(0, math.ceil(0.95 * len(delays)) - 1)]
        print(f"{args.routes} routes, {args.changes} changes, Cloudflare fake on loopback; "
              f"external-dns by its documented loop (zones + records/{PER_PAGE} per page + batches of {BATCH})")
        print(f"{'':28} {'homeplane':>12} {'external-dns':>14} {'ratio':>7}")
        print(f"{'first sync, API calls':28} {first_calls:>12} {ref_first:>14} {first_calls / ref_first:>7.2f}")
        print(f"{'first sync, seconds':28} {first:>12.2f} {'>= 0 (1 loop)':>14}")
        print(f"{'per change, API calls':28} {statistics.median(calls):>12.0f} {ref_change:>14} {statistics.median(calls) / ref_change:>7.2f}")
        print(f"{'no-op resync, API calls':28} {noop_calls:>12} {ref_noop:>14} {noop_calls / ref_noop:>7.2f}")
        print(f"{'change -> API, median s':28} {med:>12.3f} {EVENTS_MIN_INTERVAL:>14.1f} {med / EVENTS_MIN_INTERVAL:>7.3f}  (external-dns --events; {POLL_INTERVAL:.0f} s polling)")
        print(f"{'change -> API, p95 s':28} {p95:>12.3f}")
        err = proc.stderr.read() if proc.stderr else ""
        if "Traceback" in err:
            print(err[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
