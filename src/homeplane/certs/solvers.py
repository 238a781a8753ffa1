"""Challenge solvers: DNS-01 through homeplane's DNS providers (RFC 2136, Cloudflare), as
cert-manager's ``dns01.rfc2136`` and ``dns01.cloudflare`` solvers configure them.

A DNS-01 record is ``_acme-challenge.<domain>`` TXT ``<value>`` (a wildcard and its base name
share the name; both values are kept). With RFC 2136 the zone is found by asking the
nameserver for the SOA above the name, and the record is waited for there before the ACME
server is told to look (cert-manager's propagation check).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from homeplane.api.secrets import secret_values
from homeplane.certs.acme_flow import ACMEError, Challenge
from homeplane.certs.spec import Solver
from homeplane.externaldns.endpoint import Endpoint
from homeplane.externaldns.plan import Changes
from homeplane.externaldns.providers.base import Provider, ProviderError

CLUSTER_RESOURCE_NAMESPACE = "cert-manager"  # where a ClusterIssuer's Secrets live (cert-manager's default)
_TSIG = {"HMACMD5": "hmac-md5", "HMACSHA1": "hmac-sha1", "HMACSHA256": "hmac-sha256", "HMACSHA512": "hmac-sha512"}


class SecretLookup:
    """A Secret's key from the manifests, else a variable (``--vars``/``--set``) or environment
    variable named like the key."""

    def __init__(self, objects: list[Any], variables: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None):
        self.secrets: dict[tuple[str, str], dict[str, str]] = {
            (o.namespace or "default", o.name): secret_values(o.raw) for o in objects if o.kind == "Secret"
        }
        self.variables = dict(variables or {})
        self.environ = os.environ if environ is None else environ

    def get(self, namespace: str, ref: dict[str, Any] | None, what: str) -> str:
        ref = ref or {}
        name, key = str(ref.get("name") or ""), str(ref.get("key") or "")
        if not name or not key:
            raise ACMEError(f"{what}: a secretRef needs name and key", permanent=True)
        value = self.secrets.get((namespace, name), {}).get(key) or self.variables.get(key) or self.environ.get(key)
        if not value:
            raise ACMEError(f"{what}: Secret {namespace}/{name} key {key!r} is not in the manifests, the variables or the environment", permanent=True)
        return value


@dataclass
class DNSSolver:
    provider: Provider
    txt_quoted: bool  # RFC 2136 writes TXT rdata in zone-file syntax (quoted); Cloudflare takes the text
    check: Callable[[str, str], bool] | None  # (name, value) -> visible at the authoritative server
    propagation_timeout: float = 60.0

    def _record(self, ch: Challenge, values: tuple[str, ...]) -> Endpoint:
        return Endpoint(ch.name.rstrip("."), "TXT", tuple(f'"{v}"' if self.txt_quoted else v for v in values), 60)

    async def present(self, ch: Challenge, values: tuple[str, ...]) -> None:
        """Make the TXT record hold exactly ``values`` (every value of that name in flight)."""
        current = [r for r in await self.provider.records() if r.dns_name == ch.name.rstrip(".") and r.record_type == "TXT"]
        if current:
            await self.provider.apply_changes(Changes(update_old=current[:1], update_new=[self._record(ch, values)]))
        else:
            await self.provider.apply_changes(Changes(create=[self._record(ch, values)]))
        if self.check is not None:
            deadline = time.monotonic() + self.propagation_timeout
            while not await asyncio.to_thread(self.check, ch.name, ch.value):
                if time.monotonic() > deadline:
                    raise ACMEError(f"DNS record for {ch.name} not yet propagated (waited {self.propagation_timeout:.0f} s)")
                await asyncio.sleep(0.2)

    async def cleanup(self, ch: Challenge, remaining: tuple[str, ...]) -> None:
        current = [r for r in await self.provider.records() if r.dns_name == ch.name.rstrip(".") and r.record_type == "TXT"]
        if not current:
            return
        if remaining:
            await self.provider.apply_changes(Changes(update_old=current[:1], update_new=[self._record(ch, remaining)]))
        else:
            await self.provider.apply_changes(Changes(delete=current[:1]))


def _nameserver(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port or 53)
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        return text, 53
    return host, int(port)


def find_zone(host: str, port: int, fqdn: str, timeout: float = 3.0) -> str:
    """The zone holding ``fqdn``: the closest name above it with an SOA at the nameserver."""
    name = dns.name.from_text(fqdn)
    while len(name.labels) > 1:
        q = dns.message.make_query(name, dns.rdatatype.SOA)
        try:
            r = dns.query.udp(q, host, port=port, timeout=timeout)
        except (OSError, dns.exception.DNSException) as e:
            raise ACMEError(f"nameserver {host}:{port} did not answer for {name}: {e}") from None
        if r.rcode() == dns.rcode.NOERROR and any(rr.rdtype == dns.rdatatype.SOA and rr.name == name for rr in r.answer):
            return name.to_text().rstrip(".")
        name = name.parent()
    raise ACMEError(f"no zone for {fqdn} at nameserver {host}:{port}", permanent=True)


def txt_visible(host: str, port: int) -> Callable[[str, str], bool]:
    def check(name: str, value: str) -> bool:
        try:
            r = dns.query.udp(dns.message.make_query(name, "TXT"), host, port=port, timeout=2)
        except (OSError, dns.exception.DNSException):
            return False
        return any(value in (b.decode() for b in rd.strings) for rr in r.answer if rr.rdtype == dns.rdatatype.TXT for rd in rr)
    return check


def authoritative_check(fqdn: str, nameservers: tuple[tuple[str, int], ...]) -> Callable[[str, str], bool]:
    """cert-manager's propagation check for providers reached by API: the record must be visible
    at the zone's authoritative servers (found through the system resolver), or at
    ``--dns01-recursive-nameservers`` when given."""
    def servers() -> list[tuple[str, int]]:
        if nameservers:
            return list(nameservers)
        import dns.resolver

        name = dns.name.from_text(fqdn).parent()
        while len(name.labels) > 1:
            try:
                ns = dns.resolver.resolve(name, "NS", lifetime=3)
                return [(str(a), 53) for rr in ns for a in dns.resolver.resolve(rr.target, "A", lifetime=3)]
            except dns.exception.DNSException:
                name = name.parent()
        return []

    def check(name: str, value: str) -> bool:
        found = servers()
        return bool(found) and all(txt_visible(h, p)(name, value) for h, p in found)

    return check


def dns_solver(solver: Solver, fqdn: str, namespace: str, secrets: SecretLookup,
               nameservers: tuple[tuple[str, int], ...] = ()) -> DNSSolver:
    cfg = solver.config
    if solver.kind == "dns01-rfc2136":
        from homeplane.externaldns.providers.rfc2136 import RFC2136Config, RFC2136Provider

        host, port = _nameserver(str(cfg.get("nameserver") or ""))
        if not host:
            raise ACMEError("dns01.rfc2136.nameserver is required", permanent=True)
        zone = find_zone(host, port, fqdn)
        secret = secrets.get(namespace, cfg.get("tsigSecretSecretRef"), "dns01.rfc2136.tsigSecretSecretRef") if cfg.get("tsigKeyName") else ""
        alg = _TSIG.get(str(cfg.get("tsigAlgorithm") or "HMACMD5").upper(), "hmac-md5")
        try:
            provider = RFC2136Provider(RFC2136Config(host=host, port=port, zones=(zone,), key_name=str(cfg.get("tsigKeyName") or ""),
                                                     secret=secret, algorithm=alg, tsig_axfr=True))
        except ProviderError as e:
            raise ACMEError(str(e), permanent=True) from None
        return DNSSolver(provider, True, txt_visible(host, port))
    if solver.kind == "dns01-cloudflare":
        from homeplane.externaldns.providers.cloudflare import API, CloudflareConfig, CloudflareProvider

        token = secrets.get(namespace, cfg.get("apiTokenSecretRef"), "dns01.cloudflare.apiTokenSecretRef") if cfg.get("apiTokenSecretRef") else ""
        key = secrets.get(namespace, cfg.get("apiKeySecretRef"), "dns01.cloudflare.apiKeySecretRef") if not token else ""
        zone_hint = fqdn.removeprefix("_acme-challenge.")
        return DNSSolver(CloudflareProvider(CloudflareConfig(
            token=token, api_key=key, email=str(cfg.get("email") or ""), domains=(zone_hint,),
            base_url=os.environ.get("HOMEPLANE_CLOUDFLARE_API_URL", API),
        )), False, authoritative_check(fqdn, nameservers))
    raise ACMEError(f"solver {solver.kind} is not a DNS-01 solver", permanent=True)
