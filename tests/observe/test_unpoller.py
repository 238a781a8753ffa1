"""UniFi statistics under unpoller's names: what one poll becomes (names, label order, unit
conversions), polling the UniFi contract fake with the repo's webhook credentials (API key and
the legacy login), keeping the last figures when the controller fails, and ``homeplane run
--unifi-stats`` serving them on /metrics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from homeplane.observe.unpoller import CLIENT_LABELS, WIRELESS_LABELS, Poll, UnifiStats, metrics
from homeplane.pipeline import Inputs, run_pipeline
from tests.externaldns import manifests as m
from tests.externaldns.fakes.unifi import FakeUnifi
from tests.externaldns.test_unifi_and_webhook import UNIFI_HR
from tests.integration.test_run import free_port, wait_for

SWITCH = {"_id": "d1", "type": "usw", "name": "core-switch", "mac": "aa:00:00:00:00:01", "ip": "192.168.1.2", "model": "USL24P",
          "version": "7.1.26", "serial": "S1", "adopted": True, "uptime": 86400, "tx_bytes": 1000, "rx_bytes": 2000,
          "sys_stats": {"loadavg_1": "0.25", "loadavg_5": "0.5", "loadavg_15": "1.0", "mem_used": 1024, "mem_total": 4096},
          "system-stats": {"cpu": "12.5", "mem": "40"}, "user-num_sta": 3, "guest-num_sta": 1,
          "port_table": [{"port_idx": 1, "name": "uplink", "up": True, "enable": True, "speed": 1000, "rx_bytes": 10, "tx_bytes": 20,
                          "rx_bytes-r": 1.5},
                         {"port_idx": 2, "name": "empty", "up": False, "enable": True, "speed": 0}]}
AP = {"_id": "d2", "type": "uap", "name": "attic-ap", "mac": "aa:00:00:00:00:02", "adopted": True, "uptime": 100,
      "vap_table": [{"bssid": "bb:00:00:00:00:01", "radio": "na", "radio_name": "wifi1"}]}
LOST = {"_id": "d3", "type": "uap", "name": "spare", "mac": "aa:00:00:00:00:03", "adopted": False}
WIRED = {"mac": "cc:00:00:00:00:01", "hostname": "nas", "ip": "192.168.1.10", "is_wired": True, "sw_mac": "AA:00:00:00:00:01",
         "sw_port": 5, "network": "LAN", "vlan": 0, "uptime": 3600, "wired-rx_bytes": 5000, "wired-tx_bytes": 7000,
         "wired-rx_bytes-r": 12.0, "rx_bytes": 1, "tx_bytes": 1}
PHONE = {"mac": "cc:00:00:00:00:02", "name": "phone", "ip": "192.168.1.50", "is_wired": False, "ap_mac": "aa:00:00:00:00:02",
         "essid": "home", "bssid": "bb:00:00:00:00:01", "radio": "na", "radio_name": "wifi1", "radio_proto": "ax", "channel": 36,
         "signal": -55, "rssi": 41, "noise": -96, "satisfaction": 98, "tx_rate": 1201000, "rx_bytes": 300, "tx_bytes": 400,
         "uptime": 60, "roam_count": 2}
SITE = {"_id": "s1", "name": "default", "desc": "Home", "health": [
    {"subsystem": "wlan", "status": "ok", "num_user": 4, "num_guest": 1, "num_ap": 1, "tx_bytes-r": 100, "rx_bytes-r": 200},
    {"subsystem": "www", "status": "ok", "latency": 12, "uptime": 5000, "drops": 3},
]}


def scrape(fams) -> dict[tuple[str, tuple], float]:
    class C:
        def collect(self):
            return fams

    reg = CollectorRegistry()
    reg.register(C())
    text = generate_latest(reg).decode()
    families = [f for f in text_string_to_metric_families(text)]
    assert len({f.name for f in families}) == len(families)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def find(samples, metric: str, /, **labels: str) -> float:
    hits = [v for (n, ls), v in samples.items() if n == metric and all(dict(ls).get(k) == v2 for k, v2 in labels.items())]
    assert len(hits) == 1, (metric, labels, hits)
    return hits[0]


def test_one_poll_in_unpoller_names_and_units() -> None:
    fams = metrics(Poll("https://unifi.test", [SITE], {"default": [WIRED, PHONE]}, {"default": [SWITCH, AP, LOST]}))
    s = scrape(fams)
    site = "Home (default)"
    assert find(s, "unpoller_client_receive_bytes_total", name="nas", wired="true", sw_name="core-switch", site_name=site) == 5000
    assert find(s, "unpoller_client_transmit_bytes_total", name="nas") == 7000
    assert find(s, "unpoller_client_receive_rate_bytes", name="nas") == 12.0
    assert find(s, "unpoller_client_receive_bytes_total", name="phone", wired="false", ap_name="attic-ap") == 300
    assert find(s, "unpoller_client_radio_signal_db", name="phone", essid="home", radio_desc="attic-ap na wifi1:ax") == -55
    assert find(s, "unpoller_client_satisfaction_ratio", name="phone") == 0.98
    assert find(s, "unpoller_client_radio_transmit_rate_bps", name="phone") == 1_201_000_000
    assert find(s, "unpoller_client_roam_count_total", name="phone") == 2
    assert find(s, "unpoller_client_uptime_seconds", name="nas", radio_name="") == 3600
    assert find(s, "unpoller_device_info", name="core-switch", model="USL24P", version="7.1.26", serial="S1", tag="") == 1
    assert find(s, "unpoller_device_uptime_seconds", name="core-switch", type="usw") == 86400
    assert find(s, "unpoller_device_bytes_total", name="core-switch") == 3000
    assert find(s, "unpoller_device_load_average_5", name="core-switch") == 0.5
    assert find(s, "unpoller_device_cpu_utilization_ratio", name="core-switch") == 0.125
    assert find(s, "unpoller_device_stations", name="core-switch", station_type="guest") == 1
    assert find(s, "unpoller_device_port_port_speed_bps", port_id="core-switch Port 1", port_name="uplink") == 1_000_000_000
    assert find(s, "unpoller_device_port_receive_rate_bytes", port_num="1") == 1.5
    assert not [k for k in s if dict(k[1]).get("port_num") == "2"]  # a port that is down and draws no power
    assert not [k for k in s if dict(k[1]).get("name") == "spare"]  # not adopted
    assert find(s, "unpoller_site_users", subsystem="wlan", status="ok", site_name=site) == 4
    assert find(s, "unpoller_site_latency_seconds", subsystem="www") == 0.012
    assert find(s, "unpoller_site_intenet_drops_total", subsystem="www") == 3
    by_name = {getattr(f, "sample_name", f.name): f for f in fams}
    rx = by_name["unpoller_client_receive_bytes_total"]
    assert list(rx.samples[0].labels) == list(CLIENT_LABELS)  # unpoller's label order
    assert list(by_name["unpoller_client_rssi_db"].samples[0].labels) == list(WIRELESS_LABELS)


def _repo(tmp_path: Path, host: str) -> Path:
    return m.write(tmp_path / "repo", {"gateways.yaml": m.GATEWAYS, "dns.yaml": UNIFI_HR % host})


def test_polling_the_controller_with_the_webhooks_credentials(tmp_path: Path) -> None:
    with FakeUnifi() as unifi:
        unifi.sites = [SITE]
        unifi.clients = {"default": [WIRED, PHONE]}
        unifi.devices = {"default": [SWITCH, AP]}
        result = run_pipeline(Inputs(paths=(_repo(tmp_path, unifi.base),)))

        async def go() -> None:
            stats = UnifiStats(lambda: result, {"UNIFI_API_KEY": "unifi-key"}, interval=0.1, environ={})
            await stats.start()
            try:
                await asyncio.wait_for(_until(lambda: stats.polls >= 1), 10)
                s = scrape(list(stats.collect()))
                assert find(s, "unpoller_client_receive_bytes_total", name="nas") == 5000
                st = stats.status()
                assert (st["controller"], st["sites"], st["clients"], st["devices"]) == (unifi.base, 1, 2, 2)
                assert ("GET", "/proxy/network/api/s/default/stat/sta") in unifi.requests
                unifi.down = True  # the controller fails: the last figures stay, the error is said
                await asyncio.wait_for(_until(lambda: bool(stats.last_error)), 10)
                assert find(scrape(list(stats.collect())), "unpoller_client_receive_bytes_total", name="nas") == 5000
                assert "HTTP 502" in stats.status()["lastError"]
            finally:
                await stats.close()

        asyncio.run(go())


def test_the_legacy_login_and_no_controller(tmp_path: Path) -> None:
    with FakeUnifi(api_key="", user="admin", password="pw", external=True) as unifi:
        unifi.sites = [SITE]
        unifi.devices = {"default": [SWITCH]}
        hr = (UNIFI_HR % unifi.base).replace("- name: UNIFI_API_KEY\n            valueFrom: {secretKeyRef: {name: unifi-dns-secret, key: UNIFI_API_KEY}}",
                                             "- {name: UNIFI_USER, value: admin}\n          - {name: UNIFI_PASS, value: pw}\n"
                                             "          - {name: UNIFI_EXTERNAL_CONTROLLER, value: 'true'}")
        repo = m.write(tmp_path / "repo", {"dns.yaml": hr})
        result = run_pipeline(Inputs(paths=(repo,)))

        async def go() -> None:
            stats = UnifiStats(lambda: result, {}, interval=60, environ={})
            stats.configure()
            poll = await stats.poll_once()
            assert poll.devices["default"][0]["name"] == "core-switch" and ("GET", "/api/stat/sites") in unifi.requests
            await stats.close()
            none = UnifiStats(lambda: run_pipeline(Inputs(paths=(m.write(tmp_path / "empty", {"g.yaml": m.GATEWAYS}),))), {})
            none.configure()
            assert none.status()["notRunning"] == "no UniFi external-dns instance in the manifests"
            assert list(none.collect()) == []

        asyncio.run(go())


async def _until(pred) -> None:
    while not pred():
        await asyncio.sleep(0.02)


def test_run_serves_them_on_metrics(tmp_path: Path) -> None:
    with FakeUnifi() as unifi:
        unifi.sites = [SITE]
        unifi.clients = {"default": [WIRED]}
        repo = _repo(tmp_path, unifi.base)
        admin = f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen([sys.executable, "-m", "homeplane", "run", str(repo), "--admin", admin, "--state",
                                 str(tmp_path / "s.db"), "--port-map", f"80={free_port()},443={free_port()}", "--bind-address",
                                 "127.0.0.1", "--set", "UNIFI_API_KEY=unifi-key", "--unifi-stats", "--unifi-stats-interval", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def polled() -> str | None:
                t = httpx.get(f"http://{admin}/metrics").text
                return t if "unpoller_client_receive_bytes_total" in t else None

            text = wait_for(polled, timeout=30, what="unpoller metrics")
            line = next(ln for ln in text.splitlines() if ln.startswith("unpoller_client_receive_bytes_total{"))
            assert 'name="nas"' in line and line.endswith(" 5000.0")
            st = httpx.get(f"http://{admin}/status").json()["runtime"]["unifiStats"]
            assert st["clients"] == 1 and st["polls"] >= 1
        finally:
            proc.terminate()
            proc.wait(10)
