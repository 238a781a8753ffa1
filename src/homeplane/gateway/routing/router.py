"""Routing tables compiled from the Snapshot (pure; no I/O).

A :class:`PortTable` covers one bound port of one Gateway: its listeners (Gateway
API lets several share a port, told apart by hostname/SNI), each with virtual
hosts, each with rules already in Gateway API precedence order. Lookup is:

1. listener: the most specific listener hostname that matches the request host
   (for HTTPS the TLS layer has already picked one by SNI);
2. virtual host: exact name, then the longest matching wildcard, then ``*``;
3. the first rule whose match accepts (path, method, headers, query).

No match at any step means 404. Everything that can be precomputed (lower-cased
names, stripped prefixes, compiled regexes) is done once per Snapshot. The hot
path works on ``bytes`` as they come off the wire; nothing is decoded per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import unquote_to_bytes

from homeplane.translate import snapshot as ir
from homeplane.translate.hostnames import specificity

EXACT, PREFIX, REGEX = 0, 1, 2


@dataclass(slots=True, eq=False)
class CompiledMatch:
    rule: ir.RouteRule
    path_kind: int
    path: bytes
    path_slash: bytes  # prefix + "/" for segment-aware prefix matching
    path_re: re.Pattern[bytes] | None
    method: bytes | None
    headers: tuple[tuple[bytes, bytes, re.Pattern[bytes] | None], ...]  # (lower-case name, exact value, regex)
    query: tuple[tuple[bytes, bytes, re.Pattern[bytes] | None], ...]
    action: Any = None  # what the data plane does on a match (gateway.exchange.RouteAction)

    def matches(
        self, path: bytes, method: bytes, headers: Mapping[bytes, bytes], query: Callable[[], dict[bytes, bytes]]
    ) -> bool:
        k = self.path_kind
        if k == PREFIX:
            if not (path == self.path or path.startswith(self.path_slash)):
                return False
        elif k == EXACT:
            if path != self.path:
                return False
        elif self.path_re is None or self.path_re.fullmatch(path) is None:
            return False
        if self.method is not None and method != self.method:
            return False
        for name, value, rx in self.headers:
            got = headers.get(name)
            if got is None or (got != value if rx is None else rx.fullmatch(got) is None):
                return False
        if self.query:
            q = query()
            for name, value, rx in self.query:
                got = q.get(name)
                if got is None or (got != value if rx is None else rx.fullmatch(got) is None):
                    return False
        return True


def compile_match(rule: ir.RouteRule) -> CompiledMatch:
    m = rule.match
    p = m.path.encode()
    if m.path_type == "PathPrefix":
        # "/foo/" and "/foo" are the same prefix; "/" matches everything.
        base = p.rstrip(b"/") or b"/"
        kind, path, slash, rx = PREFIX, base, (base + b"/" if base != b"/" else b"/"), None
    elif m.path_type == "Exact":
        kind, path, slash, rx = EXACT, p, p, None
    else:
        kind, path, slash, rx = REGEX, p, p, re.compile(p)

    def enc(t: str, v: str) -> tuple[bytes, re.Pattern[bytes] | None]:
        b = v.encode()
        return b, (re.compile(b) if t == "RegularExpression" else None)

    return CompiledMatch(
        rule=rule,
        path_kind=kind,
        path=path,
        path_slash=slash,
        path_re=rx,
        method=m.method.encode() if m.method else None,
        headers=tuple((n.lower().encode(), *enc(t, v)) for t, n, v in m.headers),
        query=tuple((n.encode(), *enc(t, v)) for t, n, v in m.query),
    )


@dataclass(frozen=True, slots=True)
class VHostTable:
    hostname: str
    matches: tuple[CompiledMatch, ...]
    needs_headers: bool  # some rule matches on headers: the caller must build the header map


@dataclass(slots=True, eq=False)
class ListenerTable:
    listener: ir.Listener
    exact: Mapping[bytes, VHostTable]
    wildcards: tuple[tuple[bytes, VHostTable], ...]  # (b".suffix", table), longest first
    any_host: VHostTable | None
    hostname: bytes | None  # the listener's own hostname
    conf: Any = None  # per-listener data plane settings (gateway.server.ListenerConf)

    def vhost(self, host: bytes) -> VHostTable | None:
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        for suffix, table in self.wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                return table
        return self.any_host


def compile_listener(listener: ir.Listener) -> ListenerTable:
    exact: dict[bytes, VHostTable] = {}
    wild: list[tuple[bytes, VHostTable]] = []
    any_host = None
    for vh in listener.vhosts:
        matches = tuple(compile_match(r) for r in vh.rules)
        table = VHostTable(vh.hostname, matches, any(m.headers for m in matches))
        if vh.hostname == "*":
            any_host = table
        elif vh.hostname.startswith("*."):
            wild.append((vh.hostname[1:].encode(), table))
        else:
            exact[vh.hostname.encode()] = table
    wild.sort(key=lambda w: -len(w[0]))
    host = listener.hostname.encode() if listener.hostname else None
    return ListenerTable(listener, exact, tuple(wild), any_host, host)


@dataclass(frozen=True, slots=True)
class PortTable:
    """All ready listeners of one Gateway on one port."""

    gateway: ir.Ref
    port: int
    protocol: str  # HTTP or HTTPS
    listeners: tuple[ListenerTable, ...]  # most specific hostname first

    def listener_for(self, host: bytes) -> ListenerTable | None:
        for lt in self.listeners:
            h = lt.hostname
            if h is None or h == host or (h.startswith(b"*.") and host.endswith(h[1:]) and len(host) > len(h) - 1):
                return lt
        return None

    def route(
        self,
        host: bytes,
        method: bytes,
        path: bytes,
        headers: Mapping[bytes, bytes],
        query_string: bytes = b"",
        listener: ListenerTable | None = None,
    ) -> tuple[ListenerTable | None, CompiledMatch | None]:
        lt = listener or self.listener_for(host)
        if lt is None:
            return None, None
        vh = lt.vhost(host)
        if vh is None:
            return lt, None
        cache: dict[bytes, bytes] | None = None

        def query() -> dict[bytes, bytes]:
            nonlocal cache
            if cache is None:
                cache = parse_query(query_string)
            return cache

        for m in vh.matches:
            if m.matches(path, method, headers, query):
                return lt, m
        return lt, None


def compile_gateway(gateway: ir.Gateway) -> dict[int, PortTable]:
    """Port -> table, for the ready HTTP and HTTPS listeners of a Gateway (TCP and UDP ones are
    served by gateway/l4routes.py)."""
    by_port: dict[int, list[ir.Listener]] = {}
    for ls in gateway.listeners:
        if ls.ready and ls.protocol in ("HTTP", "HTTPS"):
            by_port.setdefault(ls.port, []).append(ls)
    tables = {}
    for port, listeners in by_port.items():
        listeners.sort(key=lambda ls: specificity(ls.hostname))
        tables[port] = PortTable(
            gateway.ref, port, listeners[0].protocol, tuple(compile_listener(ls) for ls in listeners)
        )
    return tables


def parse_query(qs: bytes) -> dict[bytes, bytes]:
    """Query parameters, percent-decoded; the first value of a repeated name wins."""
    out: dict[bytes, bytes] = {}
    for part in qs.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        k = unquote_to_bytes(k.replace(b"+", b" "))
        if k not in out:
            out[k] = unquote_to_bytes(v.replace(b"+", b" "))
    return out


# RFC 9110 §7.2: Host = uri-host [ ":" port ]: a name (letters, digits, "-._~", escapes), an IPv4
# address or a bracketed IPv6 one. The sub-delims RFC 3986 also allows in a reg-name ("," ";" ...)
# never appear in a DNS name and only serve tricks ("a,internal.test"): refused.
_VALID_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%]+)(?::([0-9]{0,5}))?")


def valid_host(raw: bytes) -> bool:
    """A Host value a proxy may route on: no spaces, userinfo ("@"), other stray bytes or a port
    beyond 65535."""
    m = _VALID_HOST.fullmatch(raw.strip(b" \t"))
    return m is not None and (not m.group(1) or int(m.group(1)) <= 65535)


def normalize_host(raw: bytes) -> bytes:
    """Host header -> lower-case name without port (IPv6 literals keep their brackets)."""
    h = raw.strip().lower()
    if h.startswith(b"["):
        end = h.find(b"]")
        return h[: end + 1] if end > 0 else h
    colon = h.rfind(b":")
    if colon >= 0 and h[colon + 1 :].isdigit():
        h = h[:colon]
    return h.rstrip(b".")
