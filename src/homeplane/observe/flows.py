"""Flow records, Hubble's way: one per HTTP request, TCP/UDP stream and DNS query, in a ring.

The data planes append raw tuples to a bounded deque (no growth under load, and the oldest
record goes first, as Hubble's ring buffer does). A record is only decoded into Hubble's flow
fields when someone reads it, so the hot paths pay a tuple and an append: DNS keeps the query and
answer bytes, and parses them only for ``homeplane observe``.

Decoded flows carry Hubble's JSON field names (``verdict``, ``drop_reason_desc``, ``IP``,
``l4``, ``source``/``destination`` with ``namespace`` and ``labels``, ``destination_service``,
``l7.http``/``l7.dns``, ``Summary``, ``node_name``), plus a ``homeplane`` object for what Hubble
has no field for (the Gateway and route that took a request, Envoy's response flags).

Verdicts: FORWARDED when the request reached a backend (whatever it answered) or DNS answered;
DROPPED with a reason when homeplane refused it (``POLICY_DENIED`` for auth and authorization,
``NO_SERVICE`` when no backend is healthy, as Cilium says for a Service without backends,
``NO_ROUTE`` — homeplane's own — when no route matched); ERROR when the backend failed.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from homeplane.observe.accesslog import response_flags
from homeplane.observe.envoystats import gateway_label

HTTP, L4, DNS = 1, 2, 3
DEFAULT_CAPACITY = 4095  # Hubble's default ring (hubble-event-buffer-capacity)
MAX_CAPACITY = 65535  # Hubble's largest
MAX_FIELD = 2048  # bytes of a path or host kept in a flow (clients choose them; the ring is bounded in bytes too)
MAX_PATTERN = 1024

# Cilium's reserved identities
_HOST, _WORLD = 1, 2
_DROPPED_BY = {"UAEX": "POLICY_DENIED", "UH": "NO_SERVICE", "NR": "NO_ROUTE", "DPE": "INVALID_PACKET_DROPPED", "OM": "OVERLOAD"}
_ERROR_FLAGS = frozenset(("UF", "UC", "UT", "UO", "URX", "NC"))
_AUTH_WORDS = ("auth", "denied", "jwt")


class FlowRing:
    """The last ``capacity`` flows of this process. Producers call :meth:`l4`, or append raw
    tuples directly where a method call would cost too much, each starting ``(next(seq), kind,``:
    HTTP ``time, client, gateway, route, method, host, path, protocol, status, duration, backend,
    cluster, error, port table, local address, scheme, attempts)`` (``DataPlane.record``; bytes
    where the data plane has bytes) and DNS ``monotonic time, client key, proto, query, answer,
    (local address, port))`` (``DNSServer``)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, node_name: str | None = None):
        if not 0 < capacity <= MAX_CAPACITY:
            raise ValueError(f"flow ring capacity must be 1..{MAX_CAPACITY}, not {capacity}")
        self.capacity = capacity
        self.entries: deque[tuple[Any, ...]] = deque(maxlen=capacity)
        self.seq = itertools.count(1)
        self.node_name = node_name or socket.gethostname()
        self.identities: Any = None  # policy.identity.Identities of the configuration served (pods by address)

    def l4(self, proto: str, client: tuple[str, int], service: str, route: str | None, backend: str | None,
           bytes_in: int, bytes_out: int, duration: float, error: str | None = None, sni: str | None = None,
           reason: str | None = None) -> None:
        """A TCP connection or UDP session that ended (``service``: the Service or Gateway it was
        for; ``reason``: why it was refused, when it was)."""
        self.entries.append((next(self.seq), L4, time.time(), proto, client, service, route, backend, bytes_in, bytes_out,
                             duration, error, sni, reason))

    @property
    def last_seq(self) -> int:
        return self.entries[-1][0] if self.entries else 0

    def read(self, since: int = 0, flt: FlowFilter | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """Decoded flows with a sequence number above ``since`` that pass ``flt``, oldest first
        (``last``: only the newest that many)."""
        if last == 0:
            return []
        raw = [e for e in list(self.entries) if e[0] > since]
        offset = time.time() - time.monotonic()
        out: list[dict[str, Any]] = []
        for e in reversed(raw) if last is not None else raw:
            f = decode(e, offset, self.node_name, self.identities)
            if flt is None or flt.matches(f):
                out.append(f)
                if last is not None and len(out) >= last:
                    break
        if last is not None:
            out.reverse()
        return out


# --- decoding into Hubble's fields -------------------------------------------------------------


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _identity(ip: str) -> dict[str, Any]:
    """An address outside any Service: the host itself, or the world (Cilium's reserved identities)."""
    try:
        local = ipaddress.ip_address(ip).is_loopback
    except ValueError:
        local = False
    return {"identity": _HOST, "labels": ["reserved:host"]} if local else {"identity": _WORLD, "labels": ["reserved:world"]}


def _service_of(name: str | None) -> tuple[str, str] | None:
    """(namespace, name) of a backend pool named ``service/NS/NAME:PORT`` or ``backend/NS/NAME…``."""
    if not name:
        return None
    parts = name.split("/")
    if len(parts) >= 3 and parts[0] in ("service", "backend"):
        return parts[1], parts[2].split(":", 1)[0]
    return None


def _split_ref(ref: str) -> tuple[str, str]:
    ns, _, name = ref.rpartition("/")
    return ns.rsplit("/", 1)[-1], name


def _host_port(text: str | None) -> tuple[str, int | None]:
    if not text:
        return "", None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return text, None
    return host.strip("[]"), int(port)


def _ip_version(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def _endpoint(ip: str, ns_name: tuple[str, str] | None, kind: str = "app") -> dict[str, Any]:
    """A Service's or Gateway's side of a flow (no pods here: the workload is named after it)."""
    if ns_name is None:
        return _identity(ip) if ip else {}
    ns, name = ns_name
    return {"namespace": ns, "labels": [f"k8s:io.kubernetes.pod.namespace={ns}", f"k8s:{kind}={name}"], "workloads": [{"name": name}]}


def _pod(ident: Any) -> dict[str, Any]:
    """A network-policy identity (policy.identity) as Hubble shows an endpoint."""
    labels = sorted(f"k8s:{k}={v}" for k, v in ident.cilium_labels().items() if not k.startswith("io.cilium.k8s.namespace.labels."))
    name = ident.name.split(" ")[1].rsplit("/", 1)[-1] if " " in ident.name else ident.name
    return {"namespace": ident.namespace, "labels": labels, "workloads": [{"name": name}]}


def decode(e: tuple[Any, ...], offset: float, node: str, identities: Any = None) -> dict[str, Any]:
    kind = e[1]
    if kind == HTTP:
        flow = _decode_http(e)
    elif kind == L4:
        flow = _decode_l4(e)
    else:
        flow = _decode_dns(e, offset)
    if identities is not None:  # network policy knows the pods: a client that is one is shown as it
        who = identities.of_address(flow["IP"]["source"])
        if who.kind == "pod":
            flow["source"] = _pod(who)
    flow["node_name"] = node
    flow["homeplane"]["seq"] = e[0]
    return {"flow": flow, "node_name": node, "time": flow["time"]}


def _text(x: bytes | str) -> str:
    return x.decode("latin-1") if isinstance(x, bytes) else x


def _decode_http(e: tuple[Any, ...]) -> dict[str, Any]:
    (_, _, end, client, gateway, route, method, host, path, protocol, status, duration, backend, cluster, error,
     table, local_ip, scheme, attempts) = e
    method, host, path, scheme = (_text(x) for x in (method, host, path, scheme))
    gateway = gateway_label(gateway)
    listener = (local_ip, table.port, scheme) if table is not None else None
    flags = response_flags(error, status, route, attempts)
    first = flags.split(",")[0]
    if first in _ERROR_FLAGS:
        verdict, reason = "ERROR", None
    elif first in _DROPPED_BY:
        verdict, reason = "DROPPED", _DROPPED_BY[first]
    elif error and any(w in error.lower() for w in _AUTH_WORDS):
        verdict, reason = "DROPPED", "POLICY_DENIED"
    else:
        verdict, reason = "FORWARDED", None
    svc = _service_of(cluster)
    dst_ip, dst_port = _host_port(backend)
    gw = _split_ref(gateway)
    if not dst_ip and svc is None and listener is not None:  # answered by the gateway itself
        dst_ip, dst_port = listener[0], listener[1]
        destination = _endpoint(dst_ip, gw, "gateway.envoyproxy.io/owning-gateway-name")
    else:
        destination = _endpoint(dst_ip, svc)
    scheme = listener[2] if listener else "http"
    url = f"{scheme}://{host}{path}"
    latency_ms = duration * 1000
    flow: dict[str, Any] = {
        "time": _rfc3339(end),
        "verdict": verdict,
        "IP": {"source": client, "destination": dst_ip, "ipVersion": _ip_version(client)},
        "l4": {"UDP" if protocol == "HTTP/3" else "TCP": {"destination_port": dst_port} if dst_port else {}},
        "source": _identity(client),
        "destination": destination,
        "Type": "L7",
        "l7": {"type": "RESPONSE", "latency_ns": str(int(duration * 1e9)),
               "http": {"code": status, "method": method, "url": url, "protocol": protocol}},
        "traffic_direction": "INGRESS",
        "is_reply": False,
        "Summary": f"{protocol} {status} {latency_ms:.0f}ms ({method} {url})",
        "homeplane": {"gateway": gateway, "route": route, "response_flags": flags, "error": error or None},
    }
    if reason:
        flow["drop_reason_desc"] = reason
    if svc:
        flow["destination_service"] = {"namespace": svc[0], "name": svc[1]}
    return flow


def _decode_l4(e: tuple[Any, ...]) -> dict[str, Any]:
    _, _, end, proto, client, service, route, backend, bytes_in, bytes_out, duration, error, sni, reason = e
    dst_ip, dst_port = _host_port(backend)
    svc = _split_ref(service) if service else None
    verdict = "DROPPED" if reason or not backend else "FORWARDED"
    flow: dict[str, Any] = {
        "time": _rfc3339(end),
        "verdict": verdict,
        "IP": {"source": client[0], "destination": dst_ip, "ipVersion": _ip_version(client[0])},
        "l4": {proto: {"source_port": client[1], **({"destination_port": dst_port} if dst_port else {})}},
        "source": _identity(client[0]),
        "destination": _endpoint(dst_ip, svc),
        "Type": "L3_L4",
        "traffic_direction": "INGRESS",
        "is_reply": False,
        "Summary": f"{proto} {client[0]}:{client[1]} -> {backend or '-'} in {bytes_in} out {bytes_out} bytes"
                   + (f" sni {sni}" if sni else ""),
        "homeplane": {"service": service, "route": route, "bytes_in": bytes_in, "bytes_out": bytes_out,
                      "duration_ms": round(duration * 1000, 3), "error": error},
    }
    if svc:
        flow["destination_service"] = {"namespace": svc[0], "name": svc[1]}
    if verdict == "DROPPED":
        flow["drop_reason_desc"] = reason or "NO_SERVICE"
    return flow


def _client_ip(key: bytes) -> str:
    if len(key) == 4:
        return socket.inet_ntop(socket.AF_INET, key)
    if len(key) == 16:
        return socket.inet_ntop(socket.AF_INET6, key)
    return key.decode("latin-1", "replace")


def _decode_dns(e: tuple[Any, ...], offset: float) -> dict[str, Any]:
    import dns.exception
    import dns.message
    import dns.rcode
    import dns.rdatatype

    _, _, mono, key, proto, query, answer, local = e
    client = _client_ip(key) if isinstance(key, bytes) else str(key)
    dns_fields: dict[str, Any] = {"observation_source": "proxy"}
    qname = qtype = "?"
    try:
        q = dns.message.from_wire(query, question_only=True)
        if q.question:
            qname = q.question[0].name.to_text()
            qtype = dns.rdatatype.to_text(q.question[0].rdtype)
    except (dns.exception.DNSException, ValueError):
        pass
    dns_fields.update(query=qname, qtypes=[qtype])
    verdict, reason = "FORWARDED", None
    summary = f"DNS Query {qname} {qtype}"
    if answer is None:
        verdict, reason = "DROPPED", "POLICY_DENIED"
    else:
        try:
            r = dns.message.from_wire(answer, ignore_trailing=True)
            rcode = r.rcode()
            ips, cnames, rrtypes, ttl = [], [], [], None
            for rrset in r.answer:
                rrtypes.append(dns.rdatatype.to_text(rrset.rdtype))
                ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
                for rd in rrset:
                    if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                        ips.append(rd.to_text())
                    elif rrset.rdtype == dns.rdatatype.CNAME:
                        cnames.append(rd.to_text())
            dns_fields.update(rcode=rcode, ips=ips, cnames=cnames, rrtypes=sorted(set(rrtypes)))
            if ttl is not None:
                dns_fields["ttl"] = ttl
            if rcode == dns.rcode.REFUSED:
                verdict, reason = "DROPPED", "POLICY_DENIED"
            what = ",".join(f'"{x}"' for x in ips + cnames) if rcode == 0 else f"RCode: {dns.rcode.to_text(rcode)}"
            summary = f"DNS Answer {what} TTL: {ttl if ttl is not None else '-'} (Proxy {qname} {qtype})"
        except (dns.exception.DNSException, ValueError) as exc:
            verdict = "ERROR"
            summary = f"DNS Answer unreadable: {exc}"
    flow: dict[str, Any] = {
        "time": _rfc3339(mono + offset),
        "verdict": verdict,
        "IP": {"source": client, "destination": local[0] if local else "", "ipVersion": _ip_version(client)},
        "l4": {proto.upper(): {"destination_port": local[1] if local else 53}},
        "source": _identity(client),
        "destination": {"identity": _HOST, "labels": ["reserved:host"]},
        "Type": "L7",
        "l7": {"type": "RESPONSE", "dns": dns_fields},
        "traffic_direction": "INGRESS",
        "is_reply": False,
        "Summary": summary,
        "homeplane": {},
    }
    if reason:
        flow["drop_reason_desc"] = reason
    return flow


# --- filters (hubble observe's flags) -----------------------------------------------------------

VERDICTS = ("FORWARDED", "DROPPED", "ERROR")
PROTOCOLS = ("http", "dns", "tcp", "udp")
FILTER_KEYS = ("namespace", "from-namespace", "to-namespace", "ip", "from-ip", "to-ip", "from-service", "to-service",
               "verdict", "protocol", "http-status", "http-method", "http-path", "port", "to-port", "since", "until")


class FilterError(ValueError):
    pass


def _ip_matcher(text: str) -> Any:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FilterError(f"not an IP address or CIDR: {text!r}") from None
    return lambda ip: _in(ip, net)


def _in(ip: str, net: Any) -> bool:
    try:
        return ipaddress.ip_address(ip) in net
    except ValueError:
        return False


def _status_matcher(text: str) -> Any:
    """Hubble's ``--http-status``: an exact code, or ``5+`` for a class."""
    if len(text) == 2 and text[0] in "12345" and text[1] == "+":
        lo = int(text[0]) * 100
        return lambda code: lo <= code < lo + 100
    if text.isdigit() and len(text) == 3:
        return lambda code: code == int(text)
    raise FilterError(f"--http-status {text!r}: a code (404) or a class (5+)")


def parse_time(text: str, now: float | None = None) -> float:
    """``--since``/``--until``: a duration back from now (``30s``, ``5m``, ``2h``) or RFC 3339."""
    now = time.time() if now is None else now
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for u in ("ms", "s", "m", "h"):
        if text.endswith(u) and text[: -len(u)].replace(".", "", 1).isdigit():
            return now - float(text[: -len(u)]) * units[u]
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"not a duration (5m) or a time (2026-12-08T01:00:00Z): {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _flow_time(f: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(f["time"].replace("Z", "+00:00")).timestamp()


def _ns_of(ep: Mapping[str, Any]) -> str:
    return str(ep.get("namespace", ""))


def _service_match(pattern: str, f: Mapping[str, Any], side: str) -> bool:
    """Hubble matches a Service as ``namespace/name`` (a bare name: any namespace), by prefix."""
    svc = f.get(f"{side}_service")
    if not svc:
        return False
    full = f"{svc.get('namespace', '')}/{svc.get('name', '')}"
    return full.startswith(pattern) if "/" in pattern else str(svc.get("name", "")).startswith(pattern)


@dataclass
class FlowFilter:
    """Like hubble: values of one flag are alternatives; different flags must all hold."""

    checks: list[Any] = field(default_factory=list)

    def matches(self, wrapped: Mapping[str, Any]) -> bool:
        f = wrapped["flow"]
        return all(check(f) for check in self.checks)

    @classmethod
    def parse(cls, args: Mapping[str, Iterable[str]], now: float | None = None) -> FlowFilter:
        unknown = set(args) - set(FILTER_KEYS)
        if unknown:
            raise FilterError(f"unknown filter {sorted(unknown)[0]!r}; known: {', '.join(FILTER_KEYS)}")
        checks: list[Any] = []

        def any_of(values: list[Any], test: Any) -> None:
            if values:
                checks.append(lambda f, values=values: any(test(f, v) for v in values))

        get = {k: [v for v in args.get(k, ()) if v != ""] for k in FILTER_KEYS}
        any_of(get["namespace"], lambda f, v: v in (_ns_of(f.get("source", {})), _ns_of(f.get("destination", {}))))
        any_of(get["from-namespace"], lambda f, v: _ns_of(f.get("source", {})) == v)
        any_of(get["to-namespace"], lambda f, v: _ns_of(f.get("destination", {})) == v)
        ips = [_ip_matcher(v) for v in get["ip"]]
        any_of(ips, lambda f, m: m(f["IP"]["source"]) or m(f["IP"]["destination"]))
        any_of([_ip_matcher(v) for v in get["from-ip"]], lambda f, m: m(f["IP"]["source"]))
        any_of([_ip_matcher(v) for v in get["to-ip"]], lambda f, m: m(f["IP"]["destination"]))
        any_of(get["from-service"], lambda f, v: _service_match(v, f, "source"))
        any_of(get["to-service"], lambda f, v: _service_match(v, f, "destination"))
        for v in get["verdict"]:
            if v.upper() not in VERDICTS:
                raise FilterError(f"--verdict {v!r}: one of {', '.join(VERDICTS)}")
        any_of([v.upper() for v in get["verdict"]], lambda f, v: f["verdict"] == v)
        for v in get["protocol"]:
            if v.lower() not in PROTOCOLS:
                raise FilterError(f"--protocol {v!r}: one of {', '.join(PROTOCOLS)}")
        any_of([v.lower() for v in get["protocol"]], _protocol_is)
        any_of([_status_matcher(v) for v in get["http-status"]],
               lambda f, m: "http" in f.get("l7", {}) and m(f["l7"]["http"]["code"]))
        any_of([v.upper() for v in get["http-method"]],
               lambda f, v: f.get("l7", {}).get("http", {}).get("method", "").upper() == v)
        paths = [_re2(v) for v in get["http-path"]]
        any_of(paths, lambda f, rx: "http" in f.get("l7", {}) and rx.search(_url_path(f["l7"]["http"]["url"])) is not None)
        for v in get["port"] + get["to-port"]:
            if not v.isdigit() or not 0 < int(v) < 65536:
                raise FilterError(f"not a port: {v!r}")
        any_of([int(v) for v in get["port"]], lambda f, p: p in _ports(f))
        any_of([int(v) for v in get["to-port"]], lambda f, p: p == _ports(f)[1])
        if get["since"]:
            since = parse_time(get["since"][-1], now)
            checks.append(lambda f: _flow_time(f) >= since)
        if get["until"]:
            until = parse_time(get["until"][-1], now)
            checks.append(lambda f: _flow_time(f) <= until)
        return cls(checks)


def _re2(pattern: str) -> Any:
    """``--http-path`` in RE2, as Hubble's Go regexp: linear time whatever the pattern, so a
    filter cannot stall the process (Python's backtracking ``re`` can, on ``(b+)+c``)."""
    import re2

    if len(pattern) > MAX_PATTERN:
        raise FilterError(f"--http-path: longer than {MAX_PATTERN} characters")
    opts = re2.Options()
    opts.log_errors = False
    try:
        return re2.compile(pattern, opts)
    except re2.error as e:
        msg = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise FilterError(f"--http-path: {msg}") from None


def _protocol_is(f: Mapping[str, Any], proto: str) -> bool:
    l7 = f.get("l7") or {}
    if proto in ("http", "dns"):
        return proto in l7
    return proto.upper() in f.get("l4", {})


def _ports(f: Mapping[str, Any]) -> tuple[int | None, int | None]:
    for v in f.get("l4", {}).values():
        return v.get("source_port"), v.get("destination_port")
    return None, None


def _url_path(url: str) -> str:
    """The path of a flow's URL, without its query (what Hubble's ``--http-path`` matches)."""
    rest = url.split("://", 1)[-1]
    i = rest.find("/")
    return rest[i:].split("?", 1)[0] if i >= 0 else "/"


# --- output (hubble observe -o compact | table | json) ----------------------------------------------


_UNPRINTABLE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def printable(text: str) -> str:
    """A client's bytes for a terminal: control characters (escape sequences) written as \\xNN."""
    return text.translate(_UNPRINTABLE)


def _endpoint_text(ep: Mapping[str, Any], ip: str, port: int | None) -> str:
    where = f"{ip}:{port}" if port else ip or "-"
    if ep.get("workloads") and ep.get("namespace"):
        where = f"{ep['namespace']}/{ep['workloads'][0]['name']}" + (f":{port}" if port else "")
    labels = ep.get("labels") or []
    if labels and labels[0].startswith("reserved:"):
        return f"{where} ({labels[0].split(':', 1)[1]})"
    return f"{where} (ID:{ep['identity']})" if "identity" in ep else where


def _kind(f: Mapping[str, Any]) -> str:
    l7 = f.get("l7") or {}
    for proto in ("http", "dns"):
        if proto in l7:
            return f"{proto}-{'response' if l7.get('type') == 'RESPONSE' else 'request'}"
    return "to-endpoint"


def _stamp(f: Mapping[str, Any]) -> str:
    t = datetime.fromisoformat(f["time"].replace("Z", "+00:00")).astimezone()
    return t.strftime("%b %e %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def compact(wrapped: Mapping[str, Any]) -> str:
    f = wrapped["flow"]
    sport, dport = _ports(f)
    src = _endpoint_text(f.get("source", {}), f["IP"]["source"], sport)
    dst = _endpoint_text(f.get("destination", {}), f["IP"]["destination"], dport)
    verdict = f["verdict"] + (f" {f['drop_reason_desc']}" if f.get("drop_reason_desc") else "")
    return printable(f"{_stamp(f)}: {src} -> {dst} {_kind(f)} {verdict} ({f['Summary']})")


TABLE_HEADER = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")


def table_row(wrapped: Mapping[str, Any]) -> tuple[str, ...]:
    f = wrapped["flow"]
    sport, dport = _ports(f)
    return tuple(printable(x) for x in (
        _stamp(f), _endpoint_text(f.get("source", {}), f["IP"]["source"], sport),
        _endpoint_text(f.get("destination", {}), f["IP"]["destination"], dport), _kind(f), f["verdict"], f["Summary"]))
