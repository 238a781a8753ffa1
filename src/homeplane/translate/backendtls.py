"""BackendTLSPolicy (Gateway API): TLS from the gateway to a Service's endpoints.

A policy targets Services (optionally one port by ``sectionName``); every backend pool of a
targeted port gets an :class:`~homeplane.translate.snapshot.UpstreamTLS`: SNI and verified name
``validation.hostname`` (or ``subjectAltNames``), trusted CAs from ``caCertificateRefs``
ConfigMaps (key ``ca.crt``) or the system's (``wellKnownCACertificates: System``). Where two
policies target the same port the older wins and the other is ``Conflicted``. A policy whose CA
cannot be used is not accepted, and its pools are marked so connections fail: traffic meant to
be encrypted never goes out in clear.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cryptography import x509

from homeplane.api.models.core import ConfigMap, Service
from homeplane.api.models.gateway import BackendTLSPolicy
from homeplane.api.objects import Obj
from homeplane.translate import snapshot as ir
from homeplane.translate import status as st
from homeplane.translate.context import Context, age_key, generation

GROUP = "gateway.networking.k8s.io"


def _ca_bundle(ctx: Context, ns: str, policy: BackendTLSPolicy) -> tuple[bytes | None, str | None, str]:
    """(PEM bundle or None for System, problem reason, message)."""
    v = policy.spec.validation
    if bool(v.ca_certificate_refs) == bool(v.well_known_ca_certificates):
        return None, "Invalid", "exactly one of caCertificateRefs and wellKnownCACertificates must be set"
    if v.well_known_ca_certificates:
        return None, None, ""
    pems = []
    for ref in v.ca_certificate_refs:
        if ref.group not in ("", "core") or ref.kind != "ConfigMap":
            return None, "InvalidKind", f"caCertificateRefs: {ref.kind} is not supported; use a ConfigMap"
        cm = ctx.model("", "ConfigMap", ns, ref.name, ConfigMap)
        if cm is None or "ca.crt" not in cm.data:
            return None, "InvalidCACertificateRef", f"ConfigMap {ns}/{ref.name} with key ca.crt not found"
        try:
            x509.load_pem_x509_certificates(cm.data["ca.crt"].encode())
        except ValueError as e:
            return None, "InvalidCACertificateRef", f"ConfigMap {ns}/{ref.name}: ca.crt is not PEM certificates: {e}"
        pems.append(cm.data["ca.crt"].strip() + "\n")
    return "".join(pems).encode(), None, ""


def _target_pools(ctx: Context, ns: str, ref: Any, pools: dict[str, ir.BackendPool]) -> list[str]:
    if ref.group not in ("", "core") or ref.kind != "Service":
        return []
    svc = ctx.model("", "Service", ns, ref.name, Service)
    if svc is None:
        return []
    ports = [p.port for p in svc.spec.ports if ref.section_name is None or p.name == ref.section_name]
    return [
        name for name, pool in pools.items()
        if (pool.source.kind, pool.source.namespace, pool.source.name) == ("Service", ns, ref.name) and pool.service_port in ports
    ]


def apply_backend_tls(ctx: Context, pools: dict[str, ir.BackendPool], gateways: list[ir.Gateway]) -> dict[str, ir.BackendPool]:
    """Pools with their upstream TLS set; statuses written for every BackendTLSPolicy."""
    taken: dict[str, Obj] = {}
    out = dict(pools)
    # which Gateways send traffic to which pool: those are each policy's ancestors
    users: dict[str, set[ir.Ref]] = {}
    for g in gateways:
        for ls in g.listeners:
            for vh in ls.vhosts:
                for r in vh.rules:
                    for b in r.backends:
                        if b.pool:
                            users.setdefault(b.pool, set()).add(g.ref)
    for obj in sorted(ctx.kind(GROUP, "BackendTLSPolicy"), key=age_key):
        pol = obj.model
        if not isinstance(pol, BackendTLSPolicy):
            continue
        ns = obj.namespace or "default"
        ca, reason, message = _ca_bundle(ctx, ns, pol)
        targets = [name for ref in pol.spec.target_refs for name in _target_pools(ctx, ns, ref, pools)]
        conflicted = [t for t in targets if t in taken]
        mine = [t for t in targets if t not in taken]
        v = pol.spec.validation
        sans = tuple(s.hostname or s.uri or "" for s in v.subject_alt_names)
        tls = ir.UpstreamTLS(ir.Ref("BackendTLSPolicy", ns, obj.name), v.hostname, ca, sans, valid=reason is None)
        for t in mine:
            taken[t] = obj
            out[t] = replace(out[t], tls=tls)
        gen = generation(obj)
        conds = []
        if reason is not None:
            conds.append(st.cond("Accepted", False, "NoValidCACertificate" if reason != "Invalid" else "Invalid", message, gen))
            conds.append(st.cond("ResolvedRefs", reason == "Invalid", reason if reason != "Invalid" else "ResolvedRefs", message, gen))
        elif targets and not mine:
            other = taken[conflicted[0]]
            conds.append(st.cond("Accepted", False, "Conflicted", f"BackendTLSPolicy {other.namespace}/{other.name} already targets it", gen))
        elif not targets:
            conds.append(st.cond("Accepted", False, "TargetNotFound", "no Service port matches targetRefs", gen))
        else:
            conds.append(st.cond("Accepted", True, "Accepted", "", gen))
            conds.append(st.cond("ResolvedRefs", True, "ResolvedRefs", "", gen))
        ancestors = sorted({g for t in targets for g in users.get(t, ())}, key=lambda r: (r.namespace or "", r.name))
        refs: list[dict[str, Any] | None] = [
            {"group": GROUP, "kind": "Gateway", "namespace": a.namespace, "name": a.name} for a in ancestors
        ] or [None]  # not used by any Gateway yet: one entry without an ancestor, as for other policies
        ctx.set_status(obj, {"ancestors": [
            {"ancestorRef": r, "controllerName": st.CONTROLLER_NAME, "conditions": st.conditions_json(conds)} for r in refs
        ]})
    return out
