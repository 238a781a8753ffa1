"""UniFi network statistics under unpoller's metric names, so its Grafana dashboards work.

In the seed, unpoller polls the UniFi controller and Prometheus scrapes it. Here the elected node
polls the controller the repo's UniFi external-dns webhook already talks to (its ``UNIFI_HOST``
and credentials, through the same API client), every ``--unifi-stats-interval``, and
``/metrics`` serves the last poll: sites (``/api/stat/sites`` with their ``health``), clients
(``/api/s/<site>/stat/sta``) and devices (``/api/s/<site>/stat/device``), under
``/proxy/network`` on a UniFi OS console.

Names, label sets (in unpoller's order), units and conversions follow unpoller's promunifi
exporter: bytes stay bytes, ``-r`` fields are bytes per second, latencies go from ms to s,
percentages become ratios, link speeds Mbps become bit/s. Label values are what the controller
reports (device and client names), so the cardinality is the network's size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from homeplane.observe.promnames import counter, sample

log = logging.getLogger("homeplane.unpoller")

CLIENT_LABELS = ("name", "mac", "site_name", "gw_name", "sw_name", "vlan", "ip", "oui", "network", "sw_port", "ap_name",
                 "source", "identity", "wired")
WIRELESS_LABELS = ("radio_name", "radio", "radio_proto", "channel", "essid", "bssid", "radio_desc") + CLIENT_LABELS
DEVICE_LABELS = ("type", "site_name", "name", "source", "tag")
PORT_LABELS = ("port_id", "port_num", "port_name", "port_mac", "port_ip", "site_name", "name", "source", "tag")
SITE_LABELS = ("subsystem", "status", "site_name", "source")
DEFAULT_INTERVAL = 30.0  # unpoller's default poll interval


def num(v: Any) -> float:
    """Controllers send numbers as numbers or strings; null is 0."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def truthy(v: Any) -> bool:
    return v is True or (isinstance(v, (int, float)) and v != 0) or str(v).lower() in ("1", "true", "up", "ok", "enabled", "yes")


@dataclass
class Poll:
    """One poll's answers, per site."""

    source: str
    sites: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # site name -> clients
    devices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    at: float = 0.0


def site_label(site: Mapping[str, Any]) -> str:
    name = text(site.get("name"))
    desc = text(site.get("desc"))
    return f"{desc} ({name})" if desc else name


class _Families:
    """The metric families of one scrape, created as they are first used."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def gauge(self, name: str, labels: tuple[str, ...], values: Iterable[str], value: float) -> None:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = GaugeMetricFamily(name, name.replace("_", " "), labels=list(labels))
        fam.add_metric(list(values), value)

    def counter(self, name: str, labels: tuple[str, ...], values: Iterable[str], value: float) -> None:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = counter(name, name.replace("_", " "))
        sample(fam, dict(zip(labels, values)), value)


def metrics(poll: Poll) -> list[Metric]:
    f = _Families()
    for site in poll.sites:
        sname = site_label(site)
        _site(f, site, sname, poll.source)
        devices = poll.devices.get(text(site.get("name")), [])
        by_mac = {text(d.get("mac")).lower(): text(d.get("name")) or text(d.get("mac")) for d in devices}
        for c in poll.clients.get(text(site.get("name")), []):
            _client(f, c, sname, poll.source, by_mac, devices)
        for d in devices:
            if truthy(d.get("adopted", True)) and not truthy(d.get("locating", False)):
                _device(f, d, sname, poll.source)
    return list(f.families.values())


def _site(f: _Families, site: Mapping[str, Any], sname: str, source: str) -> None:
    per = {
        "wlan": (("adopted", "num_adopted"), ("disconnected", "num_disconnected"), ("pending", "num_pending"),
                 ("users", "num_user"), ("guests", "num_guest"), ("iots", "num_iot"), ("aps", "num_ap"), ("disabled", "num_disabled")),
        "wan": (("adopted", "num_adopted"), ("disconnected", "num_disconnected"), ("pending", "num_pending"),
                ("gateways", "num_gw"), ("stations", "num_sta")),
        "lan": (("adopted", "num_adopted"), ("disconnected", "num_disconnected"), ("pending", "num_pending"),
                ("users", "num_user"), ("guests", "num_guest"), ("iots", "num_iot"), ("switches", "num_sw")),
        "www": (("uptime_seconds", "uptime"), ("xput_up_rate", "xput_up"), ("xput_down_rate", "xput_down"),
                ("speedtest_ping", "speedtest_ping")),
        "vpn": (("users", "num_user"), ("remote_user_active", "remote_user_num_active"),
                ("remote_user_inactive", "remote_user_num_inactive")),
    }
    for h in site.get("health") or ():
        sub = text(h.get("subsystem"))
        labels = (sub, text(h.get("status")), sname, source)
        if sub in ("wlan", "wan", "lan", "www"):
            f.gauge("unpoller_site_transmit_rate_bytes", SITE_LABELS, labels, num(h.get("tx_bytes-r")))
            f.gauge("unpoller_site_receive_rate_bytes", SITE_LABELS, labels, num(h.get("rx_bytes-r")))
        for metric, key in per.get(sub, ()):
            f.gauge(f"unpoller_site_{metric}", SITE_LABELS, labels, num(h.get(key)))
        if sub == "www":
            f.gauge("unpoller_site_latency_seconds", SITE_LABELS, labels, num(h.get("latency")) / 1000)
            f.counter("unpoller_site_intenet_drops_total", SITE_LABELS, labels, num(h.get("drops")))  # (sic: unpoller's name)


def _client(f: _Families, c: Mapping[str, Any], sname: str, source: str, by_mac: Mapping[str, str],
            devices: list[dict[str, Any]]) -> None:
    wired = truthy(c.get("is_wired"))
    name = text(c.get("name")) or text(c.get("hostname")) or text(c.get("mac"))
    device = lambda key: by_mac.get(text(c.get(key)).lower(), "")  # noqa: E731
    base = (name, text(c.get("mac")), sname, device("gw_mac"), device("sw_mac"), text(c.get("vlan")), text(c.get("ip")),
            text(c.get("oui")), text(c.get("network")), text(c.get("sw_port")), device("ap_mac"), source,
            text(c.get("1x_identity")), "true" if wired else "false")
    radio = (text(c.get("radio_name")), text(c.get("radio")), text(c.get("radio_proto")), text(c.get("channel")),
             text(c.get("essid")), text(c.get("bssid")), _radio_desc(c, devices))
    pre = "wired-" if wired else ""
    f.counter("unpoller_client_receive_bytes_total", CLIENT_LABELS, base, num(c.get(f"{pre}rx_bytes")))
    f.counter("unpoller_client_transmit_bytes_total", CLIENT_LABELS, base, num(c.get(f"{pre}tx_bytes")))
    f.counter("unpoller_client_receive_packets_total", CLIENT_LABELS, base, num(c.get(f"{pre}rx_packets")))
    f.counter("unpoller_client_transmit_packets_total", CLIENT_LABELS, base, num(c.get(f"{pre}tx_packets")))
    f.gauge("unpoller_client_receive_rate_bytes", CLIENT_LABELS, base, num(c.get(f"{pre}rx_bytes-r")))
    f.gauge("unpoller_client_transmit_rate_bytes", CLIENT_LABELS, base, num(c.get(f"{pre}tx_bytes-r")))
    f.gauge("unpoller_client_uptime_seconds", WIRELESS_LABELS, radio + base, num(c.get("uptime")))
    if wired:
        return
    lw = radio + base
    f.counter("unpoller_client_transmit_retries_total", CLIENT_LABELS, base, num(c.get("tx_retries")))
    f.gauge("unpoller_client_radio_signal_db", WIRELESS_LABELS, lw, num(c.get("signal")))
    f.gauge("unpoller_client_rssi_db", WIRELESS_LABELS, lw, num(c.get("rssi")))
    f.gauge("unpoller_client_noise_db", WIRELESS_LABELS, lw, num(c.get("noise")))
    f.gauge("unpoller_client_ccq_ratio", WIRELESS_LABELS, lw, num(c.get("ccq")) / 1000)
    f.gauge("unpoller_client_satisfaction_ratio", WIRELESS_LABELS, lw, num(c.get("satisfaction")) / 100)
    f.gauge("unpoller_client_radio_transmit_rate_bps", WIRELESS_LABELS, lw, num(c.get("tx_rate")) * 1000)
    f.gauge("unpoller_client_radio_receive_rate_bps", WIRELESS_LABELS, lw, num(c.get("rx_rate")) * 1000)
    f.gauge("unpoller_client_radio_transmit_power_dbm", WIRELESS_LABELS, lw, num(c.get("tx_power")))
    f.counter("unpoller_client_roam_count_total", WIRELESS_LABELS, lw, num(c.get("roam_count")))
    f.gauge("unpoller_client_transfer_rate_bytes", WIRELESS_LABELS, lw, num(c.get("bytes-r")))


def _radio_desc(c: Mapping[str, Any], devices: list[dict[str, Any]]) -> str:
    bssid = text(c.get("bssid")).lower()
    if not bssid:
        return ""
    for d in devices:
        for vap in d.get("vap_table") or ():
            if text(vap.get("bssid")).lower() == bssid:
                return f"{text(d.get('name')) or text(d.get('mac'))} {text(vap.get('radio'))} {text(vap.get('radio_name'))}:" \
                       f"{text(c.get('radio_proto'))}"
    return ""


def _device(f: _Families, d: Mapping[str, Any], sname: str, source: str) -> None:
    name = text(d.get("name")) or text(d.get("mac"))
    dtype = text(d.get("type"))
    base = (dtype, sname, name, source, "")
    f.gauge("unpoller_device_info", ("type", "site_name", "name", "source", "version", "model", "serial", "mac", "ip", "id", "tag"),
            (dtype, sname, name, source, text(d.get("version")), text(d.get("model")), text(d.get("serial")), text(d.get("mac")),
             text(d.get("ip")), text(d.get("_id")), ""), 1)
    f.gauge("unpoller_device_uptime_seconds", DEVICE_LABELS, base, num(d.get("uptime")))
    tx, rx = num(d.get("tx_bytes")), num(d.get("rx_bytes"))
    f.counter("unpoller_device_transmit_bytes_total", DEVICE_LABELS, base, tx)
    f.counter("unpoller_device_receive_bytes_total", DEVICE_LABELS, base, rx)
    f.counter("unpoller_device_bytes_total", DEVICE_LABELS, base, tx + rx)
    sys_stats = d.get("sys_stats") or {}
    for n in ("1", "5", "15"):
        f.gauge(f"unpoller_device_load_average_{n}", DEVICE_LABELS, base, num(sys_stats.get(f"loadavg_{n}")))
    f.gauge("unpoller_device_memory_used_bytes", DEVICE_LABELS, base, num(sys_stats.get("mem_used")))
    f.gauge("unpoller_device_memory_installed_bytes", DEVICE_LABELS, base, num(sys_stats.get("mem_total")))
    f.gauge("unpoller_device_memory_buffer_bytes", DEVICE_LABELS, base, num(sys_stats.get("mem_buffer")))
    system = d.get("system-stats") or {}
    f.gauge("unpoller_device_cpu_utilization_ratio", DEVICE_LABELS, base, num(system.get("cpu")) / 100)
    f.gauge("unpoller_device_memory_utilization_ratio", DEVICE_LABELS, base, num(system.get("mem")) / 100)
    f.gauge("unpoller_device_upgradable", DEVICE_LABELS, base, 1 if truthy(d.get("upgradable")) else 0)
    st_labels = ("type", "site_name", "name", "source", "station_type", "tag")
    f.gauge("unpoller_device_stations", st_labels, (dtype, sname, name, source, "user", ""), num(d.get("user-num_sta")))
    f.gauge("unpoller_device_stations", st_labels, (dtype, sname, name, source, "guest", ""), num(d.get("guest-num_sta")))
    for port in d.get("port_table") or ():
        if not (truthy(port.get("up")) and truthy(port.get("enable", True))) and not num(port.get("poe_power")):
            continue
        idx = text(port.get("port_idx"))
        labels = (f"{name} Port {idx}", idx, text(port.get("name")), text(port.get("mac")), text(port.get("ip")), sname, name,
                  source, "")
        for way, key in (("receive", "rx"), ("transmit", "tx")):
            f.counter(f"unpoller_device_port_{way}_bytes_total", PORT_LABELS, labels, num(port.get(f"{key}_bytes")))
            f.counter(f"unpoller_device_port_{way}_packets_total", PORT_LABELS, labels, num(port.get(f"{key}_packets")))
            f.counter(f"unpoller_device_port_{way}_errors_total", PORT_LABELS, labels, num(port.get(f"{key}_errors")))
            f.counter(f"unpoller_device_port_{way}_dropped_total", PORT_LABELS, labels, num(port.get(f"{key}_dropped")))
            f.gauge(f"unpoller_device_port_{way}_rate_bytes", PORT_LABELS, labels, num(port.get(f"{key}_bytes-r")))
        f.gauge("unpoller_device_port_port_speed_bps", PORT_LABELS, labels, num(port.get("speed")) * 1_000_000)


class UnifiStats:
    """The poller: a controller (from the UniFi external-dns instance of the current
    configuration), a poll every ``interval``, the last good answers for ``/metrics``."""

    def __init__(self, current: Callable[[], Any], variables: Mapping[str, str] | None = None, interval: float = DEFAULT_INTERVAL,
                 environ: Mapping[str, str] | None = None):
        self.current = current
        self.variables = variables or {}
        self.environ = environ
        self.interval = interval
        self.api: Any = None
        self.key: Any = None
        self.last: Poll | None = None
        self.last_error = ""
        self.not_configured = "no UniFi external-dns instance with a host and credentials in the manifests"
        self.polls = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def configure(self) -> None:
        """Find the controller in the served configuration (again after each change)."""
        from homeplane.externaldns.config import instances, resolve_env
        from homeplane.externaldns.providers import provider_kind
        from homeplane.externaldns.providers.base import ProviderError
        from homeplane.externaldns.providers.unifi import UnifiAPI, unifi_config

        result = self.current()
        if result is None:
            return
        objects = result.load.objects
        found = [i for i in instances(objects) if provider_kind(i) == "unifi"]
        if not found:
            self._set(None, None, "no UniFi external-dns instance in the manifests")
            return
        inst = found[0]
        env = resolve_env(inst, objects, self.variables, self.environ, webhook=True)
        try:
            cfg = unifi_config(inst, env)
        except ProviderError as e:
            self._set(None, None, str(e))
            return
        key = (cfg.host, cfg.api_key, cfg.user, cfg.password, cfg.external_controller, cfg.verify_tls)
        if key != self.key:
            self._set(UnifiAPI(cfg), key, "")

    def _set(self, api: Any, key: Any, why: str) -> None:
        old = self.api
        self.api, self.key, self.not_configured = api, key, why
        if old is not None:
            asyncio.ensure_future(old.close())
        self._wake.set()

    async def apply(self, _snapshot: Any = None) -> None:
        self.configure()

    async def poll_once(self) -> Poll:
        api = self.api
        pre = api.prefix
        sites = await api._call("GET", f"{pre}/api/stat/sites")
        poll = Poll(source=api.cfg.host, sites=_data(sites, "sites"))
        for site in poll.sites:
            sname = text(site.get("name"))
            if not sname:
                continue
            poll.clients[sname] = _data(await api._call("GET", f"{pre}/api/s/{sname}/stat/sta"), "clients")
            poll.devices[sname] = _data(await api._call("GET", f"{pre}/api/s/{sname}/stat/device"), "devices")
        poll.at = time.time()
        return poll

    async def _loop(self) -> None:
        from homeplane.externaldns.providers.base import ProviderError

        while True:
            if self.api is not None:
                try:
                    self.last = await self.poll_once()
                    self.polls += 1
                    self.last_error = ""
                except (ProviderError, ValueError, TypeError, AttributeError) as e:
                    if self.last_error != str(e):
                        log.warning("UniFi stats from %s: %s (the last poll's figures stay)", self.api.cfg.host, e)
                    self.last_error = str(e)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def start(self) -> None:
        self.configure()
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.api is not None:
            await self.api.close()
            self.api, self.key = None, None

    def collect(self) -> Iterable[Metric]:
        return metrics(self.last) if self.last is not None else []

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"controller": self.api.cfg.host if self.api is not None else None, "polls": self.polls}
        if self.api is None:
            doc["notRunning"] = self.not_configured
        if self.last is not None:
            doc["lastPoll"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last.at))
            doc.update(sites=len(self.last.sites), clients=sum(map(len, self.last.clients.values())),
                       devices=sum(map(len, self.last.devices.values())))
        if self.last_error:
            doc["lastError"] = self.last_error
        return doc


def _data(doc: Any, what: str) -> list[dict[str, Any]]:
    """The ``data`` list of the controller's ``{"meta": {"rc": "ok"}, "data": [...]}``."""
    from homeplane.externaldns.providers.base import ProviderError

    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ProviderError(f"unifi: the {what} answer has no data list")
    meta = doc.get("meta") or {}
    if meta.get("rc") not in (None, "ok"):
        raise ProviderError(f"unifi: the {what} answer says {meta.get('msg') or meta.get('rc')}")
    return [x for x in doc["data"] if isinstance(x, dict)]
