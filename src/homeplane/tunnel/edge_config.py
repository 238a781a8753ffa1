"""``edge.yaml``: what ``homeplane edge`` listens on and who may connect.

::

    name: vps-1
    tunnel:                       # where connectors dial in (TLS)
      listen: 0.0.0.0:7844
      certFile: tunnel.crt
      keyFile: tunnel.key
      tokens:                     # or tokenFile: one "NAME TOKEN" (or "TOKEN") per line
        - name: home
          token: s3cret...
    https:                        # public TLS: passed through by SNI to the home gateway,
      listen: 0.0.0.0:443         # or terminated here for the hostnames listed so
      hostnames:
        - hostname: "*.example.com"
          tls: terminate          # or passthrough (the default for every name)
          certFile: example.crt
          keyFile: example.key
    http:
      listen: 0.0.0.0:80
    tcp:
      - listen: 0.0.0.0:2222
        hostname: ssh.example.com # the name the connector's ingress rules match
    admin:
      listen: 127.0.0.1:7845
    drainTimeout: 30s      # SIGTERM: how long open connections may take to finish
    publicWait: 5s         # public ports open when a connector joins, or after this
    handoverTimeout: 5s    # SIGTERM: how long connectors get to dial a successor edge
    maxConnections: 10000  # public connections at once; maxConnectionsPerSource: 256 (IPv4 or IPv6 /64)

All listeners use SO_REUSEPORT, so a new edge can start on the same ports before the old one
is stopped: the old one hands its connectors over, then its clients, then stops.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from homeplane.tunnel.ingress import host_matches


class EdgeConfigError(ValueError):
    pass


@dataclass(frozen=True)
class HostTLS:
    hostname: str  # exact, "*.example.com", or "*"
    terminate: bool
    cert_file: Path | None = None
    key_file: Path | None = None

    def matches(self, name: str) -> bool:
        return host_matches(self.hostname, name)  # the same wildcard meaning as cloudflared's rules


@dataclass(frozen=True)
class TcpPort:
    host: str
    port: int
    hostname: str


@dataclass
class EdgeConfig:
    name: str = "edge"
    tunnel_listen: tuple[str, int] = ("0.0.0.0", 7844)
    tunnel_cert: Path | None = None
    tunnel_key: Path | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # token -> connector name
    https_listen: tuple[str, int] | None = None
    hostnames: list[HostTLS] = field(default_factory=list)
    http_listen: tuple[str, int] | None = None
    tcp: list[TcpPort] = field(default_factory=list)
    admin_listen: tuple[str, int] | None = None
    drain_timeout: float = 30.0
    # public ports open once a connector has joined (or after this): an edge started next to
    # a draining one (the same ports, SO_REUSEPORT) takes no client it cannot serve yet
    public_wait: float = 5.0
    handover_timeout: float = 5.0  # how long a draining edge waits for connectors to dial its successor
    max_connections: int = 10000  # public connections open at once
    max_per_source: int = 256  # ... from one IPv4 address or IPv6 /64

    def host_tls(self, name: str) -> HostTLS | None:
        for h in self.hostnames:
            if h.matches(name):
                return h
        return None

    def tunnel_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.tunnel_cert), str(self.tunnel_key))
        return ctx


def _addr(value: Any, where: str) -> tuple[str, int]:
    if not isinstance(value, (str, int)):
        raise EdgeConfigError(f"{where}: expected HOST:PORT")
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "0.0.0.0", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EdgeConfigError(f"{where}: {text!r} is not HOST:PORT")
    return host, int(port)


def _file(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise EdgeConfigError(f"{where}: a file path is required")
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise EdgeConfigError(f"{where}: {p} does not exist")
    return p


def _tokens(base: Path, t: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, item in enumerate(t.get("tokens") or []):
        if not isinstance(item, dict) or not isinstance(item.get("token"), str) or len(item["token"]) < 16:
            raise EdgeConfigError(f"tunnel.tokens[{i}]: needs token: (at least 16 characters) and name:")
        out[item["token"]] = str(item.get("name") or f"token-{i}")
    if t.get("tokenFile"):
        path = _file(base, t["tokenFile"], "tunnel.tokenFile")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            token = parts[-1]
            if len(token) < 16:
                raise EdgeConfigError(f"{path}:{n}: a token has at least 16 characters")
            out[token] = parts[0] if len(parts) > 1 else f"{path.name}:{n}"
    if not out:
        raise EdgeConfigError("tunnel: no tokens (tokens: or tokenFile:); no connector could join")
    return out


KNOWN = {"name", "tunnel", "https", "http", "tcp", "admin", "drainTimeout", "publicWait", "handoverTimeout", "maxConnections",
         "maxConnectionsPerSource"}


def load_edge_config(path: Path) -> EdgeConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise EdgeConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise EdgeConfigError(f"{path}: expected a mapping")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise EdgeConfigError(f"{path}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN))})")
    base = path.parent
    cfg = EdgeConfig(name=str(raw.get("name") or "edge"))
    t = raw.get("tunnel")
    if not isinstance(t, dict):
        raise EdgeConfigError(f"{path}: tunnel: is required (listen, certFile, keyFile, tokens)")
    cfg.tunnel_listen = _addr(t.get("listen", "0.0.0.0:7844"), "tunnel.listen")
    cfg.tunnel_cert = _file(base, t.get("certFile"), "tunnel.certFile")
    cfg.tunnel_key = _file(base, t.get("keyFile"), "tunnel.keyFile")
    cfg.tokens = _tokens(base, t)
    h = raw.get("https")
    if h is not None:
        if not isinstance(h, dict):
            raise EdgeConfigError("https: expected a mapping")
        cfg.https_listen = _addr(h.get("listen", "0.0.0.0:443"), "https.listen")
        for i, item in enumerate(h.get("hostnames") or []):
            where = f"https.hostnames[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("hostname"), str):
                raise EdgeConfigError(f"{where}: needs hostname:")
            mode = item.get("tls", "passthrough")
            if mode not in ("passthrough", "terminate"):
                raise EdgeConfigError(f"{where}.tls: passthrough or terminate, not {mode!r}")
            if mode == "terminate":
                hl = HostTLS(item["hostname"].lower(), True, _file(base, item.get("certFile"), f"{where}.certFile"),
                             _file(base, item.get("keyFile"), f"{where}.keyFile"))
            else:
                hl = HostTLS(item["hostname"].lower(), False)
            cfg.hostnames.append(hl)
    if raw.get("http") is not None:
        cfg.http_listen = _addr((raw["http"] or {}).get("listen", "0.0.0.0:80"), "http.listen")
    for i, item in enumerate(raw.get("tcp") or []):
        if not isinstance(item, dict) or not isinstance(item.get("hostname"), str):
            raise EdgeConfigError(f"tcp[{i}]: needs listen: and hostname: (the name the connector's ingress rules match)")
        host, port = _addr(item.get("listen"), f"tcp[{i}].listen")
        from homeplane.tunnel.wire import valid_hostname

        if not valid_hostname(item["hostname"].lower()):
            raise EdgeConfigError(f"tcp[{i}].hostname: {item['hostname']!r} is not a host name")
        cfg.tcp.append(TcpPort(host, port, item["hostname"].lower()))
    if raw.get("admin") is not None:
        cfg.admin_listen = _addr((raw["admin"] or {}).get("listen", "127.0.0.1:7845"), "admin.listen")
    from homeplane.api.units import parse_duration

    for key, attr in (("drainTimeout", "drain_timeout"), ("publicWait", "public_wait"), ("handoverTimeout", "handover_timeout")):
        if key in raw:
            try:
                setattr(cfg, attr, parse_duration(str(raw[key])))
            except ValueError as e:
                raise EdgeConfigError(f"{key}: {e}") from None
    for key, attr in (("maxConnections", "max_connections"), ("maxConnectionsPerSource", "max_per_source")):
        if key in raw:
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1:
                raise EdgeConfigError(f"{key}: a positive number, not {raw[key]!r}")
            setattr(cfg, attr, raw[key])
    for hl in cfg.hostnames:
        if hl.terminate:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(hl.cert_file), str(hl.key_file))
            except (ssl.SSLError, OSError) as e:
                raise EdgeConfigError(f"https.hostnames {hl.hostname}: cannot use {hl.cert_file}: {e}") from None
    try:
        cfg.tunnel_context()
    except (ssl.SSLError, OSError) as e:
        raise EdgeConfigError(f"tunnel: cannot use {cfg.tunnel_cert}: {e}") from None
    return cfg
