"""A SecurityPolicy lowered to plain settings (pure): what the gateway enforces, with durations
in seconds, CIDRs parsed, header names folded, secrets and key sets resolved by translate.

The gateway builds its run-time objects from these (compiled patterns, parsed key sets, the
bcrypt cache) in gateway/policies; nothing there reads the API spec. Problems a policy's values
have (a key set that is not JSON Web Keys, a CIDR that is not one) are found here and reported
on the policy, whose routes then fail closed.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from homeplane.api.models.envoy import SecurityPolicySpec
from homeplane.api.units import parse_duration

EXT_AUTH_DEFAULT_TIMEOUT = 10.0
DEFAULT_JWKS_CACHE = 600.0  # Envoy's remote JWKS cache duration


@dataclass(frozen=True, slots=True)
class ExtAuthSettings:
    pool: str
    path: str
    timeout: float
    fail_open: bool
    headers_to_ext_auth: tuple[str, ...]  # lower-case, glob patterns
    headers_to_backend: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BasicAuthSettings:
    htpasswd: bytes  # the Secret's .htpasswd (ir.PrivateBytes)
    forward_username_header: str | None


@dataclass(frozen=True, slots=True)
class APIKeySettings:
    keys: tuple[tuple[str, bytes], ...]  # client id -> key (ir.PrivateBytes)
    sources: tuple[tuple[str, str], ...]  # ("header" | "param" | "cookie", name), in order
    forward_client_id_header: str | None
    sanitize: bool


@dataclass(frozen=True, slots=True)
class CorsSettings:
    any_origin: bool
    origins: tuple[str, ...]  # "https://*.example.com": "*" is any run of characters
    allow_methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age: float  # seconds; 0: not sent
    credentials: bool


@dataclass(frozen=True, slots=True)
class TokenSource:
    kind: str  # header | cookie | param
    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class JWTProviderSettings:
    name: str
    issuer: str | None
    audiences: tuple[str, ...]
    local_jwks: str | None  # the key set's JSON (inline or from a ConfigMap)
    remote_uri: str | None
    cache_for: float
    claim_headers: tuple[tuple[str, str], ...]  # (lower-case header, claim)
    sources: tuple[TokenSource, ...]


@dataclass(frozen=True, slots=True)
class JWTSettings:
    optional: bool
    providers: tuple[JWTProviderSettings, ...]


@dataclass(frozen=True, slots=True)
class ClaimRule:
    path: tuple[str, ...]  # "organization.department" -> ("organization", "department")
    array: bool  # valueType StringArray
    values: frozenset[str]


@dataclass(frozen=True, slots=True)
class AuthorizationRuleSettings:
    allow: bool
    methods: frozenset[str] | None  # upper-case
    cidrs: tuple[Any, ...] | None  # ipaddress networks
    jwt_provider: str | None
    claims: tuple[ClaimRule, ...]
    scopes: frozenset[str]
    headers: tuple[tuple[str, frozenset[str]], ...]  # lower-case name, values


@dataclass(frozen=True, slots=True)
class AuthorizationSettings:
    rules: tuple[AuthorizationRuleSettings, ...]
    default_allow: bool


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    ext_auth: ExtAuthSettings | None = None
    basic_auth: BasicAuthSettings | None = None
    api_key: APIKeySettings | None = None
    cors: CorsSettings | None = None
    jwt: JWTSettings | None = None
    authorization: AuthorizationSettings | None = None


def lower_security(
    spec: SecurityPolicySpec,
    ext_auth_pool: str | None,
    htpasswd: bytes | None,
    jwks: dict[str, str],
    api_keys: dict[str, bytes],
) -> tuple[SecuritySettings, list[str]]:
    """The settings, and the problems that make the policy invalid (its routes fail closed)."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    ea = spec.ext_auth
    if ea is not None and ea.http is not None and ext_auth_pool:
        out["ext_auth"] = ExtAuthSettings(
            pool=ext_auth_pool, path=ea.http.path or "",
            timeout=parse_duration(ea.timeout) if ea.timeout else EXT_AUTH_DEFAULT_TIMEOUT, fail_open=ea.fail_open,
            headers_to_ext_auth=tuple(h.lower() for h in ea.headers_to_ext_auth),
            headers_to_backend=tuple(h.lower() for h in ea.http.headers_to_backend),
        )
    if spec.basic_auth is not None and htpasswd is not None:
        out["basic_auth"] = BasicAuthSettings(htpasswd, (spec.basic_auth.forward_username_header or "").lower() or None)
    if spec.api_key_auth is not None:
        k = spec.api_key_auth
        out["api_key"] = APIKeySettings(
            keys=tuple(api_keys.items()),
            sources=tuple(
                source for src in k.extract_from for source in (
                    [("header", h.lower()) for h in src.headers] + [("param", q) for q in src.params]
                    + [("cookie", c) for c in src.cookies]
                )
            ),
            forward_client_id_header=k.forward_client_id_header.lower() if k.forward_client_id_header else None,
            sanitize=bool(k.sanitize),
        )
    if spec.cors is not None:
        c = spec.cors
        out["cors"] = CorsSettings(
            any_origin="*" in c.allow_origins, origins=tuple(o for o in c.allow_origins if o != "*"),
            allow_methods=tuple(c.allow_methods), allow_headers=tuple(c.allow_headers), expose_headers=tuple(c.expose_headers),
            max_age=parse_duration(c.max_age) if c.max_age else 0.0, credentials=bool(c.allow_credentials),
        )
    if spec.jwt is not None:
        providers = []
        for p in spec.jwt.providers:
            local = None
            if p.local_jwks:
                local = p.local_jwks.get("inline") if p.local_jwks.get("type", "Inline") == "Inline" else jwks.get(p.name)
                problem = _jwks_problem(local)
                if problem:
                    problems.append(f"jwt: provider {p.name}: localJWKS: {problem}")
            providers.append(JWTProviderSettings(
                name=p.name, issuer=p.issuer, audiences=tuple(p.audiences), local_jwks=local,
                remote_uri=p.remote_jwks.uri if p.remote_jwks else None,
                cache_for=parse_duration(p.remote_jwks.cache_duration)
                if p.remote_jwks and p.remote_jwks.cache_duration else DEFAULT_JWKS_CACHE,
                claim_headers=tuple((c.header.lower(), c.claim) for c in p.claim_to_headers),
                sources=_token_sources(p.extract_from),
            ))
        out["jwt"] = JWTSettings(bool(spec.jwt.optional), tuple(providers))
    if spec.authorization is not None:
        rules = []
        for i, r in enumerate(spec.authorization.rules):
            pr = r.principal
            try:
                cidrs = tuple(ipaddress.ip_network(c, strict=False) for c in pr.client_cidrs) if pr.client_cidrs else None
            except ValueError as e:
                problems.append(f"authorization: rules[{i}].principal.clientCIDRs: {e}")
                cidrs = ()
            rules.append(AuthorizationRuleSettings(
                allow=r.action == "Allow",
                methods=frozenset(m.upper() for m in r.operation.methods) if r.operation is not None else None,
                cidrs=cidrs,
                jwt_provider=pr.jwt.provider if pr.jwt is not None else None,
                claims=tuple(
                    ClaimRule(tuple(c.name.split(".")), c.value_type == "StringArray", frozenset(c.values))
                    for c in (pr.jwt.claims if pr.jwt is not None else ())
                ),
                scopes=frozenset(pr.jwt.scopes) if pr.jwt is not None else frozenset(),
                headers=tuple((h.name.lower(), frozenset(h.values)) for h in pr.headers),
            ))
        out["authorization"] = AuthorizationSettings(tuple(rules), spec.authorization.default_action == "Allow")
    return SecuritySettings(**out), problems


def _token_sources(spec: dict | None) -> tuple[TokenSource, ...]:
    if not spec:  # Envoy's defaults: the Authorization bearer token, then ?access_token=
        return (TokenSource("header", "authorization", "Bearer "), TokenSource("param", "access_token"))
    out = [TokenSource("header", str(h["name"]).lower(), str(h.get("valuePrefix", ""))) for h in spec.get("headers") or []]
    out += [TokenSource("cookie", str(c)) for c in spec.get("cookies") or []]
    out += [TokenSource("param", str(p)) for p in spec.get("params") or []]
    return tuple(out)


def _jwks_problem(text: str | None) -> str | None:
    """Why a key set is not a JSON Web Key Set (RFC 7517 §5), or None. Keys are parsed for good
    by the gateway; this finds what would leave a provider with none."""
    if not text:
        return "no key set"
    try:
        doc = json.loads(text)
    except ValueError as e:
        return f"not JSON ({e})"
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        return "no keys member"
    if not keys:
        return None  # valid, if useless: every token fails
    try:
        import jwt

        jwt.PyJWKSet.from_dict(doc)
    except Exception as e:  # PyJWT raises several kinds for keys it cannot use
        return str(e) or type(e).__name__
    return None
