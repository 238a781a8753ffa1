"""Counters under other projects' exact metric names.

prometheus_client names a counter family ``X`` and writes its samples as ``X_total``. Envoy,
cloudflared and unpoller do not all follow that: some counters end in ``_total`` (a family
``X`` with samples ``X_total`` says exactly that), others do not (``envoy_cluster_upstream_rq``,
``cloudflared_tunnel_total_requests``). Those are written as untyped, which keeps their names
as dashboards query them, and the exposition consistent (a TYPE line names its own samples).
"""

from __future__ import annotations

from prometheus_client.core import Metric


def counter(name: str, doc: str, typed: bool = True) -> Metric:
    """A counter family whose samples are named exactly ``name`` (add them with ``sample``).
    ``typed=False`` where another family is named ``name`` without its ``_total``
    (``envoy_cluster_upstream_rq`` beside ``envoy_cluster_upstream_rq_total``): two TYPE lines
    for one name would make the scrape invalid."""
    if name.endswith("_total") and typed:
        m = Metric(name[:-6], doc, "counter")
    else:
        m = Metric(name, doc, "unknown")
    m.sample_name = name  # type: ignore[attr-defined]
    return m


def sample(m: Metric, labels: dict[str, str], value: float) -> None:
    m.add_sample(m.sample_name, labels, value)  # type: ignore[attr-defined]
