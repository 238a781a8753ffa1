"""cloudflared's ingress rules: which origin serves a hostname that came through the tunnel.

The format is cloudflared's ``config.yaml`` (``ingress:``), so an existing config works
unchanged. Pure: :func:`parse_ingress` checks rules the way cloudflared does (the last rule
must catch everything, a wildcard only as the leftmost label, a known service) and
:meth:`Ingress.match` picks the first rule whose hostname matches.

Services: ``http://``/``https://`` origins, ``tcp://``/``ssh://``/``rdp://`` (bytes passed
through), and ``http_status:NNN`` (answered by the tunnel itself). ``path`` is a regular
expression searched in the request's path, as cloudflared's; it can only be applied where the
connector reads the requests: HTTP/1.1 the edge saw in clear. Elsewhere (TLS passed through,
HTTP/2) no path is known and rules with one do not match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from homeplane.api.units import parse_duration

STREAM_SCHEMES = {"tcp", "ssh", "rdp", "smb"}
DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "rdp": 3389, "smb": 445}
ORIGIN_OPTIONS = {
    # what the connector does with each originRequest option (the others are accepted and noted)
    "originServerName", "noTLSVerify", "connectTimeout", "http2Origin", "caPool",
    "tcpKeepAlive", "keepAliveTimeout", "keepAliveConnections", "noHappyEyeballs",
    "disableChunkedEncoding", "httpHostHeader", "proxyType", "tlsTimeout", "bastionMode",
    "proxyAddress", "proxyPort", "access", "matchSNItoHost",
    "proxyProtocol",  # homeplane's: a PROXY v2 header with the public client's address, to a dialled origin
}


class IngressError(ValueError):
    """A rule cloudflared would refuse, with the rule's position."""


@dataclass(frozen=True)
class OriginRequest:
    server_name: str | None = None  # originServerName: SNI (and name checked) towards an https origin
    no_tls_verify: bool = False
    connect_timeout: float = 30.0  # cloudflared's default
    http2_origin: bool = False
    ca_pool: str | None = None
    match_sni_to_host: bool = False
    proxy_protocol: bool = False


@dataclass(frozen=True)
class Rule:
    index: int
    hostname: str | None  # None: every hostname
    service: str
    scheme: str  # http, https, tcp (and ssh/rdp/smb), or http_status
    host: str = ""
    port: int = 0
    status: int = 0  # for http_status
    origin: OriginRequest = field(default_factory=OriginRequest)
    path: re.Pattern[str] | None = None

    def matches(self, hostname: str, path: str | None = None) -> bool:
        if self.path is not None and (path is None or not self.path.search(path)):
            return False
        return self.matches_host(hostname)

    def matches_host(self, hostname: str) -> bool:
        return host_matches(self.hostname, hostname)


def host_matches(pattern: str | None, hostname: str) -> bool:
    """cloudflared's hostname match: exact, or "*.suffix" for any name under it, or everything."""
    if pattern is None or pattern == "*":
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:]) and len(hostname) > len(pattern) - 1
    return hostname == pattern


@dataclass(frozen=True)
class Ingress:
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()

    def match(self, hostname: str | None, path: str | None = None) -> Rule:
        name = (hostname or "").lower().rstrip(".")
        for r in self.rules:
            if r.matches(name, path):
                return r
        return self.rules[-1]  # (parse_ingress guarantees a catch-all last)

    def has_paths(self, hostname: str | None) -> bool:
        """Whether a rule for this hostname looks at the path (then the request must be read)."""
        name = (hostname or "").lower().rstrip(".")
        return any(r.path is not None and r.matches_host(name) for r in self.rules)

    def hostnames(self) -> list[str]:
        return [r.hostname for r in self.rules if r.hostname and r.hostname != "*"]


def _origin(raw: Any, where: str, warnings: list[str], base: OriginRequest | None = None) -> OriginRequest:
    base = base or OriginRequest()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise IngressError(f"{where}.originRequest: expected a mapping")
    for k in raw:
        if k not in ORIGIN_OPTIONS:
            warnings.append(f"{where}.originRequest.{k}: unknown option, ignored")
    timeout = base.connect_timeout
    if "connectTimeout" in raw:
        try:
            timeout = parse_duration(str(raw["connectTimeout"]))
        except ValueError as e:
            raise IngressError(f"{where}.originRequest.connectTimeout: {e}") from None
    return OriginRequest(
        server_name=str(raw["originServerName"]) if raw.get("originServerName") else base.server_name,
        no_tls_verify=bool(raw.get("noTLSVerify", base.no_tls_verify)),
        connect_timeout=timeout,
        http2_origin=bool(raw.get("http2Origin", base.http2_origin)),
        ca_pool=str(raw["caPool"]) if raw.get("caPool") else base.ca_pool,
        match_sni_to_host=bool(raw.get("matchSNItoHost", base.match_sni_to_host)),
        proxy_protocol=_proxy_protocol(raw.get("proxyProtocol"), where, base.proxy_protocol),
    )


def _proxy_protocol(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if value in ("v2", 2, True):
        return True
    if value in ("off", False):
        return False
    raise IngressError(f"{where}.originRequest.proxyProtocol: v2 or off, not {value!r}")


_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


def _rule(i: int, raw: Any, top: OriginRequest, warnings: list[str]) -> Rule | None:
    where = f"ingress[{i}]"
    if not isinstance(raw, dict):
        raise IngressError(f"{where}: expected a mapping with service (and hostname, path)")
    service = raw.get("service")
    if not isinstance(service, str) or not service:
        raise IngressError(f"{where}.service: required")
    hostname = raw.get("hostname")
    if hostname is not None:
        hostname = str(hostname).lower().rstrip(".")
        if ":" in hostname:
            raise IngressError(f"{where}.hostname: {hostname!r} must not have a port")
        if hostname != "*" and not _HOSTNAME.match(hostname):
            raise IngressError(f"{where}.hostname: {hostname!r}: a wildcard may only be the leftmost label ('*.example.com')")
    origin = _origin(raw.get("originRequest"), where, warnings, top)
    path = None
    if raw.get("path"):
        try:
            path = re.compile(str(raw["path"]))
        except re.error as e:
            raise IngressError(f"{where}.path: {raw['path']!r} is not a regular expression: {e}") from None
    if service.startswith("http_status:"):
        code = service.split(":", 1)[1]
        if not code.isdigit() or not 100 <= int(code) <= 599:
            raise IngressError(f"{where}.service: {service!r}: http_status needs a status code 100-599")
        return Rule(i, hostname, service, "http_status", status=int(code), origin=origin, path=path)
    if service == "hello_world" or service.startswith(("unix:", "unix+tls:", "bastion")):
        raise IngressError(f"{where}.service: {service!r} is not supported by homeplane's connector")
    u = urlsplit(service)
    scheme = u.scheme.lower()
    if scheme not in ("http", "https") and scheme not in STREAM_SCHEMES:
        raise IngressError(f"{where}.service: {service!r}: expected http://, https://, tcp://, ssh://, rdp:// or http_status:NNN")
    if not u.hostname:
        raise IngressError(f"{where}.service: {service!r}: no host")
    if u.path not in ("", "/"):
        raise IngressError(f"{where}.service: {service!r}: a service URL cannot have a path")
    try:
        port = u.port or DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        raise IngressError(f"{where}.service: {service!r}: bad port") from None
    if not port:
        raise IngressError(f"{where}.service: {service!r}: {scheme}:// needs a port")
    return Rule(i, hostname, service, "tcp" if scheme in STREAM_SCHEMES else scheme, u.hostname.lower(), port, origin=origin,
                path=path)


def parse_ingress(config: Any) -> Ingress:
    """cloudflared's config (a mapping with ``ingress:`` and optional top-level
    ``originRequest:``) as checked rules; IngressError for what cloudflared would refuse."""
    if not isinstance(config, dict):
        raise IngressError("expected a mapping with an ingress: list")
    raw = config.get("ingress")
    if not isinstance(raw, list) or not raw:
        raise IngressError("ingress: expected a non-empty list of rules")
    warnings: list[str] = []
    top = _origin(config.get("originRequest"), "originRequest", warnings)
    rules: list[Rule] = []
    for i, r in enumerate(raw):
        rule = _rule(i, r, top, warnings)
        if rule is not None:
            rules.append(rule)
    last = raw[-1]
    if not isinstance(last, dict) or (last.get("hostname") not in (None, "*")) or last.get("path"):
        raise IngressError("ingress: the last rule must match all URLs (no hostname or path), e.g. service: http_status:404")
    if any(r.path is not None for r in rules):
        warnings.append("ingress: path rules are applied to HTTP/1.1 the edge sees in clear (its HTTP port, TLS it "
                        "terminates); for passed-through TLS and HTTP/2 no path is known and they do not match")
    for r in rules[:-1]:
        if r.hostname in (None, "*") and r.path is None:
            warnings.append(f"ingress[{r.index}]: matches every hostname, so the rules after it are never used")
            break
    return Ingress(tuple(rules), tuple(warnings))


def looks_like_cloudflared(doc: Any) -> bool:
    """A parsed YAML document that is a cloudflared ingress config (a ConfigMap's data value)."""
    rules = doc.get("ingress") if isinstance(doc, dict) else None
    return isinstance(rules, list) and bool(rules) and all(isinstance(r, dict) and "service" in r for r in rules)
