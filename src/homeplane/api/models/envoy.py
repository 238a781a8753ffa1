"""Envoy Gateway kinds (gateway.envoyproxy.io/v1alpha1).

EnvoyProxy, SecurityPolicy, ClientTrafficPolicy, BackendTrafficPolicy,
EnvoyExtensionPolicy and Backend. Fields that homeplane acts on are typed; other documented fields are
accepted as plain values so that they are not reported as unknown (``check``
lists the ones that are not acted on). Defaults are Envoy Gateway's.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, model_validator

from homeplane.api.models.base import LabelSelectorRequirement, Model, Resource
from homeplane.api.models.gateway import BackendObjectReference, SecretObjectReference
from homeplane.api.units import Duration, LooseStr

ENVOY_GROUP = "gateway.envoyproxy.io"


def gateway_service_name(namespace: str, name: str) -> str:
    """The LoadBalancer Service Envoy Gateway generates for a Gateway (its addresses are that
    Service's, from LB IPAM)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    return f"envoy-{namespace}-{name}-{digest}"[:63].rstrip("-")


def gateway_service_key(namespace: str, name: str) -> tuple[str, str]:
    return (namespace, gateway_service_name(namespace, name))


class LocalPolicyTargetReference(Model):
    group: str
    kind: str
    name: str
    section_name: str | None = None


class TargetSelector(Model):
    group: str = "gateway.networking.k8s.io"
    kind: str
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class PolicySpec(Model):
    """The targeting part shared by every Envoy Gateway policy."""

    target_ref: LocalPolicyTargetReference | None = None  # deprecated singular form
    target_refs: list[LocalPolicyTargetReference] = Field(default_factory=list)
    target_selectors: list[TargetSelector] = Field(default_factory=list)

    def all_target_refs(self) -> list[LocalPolicyTargetReference]:
        refs = list(self.target_refs)
        if self.target_ref is not None:
            refs.insert(0, self.target_ref)
        return refs


# --- EnvoyProxy -------------------------------------------------------------


class EnvoyProxySpec(Model):
    merge_gateways: bool | None = None  # Gateways of the class share one address (listeners merged)
    merge_backends: bool | None = None
    provider: dict | None = None
    logging: dict | None = None
    telemetry: dict | None = None
    shutdown: dict | None = None
    bootstrap: dict | None = None
    concurrency: int | None = None
    routing_type: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    merge_gateways: bool | None = None
    ip_family: str | None = None
    filter_order: list[dict] = Field(default_factory=list)
    backend_tls: dict | None = Field(default=None, alias="backendTLS")
    preserve_route_order: bool | None = None
    disable_lua_validation: bool | None = None


class EnvoyProxy(Resource):
    spec: EnvoyProxySpec = Field(default_factory=EnvoyProxySpec)


# --- SecurityPolicy ---------------------------------------------------------


class BackendRefWithWeight(BackendObjectReference):
    weight: int = 1


class HTTPExtAuthService(Model):
    backend_ref: BackendObjectReference | None = None  # deprecated singular form
    backend_refs: list[BackendRefWithWeight] = Field(default_factory=list)
    backend_settings: dict | None = None
    path: str | None = None
    headers_to_backend: list[str] = Field(default_factory=list)

    def all_backend_refs(self) -> list[BackendObjectReference]:
        refs: list[BackendObjectReference] = list(self.backend_refs)
        if self.backend_ref is not None:
            refs.insert(0, self.backend_ref)
        return refs


class ExtAuth(Model):
    http: HTTPExtAuthService | None = None
    grpc: dict | None = None
    headers_to_ext_auth: list[str] = Field(default_factory=list)
    body_to_ext_auth: dict | None = None
    fail_open: bool = False
    recompute_route: bool | None = None
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _one_service(self) -> "ExtAuth":
        if (self.http is None) == (self.grpc is None):
            raise ValueError("exactly one of extAuth.http and extAuth.grpc must be set")
        return self


class BasicAuth(Model):
    users: SecretObjectReference
    forward_username_header: str | None = None


class ClaimToHeader(Model):
    header: str
    claim: str


class RemoteJWKS(Model):
    uri: str
    backend_refs: list[BackendObjectReference] = Field(default_factory=list)
    backend_settings: dict | None = None
    cache_duration: Duration | None = None


class JWTProvider(Model):
    name: str
    issuer: str | None = None
    audiences: list[str] = Field(default_factory=list)
    remote_jwks: RemoteJWKS | None = Field(default=None, alias="remoteJWKS")
    local_jwks: dict | None = Field(default=None, alias="localJWKS")
    claim_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    recompute_route: bool | None = None
    extract_from: dict | None = None


class JWT(Model):
    optional: bool | None = None
    providers: list[JWTProvider] = Field(min_length=1)


class JWTClaim(Model):
    name: str = Field(min_length=1)
    value_type: Literal["String", "StringArray"] = "String"
    values: list[str] = Field(min_length=1)


class JWTPrincipal(Model):
    provider: str = Field(min_length=1)
    claims: list[JWTClaim] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)


class AuthorizationHeaderMatch(Model):
    name: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)


class Principal(Model):
    client_cidrs: list[str] = Field(default_factory=list, alias="clientCIDRs")
    jwt: JWTPrincipal | None = None
    headers: list[AuthorizationHeaderMatch] = Field(default_factory=list)


class Operation(Model):
    methods: list[str] = Field(min_length=1)


class AuthorizationRule(Model):
    name: str | None = None
    action: Literal["Allow", "Deny"]
    operation: Operation | None = None
    principal: Principal


class Authorization(Model):
    rules: list[AuthorizationRule] = Field(default_factory=list)
    default_action: Literal["Allow", "Deny"] = "Deny"


class CORS(Model):
    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=list)
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    max_age: Duration | None = None
    allow_credentials: bool | None = None


class ExtractFrom(Model):
    headers: list[str] = Field(default_factory=list)
    params: list[str] = Field(default_factory=list)
    cookies: list[str] = Field(default_factory=list)


class APIKeyAuth(Model):
    credential_refs: list[SecretObjectReference] = Field(min_length=1)
    extract_from: list[ExtractFrom] = Field(min_length=1)
    forward_client_id_header: str | None = Field(default=None, alias="forwardClientIDHeader")
    sanitize: bool | None = None


class SecurityPolicySpec(PolicySpec):
    cors: CORS | None = None
    basic_auth: BasicAuth | None = None
    api_key_auth: APIKeyAuth | None = None
    jwt: JWT | None = None
    oidc: dict | None = None
    ext_auth: ExtAuth | None = None
    authorization: Authorization | None = None


class SecurityPolicy(Resource):
    spec: SecurityPolicySpec


# --- EnvoyExtensionPolicy ---------------------------------------------------


class LuaValueRef(Model):
    group: str = ""
    kind: str = "ConfigMap"
    name: str


class Lua(Model):
    type: Literal["Inline", "ValueRef"] = "Inline"
    inline: str | None = None
    value_ref: LuaValueRef | None = None
    filter_context: dict | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Lua:
        if (self.type == "Inline") != (self.inline is not None) or (self.type == "ValueRef") != (self.value_ref is not None):
            raise ValueError("exactly one of inline or valueRef must be set, matching type")
        return self


class EnvoyExtensionPolicySpec(PolicySpec):
    lua: list[Lua] = Field(default_factory=list)
    wasm: list[dict] = Field(default_factory=list)
    ext_proc: list[dict] = Field(default_factory=list)
    dynamic_module: list[dict] = Field(default_factory=list)
    backends: list[dict] = Field(default_factory=list)
    merge_type: str | None = None


class EnvoyExtensionPolicy(Resource):
    spec: EnvoyExtensionPolicySpec


# --- ClientTrafficPolicy ----------------------------------------------------


class XForwardedForSettings(Model):
    num_trusted_hops: int | None = Field(default=None, ge=0)
    trusted_cidrs: list[str] = Field(default_factory=list, alias="trustedCIDRs")


class CustomHeaderExtension(Model):
    name: str
    fail_closed: bool | None = None


class ClientIPDetection(Model):
    x_forwarded_for: XForwardedForSettings | None = None
    custom_header: CustomHeaderExtension | None = None


class ClientTLSSettings(Model):
    min_version: LooseStr | None = None
    max_version: LooseStr | None = None
    ciphers: list[str] = Field(default_factory=list)
    ecdh_curves: list[str] = Field(default_factory=list)
    signature_algorithms: list[str] = Field(default_factory=list)
    alpn_protocols: list[str] = Field(default_factory=list)
    client_validation: dict | None = None
    session: dict | None = None


class HTTP2Settings(Model):
    initial_stream_window_size: LooseStr | None = None
    initial_connection_window_size: LooseStr | None = None
    max_concurrent_streams: int | None = None
    on_invalid_message: Literal["TerminateConnection", "TerminateStream"] | None = None


class HTTPClientTimeout(Model):
    request_received_timeout: Duration | None = None
    idle_timeout: Duration | None = None


class TCPClientTimeout(Model):
    idle_timeout: Duration | None = None


class ClientTimeout(Model):
    tcp: TCPClientTimeout | None = None
    http: HTTPClientTimeout | None = None


class ClientConnection(Model):
    connection_limit: dict | None = None
    buffer_limit: LooseStr | None = None
    socket_buffer_limit: LooseStr | None = None


class PathSettings(Model):
    escaped_slashes_action: Literal["KeepUnchanged", "RejectRequest", "UnescapeAndRedirect", "UnescapeAndForward"] | None = None
    disable_merge_slashes: bool | None = None


class ProxyProtocolSettings(Model):
    optional: bool | None = None


class ClientTrafficPolicySpec(PolicySpec):
    tcp_keepalive: dict | None = None
    enable_proxy_protocol: bool | None = None
    proxy_protocol: ProxyProtocolSettings | None = None
    client_ip_detection: ClientIPDetection | None = Field(default=None, alias="clientIPDetection")
    tls: ClientTLSSettings | None = None
    path: PathSettings | None = None
    headers: dict | None = None
    timeout: ClientTimeout | None = None
    connection: ClientConnection | None = None
    http1: dict | None = None
    http2: HTTP2Settings | None = None
    http3: dict | None = None
    health_check: dict | None = None


class ClientTrafficPolicy(Resource):
    spec: ClientTrafficPolicySpec


# --- BackendTrafficPolicy ---------------------------------------------------


class ConsistentHash(Model):
    type: Literal["SourceIP", "Header", "Headers", "Cookie", "QueryParams"]
    header: dict | None = None
    headers: list[dict] = Field(default_factory=list)
    cookie: dict | None = None
    query_params: list[dict] = Field(default_factory=list)
    table_size: int | None = None


class LoadBalancer(Model):
    type: Literal["ConsistentHash", "LeastRequest", "Random", "RoundRobin", "BackendUtilization"] = "LeastRequest"
    consistent_hash: ConsistentHash | None = None
    slow_start: dict | None = None
    zone_aware: dict | None = None
    end_point_override: dict | None = None


class RetryOn(Model):
    triggers: list[
        Literal[
            "5xx",
            "gateway-error",
            "reset",
            "reset-before-request",
            "connect-failure",
            "retriable-4xx",
            "refused-stream",
            "retriable-status-codes",
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable",
        ]
    ] = Field(default_factory=list)
    http_status_codes: list[int] = Field(default_factory=list)


class BackOff(Model):
    base_interval: Duration | None = None
    max_interval: Duration | None = None


class PerRetry(Model):
    timeout: Duration | None = None
    back_off: BackOff | None = None


class Retry(Model):
    num_retries: int = Field(default=2, ge=0)
    num_attempts_per_priority: int | None = None
    retry_on: RetryOn | None = None
    per_retry: PerRetry | None = None


class HTTPTimeout(Model):
    connection_idle_timeout: Duration | None = None
    max_connection_duration: Duration | None = None
    request_timeout: Duration | None = None
    max_stream_duration: Duration | None = None


class TCPTimeout(Model):
    connect_timeout: Duration | None = None


class BackendTimeout(Model):
    tcp: TCPTimeout | None = None
    http: HTTPTimeout | None = None


class Compression(Model):
    type: Literal["Gzip", "Brotli", "Zstd"]
    gzip: dict | None = None
    brotli: dict | None = None
    zstd: dict | None = None
    min_content_length: int | None = None


class ActiveHTTPCheck(Model):
    path: str
    hostname: str | None = None
    method: str | None = None
    expected_statuses: list[int] = Field(default_factory=list)
    expected_response: dict | None = None


class ActiveHealthCheck(Model):
    timeout: Duration = "1s"
    interval: Duration = "3s"
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    type: Literal["HTTP", "TCP", "GRPC"]
    http: ActiveHTTPCheck | None = None
    tcp: dict | None = None
    grpc: dict | None = None
    initial_jitter: Duration | None = None


class PassiveHealthCheck(Model):
    split_external_local_origin_errors: bool = False
    interval: Duration = "3s"
    consecutive_local_origin_failures: int = 5
    consecutive_gateway_errors: int = 0
    consecutive_5xx_errors: int = Field(default=5, alias="consecutive5XxErrors")
    base_ejection_time: Duration = "30s"
    max_ejection_percent: int = 10


class HealthCheck(Model):
    active: ActiveHealthCheck | None = None
    passive: PassiveHealthCheck | None = None
    panic_threshold: int | None = None


class CircuitBreaker(Model):
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_parallel_requests: int = 1024
    max_parallel_retries: int = 1024
    max_requests_per_connection: int | None = None
    per_endpoint: dict | None = None


class BackendTrafficPolicySpec(PolicySpec):
    load_balancer: LoadBalancer | None = None
    retry: Retry | None = None
    timeout: BackendTimeout | None = None
    compression: list[Compression] = Field(default_factory=list)
    compressor: list[Compression] = Field(default_factory=list)
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    tcp_keepalive: dict | None = None
    rate_limit: dict | None = None
    fault_injection: dict | None = None
    proxy_protocol: dict | None = None
    use_client_protocol: bool | None = None
    dns: dict | None = None
    http2: dict | None = None
    connection: dict | None = None
    response_override: list[dict] = Field(default_factory=list)
    request_buffer: dict | None = None
    merge_type: str | None = None
    telemetry: dict | None = None
    routing_type: str | None = None

    def compressors(self) -> list[Compression]:
        """``compressor`` (current name) and ``compression`` (older name), in order."""
        return list(self.compressor) + [c for c in self.compression if c not in self.compressor]


class BackendTrafficPolicy(Resource):
    spec: BackendTrafficPolicySpec


# --- Backend ----------------------------------------------------------------


class FQDNEndpoint(Model):
    hostname: str
    port: int = Field(ge=1, le=65535)


class IPEndpoint(Model):
    address: str
    port: int = Field(ge=1, le=65535)


class UnixSocket(Model):
    path: str


class BackendEndpoint(Model):
    fqdn: FQDNEndpoint | None = None
    ip: IPEndpoint | None = None
    unix: UnixSocket | None = None
    zone: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "BackendEndpoint":
        if sum(x is not None for x in (self.fqdn, self.ip, self.unix)) != 1:
            raise ValueError("exactly one of fqdn, ip and unix must be set")
        return self


class BackendSpec(Model):
    type: Literal["Endpoints", "DynamicResolver"] = "Endpoints"
    endpoints: list[BackendEndpoint] = Field(default_factory=list)
    app_protocols: list[str] = Field(default_factory=list)
    fallback: bool | None = None
    tls: dict | None = None


class Backend(Resource):
    spec: BackendSpec


__all__ = [
    "Backend",
    "BackendTrafficPolicy",
    "ClientTrafficPolicy",
    "EnvoyExtensionPolicy",
    "EnvoyProxy",
    "SecurityPolicy",
]


class ValueRef(Model):
    group: str = ""
    kind: str = "ConfigMap"
    name: str


class CustomResponseBody(Model):
    type: Literal["Inline", "ValueRef"] = "Inline"
    inline: str | None = None
    value_ref: ValueRef | None = None


class DirectResponse(Model):
    content_type: str | None = None
    status_code: int = Field(default=200, ge=200, le=599)
    body: CustomResponseBody | None = None


class HTTPRouteFilterSpec(Model):
    direct_response: DirectResponse | None = None
    url_rewrite: dict | None = None
    credential_injection: dict | None = None


class EnvoyHTTPRouteFilter(Resource):
    """gateway.envoyproxy.io/v1alpha1 HTTPRouteFilter, used from an HTTPRoute rule's
    ``ExtensionRef`` filter (Envoy Gateway's directResponse; other fields are reported)."""

    spec: HTTPRouteFilterSpec = Field(default_factory=HTTPRouteFilterSpec)
