"""The certificate controller inside ``homeplane run`` (cert-manager's job).

For every Certificate (and every one the Gateway shim makes) it keeps a certificate and key in
the state store under ``certs/secret/<namespace>/<secretName>``; ``run`` hands those to the
pipeline as Secrets, so listeners pick them up through the normal Snapshot swap (connections
in flight keep theirs). A Secret of the same name in the manifests wins (bring your own).

Issuance happens when the Secret does not exist, no longer matches the Certificate (names,
issuer, key type), or its renewal time has come. Failures back off as cert-manager's do:
1 h after a failure, doubling up to 32 h (``backoff_base`` makes tests quick). Status carries
cert-manager's conditions (``Ready``, ``Issuing``) and fields (``notBefore``, ``notAfter``,
``renewalTime``, ``revision``, ``failedIssuanceAttempts``, ``lastFailureTime``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge

from homeplane.certs import acme_flow, keys
from homeplane.certs.acme_flow import ACMEError, Challenge
from homeplane.certs.solvers import CLUSTER_RESOURCE_NAMESPACE, SecretLookup, dns_solver
from homeplane.certs.spec import (
    CertRequest,
    IssuerConfig,
    issuer_for,
    issuers,
    renewal_time,
    requests,
)
from homeplane.store import StateStore
from homeplane.tasks import cancel_and_wait

log = logging.getLogger("homeplane.certs")

SECRET_PREFIX = "certs/secret/"
ACCOUNT_PREFIX = "certs/acme-account/"
STATUS_PREFIX = "certs/status/"
MAX_BACKOFF = dt.timedelta(hours=32)
MIN_ATTEMPT_GAP = 10.0  # seconds between two attempts for one Certificate, whatever woke the controller
ORDERS_PREFIX = "certs/orders/"
HTTP01_PREFIX = "certs/http01/"  # HTTP-01 challenges in flight: served by the gateway while they last
# Let's Encrypt's production limit on duplicate certificates: 5 for one exact set of names per 7 days
LE_PRODUCTION = "acme-v02.api.letsencrypt.org"
LE_DUPLICATES, LE_WINDOW = 5, dt.timedelta(days=7)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ts(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z") if t else None


def _parse_ts(s: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


def issued_secrets(store: StateStore) -> dict[tuple[str, str], dict[str, Any]]:
    """The certificates homeplane holds, by (namespace, Secret name)."""
    out = {}
    for e in store.list(SECRET_PREFIX):
        ns, _, name = e.key[len(SECRET_PREFIX):].partition("/")
        try:
            out[(ns, name)] = json.loads(e.value)
        except ValueError:
            continue
    return out


def default_state_path() -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "homeplane" / "state.db"


def read_issued(path: Path | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """The certificates a homeplane state store holds, read without changing (or creating) it."""
    import sqlite3

    p = path or default_state_path()
    if not p.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
        rows = db.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ?", (SECRET_PREFIX, SECRET_PREFIX + "\U0010ffff")).fetchall()
        db.close()
    except sqlite3.Error:
        return {}
    out = {}
    for k, v in rows:
        ns, _, name = k[len(SECRET_PREFIX):].partition("/")
        try:
            out[(ns, name)] = json.loads(v)
        except ValueError:
            continue
    return out


def http01_objects(store: StateStore) -> list[dict[str, Any]]:
    """The HTTPRoutes (and their directResponse filters) answering HTTP-01 challenges in flight,
    as cert-manager's gatewayHTTPRoute solver attaches a route to the solver's parentRefs."""
    out: list[dict[str, Any]] = []
    for e in store.list(HTTP01_PREFIX):
        try:
            ch = json.loads(e.value)
        except ValueError:
            continue
        name = f"cm-acme-http-solver-{ch['id']}"
        meta = {"name": name, "namespace": ch["namespace"], "labels": {"acme.cert-manager.io/http01-solver": "true", **(ch.get("labels") or {})}}
        out.append({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "HTTPRouteFilter", "metadata": dict(meta),
                    "spec": {"directResponse": {"contentType": "text/plain", "statusCode": 200,
                                                "body": {"type": "Inline", "inline": ch["keyAuthorization"]}}}})
        out.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": dict(meta), "spec": {
            "parentRefs": ch.get("parentRefs") or [], "hostnames": [ch["domain"]],
            "rules": [{"matches": [{"path": {"type": "Exact", "value": f"/.well-known/acme-challenge/{ch['token']}"}}],
                       "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "gateway.envoyproxy.io", "kind": "HTTPRouteFilter", "name": name}}]}],
        }})
    return out


def secret_manifest(ns: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A kubernetes.io/tls Secret as cert-manager writes it (with its annotations)."""
    data = {k: base64.b64encode(doc[k].encode()).decode() for k in ("tls.crt", "tls.key", "ca.crt") if doc.get(k)}
    ann = {"cert-manager.io/certificate-name": doc.get("certificate", name).split("/")[-1],
           "cert-manager.io/issuer-name": doc.get("issuerName", ""), "cert-manager.io/issuer-kind": doc.get("issuerKind", ""),
           "cert-manager.io/issuer-group": "cert-manager.io", "cert-manager.io/common-name": doc.get("commonName") or "",
           "cert-manager.io/alt-names": ",".join(doc.get("dnsNames") or [])}
    tmpl = doc.get("secretTemplate") if isinstance(doc.get("secretTemplate"), dict) else {}
    labels = {str(k): str(v) for k, v in (tmpl.get("labels") or {}).items()} if isinstance(tmpl.get("labels"), dict) else {}
    if isinstance(tmpl.get("annotations"), dict):  # spec.secretTemplate, as cert-manager copies it
        ann = {**{str(k): str(v) for k, v in tmpl["annotations"].items()}, **ann}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns, "annotations": ann, **({"labels": labels} if labels else {})}, "data": data}


@dataclass
class CertState:
    req: CertRequest
    conditions: dict[str, dict[str, str]] = field(default_factory=dict)
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    renewal: dt.datetime | None = None
    revision: int = 0
    failures: int = 0
    last_failure: dt.datetime | None = None
    last_failure_message: str = ""
    last_attempt: dt.datetime | None = None
    bring_your_own: bool = False

    def cond(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.conditions[type_] = {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message}

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"secretName": self.req.secret_name, "issuerRef": {"kind": self.req.issuer_kind, "name": self.req.issuer_name},
                               "dnsNames": list(self.req.dns_names), "conditions": list(self.conditions.values())}
        if self.req.source != "Certificate":
            doc["createdBy"] = self.req.source
        for k, v in (("notBefore", self.not_before), ("notAfter", self.not_after), ("renewalTime", self.renewal)):
            if v:
                doc[k] = _ts(v)
        if self.revision:
            doc["revision"] = self.revision
        if self.failures:
            doc["failedIssuanceAttempts"] = self.failures
            doc["lastFailureTime"] = _ts(self.last_failure)
        return doc


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work (an ACME order) in a daemon thread: a shutdown does not wait for it."""
    import threading

    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            err = e
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_exception(err))
        else:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))

    threading.Thread(target=work, name="acme-order", daemon=True).start()
    return await fut


class IssuerNotReady(Exception):
    """The issuer cannot sign yet (a CA whose Secret does not exist yet): wait, it is no failure."""


class CertController:
    def __init__(self, current: Callable[[], Any], store: StateStore, on_issued: Callable[[], Awaitable[None]] | None = None,
                 variables: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None,
                 registry: CollectorRegistry | None = None, backoff_base: dt.timedelta = dt.timedelta(hours=1),
                 acme_timeout: float = 120.0, clock: Callable[[], dt.datetime] = _now,
                 dns01_nameservers: tuple[tuple[str, int], ...] = (), propagation_timeout: float = 60.0):
        self._current = current
        self.now = clock  # injected by tests to drive renewal
        self.dns01_nameservers = dns01_nameservers  # cert-manager's --dns01-recursive-nameservers
        self.propagation_timeout = propagation_timeout
        self.store = store
        self.on_issued = on_issued
        self.variables = dict(variables or {})
        self.environ = environ
        self.backoff_base = backoff_base
        self.acme_timeout = acme_timeout
        self.states: dict[str, CertState] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._dns_lock = asyncio.Lock()
        self._txt: dict[str, list[str]] = {}  # DNS-01 record name -> values in flight
        self._renew: set[str] = set()  # certificates to re-issue now (``homeplane certs renew``)
        reg = registry or CollectorRegistry()
        labels = ["name", "namespace", "issuer_name", "issuer_kind", "issuer_group"]
        self.m_expiry = Gauge("certmanager_certificate_expiration_timestamp_seconds", "The date after which the certificate expires", labels, registry=reg)
        self.m_renewal = Gauge("certmanager_certificate_renewal_timestamp_seconds", "The time after which the certificate will be renewed", labels, registry=reg)
        self.m_ready = Gauge("certmanager_certificate_ready_status", "The ready status of the certificate", labels + ["condition"], registry=reg)

    # --- lifecycle --------------------------------------------------------------------------

    async def apply(self, _snapshot: Any = None) -> None:
        self._wake.set()

    async def start(self) -> None:
        for e in self.store.list(HTTP01_PREFIX):  # challenges of a process that stopped mid-order
            self.store.delete(e.key)
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self.reconcile()
            except Exception:  # a bug here must not stop the controller for good
                log.exception("certificate reconcile failed")
                wait = 300.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(1.0, min(wait, 3600.0)))
            except asyncio.TimeoutError:
                pass

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self) -> float:
        """One pass over every Certificate; returns seconds until something is due."""
        result = self._current()
        if result is None:
            return 3600.0
        objects = result.load.objects
        manifest_secrets = {(o.namespace or "default", o.name) for o in objects if o.kind == "Secret"
                            and not (o.source.file or "").startswith("(issued")}
        all_issuers = issuers(objects)
        held = issued_secrets(self.store)
        lookup = SecretLookup(objects, self.variables, self.environ)
        for (ns, name), doc in held.items():  # issued CAs can sign too
            lookup.secrets.setdefault((ns, name), {k: doc[k] for k in ("tls.crt", "tls.key", "ca.crt") if doc.get(k)})
        # CAs first: a Certificate that makes a CA issuer's Secret is issued before the ones it signs
        ca_secrets = {(i.namespace or CLUSTER_RESOURCE_NAMESPACE, i.ca_secret) for i in all_issuers.values() if i.type == "ca"}
        reqs = sorted(requests(objects), key=lambda r: (r.namespace, r.secret_name) not in ca_secrets)
        seen = set()
        next_due = 3600.0
        issued_any = False
        for req in reqs:
            seen.add(req.id)
            st = self.states.get(req.id)
            if st is None or st.req != req:
                st = self._restore(req)
                self.states[req.id] = st
            if (req.namespace, req.secret_name) in manifest_secrets:
                st.bring_your_own = True
                st.cond("Ready", True, "Ready", f"Secret {req.namespace}/{req.secret_name} is in the manifests (bring your own): homeplane does not issue it")
                st.conditions.pop("Issuing", None)
                continue
            st.bring_your_own = False
            due, reason, message = self._needs_issuance(st, held.get((req.namespace, req.secret_name)))
            if not due:
                next_due = min(next_due, max(1.0, (st.renewal - self.now()).total_seconds()) if st.renewal else 3600.0)
                continue
            if st.failures and st.last_failure:
                backoff = min(MAX_BACKOFF, self.backoff_base * 2 ** (st.failures - 1))
                retry_at = st.last_failure + backoff
                if self.now() < retry_at and req.id not in self._renew:
                    next_due = min(next_due, (retry_at - self.now()).total_seconds())
                    continue
            if st.last_attempt and req.id not in self._renew and (self.now() - st.last_attempt).total_seconds() < MIN_ATTEMPT_GAP:
                next_due = min(next_due, MIN_ATTEMPT_GAP)
                continue  # whatever woke us (a reload, a renew), never two attempts within the gap
            issuer = issuer_for(req, all_issuers)
            st.cond("Issuing", True, reason, message)
            try:
                if issuer is None:
                    raise IssuerNotReady(f"{req.issuer_kind} {req.issuer_name} not found")
                if issuer.problems:
                    raise IssuerNotReady(f"{issuer.id}: {'; '.join(issuer.problems)}")
                st.last_attempt = self.now()
                doc = await self._issue(req, issuer, lookup, held.get((req.namespace, req.secret_name)))
            except IssuerNotReady as e:
                # cert-manager keeps the request pending until the issuer is ready: no backoff
                st.cond("Issuing", True, reason, f"Waiting on issuer: {e}")
                next_due = min(next_due, 30.0)
                continue
            except Exception as e:  # any failure of one Certificate is its own, with backoff
                msg = str(e) if isinstance(e, (ACMEError, keys.KeyError_)) else f"{type(e).__name__}: {e}"
                self._failed(st, msg)
                next_due = min(next_due, self.backoff_base.total_seconds())
                continue
            self._save(st, doc)
            lookup.secrets[(req.namespace, req.secret_name)] = {k: doc[k] for k in ("tls.crt", "tls.key", "ca.crt") if doc.get(k)}
            issued_any = True
        for gone in [k for k in self.states if k not in seen]:
            del self.states[gone]
        self._metrics()
        if issued_any and self.on_issued is not None:
            await self.on_issued()
        return next_due

    def _restore(self, req: CertRequest) -> CertState:
        st = CertState(req)
        raw = self.store.get(STATUS_PREFIX + req.id)
        if raw:
            try:
                d = json.loads(raw.value)
                if d.get("fingerprint") not in (None, req.fingerprint()):
                    return st  # the spec changed since the last failure: no backoff (cert-manager re-issues)
                st.failures = int(d.get("failedIssuanceAttempts", 0))
                st.last_failure = _parse_ts(d.get("lastFailureTime"))
                st.last_failure_message = d.get("message", "")
            except ValueError:
                pass
        return st

    def _needs_issuance(self, st: CertState, doc: dict[str, Any] | None) -> tuple[bool, str, str]:
        req = st.req
        if doc is None:
            st.cond("Ready", False, "DoesNotExist", "Issuing certificate as Secret does not exist")
            return True, "DoesNotExist", "Issuing certificate as Secret does not exist"
        try:
            cert = x509.load_pem_x509_certificate(doc["tls.crt"].encode())
        except (KeyError, ValueError):
            st.cond("Ready", False, "InvalidCertificate", "The certificate in the Secret cannot be read")
            return True, "InvalidCertificate", "Issuing certificate as Secret contains an invalid certificate"
        st.not_before, st.not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        st.renewal = renewal_time(st.not_before, st.not_after, req)
        st.revision = int(doc.get("revision", 1))
        if doc.get("fingerprint") != req.fingerprint():
            st.cond("Ready", False, "IncorrectCertificate", "Secret was issued for a different Certificate spec")
            return True, "IncorrectCertificate", "Issuing certificate as Secret was previously issued by a different Certificate spec"
        if self.now() >= st.not_after:
            st.cond("Ready", False, "Expired", f"Certificate expired on {_ts(st.not_after)}")
            return True, "Expired", f"Issuing certificate as Secret expired on {_ts(st.not_after)}"
        st.cond("Ready", True, "Ready", "Certificate is up to date and has not expired")
        if req.id in self._renew:
            return True, "ManuallyTriggered", "Re-issuance manually triggered"
        if self.now() >= st.renewal:
            return True, "Renewing", f"Renewing certificate as renewal was scheduled at {_ts(st.renewal)}"
        st.conditions.pop("Issuing", None)
        return False, "", ""

    def _failed(self, st: CertState, message: str) -> None:
        self._renew.discard(st.req.id)  # a manual renewal is one attempt, then normal backoff
        st.failures += 1
        st.last_failure = self.now()
        st.last_failure_message = message
        st.cond("Issuing", False, "Failed", f"The certificate request has failed to complete and will be retried: {message}")
        self.store.put(STATUS_PREFIX + st.req.id, json.dumps({
            "failedIssuanceAttempts": st.failures, "lastFailureTime": _ts(st.last_failure), "message": message,
            "fingerprint": st.req.fingerprint()}).encode())
        log.warning("certificate %s: %s (attempt %d)", st.req.id, message, st.failures)

    def _save(self, st: CertState, doc: dict[str, Any]) -> None:
        req = st.req
        st.revision += 1
        doc.update(revision=st.revision, certificate=req.id, fingerprint=req.fingerprint(), issuerName=req.issuer_name,
                   issuerKind=req.issuer_kind, commonName=req.common_name, dnsNames=list(req.dns_names),
                   secretTemplate=req.secret_template or {})
        self.store.put(f"{SECRET_PREFIX}{req.namespace}/{req.secret_name}", json.dumps(doc).encode())
        self.store.delete(STATUS_PREFIX + req.id)
        self._renew.discard(req.id)
        cert = x509.load_pem_x509_certificate(doc["tls.crt"].encode())
        st.not_before, st.not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        st.renewal = renewal_time(st.not_before, st.not_after, req)
        st.failures, st.last_failure, st.last_failure_message = 0, None, ""
        st.cond("Ready", True, "Ready", "Certificate is up to date and has not expired")
        st.conditions.pop("Issuing", None)
        log.info("certificate %s issued (revision %d, valid until %s)", req.id, st.revision, _ts(st.not_after))

    def _metrics(self) -> None:
        self.m_expiry.clear()
        self.m_renewal.clear()
        self.m_ready.clear()
        for st in self.states.values():
            lab = (st.req.name, st.req.namespace, st.req.issuer_name, st.req.issuer_kind, "cert-manager.io")
            if st.not_after:
                self.m_expiry.labels(*lab).set(st.not_after.timestamp())
            if st.renewal:
                self.m_renewal.labels(*lab).set(st.renewal.timestamp())
            ready = st.conditions.get("Ready", {}).get("status", "Unknown")
            for c in ("True", "False", "Unknown"):
                self.m_ready.labels(*lab, c).set(1 if ready == c else 0)

    def status(self) -> dict[str, Any]:
        return {k: st.status() for k, st in sorted(self.states.items())}

    def renew(self, cert_id: str) -> bool:
        """Re-issue now (cmctl renew); False when there is no such Certificate."""
        if cert_id not in self.states:
            return False
        self._renew.add(cert_id)
        self._wake.set()
        return True

    # --- issuing ----------------------------------------------------------------------------

    def _key(self, req: CertRequest, old: dict[str, Any] | None) -> keys.PrivateKey:
        if req.rotation_policy == "Never" and old and old.get("tls.key"):
            try:
                k = keys.load_key(old["tls.key"].encode())
                if keys.key_matches(k, req.key_algorithm, req.key_size):
                    return k
            except ValueError:
                pass
        return keys.generate_key(req.key_algorithm, req.key_size)

    def _subject(self, req: CertRequest) -> keys.Subject:
        return keys.Subject(req.common_name, req.dns_names, req.ip_addresses, req.uris, req.emails, req.usages, req.is_ca)

    async def _issue(self, req: CertRequest, issuer: IssuerConfig, lookup: SecretLookup, old: dict[str, Any] | None) -> dict[str, Any]:
        key = await asyncio.to_thread(self._key, req, old)  # RSA keys take long: not on the event loop
        key_pem = keys.key_pem(key, req.key_encoding).decode()
        subject = self._subject(req)
        if issuer.type == "selfSigned":
            cert = keys.sign(subject, key.public_key(), key, None, req.duration, self.now())
            pem = keys.cert_pem(cert).decode()
            return {"tls.crt": pem, "tls.key": key_pem, "ca.crt": pem}
        if issuer.type == "ca":
            ns = issuer.namespace or CLUSTER_RESOURCE_NAMESPACE
            ca_doc = lookup.secrets.get((ns, issuer.ca_secret))
            if not ca_doc or not ca_doc.get("tls.crt") or not ca_doc.get("tls.key"):
                raise IssuerNotReady(f"the CA Secret {ns}/{issuer.ca_secret} does not exist yet or has no tls.crt/tls.key")
            try:
                bundle = x509.load_pem_x509_certificates(ca_doc["tls.crt"].encode())
                ca_key = keys.load_key(ca_doc["tls.key"].encode())
            except ValueError as e:
                raise ACMEError(f"the CA Secret {ns}/{issuer.ca_secret}: {e}", permanent=True) from None
            ca_cert = bundle[0]
            duration = min(req.duration, ca_cert.not_valid_after_utc - self.now())
            cert = keys.sign(subject, key.public_key(), ca_key, ca_cert, duration, self.now())
            # as cert-manager: tls.crt is the leaf and the intermediates, ca.crt the root of the chain
            roots = [c for c in bundle if c.issuer == c.subject]
            chain = [cert] + [c for c in bundle if c.issuer != c.subject]
            if ca_doc.get("ca.crt") and not roots:
                roots = x509.load_pem_x509_certificates(ca_doc["ca.crt"].encode())[-1:]
            root = roots[-1] if roots else bundle[-1]
            return {"tls.crt": "".join(keys.cert_pem(c).decode() for c in chain), "tls.key": key_pem,
                    "ca.crt": keys.cert_pem(root).decode()}
        if issuer.type == "acme":
            chain = await self._acme(req, issuer, lookup, key)
            return {"tls.crt": chain, "tls.key": key_pem}
        raise ACMEError(f"{issuer.id}: issuer type {issuer.type} is not supported", permanent=True)

    def _account_key(self, issuer: IssuerConfig, lookup: SecretLookup) -> keys.PrivateKey:
        ns = issuer.namespace or CLUSTER_RESOURCE_NAMESPACE
        in_manifests = lookup.secrets.get((ns, issuer.acme_account_secret), {}).get("tls.key")
        if in_manifests:
            return keys.load_key(in_manifests.encode())
        store_key = f"{ACCOUNT_PREFIX}{ns}/{issuer.acme_account_secret}"
        e = self.store.get(store_key)
        if e is not None:
            return keys.load_key(e.value)
        k = keys.generate_key("RSA", 2048)  # cert-manager's ACME account key
        self.store.put(store_key, keys.key_pem(k))
        return k

    async def _acme(self, req: CertRequest, issuer: IssuerConfig, lookup: SecretLookup, key: keys.PrivateKey) -> str:
        loop = asyncio.get_running_loop()
        labels = dict(req.labels)
        ns = issuer.namespace or req.namespace if issuer.kind == "Issuer" else CLUSTER_RESOURCE_NAMESPACE
        solvers: dict[str, Any] = {}
        for d in req.dns_names:
            s = issuer.solver_for(d, labels)
            if s is None:
                raise ACMEError(f"no solver of {issuer.id} matches {d}", permanent=True)
            if s.kind == "unsupported":
                raise ACMEError(f"{issuer.id}: the solver for {d} ({s.config.get('what')}) is not supported", permanent=True)
            if s.kind == "http01-gateway" and d.startswith("*."):
                raise ACMEError(f"{d}: a wildcard needs DNS-01 (ACME allows no HTTP-01 for it)", permanent=True)
            solvers[d] = s
        dns_solvers: dict[str, Any] = {}

        def solver_of(domain: str) -> Any:
            return solvers.get(domain) or solvers.get(domain.removeprefix("*."))

        def challenge_types(domain: str) -> str:
            return "http-01" if solver_of(domain).kind == "http01-gateway" else "dns-01"

        def present(ch: Challenge) -> None:
            if ch.type == "http-01":
                coro = self._present_http01(ch, solver_of(ch.domain), req)
            else:
                coro = self._present(ch, solvers, dns_solvers, ns, lookup)
            asyncio.run_coroutine_threadsafe(coro, loop).result()

        def cleanup(ch: Challenge) -> None:
            coro = self._cleanup_http01(ch) if ch.type == "http-01" else self._cleanup(ch, dns_solvers)
            asyncio.run_coroutine_threadsafe(coro, loop).result()

        issued = self._rate_limit(issuer, req)
        try:
            ca_bundle = base64.b64decode(issuer.acme_ca_bundle, validate=True) if issuer.acme_ca_bundle else None
        except ValueError:
            raise ACMEError(f"{issuer.id}: spec.acme.caBundle is not base64", permanent=True) from None
        account = self._account_key(issuer, lookup)
        csr = keys.csr_pem(key, self._subject(req))
        try:
            chain = await _in_daemon_thread(
                acme_flow.order, issuer.acme_server, account, issuer.acme_email, csr, challenge_types, present, cleanup,
                ca_bundle, issuer.acme_skip_tls_verify, self.acme_timeout,
            )
            issued()
            return chain
        finally:
            for s in dns_solvers.values():
                await s.provider.close()

    def _rate_limit(self, issuer: IssuerConfig, req: CertRequest) -> Callable[[], Any]:
        """Never hammer Let's Encrypt: refuse a sixth certificate for the same names within a week
        (its duplicate-certificate limit) instead of sending an order it would reject."""
        import hashlib

        key = ORDERS_PREFIX + hashlib.sha256(",".join(sorted(n.lower() for n in req.dns_names)).encode()).hexdigest()[:32]
        e = self.store.get(key)
        times = [t for t in (json.loads(e.value) if e else []) if _parse_ts(t) and self.now() - _parse_ts(t) < LE_WINDOW]  # type: ignore[operator]
        if LE_PRODUCTION in issuer.acme_server and len(times) >= LE_DUPLICATES:
            nxt = min(_parse_ts(t) for t in times) + LE_WINDOW  # type: ignore[operator,type-var]
            raise ACMEError(f"Let's Encrypt issues at most {LE_DUPLICATES} certificates for the same names per week; "
                            f"the next is possible after {_ts(nxt)}")
        return lambda: self.store.put(key, json.dumps(times + [_ts(self.now())]).encode())  # on success only

    async def _present(self, ch: Challenge, solvers: dict[str, Any], dns_solvers: dict[str, Any], ns: str, lookup: SecretLookup) -> None:
        solver = solvers.get(("*." if ch.wildcard else "") + ch.domain) or solvers.get(ch.domain)
        async with self._dns_lock:
            s = dns_solvers.get(ch.name)
            if s is None:
                s = await asyncio.to_thread(dns_solver, solver, ch.name, ns, lookup, self.dns01_nameservers)  # it may ask DNS
                s.propagation_timeout = self.propagation_timeout
                dns_solvers[ch.name] = s
            values = self._txt.setdefault(ch.name, [])
            values.append(ch.value)
            try:
                await s.present(ch, tuple(values))
            except Exception as e:
                values.remove(ch.value)
                raise ACMEError(f"presenting the DNS-01 record {ch.name}: {e}") from None

    @staticmethod
    def _token_id(ch: Challenge) -> str:
        import hashlib

        return hashlib.sha256(f"{ch.domain}/{ch.name}".encode()).hexdigest()[:10]

    async def _present_http01(self, ch: Challenge, solver: Any, req: CertRequest) -> None:
        """Put the challenge route on the solver's parentRefs and wait until the gateway serves it
        (the reload that applies it returns once the data planes have the new Snapshot)."""
        cfg = solver.config or {}
        token = ch.name.rsplit("/", 1)[-1]
        doc = {"id": self._token_id(ch), "domain": ch.domain, "token": token, "keyAuthorization": ch.value,
               "namespace": req.namespace, "parentRefs": cfg.get("parentRefs") or [], "labels": cfg.get("labels") or {}}
        self.store.put(HTTP01_PREFIX + self._token_id(ch), json.dumps(doc).encode())
        if self.on_issued is not None:
            await self.on_issued()

    async def _cleanup_http01(self, ch: Challenge) -> None:
        self.store.delete(HTTP01_PREFIX + self._token_id(ch))
        if self.on_issued is not None:
            await self.on_issued()

    async def _cleanup(self, ch: Challenge, dns_solvers: dict[str, Any]) -> None:
        async with self._dns_lock:
            values = self._txt.get(ch.name, [])
            if ch.value in values:
                values.remove(ch.value)
            s = dns_solvers.get(ch.name)
            if s is not None:
                await s.cleanup(ch, tuple(values))
