"""The Snapshot: one immutable, versioned picture of everything the data planes serve.

Translate builds it; data planes swap it atomically and read only from it. Every
entry keeps a back-reference to the resource it came from (``Ref``), so that
``check``, ``trace`` and access logs can name the HTTPRoute rule or Service that
produced a decision. Secrets are held as :class:`PrivateBytes`, which never
prints its content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from homeplane.translate.security import CorsSettings, SecuritySettings


@dataclass(frozen=True, slots=True)
class Ref:
    kind: str
    namespace: str | None
    name: str
    section: str | None = None  # listener name, rule index ...

    def __str__(self) -> str:
        base = f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"
        return base + (f"#{self.section}" if self.section else "")


class PrivateBytes(bytes):
    """Key material: usable as bytes, never shown by repr/str/JSON."""

    def __repr__(self) -> str:
        return f"<PrivateBytes {len(self)} bytes>"

    __str__ = __repr__


# --- backends -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str  # IP address, or a hostname when fqdn is True
    port: int
    ready: bool = True
    hostname: str | None = None
    fqdn: bool = False
    zone: str | None = None
    node_name: str | None = None  # for externalTrafficPolicy: Local


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """TLS to a pool's endpoints, from a BackendTLSPolicy."""

    policy: Ref
    hostname: str  # SNI, and the name the certificate must carry unless subject_alt_names say otherwise
    ca_pem: bytes | None  # None: the system's trusted CAs (wellKnownCACertificates: System)
    subject_alt_names: tuple[str, ...] = ()
    valid: bool = True  # False: the policy is broken; connections must fail rather than go in clear


@dataclass(frozen=True, slots=True)
class BackendPool:
    """An upstream cluster: a Service port or an Envoy Gateway Backend, with its endpoints."""

    name: str  # stable key, e.g. "service/default/sonarr:80"
    source: Ref
    endpoints: tuple[Endpoint, ...]
    app_protocol: str | None = None  # "h2c", "kubernetes.io/h2c", "http", ...
    service_port: int | None = None
    tls: UpstreamTLS | None = None
    # network policy (homeplane.policy): the endpoints it removed from this gateway's view of the
    # pool, each with the reason; and, when Cilium L7 rules apply, the HTTP rules a request must
    # pass (groups: a rule of each must match)
    policy_denied: tuple[tuple[str, str], ...] = ()
    policy_http: tuple[tuple[Any, ...], ...] | None = None

    @property
    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.ready)


# --- HTTP routing ---------------------------------------------------------------


PathType = Literal["Exact", "PathPrefix", "RegularExpression"]


@dataclass(frozen=True, slots=True)
class Match:
    path_type: PathType = "PathPrefix"
    path: str = "/"
    method: str | None = None
    headers: tuple[tuple[str, str, str], ...] = ()  # (type, lower-case name, value)
    query: tuple[tuple[str, str, str], ...] = ()  # (type, name, value)


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path_type: str | None = None  # ReplaceFullPath | ReplacePrefixMatch
    path_value: str | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class Rewrite:
    hostname: str | None = None
    path_type: str | None = None
    path_value: str | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    pool: str | None  # None when the mirror backend is invalid (then it is skipped)
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """Envoy Gateway's HTTPRouteFilter directResponse: the rule answers by itself."""

    status: int
    body: bytes = b""
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class Filters:
    request_headers: HeaderOps | None = None
    response_headers: HeaderOps | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors: CorsSettings | None = None  # the HTTPRoute CORS filter (GEP-1767): over a SecurityPolicy's cors
    direct: DirectResponse | None = None


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    pool: str | None  # key into Snapshot.pools; None when the backendRef is invalid
    weight: int
    ref: Ref
    filters: Filters | None = None
    invalid_reason: str | None = None


@dataclass(frozen=True, slots=True)
class SecurityIR:
    """The SecurityPolicy in effect for a route rule (route-level over gateway-level), lowered
    (translate/security.py): secrets and key sets resolved, values parsed."""

    policy: Ref
    settings: SecuritySettings
    valid: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class ExtensionIR:
    """The EnvoyExtensionPolicy in effect for a route rule: its Lua scripts, in order."""

    policy: Ref
    lua: tuple[tuple[str, str, str], ...]  # (name, source, filterContext as JSON)
    valid: bool = True
    message: str = ""


@dataclass(frozen=True, slots=True)
class RetrySettings:
    num_retries: int = 0
    triggers: frozenset[str] = frozenset()  # Envoy retry_on conditions
    status_codes: frozenset[int] = frozenset()
    per_try_timeout: float | None = None  # seconds
    backoff_base: float = 0.025  # seconds


@dataclass(frozen=True, slots=True)
class ActiveCheck:
    type: str  # HTTP | TCP
    timeout: float
    interval: float
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    path: str | None = None
    hostname: str | None = None
    method: str = "GET"
    expected_statuses: tuple[int, ...] = (200,)


@dataclass(frozen=True, slots=True)
class PassiveCheck:
    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    consecutive_local: int = 5
    base_ejection: float = 30.0  # seconds
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """A BackendTrafficPolicy, lowered (translate/lower.py)."""

    lb_policy: str = "LeastRequest"
    hash_on: tuple[str, str] | None = None  # ("SourceIP", "") / ("Header", name) / ("Cookie", name)
    request_timeout: float | None = None  # seconds; None: not set, 0: disabled
    connect_timeout: float | None = None
    retry: RetrySettings | None = None
    compression: tuple[str, ...] = ()  # content-coding tokens, in the policy's order
    active: ActiveCheck | None = None
    passive: PassiveCheck | None = None
    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024
    own_cluster: bool = False  # health checks or a circuit breaker: its backends get clusters of their own


@dataclass(frozen=True, slots=True)
class BackendTrafficIR:
    policy: Ref
    settings: TrafficSettings


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One (route, rule, match) entry of a virtual host, in precedence order."""

    route: Ref
    rule_index: int
    match_index: int
    match: Match
    filters: Filters
    backends: tuple[WeightedBackend, ...]
    # Set when the rule answers by itself: 500 for invalid backends or an invalid
    # SecurityPolicy (fail closed); None otherwise.
    direct_status: int | None = None
    direct_reason: str = ""
    direct_body: bytes = b""
    direct_content_type: str = ""
    timeout_request: float | None = None  # seconds; 0.0 means the route disabled the timeout
    timeout_backend_request: float | None = None
    security: SecurityIR | None = None
    backend_traffic: BackendTrafficIR | None = None
    rule_name: str | None = None
    extension: ExtensionIR | None = None
    retry: RetrySettings | None = None  # the rule's own retry (GEP-1731): replaces a BackendTrafficPolicy's

    @property
    def id(self) -> str:
        return f"{self.route}/rule/{self.rule_index}/match/{self.match_index}"


@dataclass(frozen=True, slots=True)
class VirtualHost:
    hostname: str  # exact, "*.suffix" or "*" for any
    rules: tuple[RouteRule, ...]


@dataclass(frozen=True, slots=True)
class TLSCert:
    secret: Ref
    cert_pem: bytes
    key_pem: PrivateBytes
    dns_names: tuple[str, ...] = ()
    not_after: str | None = None


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """A ClientTrafficPolicy, lowered (translate/lower.py); the defaults are Envoy Gateway's."""

    xff_enabled: bool = False
    xff_hops: int | None = None
    xff_trusted: tuple[Any, ...] = ()  # ipaddress networks
    idle_timeout: float | None = None  # seconds
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    min_tls: str = "1.2"
    max_tls: str | None = None
    proxy_protocol: bool = False
    proxy_protocol_optional: bool = False
    h2_max_streams: int = 100
    h2_stream_window: int = 1024 * 1024  # bytes
    h2_connection_window: int = 16 * 1024 * 1024
    connection_limit: int | None = None
    buffer_limit: int | None = None  # bytes
    escaped_slashes: str = "UnescapeAndRedirect"
    merge_slashes: bool = True
    http3: bool = False


@dataclass(frozen=True, slots=True)
class ClientTrafficIR:
    policy: Ref
    settings: ListenerSettings


@dataclass(frozen=True, slots=True)
class L4Route:
    """A TCPRoute or UDPRoute attached to a TCP/UDP listener, or a TLSRoute on a TLS
    passthrough listener: where its streams go."""

    route: Ref
    backends: tuple[WeightedBackend, ...]
    hostnames: tuple[str, ...] = ()  # TLSRoute: the SNI names it takes (listener ∩ route)
    backend_traffic: BackendTrafficIR | None = None  # health checks, load balancer, circuit breaker


@dataclass(frozen=True, slots=True)
class Listener:
    gateway: Ref
    name: str
    port: int
    protocol: str
    hostname: str | None
    ready: bool  # accepted, no conflict, refs resolved: the data plane serves it
    tls_certs: tuple[TLSCert, ...] = ()
    tls_mode: str | None = None
    vhosts: tuple[VirtualHost, ...] = ()
    client_traffic: ClientTrafficIR | None = None
    attached_routes: int = 0
    l4_routes: tuple[L4Route, ...] = ()  # TCP/UDP/TLS listeners, oldest route first (TCP/UDP: the one served)


@dataclass(frozen=True, slots=True)
class Gateway:
    ref: Ref
    class_name: str
    listeners: tuple[Listener, ...]
    addresses: tuple[str, ...]  # requested (spec.addresses or lbipam.cilium.io/ips) or given by LB IPAM
    annotations: Mapping[str, str] = field(default_factory=dict)
    infrastructure_annotations: Mapping[str, str] = field(default_factory=dict)
    programmed: bool = True
    # where it listens on this machine (homeplane.ipam.binding); None when nothing decided it
    # (check, get: no machine involved)
    bind_address: str | None = None
    # merged gateways (EnvoyProxy mergeGateways): the class whose Gateways share listeners and
    # one address; None when the Gateway stands alone
    merge_group: str | None = None
    # the EnvoyProxy's spec.telemetry.accessLog that applies to it (the Gateway's
    # infrastructure.parametersRef, else its class's); None: the default access log
    access_log: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.ref.namespace}/{self.ref.name}"

    @property
    def reachable_addresses(self) -> tuple[str, ...]:
        """What clients use: its own addresses, else where it listens here."""
        return self.addresses or ((self.bind_address,) if self.bind_address else ())


# --- services -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str | None
    port: int
    protocol: str
    target_port: int | str
    app_protocol: str | None
    pool: str  # key into Snapshot.pools


@dataclass(frozen=True, slots=True)
class Service:
    ref: Ref
    type: str
    cluster_ip: str | None  # allocated (or fixed by spec.clusterIP); None for headless and ExternalName
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] | None
    external_name: str | None = None
    requested_lb_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()  # allocated by LB IPAM
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    external_traffic_policy: str | None = None
    session_affinity: str = "None"
    headless: bool = False
    endpoint_source: str = "none"  # "EndpointSlice", "Endpoints", "ExternalName", "none"
    external_ips: tuple[str, ...] = ()  # spec.externalIPs


@dataclass(frozen=True, slots=True)
class PolicyAttachment:
    policy: Ref
    targets: tuple[Ref, ...]
    accepted: bool
    message: str = ""


@dataclass(frozen=True)
class Snapshot:
    version: int
    gateways: tuple[Gateway, ...] = ()
    services: tuple[Service, ...] = ()
    pools: Mapping[str, BackendPool] = field(default_factory=dict)
    policies: tuple[PolicyAttachment, ...] = ()
    # A digest of the inputs, to tell whether a new translation changed anything.
    digest: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)
    network_policy: Any = None  # homeplane.policy.verdict.PolicySet; None: no policies in the manifests

    def gateway(self, namespace: str, name: str) -> Gateway | None:
        for g in self.gateways:
            if g.ref.namespace == namespace and g.ref.name == name:
                return g
        return None

    def service(self, namespace: str, name: str) -> Service | None:
        for s in self.services:
            if s.ref.namespace == namespace and s.ref.name == name:
                return s
        return None


EMPTY = Snapshot(version=0)
