"""SecurityPolicy ``authorization``: Envoy Gateway's rules, as its RBAC filter applies them.

Rules are tried in order; the first that matches decides (Allow or Deny), else
``defaultAction`` (Deny when unset). A rule matches when everything it names matches:
``operation.methods`` (any of them) and every principal it gives — ``clientCIDRs`` (any range
holds the detected client IP), ``jwt`` (the token verified by that provider in this policy has
every listed claim, each with one of its values, and every listed scope) and ``headers`` (each
header has one of its values, exactly). Authorization runs last, so headers set by extAuth
(``headersToBackend``) or by ``claimToHeaders`` are what ``headers`` sees.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Sequence

from homeplane.gateway.routing.headers import Network
from homeplane.translate.security import AuthorizationSettings


@dataclass(frozen=True)
class ClaimMatch:
    path: tuple[str, ...]  # "organization.department" -> ("organization", "department")
    array: bool  # valueType StringArray
    values: frozenset[str]

    def matches(self, claims: dict[str, Any]) -> bool:
        cur: Any = claims
        for part in self.path:
            if not isinstance(cur, dict) or part not in cur:
                return False
            cur = cur[part]
        if self.array:
            return isinstance(cur, list) and any(isinstance(v, str) and v in self.values for v in cur)
        return isinstance(cur, str) and cur in self.values


@dataclass(frozen=True)
class JWTMatch:
    provider: str
    claims: tuple[ClaimMatch, ...]
    scopes: frozenset[str]

    def matches(self, verified: tuple[str, dict[str, Any]] | None) -> bool:
        if verified is None or verified[0] != self.provider:
            return False
        claims = verified[1]
        if not all(c.matches(claims) for c in self.claims):
            return False
        if self.scopes:
            # RFC 6749 scope: a space-delimited string (some issuers send a list)
            raw = claims.get("scope", claims.get("scp"))
            have = set(raw.split()) if isinstance(raw, str) else {s for s in raw if isinstance(s, str)} if isinstance(raw, list) else set()
            return self.scopes <= have
        return True


@dataclass(frozen=True)
class Rule:
    allow: bool
    methods: frozenset[bytes] | None
    cidrs: tuple[Network, ...] | None
    jwt: JWTMatch | None
    headers: tuple[tuple[bytes, frozenset[bytes]], ...]

    def matches(self, client_ip: str, method: bytes, headers: Sequence[tuple[bytes, bytes]], verified: tuple[str, dict[str, Any]] | None) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.cidrs is not None:
            try:
                ip = ipaddress.ip_address(client_ip)
            except ValueError:
                return False
            if not any(ip in n for n in self.cidrs):
                return False
        if self.jwt is not None and not self.jwt.matches(verified):
            return False
        for name, values in self.headers:
            seen = [v for n, v in headers if n == name]
            # one header line, or the lines joined as a proxy would fold them
            if not any(v in values for v in seen) and b",".join(seen) not in values:
                return False
        return True


@dataclass(frozen=True)
class CompiledAuthorization:
    rules: tuple[Rule, ...]
    default_allow: bool

    def allows(self, client_ip: str, method: bytes, headers: Sequence[tuple[bytes, bytes]], verified: tuple[str, dict[str, Any]] | None = None) -> bool:
        for rule in self.rules:
            if rule.matches(client_ip, method, headers, verified):
                return rule.allow
        return self.default_allow


def compile_authorization(s: AuthorizationSettings) -> CompiledAuthorization:
    rules = []
    for r in s.rules:
        jwt = None
        if r.jwt_provider is not None:
            jwt = JWTMatch(r.jwt_provider, tuple(ClaimMatch(c.path, c.array, c.values) for c in r.claims), r.scopes)
        rules.append(
            Rule(
                allow=r.allow,
                methods=frozenset(m.encode() for m in r.methods) if r.methods is not None else None,
                cidrs=r.cidrs,
                jwt=jwt,
                headers=tuple((name.encode(), frozenset(v.encode() for v in values)) for name, values in r.headers),
            )
        )
    return CompiledAuthorization(tuple(rules), s.default_allow)
