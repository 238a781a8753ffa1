"""Policies lowered to the settings the data planes run (pure), as Envoy Gateway lowers its
API into its xDS IR: durations in seconds, sizes in bytes, CIDRs parsed, defaults filled in.

A value that does not lower (a quantity that is not one, a CIDR that is not one) is a problem
reported on the policy's status (``Accepted=False``, ``Invalid``), where ``check`` shows it; the
policy then does not apply. Nothing here is parsed again when a Snapshot is applied.
"""

from __future__ import annotations

import ipaddress

from homeplane.api.models.envoy import BackendTrafficPolicySpec, ClientTrafficPolicySpec
from homeplane.api.units import parse_duration, parse_quantity
from homeplane.translate import snapshot as ir

# content-coding tokens of BackendTrafficPolicy compressor types
COMPRESSION_TOKENS = {"Gzip": "gzip", "Brotli": "br", "Zstd": "zstd"}
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "reset")


def lower_client_traffic(spec: ClientTrafficPolicySpec) -> tuple[ir.ListenerSettings, list[str]]:
    """A ClientTrafficPolicy's settings for the listeners it targets, and what did not lower."""
    problems: list[str] = []
    s: dict = {}
    xff = spec.client_ip_detection.x_forwarded_for if spec.client_ip_detection else None
    if xff is not None:
        s["xff_enabled"] = True
        s["xff_hops"] = xff.num_trusted_hops
        trusted = []
        for c in xff.trusted_cidrs:
            try:
                trusted.append(ipaddress.ip_network(c, strict=False))
            except ValueError:
                problems.append(f"clientIPDetection.xForwardedFor.trustedCIDRs: {c!r} is not a CIDR")
        s["xff_trusted"] = tuple(trusted)
    if spec.timeout and spec.timeout.http and spec.timeout.http.idle_timeout:
        s["idle_timeout"] = parse_duration(spec.timeout.http.idle_timeout) or None
    if spec.proxy_protocol is not None or spec.enable_proxy_protocol:
        s["proxy_protocol"] = True
        s["proxy_protocol_optional"] = bool(spec.proxy_protocol and spec.proxy_protocol.optional)
    if spec.http2 is not None:
        h = spec.http2
        if h.max_concurrent_streams:
            s["h2_max_streams"] = h.max_concurrent_streams
        for field_name, key in (("initial_stream_window_size", "h2_stream_window"), ("initial_connection_window_size", "h2_connection_window")):
            value = getattr(h, field_name)
            if value:
                try:
                    s[key] = parse_quantity(value)
                except ValueError as e:
                    problems.append(f"http2.{_camel(field_name)}: {e}")
    if spec.connection is not None:
        limit = spec.connection.connection_limit or {}
        if isinstance(limit.get("value"), int) and limit["value"] > 0:
            s["connection_limit"] = limit["value"]
        elif limit:
            problems.append("connection.connectionLimit.value must be a positive number")
        if spec.connection.buffer_limit:
            try:
                s["buffer_limit"] = parse_quantity(spec.connection.buffer_limit)
            except ValueError as e:
                problems.append(f"connection.bufferLimit: {e}")
    if spec.tls is not None:
        if spec.tls.alpn_protocols:
            s["alpn"] = tuple(spec.tls.alpn_protocols)
        for key, value in (("min_tls", spec.tls.min_version), ("max_tls", spec.tls.max_version)):
            if value:
                if value not in ("1.0", "1.1", "1.2", "1.3", "Auto"):
                    problems.append(f"tls.{'minVersion' if key == 'min_tls' else 'maxVersion'}: {value!r} is not a TLS version (1.0 ... 1.3)")
                elif value != "Auto":
                    s[key] = value
    if spec.path is not None:
        if spec.path.escaped_slashes_action:
            s["escaped_slashes"] = spec.path.escaped_slashes_action
        if spec.path.disable_merge_slashes:
            s["merge_slashes"] = False
    if spec.http3 is not None:
        s["http3"] = True
    return ir.ListenerSettings(**s), problems


def lower_backend_traffic(spec: BackendTrafficPolicySpec) -> tuple[ir.TrafficSettings, list[str]]:
    """A BackendTrafficPolicy's settings for the routes (and their clusters) it targets."""
    problems: list[str] = []
    s: dict = {}
    lb = spec.load_balancer
    if lb is not None:
        s["lb_policy"] = lb.type
        ch = lb.consistent_hash
        if ch is not None:
            if ch.type == "SourceIP":
                s["hash_on"] = ("SourceIP", "")
            elif ch.type == "Header" and ch.header and ch.header.get("name"):
                s["hash_on"] = ("Header", str(ch.header["name"]).lower())
            elif ch.type == "Cookie" and ch.cookie and ch.cookie.get("name"):
                s["hash_on"] = ("Cookie", str(ch.cookie["name"]))
            else:
                problems.append(f"loadBalancer.consistentHash: type {ch.type} needs its name (header.name, cookie.name)")
    t = spec.timeout
    if t is not None:
        if t.http is not None and t.http.request_timeout is not None:
            s["request_timeout"] = parse_duration(t.http.request_timeout)
        if t.tcp is not None and t.tcp.connect_timeout:
            s["connect_timeout"] = parse_duration(t.tcp.connect_timeout) or None
    r = spec.retry
    if r is not None:
        s["retry"] = ir.RetrySettings(
            num_retries=r.num_retries,
            triggers=frozenset(r.retry_on.triggers if r.retry_on else DEFAULT_RETRY_ON),
            status_codes=frozenset(r.retry_on.http_status_codes if r.retry_on else ()),
            per_try_timeout=parse_duration(r.per_retry.timeout) if r.per_retry and r.per_retry.timeout else None,
            backoff_base=parse_duration(r.per_retry.back_off.base_interval)
            if r.per_retry and r.per_retry.back_off and r.per_retry.back_off.base_interval else 0.025,
        )
    s["compression"] = tuple(dict.fromkeys(COMPRESSION_TOKENS[c.type] for c in spec.compressors()))
    hc = spec.health_check
    if hc is not None and hc.active is not None:
        a = hc.active
        if a.type == "GRPC":
            problems.append("healthCheck.active.type GRPC is not supported by homeplane (HTTP, TCP)")
        elif a.type == "HTTP" and a.http is None:
            problems.append("healthCheck.active.http is required for type HTTP")
        else:
            s["active"] = ir.ActiveCheck(
                type=a.type, timeout=parse_duration(a.timeout), interval=parse_duration(a.interval),
                unhealthy_threshold=a.unhealthy_threshold, healthy_threshold=a.healthy_threshold,
                path=a.http.path if a.http else None, hostname=a.http.hostname if a.http else None,
                method=(a.http.method or "GET").upper() if a.http else "GET",
                expected_statuses=tuple(a.http.expected_statuses or (200,)) if a.http else (200,),
            )
    if hc is not None and hc.passive is not None:
        p = hc.passive
        s["passive"] = ir.PassiveCheck(
            consecutive_5xx=p.consecutive_5xx_errors, consecutive_gateway=p.consecutive_gateway_errors,
            consecutive_local=p.consecutive_local_origin_failures, base_ejection=parse_duration(p.base_ejection_time),
            max_ejection_percent=p.max_ejection_percent,
        )
    cb = spec.circuit_breaker
    if cb is not None:
        s.update(max_connections=cb.max_connections, max_pending=cb.max_pending_requests, max_requests=cb.max_parallel_requests)
    s["own_cluster"] = hc is not None or cb is not None
    return ir.TrafficSettings(**s), problems


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)
