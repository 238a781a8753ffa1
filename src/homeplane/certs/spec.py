"""What the repo asks cert-manager for, read from the manifests (pure).

- ``Certificate`` objects, and the ones cert-manager's Gateway shim makes: a Gateway annotated
  ``cert-manager.io/cluster-issuer`` (or ``issuer``) gets a Certificate per Secret its TLS
  listeners reference, named after the Secret, for the hostnames of those listeners.
- ``Issuer``/``ClusterIssuer``: ``selfSigned``, ``ca`` (``secretName``) and ``acme`` (server,
  email, privateKeySecretRef, skipTLSVerify, solvers with ``selector`` and ``dns01``
  ``cloudflare``/``rfc2136`` or ``http01.gatewayHTTPRoute``).
- Renewal: ``renewBefore``, else ``renewBeforePercentage``, else a third of the lifetime; a
  renewBefore not shorter than the lifetime falls back to a third, as cert-manager does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from homeplane.api.models.certmanager import Certificate, ClusterIssuer, Issuer
from homeplane.api.models.gateway import Gateway
from homeplane.api.units import parse_duration

SHIM_ISSUER = "cert-manager.io/issuer"
SHIM_CLUSTER_ISSUER = "cert-manager.io/cluster-issuer"
DEFAULT_DURATION = dt.timedelta(days=90)


@dataclass(frozen=True)
class CertRequest:
    """One Certificate, as the controller works on it."""

    namespace: str
    name: str
    secret_name: str
    issuer_kind: str  # Issuer | ClusterIssuer
    issuer_name: str
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    duration: dt.timedelta = DEFAULT_DURATION
    renew_before: dt.timedelta | None = None
    renew_before_percentage: int | None = None
    key_algorithm: str = "RSA"
    key_size: int | None = None
    key_encoding: str = "PKCS1"
    rotation_policy: str = "Always"
    usages: tuple[str, ...] = ("digital signature", "key encipherment")
    is_ca: bool = False
    labels: tuple[tuple[str, str], ...] = ()  # the Certificate's labels (solver matchLabels)
    secret_template: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    source: str = "Certificate"  # or "Gateway ns/name" for the shim

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def fingerprint(self) -> str:
        """What, if changed, makes a new certificate necessary (cert-manager re-issues then)."""
        return "|".join([
            self.issuer_kind, self.issuer_name, self.common_name or "", ",".join(sorted(self.dns_names)),
            ",".join(sorted(self.ip_addresses)), ",".join(sorted(self.uris)), ",".join(sorted(self.emails)),
            self.key_algorithm, str(self.key_size or ""), str(self.is_ca), ",".join(sorted(self.usages)),
        ])


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, req: CertRequest) -> dt.datetime:
    lifetime = not_after - not_before
    before = req.renew_before
    if before is None and req.renew_before_percentage is not None:
        before = lifetime * req.renew_before_percentage / 100
    if before is None or before >= lifetime:
        before = lifetime / 3
    return not_after - before


def _td(value: Any, default: dt.timedelta | None) -> dt.timedelta | None:
    if value is None:
        return default
    return dt.timedelta(seconds=parse_duration(str(value)))


def from_certificate(o: Any) -> CertRequest:
    c: Certificate = o.model
    s = c.spec
    return CertRequest(
        namespace=o.namespace or "default", name=o.name, secret_name=s.secret_name,
        issuer_kind=s.issuer_ref.kind or "Issuer", issuer_name=s.issuer_ref.name,
        common_name=s.common_name, dns_names=tuple(s.dns_names), ip_addresses=tuple(s.ip_addresses),
        uris=tuple(s.uris), emails=tuple(s.email_addresses),
        duration=_td(s.duration, DEFAULT_DURATION) or DEFAULT_DURATION, renew_before=_td(s.renew_before, None),
        renew_before_percentage=s.renew_before_percentage,
        key_algorithm=s.private_key.algorithm, key_size=s.private_key.effective_size, key_encoding=s.private_key.encoding,
        rotation_policy=s.private_key.rotation_policy, usages=tuple(s.usages), is_ca=s.is_ca,
        labels=tuple(sorted(o.labels.items())), secret_template=s.secret_template,
    )


def from_gateway(o: Any) -> list[CertRequest]:
    """cert-manager's Gateway shim."""
    gw: Gateway = o.model
    ann = o.annotations
    kind, name = ("ClusterIssuer", ann[SHIM_CLUSTER_ISSUER]) if SHIM_CLUSTER_ISSUER in ann else (
        ("Issuer", ann[SHIM_ISSUER]) if SHIM_ISSUER in ann else (None, None))
    if kind is None or not name:
        return []
    if ann.get("cert-manager.io/issuer-kind"):
        kind = ann["cert-manager.io/issuer-kind"]
    by_secret: dict[str, list[str]] = {}
    for ls in gw.spec.listeners:
        tls = ls.tls
        if tls is None or not ls.hostname or (getattr(tls, "mode", None) or "Terminate") != "Terminate":
            continue
        for ref in tls.certificate_refs:
            if (ref.kind or "Secret") == "Secret" and (ref.namespace or o.namespace) == o.namespace:
                names = by_secret.setdefault(ref.name, [])
                if ls.hostname not in names:
                    names.append(ls.hostname)
    out = []
    for secret, hosts in by_secret.items():
        out.append(CertRequest(
            namespace=o.namespace or "default", name=secret, secret_name=secret, issuer_kind=kind, issuer_name=name,
            common_name=ann.get("cert-manager.io/common-name"), dns_names=tuple(hosts),
            duration=_td(ann.get("cert-manager.io/duration"), DEFAULT_DURATION) or DEFAULT_DURATION,
            renew_before=_td(ann.get("cert-manager.io/renew-before"), None),
            key_algorithm=ann.get("cert-manager.io/private-key-algorithm", "RSA"),
            key_size=int(ann["cert-manager.io/private-key-size"]) if ann.get("cert-manager.io/private-key-size", "").isdigit() else None,
            source=f"Gateway {o.namespace}/{o.name}",
        ))
    return out


def requests(objects: list[Any], problems: list[str] | None = None) -> list[CertRequest]:
    """Every Certificate the manifests ask for; an explicit Certificate wins over the shim's. One
    that cannot be read (a duration that does not parse …) is a problem, and the others go on."""
    out: dict[tuple[str, str], CertRequest] = {}
    for o in objects:
        if isinstance(o.model, Gateway):
            try:
                for r in from_gateway(o):
                    out.setdefault((r.namespace, r.name), r)
            except (ValueError, TypeError) as e:
                (problems if problems is not None else []).append(f"Gateway {o.namespace}/{o.name}: cert-manager annotations: {e}")
    for o in objects:
        if isinstance(o.model, Certificate):
            try:
                r = from_certificate(o)
            except (ValueError, TypeError) as e:
                (problems if problems is not None else []).append(f"Certificate {o.namespace}/{o.name}: {e}")
                continue
            out[(r.namespace, r.name)] = r
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class Solver:
    kind: str  # dns01-cloudflare | dns01-rfc2136 | http01-gateway | unsupported
    config: dict[str, Any]
    dns_names: tuple[str, ...] = ()
    dns_zones: tuple[str, ...] = ()
    match_labels: tuple[tuple[str, str], ...] = ()

    def score(self, domain: str, labels: dict[str, str]) -> int | None:
        """cert-manager's choice: a solver whose dnsNames list the domain beats one whose
        dnsZones contain it (the longest zone first), which beats one with only matchLabels,
        which beats one with no selector; None when the selector excludes the domain."""
        if any(labels.get(k) != v for k, v in self.match_labels):
            return None
        if self.kind == "http01-gateway" and domain.startswith("*."):
            return None  # ACME offers no HTTP-01 for a wildcard: another solver must take it
        d = domain.lower().removeprefix("*.")
        score = 0
        if self.dns_names:  # every part of the selector must match
            if domain.lower() not in (n.lower() for n in self.dns_names):
                return None
            score += 10_000
        if self.dns_zones:
            best = max((len(z) for z in self.dns_zones if d == z.lower() or d.endswith("." + z.lower())), default=None)
            if best is None:
                return None
            score += 1_000 + best
        if self.match_labels:
            score += 100 + len(self.match_labels)
        return score


@dataclass(frozen=True)
class IssuerConfig:
    kind: str  # Issuer | ClusterIssuer
    namespace: str  # "" for a ClusterIssuer
    name: str
    type: str  # selfSigned | ca | acme | unsupported
    ca_secret: str = ""
    acme_server: str = ""
    acme_email: str = ""
    acme_account_secret: str = ""
    acme_skip_tls_verify: bool = False
    acme_ca_bundle: str = ""
    solvers: tuple[Solver, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"

    def solver_for(self, domain: str, labels: dict[str, str]) -> Solver | None:
        scored = [(s.score(domain, labels), i, s) for i, s in enumerate(self.solvers)]
        ok = [(sc, -i, s) for sc, i, s in scored if sc is not None]
        return max(ok, key=lambda t: (t[0], t[1]))[2] if ok else None


def _solver(doc: dict[str, Any]) -> Solver:
    sel = doc.get("selector") or {}
    common = dict(dns_names=tuple(sel.get("dnsNames") or ()), dns_zones=tuple(sel.get("dnsZones") or ()),
                  match_labels=tuple(sorted((sel.get("matchLabels") or {}).items())))
    dns01 = doc.get("dns01") or {}
    if dns01.get("cloudflare") is not None:
        return Solver("dns01-cloudflare", dns01["cloudflare"], **common)
    if dns01.get("rfc2136") is not None:
        return Solver("dns01-rfc2136", dns01["rfc2136"], **common)
    http01 = doc.get("http01") or {}
    if http01.get("gatewayHTTPRoute") is not None:
        return Solver("http01-gateway", http01["gatewayHTTPRoute"], **common)
    what = ", ".join(f"dns01.{k}" for k in dns01 if k != "cnameStrategy") or ", ".join(f"http01.{k}" for k in http01) or "nothing"
    return Solver("unsupported", {"what": what}, **common)


def issuers(objects: list[Any]) -> dict[tuple[str, str, str], IssuerConfig]:
    """(kind, namespace or "", name) -> issuer."""
    out = {}
    for o in objects:
        if not isinstance(o.model, Issuer):
            continue
        kind = "ClusterIssuer" if isinstance(o.model, ClusterIssuer) else "Issuer"
        ns = "" if kind == "ClusterIssuer" else (o.namespace or "default")
        spec = o.model.spec
        problems: list[str] = []
        if spec.self_signed is not None:
            cfg = IssuerConfig(kind, ns, o.name, "selfSigned")
        elif spec.ca is not None:
            cfg = IssuerConfig(kind, ns, o.name, "ca", ca_secret=str(spec.ca.get("secretName") or ""))
            if not cfg.ca_secret:
                problems.append("spec.ca.secretName is required")
        elif spec.acme is not None:
            a = spec.acme
            solvers = tuple(_solver(s) for s in a.get("solvers") or [] if isinstance(s, dict))
            problems += [f"solver {s.config['what']} is not supported by homeplane (dns01.cloudflare, dns01.rfc2136, http01.gatewayHTTPRoute are)"
                         for s in solvers if s.kind == "unsupported"]
            cfg = IssuerConfig(
                kind, ns, o.name, "acme", acme_server=str(a.get("server") or ""), acme_email=str(a.get("email") or ""),
                acme_account_secret=str((a.get("privateKeySecretRef") or {}).get("name") or ""),
                acme_skip_tls_verify=bool(a.get("skipTLSVerify")), acme_ca_bundle=str(a.get("caBundle") or ""), solvers=solvers,
            )
            if not cfg.acme_server:
                problems.append("spec.acme.server is required")
            if not cfg.acme_account_secret:
                problems.append("spec.acme.privateKeySecretRef.name is required")
        else:
            cfg = IssuerConfig(kind, ns, o.name, "unsupported")
            problems.append(f"issuer type {spec.type} is not supported by homeplane (selfSigned, ca and acme are)")
        out[(kind, ns, o.name)] = IssuerConfig(**{**cfg.__dict__, "problems": tuple(problems)})
    return out


def issuer_for(req: CertRequest, all_issuers: dict[tuple[str, str, str], IssuerConfig]) -> IssuerConfig | None:
    ns = "" if req.issuer_kind == "ClusterIssuer" else req.namespace
    return all_issuers.get((req.issuer_kind, ns, req.issuer_name))


def report(objects: list[Any]) -> list[dict[str, Any]]:
    """For ``check`` and ``/status``: each Certificate, its issuer, and the listeners that will
    serve it (those whose certificateRefs name its Secret)."""
    all_issuers = issuers(objects)
    serving: dict[tuple[str, str], list[str]] = {}
    for o in objects:
        if isinstance(o.model, Gateway):
            for ls in o.model.spec.listeners:
                for ref in (ls.tls.certificate_refs if ls.tls else []):
                    if (ref.kind or "Secret") == "Secret":
                        serving.setdefault((ref.namespace or o.namespace or "default", ref.name), []).append(f"{o.namespace}/{o.name}/{ls.name}")
    out = []
    problems_all: list[str] = []
    for r in requests(objects, problems_all):
        iss = issuer_for(r, all_issuers)
        entry: dict[str, Any] = {
            "namespace": r.namespace, "name": r.name, "secretName": r.secret_name, "dnsNames": list(r.dns_names),
            "issuer": f"{r.issuer_kind}/{r.issuer_name}" + (f" ({iss.type})" if iss else " (not found)"),
            "listeners": sorted(serving.get((r.namespace, r.secret_name), [])),
        }
        if r.source != "Certificate":
            entry["createdBy"] = r.source
        problems = list(iss.problems) if iss else [f"{r.issuer_kind} {r.issuer_name} not found"]
        if iss and iss.type == "acme":
            for d in r.dns_names:
                s = iss.solver_for(d, dict(r.labels))
                if s is None:
                    problems.append(f"no solver matches {d}")
        if problems:
            entry["problems"] = problems
        out.append(entry)
    for p in problems_all:
        out.append({"namespace": "", "name": "", "secretName": "", "dnsNames": [], "issuer": "", "listeners": [], "problems": [p]})
    return out
