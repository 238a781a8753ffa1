"""RFC 2136 dynamic updates with TSIG, as external-dns's ``rfc2136`` provider does them.

Records are read with a zone transfer (AXFR, TSIG-signed with ``--rfc2136-tsig-axfr``);
changes go out as UPDATE messages, batched (``--rfc2136-batch-change-size``, default 50) per
zone. Each endpoint belongs to the longest ``--rfc2136-zone`` it is under. A record without a
TTL gets 300 s, raised to ``--rfc2136-min-ttl``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.zone

from homeplane.externaldns.endpoint import Endpoint, normalize
from homeplane.externaldns.plan import Changes
from homeplane.externaldns.providers.base import ProviderError

DEFAULT_TTL = 300
_ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5, "hmac-sha1": dns.tsig.HMAC_SHA1, "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha384": dns.tsig.HMAC_SHA384, "hmac-sha512": dns.tsig.HMAC_SHA512,
}
_TYPES = ("A", "AAAA", "CNAME", "TXT", "NS", "MX", "SRV", "PTR", "NAPTR")


@dataclass
class RFC2136Config:
    host: str
    port: int = 53
    zones: tuple[str, ...] = ()
    key_name: str = ""
    secret: str = ""
    algorithm: str = "hmac-sha256"
    tsig_axfr: bool = False
    min_ttl: int = 0
    batch: int = 50
    timeout: float = 10.0


class RFC2136Provider:
    name = "rfc2136"

    def __init__(self, cfg: RFC2136Config):
        if not cfg.zones:
            raise ProviderError("rfc2136: no zone (--rfc2136-zone)", permanent=True)
        alg = _ALGORITHMS.get(cfg.algorithm.lower().rstrip("."))
        if cfg.key_name and alg is None:
            raise ProviderError(f"rfc2136: TSIG algorithm {cfg.algorithm!r} is not one of {', '.join(_ALGORITHMS)}", permanent=True)
        self.cfg = cfg
        self.calls = 0
        self._keyring = None
        self._alg = alg
        if cfg.key_name:
            try:
                self._keyring = dns.tsigkeyring.from_text({cfg.key_name: cfg.secret})
            except (ValueError, dns.exception.DNSException) as e:
                raise ProviderError(f"rfc2136: TSIG secret for {cfg.key_name} is not valid base64: {type(e).__name__}", permanent=True) from None

    def _zone_of(self, name: str) -> str | None:
        n = normalize(name)
        best = None
        for z in self.cfg.zones:
            zn = normalize(z)
            if (n == zn or n.endswith("." + zn)) and (best is None or len(zn) > len(best)):
                best = zn
        return best

    def _ttl(self, ep: Endpoint) -> int:
        return max(ep.ttl or DEFAULT_TTL, self.cfg.min_ttl)

    def adjust_endpoints(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        return endpoints

    def _axfr(self, zone: str) -> list[Endpoint]:
        kw = {}
        if self.cfg.tsig_axfr and self._keyring is not None:
            kw = {"keyring": self._keyring, "keyname": self.cfg.key_name, "keyalgorithm": self._alg}
        z = dns.zone.from_xfr(dns.query.xfr(self.cfg.host, zone, port=self.cfg.port, timeout=self.cfg.timeout, lifetime=self.cfg.timeout * 3, relativize=False, **kw), relativize=False)
        out = []
        for name, rdataset in z.iterate_rdatasets():
            rtype = dns.rdatatype.to_text(rdataset.rdtype)
            if rtype not in _TYPES:
                continue
            targets = tuple(
                r.to_text().rstrip(".") if rtype in ("CNAME", "NS", "PTR") else r.to_text() for r in rdataset
            )
            out.append(Endpoint(name.to_text().rstrip("."), rtype, targets, rdataset.ttl))
        return out

    async def records(self) -> list[Endpoint]:
        out: list[Endpoint] = []
        for zone in self.cfg.zones:
            self.calls += 1
            try:
                out += await asyncio.to_thread(self._axfr, normalize(zone) + ".")
            except (OSError, EOFError, dns.exception.DNSException) as e:
                raise ProviderError(f"rfc2136: zone transfer of {zone} from {self.cfg.host}:{self.cfg.port} failed: {e}") from None
        return out

    def _update(self, zone: str) -> dns.update.UpdateMessage:
        if self._keyring is not None:
            return dns.update.UpdateMessage(zone + ".", keyring=self._keyring, keyname=self.cfg.key_name, keyalgorithm=self._alg)
        return dns.update.UpdateMessage(zone + ".")

    @staticmethod
    def _rdata(ep: Endpoint) -> list[str]:
        if ep.record_type in ("CNAME", "NS", "PTR"):
            return [t.rstrip(".") + "." for t in ep.targets]
        return list(ep.targets)

    async def apply_changes(self, changes: Changes) -> None:
        ops: dict[str, list[tuple[str, Endpoint]]] = {}
        for kind, eps in (("delete", changes.delete), ("delete", changes.update_old), ("add", changes.create), ("add", changes.update_new)):
            for ep in eps:
                zone = self._zone_of(ep.dns_name)
                if zone is None:
                    continue  # not in a zone this provider serves (external-dns skips it too)
                ops.setdefault(zone, []).append((kind, ep))
        for zone, items in ops.items():
            for i in range(0, len(items), max(1, self.cfg.batch)):
                msg = self._update(zone)
                for kind, ep in items[i:i + self.cfg.batch]:
                    name = dns.name.from_text(ep.dns_name.rstrip(".") + ".")
                    if kind == "delete":
                        for rd in self._rdata(ep):
                            msg.delete(name, ep.record_type, rd)
                    else:
                        for rd in self._rdata(ep):
                            msg.add(name, self._ttl(ep), ep.record_type, rd)
                await self._send(msg, zone)

    async def _send(self, msg: dns.message.Message, zone: str) -> None:
        self.calls += 1
        try:
            resp = await asyncio.to_thread(dns.query.tcp, msg, self.cfg.host, timeout=self.cfg.timeout, port=self.cfg.port)
        except (OSError, EOFError, dns.exception.DNSException) as e:
            raise ProviderError(f"rfc2136: update of {zone} at {self.cfg.host}:{self.cfg.port} failed: {e}") from None
        if resp.rcode() != dns.rcode.NOERROR:
            raise ProviderError(f"rfc2136: update of {zone} refused: {dns.rcode.to_text(resp.rcode())}",
                                permanent=resp.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTAUTH))

    async def close(self) -> None:
        pass
