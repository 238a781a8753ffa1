"""The gateway's metrics under Envoy's Prometheus names, so Envoy Gateway's dashboards read them.

Envoy exports its stats as ``envoy_<scope>_<stat>`` with the scope's variable parts as labels:
``envoy_http_downstream_rq_xx{envoy_response_code_class="2", envoy_http_conn_manager_prefix=…}``,
``envoy_cluster_upstream_rq{envoy_response_code="200", envoy_cluster_name=…}``, and histograms in
milliseconds with Envoy's default buckets. Counters keep Envoy's names exactly (no ``_total`` is
added; the ones whose stat name ends in ``_total`` have it already).

The connection manager prefix is the listener's protocol and port (``http-80``, ``https-443``), as
Envoy Gateway names its listeners' stat prefixes; a ``gateway`` label says which Gateway, because
one homeplane serves several where Envoy Gateway runs one Envoy each. Clusters are homeplane's
backend pools (``service/NS/NAME:PORT``). Label values come from the configuration, never from
requests, so cardinality is bounded by the manifests.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Iterable

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from homeplane.observe.accesslog import response_flags
from homeplane.observe.promnames import counter, sample

# Envoy's default histogram buckets (ms)
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect_left(BUCKETS, ms)] += 1
        self.total += ms

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for le, n in zip(BUCKETS + (float("inf"),), self.counts):
            acc += n
            out.append(("+Inf" if le == float("inf") else str(le), acc))
        return out


class _Listener:
    __slots__ = ("classes", "protos", "time")

    def __init__(self) -> None:
        self.classes = [0] * 6  # by status class (index 0: no status)
        self.protos: dict[str, int] = {}
        self.time = _Histogram()


class _Cluster:
    __slots__ = ("codes", "time", "fails")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}  # upstream responses by status
        self.time = _Histogram()
        self.fails: dict[str, int] = {}  # connect failures, timeouts, retries


class EnvoyStats:
    """Counted per request by ``DataPlane.record`` (both lanes); connections and cluster
    membership are read from the data plane when scraped. Keys are kept raw on the request path
    (the listener's protocol and port, the Gateway's ref text) and turned into labels on a scrape."""

    def __init__(self, dp: Any):
        self.dp = dp
        self.listeners: dict[tuple[str, int, str], _Listener] = {}
        self.clusters: dict[str, _Cluster] = {}

    def request(self, table: Any, gateway: str, protocol: str, status: int, duration: float, cluster: str | None,
                upstream: bool, upstream_time: float | None, error: str | None, route: str | None, attempts: int) -> None:
        key = (table.protocol, table.port, gateway) if table is not None else ("-", 0, gateway)
        row = self.listeners.get(key)
        if row is None:
            row = self.listeners[key] = _Listener()
        row.classes[status // 100 if 0 < status < 600 else 0] += 1
        protos = row.protos
        protos[protocol] = protos.get(protocol, 0) + 1
        ms = duration * 1000
        h = row.time  # _Histogram.observe, inlined: this runs once per request
        h.counts[bisect_left(BUCKETS, ms)] += 1
        h.total += ms
        if cluster is None:
            return
        c = self.clusters.get(cluster)
        if c is None:
            c = self.clusters[cluster] = _Cluster()
        if error:
            for flag in response_flags(error, status, route, attempts).split(","):
                stat = _FLAG_STATS.get(flag)
                if stat:
                    c.fails[stat] = c.fails.get(stat, 0) + 1
                    upstream = upstream and flag != "UF"  # no response came from the endpoint
        if upstream:
            codes = c.codes
            codes[status] = codes.get(status, 0) + 1
            ms = (upstream_time if upstream_time is not None else duration) * 1000
            h = c.time
            h.counts[bisect_left(BUCKETS, ms)] += 1
            h.total += ms
        if attempts > 1:
            c.fails["upstream_rq_retry"] = c.fails.get("upstream_rq_retry", 0) + attempts - 1

    @staticmethod
    def _labels(key: tuple[str, int, str]) -> dict[str, str]:
        proto, port, gateway = key
        return {"envoy_http_conn_manager_prefix": f"{proto.lower()}-{port}", "gateway": gateway_label(gateway)}

    def collect(self) -> Iterable[Metric]:
        lbl = ["envoy_http_conn_manager_prefix", "gateway"]
        total = counter("envoy_http_downstream_rq_total", "Total requests")
        by_class = counter("envoy_http_downstream_rq_xx", "Responses by status class")
        protos = {p: counter(f"envoy_http_downstream_rq_{p}_total", f"Total {p.upper()} requests") for p in ("http1", "http2", "http3")}
        hist = HistogramMetricFamily("envoy_http_downstream_rq_time", "Request time (ms)", labels=lbl)
        for key, row in sorted(self.listeners.items()):
            labels = self._labels(key)
            sample(total, labels, sum(row.classes))
            for cls in range(1, 6):
                if row.classes[cls]:
                    sample(by_class, {**labels, "envoy_response_code_class": str(cls)}, row.classes[cls])
            per_proto: dict[str, int] = {}
            for proto, n in row.protos.items():
                p = _PROTO.get(proto, "http1")
                per_proto[p] = per_proto.get(p, 0) + n
            for p, n in sorted(per_proto.items()):
                sample(protos[p], labels, n)
            hist.add_metric([labels[k] for k in lbl], row.time.buckets(), row.time.total)
        yield total
        yield by_class
        yield from protos.values()
        yield hist
        active = GaugeMetricFamily("envoy_http_downstream_cx_active", "Active connections", labels=lbl)
        cx_total = counter("envoy_http_downstream_cx_total", "Total connections")
        for srv in list(self.dp.servers.values()):
            labels = self._labels((srv.table.protocol, srv.table.port, str(srv.table.gateway)))
            active.add_metric([labels[k] for k in lbl], len(srv.conns))
            sample(cx_total, labels, srv.cx_total)
        yield active
        yield cx_total
        perr = counter("envoy_http_downstream_cx_protocol_error", "Requests refused as malformed (400, 414, 431), all listeners")
        sample(perr, {}, self.dp.stats.get("protocol_errors", 0))
        yield perr
        yield from self._clusters()

    def _clusters(self) -> Iterable[Metric]:
        name = "envoy_cluster_name"
        rq_total = counter("envoy_cluster_upstream_rq_total", "Total upstream requests", typed=False)
        rq = counter("envoy_cluster_upstream_rq", "Upstream responses by status code")
        rq_xx = counter("envoy_cluster_upstream_rq_xx", "Upstream responses by status class")
        fails = {stat: counter(f"envoy_cluster_{stat}", stat.replace("_", " "))
                 for stat in sorted(set(_FLAG_STATS.values()) | {"upstream_rq_retry"})}
        hist = HistogramMetricFamily("envoy_cluster_upstream_rq_time", "Upstream request time (ms)", labels=[name])
        for cluster, c in sorted(self.clusters.items()):
            classes: dict[int, int] = {}
            for code, n in sorted(c.codes.items()):
                sample(rq, {"envoy_response_code": str(code), name: cluster}, n)
                classes[code // 100] = classes.get(code // 100, 0) + n
            sample(rq_total, {name: cluster}, sum(c.codes.values()))
            for cls, n in sorted(classes.items()):
                sample(rq_xx, {"envoy_response_code_class": str(cls), name: cluster}, n)
            for stat, n in sorted(c.fails.items()):
                sample(fails[stat], {name: cluster}, n)
            if c.codes:
                hist.add_metric([cluster], c.time.buckets(), c.time.total)
        yield rq_total
        yield rq
        yield rq_xx
        yield from fails.values()
        yield hist
        healthy = GaugeMetricFamily("envoy_cluster_membership_healthy", "Healthy endpoints", labels=[name])
        members = GaugeMetricFamily("envoy_cluster_membership_total", "Endpoints", labels=[name])
        now = time.monotonic()
        pools = {c.name: c for c in self.dp.clusters.values()}  # one pool may be balanced two ways: counted once
        for cname, c in sorted(pools.items()):
            healthy.add_metric([cname], sum(1 for e in c.endpoints if e.available(now)))
            members.add_metric([cname], len(c.endpoints))
        yield healthy
        yield members


_PROTO = {"HTTP/1.1": "http1", "HTTP/1.0": "http1", "HTTP/2": "http2", "HTTP/3": "http3"}
_FLAG_STATS = {"UF": "upstream_cx_connect_fail", "UT": "upstream_rq_timeout", "UO": "upstream_rq_pending_overflow",
               "UC": "upstream_cx_destroy_remote_with_active_rq"}


def gateway_label(ref: str) -> str:
    """``Gateway/NS/NAME`` (an ir.Ref's text) as ``NS/NAME``."""
    return ref[8:] if ref.startswith("Gateway/") else ref


