"""Gateway API kinds (gateway.networking.k8s.io): GatewayClass, Gateway, HTTPRoute, ReferenceGrant.

Defaults follow the CRD schemas of Gateway API v1 (e.g. a rule without matches
matches PathPrefix "/", a parentRef defaults to group gateway.networking.k8s.io,
kind Gateway, a backendRef to core Service with weight 1, a listener's routes to
namespaces ``from: Same``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from homeplane.api.models.base import LabelSelector, Model, Resource
from homeplane.api.units import Duration

GATEWAY_GROUP = "gateway.networking.k8s.io"


class ParametersReference(Model):
    group: str
    kind: str
    name: str
    namespace: str | None = None


class GatewayClassSpec(Model):
    controller_name: str
    parameters_ref: ParametersReference | None = None
    description: str | None = None


class GatewayClass(Resource):
    spec: GatewayClassSpec


class SecretObjectReference(Model):
    group: str = ""
    kind: str = "Secret"
    name: str
    namespace: str | None = None


class GatewayTLSConfig(Model):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: list[SecretObjectReference] = Field(default_factory=list)
    options: dict[str, str] = Field(default_factory=dict)
    frontend_validation: dict | None = None


class RouteNamespaces(Model):
    from_: Literal["All", "Same", "Selector", "None"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class RouteGroupKind(Model):
    group: str = GATEWAY_GROUP
    kind: str


class AllowedRoutes(Model):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: list[RouteGroupKind] = Field(default_factory=list)


class Listener(Model):
    name: str
    hostname: str | None = None
    port: int = Field(ge=1, le=65535)
    protocol: str
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


class GatewayAddress(Model):
    type: str = "IPAddress"
    value: str


class LocalParametersReference(Model):
    group: str
    kind: str
    name: str


class GatewayInfrastructure(Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    parameters_ref: LocalParametersReference | None = None


class GatewaySpec(Model):
    gateway_class_name: str
    listeners: list[Listener] = Field(min_length=1)
    addresses: list[GatewayAddress] = Field(default_factory=list)
    infrastructure: GatewayInfrastructure | None = None
    backend_tls: dict | None = Field(default=None, alias="backendTLS")
    allowed_listeners: dict | None = None


class Gateway(Resource):
    spec: GatewaySpec


class ParentReference(Model):
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None
    name: str
    section_name: str | None = None
    port: int | None = None


class PathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"


class HeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str
    value: str


class QueryParamMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str
    value: str


HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class HTTPRouteMatch(Model):
    path: PathMatch = Field(default_factory=PathMatch)
    headers: list[HeaderMatch] = Field(default_factory=list)
    query_params: list[QueryParamMatch] = Field(default_factory=list)
    method: HTTPMethod | None = None


class HTTPHeader(Model):
    name: str
    value: str


class HeaderModifier(Model):
    set: list[HTTPHeader] = Field(default_factory=list)
    add: list[HTTPHeader] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class PathModifier(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None


class RequestRedirect(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    status_code: Literal[301, 302, 303, 307, 308] = 302


class URLRewrite(Model):
    hostname: str | None = None
    path: PathModifier | None = None


class BackendObjectReference(Model):
    group: str = ""
    kind: str = "Service"
    name: str
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class Fraction(Model):
    numerator: int = Field(ge=0)
    denominator: int = Field(default=100, ge=1)


class RequestMirror(Model):
    backend_ref: BackendObjectReference
    percent: int | None = Field(default=None, ge=0, le=100)
    fraction: Fraction | None = None


class LocalObjectReference(Model):
    group: str
    kind: str
    name: str


FilterType = Literal[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
    "CORS",
]


class HTTPCORSFilter(Model):
    """GEP-1767."""

    allow_origins: list[str] = Field(default_factory=list, max_length=64)
    allow_credentials: bool | None = None
    allow_methods: list[str] = Field(default_factory=list, max_length=9)
    allow_headers: list[str] = Field(default_factory=list, max_length=64)
    expose_headers: list[str] = Field(default_factory=list, max_length=64)
    max_age: int = Field(default=5, ge=1)  # seconds


class HTTPRouteRetry(Model):
    """GEP-1731."""

    codes: list[int] = Field(default_factory=list)
    attempts: int | None = Field(default=None, ge=1)
    backoff: Duration | None = None

    @model_validator(mode="after")
    def _codes(self) -> "HTTPRouteRetry":
        for c in self.codes:
            if not 400 <= c <= 599:
                raise ValueError(f"retry code {c} is not between 400 and 599")
        return self


class HTTPRouteFilter(Model):
    type: FilterType
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_mirror: RequestMirror | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = Field(default=None, alias="urlRewrite")
    extension_ref: LocalObjectReference | None = None
    cors: HTTPCORSFilter | None = None


class HTTPBackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)
    filters: list[HTTPRouteFilter] = Field(default_factory=list)


class HTTPRouteTimeouts(Model):
    request: Duration | None = None
    backend_request: Duration | None = None


def _default_matches() -> list[HTTPRouteMatch]:
    return [HTTPRouteMatch()]


class HTTPRouteRule(Model):
    name: str | None = None
    matches: list[HTTPRouteMatch] = Field(default_factory=_default_matches)
    filters: list[HTTPRouteFilter] = Field(default_factory=list)
    backend_refs: list[HTTPBackendRef] = Field(default_factory=list)
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None
    session_persistence: dict | None = None


def _default_rules() -> list[HTTPRouteRule]:
    return [HTTPRouteRule()]


class HTTPRouteSpec(Model):
    parent_refs: list[ParentReference] = Field(default_factory=list)
    hostnames: list[str] = Field(default_factory=list)
    rules: list[HTTPRouteRule] = Field(default_factory=_default_rules)


class HTTPRoute(Resource):
    spec: HTTPRouteSpec = Field(default_factory=HTTPRouteSpec)


class BackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)


class L4RouteRule(Model):
    name: str | None = None
    backend_refs: list[BackendRef] = Field(default_factory=list)


class L4RouteSpec(Model):
    """TCPRoute and UDPRoute (gateway.networking.k8s.io/v1alpha2): a listener's whole stream."""

    parent_refs: list[ParentReference] = Field(default_factory=list)
    rules: list[L4RouteRule] = Field(min_length=1)


class TCPRoute(Resource):
    spec: L4RouteSpec


class TLSRouteSpec(L4RouteSpec):
    """TLSRoute: streams told apart by the ClientHello's SNI, passed through undecrypted."""

    hostnames: list[str] = Field(default_factory=list)


class TLSRoute(Resource):
    spec: TLSRouteSpec


class UDPRoute(Resource):
    spec: L4RouteSpec


class ReferenceGrantFrom(Model):
    group: str
    kind: str
    namespace: str


class ReferenceGrantTo(Model):
    group: str
    kind: str
    name: str | None = None


class ReferenceGrantSpec(Model):
    from_: list[ReferenceGrantFrom] = Field(alias="from", min_length=1)
    to: list[ReferenceGrantTo] = Field(min_length=1)


class ReferenceGrant(Resource):
    spec: ReferenceGrantSpec


class BackendTLSTargetRef(Model):
    group: str = ""
    kind: str
    name: str
    section_name: str | None = None


class SubjectAltName(Model):
    type: Literal["Hostname", "URI"]
    hostname: str | None = None
    uri: str | None = None


class BackendTLSValidation(Model):
    ca_certificate_refs: list[LocalObjectReference] = Field(default_factory=list, alias="caCertificateRefs")
    well_known_ca_certificates: Literal["System"] | None = Field(default=None, alias="wellKnownCACertificates")
    hostname: str
    subject_alt_names: list[SubjectAltName] = Field(default_factory=list)


class BackendTLSPolicySpec(Model):
    target_refs: list[BackendTLSTargetRef] = Field(min_length=1)
    validation: BackendTLSValidation
    options: dict[str, str] = Field(default_factory=dict)


class BackendTLSPolicy(Resource):
    """TLS from the gateway to a Service's pods (Gateway API, v1 since 1.4)."""

    spec: BackendTLSPolicySpec
