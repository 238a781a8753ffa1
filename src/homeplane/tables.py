"""Columns for ``homeplane get`` per kind (kubectl-like), from objects and computed status."""

from __future__ import annotations

from typing import Any

from homeplane.api.objects import Obj
from homeplane.pipeline import Result


def _cond(status: dict[str, Any], t: str) -> str:
    for c in status.get("conditions", []):
        if c["type"] == t:
            return c["status"] if c["status"] == "True" else f"{c['status']}({c['reason']})"
    return "-"


def _policy_accepted(status: dict[str, Any]) -> str:
    for a in status.get("ancestors", []):
        for c in a.get("conditions", []):
            if c["type"] == "Accepted":
                return c["status"] if c["status"] == "True" else f"{c['status']}({c['reason']})"
    return "-"


def _parents(status: dict[str, Any]) -> str:
    parents = []
    for p in status.get("parents", []):
        pr = p["parentRef"]
        acc = next((c for c in p["conditions"] if c["type"] == "Accepted"), None)
        state = "Accepted" if acc and acc["status"] == "True" else (acc["reason"] if acc else "-")
        refs = next((c for c in p["conditions"] if c["type"] == "ResolvedRefs"), None)
        if refs and refs["status"] != "True":  # accepted, but a backend cannot be served
            state += f",ResolvedRefs=False({refs['reason']})"
        parents.append(f"{pr['namespace']}/{pr['name']}{'/' + pr['sectionName'] if 'sectionName' in pr else ''}={state}")
    return " ".join(parents) or "-"


def _certificate_row(o: Obj, result: Result, wide: bool, state: Any = None) -> list[str]:
    """READY from the manifests' own Secret (bring your own) or what a homeplane state store holds
    (the default one, as ``run`` uses it), with the validity and renewal times."""
    import datetime as dt

    from cryptography import x509

    from homeplane.certs.controller import read_issued
    from homeplane.certs.spec import from_certificate, renewal_time

    req = from_certificate(o)
    byo = any(x.kind == "Secret" and x.name == req.secret_name and (x.namespace or "default") == req.namespace
              and not (x.source.file or "").startswith("(issued") for x in result.load.objects)
    issuer = f"{req.issuer_kind}/{req.issuer_name}"
    names = [",".join(req.dns_names)] if wide else []
    if byo:
        return ["True (manifests)", req.secret_name, issuer, "-", "-"] + names
    doc = read_issued(state).get((req.namespace, req.secret_name))
    if not doc:
        return ["False", req.secret_name, issuer, "-", "-"] + names
    cert = x509.load_pem_x509_certificate(doc["tls.crt"].encode())
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    ok = doc.get("fingerprint") == req.fingerprint() and dt.datetime.now(dt.timezone.utc) < na
    fmt = lambda t: t.replace(microsecond=0).isoformat().replace("+00:00", "Z")  # noqa: E731
    return [str(ok), req.secret_name, issuer, fmt(na), fmt(renewal_time(nb, na, req))] + names


def rows_for(kind: str, objs: list[Obj], result: Result, wide: bool, state: Any = None) -> tuple[list[str], list[list[str]]]:
    status = result.translation.status
    snap = result.translation.snapshot
    headers = ["NAMESPACE", "NAME"]
    rows: list[list[str]] = []
    for o in objs:
        s = status.get(o.key, {})
        base = [o.namespace or "", o.name]
        spec = getattr(o.model, "spec", None)
        if kind == "GatewayClass":
            rows.append(base + [spec.controller_name, _cond(s, "Accepted")])
        elif kind == "Gateway":
            addrs = ",".join(a["value"] for a in s.get("addresses", [])) or "-"
            row = base + [spec.gateway_class_name, addrs, _cond(s, "Programmed")]
            if wide:
                row.append(",".join(f"{ls['name']}:{ls['attachedRoutes']}" for ls in s.get("listeners", [])))
            rows.append(row)
        elif kind == "HTTPRoute":
            row = base + [",".join(spec.hostnames) or "*"]
            if wide:
                row.append(_parents(s))
            rows.append(row)
        elif kind in ("TCPRoute", "UDPRoute", "TLSRoute"):
            row = base + ([",".join(spec.hostnames) or "*"] if kind == "TLSRoute" else [])
            row += [",".join(f"{b.name}:{b.port}" for r in spec.rules for b in r.backend_refs) or "-"]
            if wide:
                row.append(_parents(s))
            rows.append(row)
        elif kind == "Service":
            svc = snap.service(o.namespace or "", o.name)
            ports = ",".join(f"{p.port}/{p.protocol}" for p in spec.ports) or "<none>"
            lb_ips = (svc.lb_ips or svc.requested_lb_ips) if svc else ()
            lb = ",".join(lb_ips) if lb_ips else ("<pending>" if spec.type == "LoadBalancer" else "<none>")
            cip = "None" if spec.headless else ((svc.cluster_ip if svc else None) or ("<none>" if spec.type == "ExternalName" else "<pending>"))
            row = base + [spec.type, cip, lb, ports]
            if wide and svc is not None:
                ready = total = 0
                for p in svc.ports:
                    pool = snap.pools.get(p.pool)
                    if pool:
                        ready += len(pool.ready_endpoints)
                        total += len(pool.endpoints)
                sel = ",".join(f"{k}={v}" for k, v in (spec.selector or {}).items()) or "<none>"
                algorithm = "-" if spec.type == "ExternalName" or spec.headless else (
                    "maglev(ClientIP)" if spec.session_affinity == "ClientIP" else "maglev"
                )
                row += [f"{ready}/{total}", algorithm, svc.endpoint_source, sel]
            rows.append(row)
        elif kind in ("SecurityPolicy", "ClientTrafficPolicy", "BackendTrafficPolicy", "EnvoyExtensionPolicy"):
            row = base + [_policy_accepted(s)]
            if wide:
                refs = [f"{r.kind}/{r.name}{'#' + r.section_name if r.section_name else ''}" for r in spec.all_target_refs()]
                row.append(",".join(refs) or "(selectors)")
            rows.append(row)
        elif kind == "BackendTLSPolicy":
            row = base + [_policy_accepted(s), spec.validation.hostname]
            if wide:
                row.append(",".join(f"{r.kind}/{r.name}{'#' + r.section_name if r.section_name else ''}" for r in spec.target_refs))
            rows.append(row)
        elif kind == "Certificate":
            rows.append(base + _certificate_row(o, result, wide, state))
        else:
            rows.append(base)
    if kind == "GatewayClass":
        headers = ["NAMESPACE", "NAME", "CONTROLLER", "ACCEPTED"]
    elif kind == "Gateway":
        headers += ["CLASS", "ADDRESS", "PROGRAMMED"] + (["LISTENERS:ROUTES"] if wide else [])
    elif kind == "HTTPRoute":
        headers += ["HOSTNAMES"] + (["PARENTS"] if wide else [])
    elif kind in ("TCPRoute", "UDPRoute", "TLSRoute"):
        headers += (["HOSTNAMES"] if kind == "TLSRoute" else []) + ["BACKENDS"] + (["PARENTS"] if wide else [])
    elif kind == "Service":
        headers += ["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"] + (["ENDPOINTS", "ALGORITHM", "SOURCE", "SELECTOR"] if wide else [])
    elif kind in ("SecurityPolicy", "ClientTrafficPolicy", "BackendTrafficPolicy", "EnvoyExtensionPolicy"):
        headers += ["ACCEPTED"] + (["TARGETS"] if wide else [])
    elif kind == "BackendTLSPolicy":
        headers += ["ACCEPTED", "HOSTNAME"] + (["TARGETS"] if wide else [])
    elif kind == "Certificate":
        headers += ["READY", "SECRET", "ISSUER", "NOT AFTER", "RENEWAL"] + (["DNS NAMES"] if wide else [])
    # drop the namespace column for cluster-scoped kinds
    if rows and all(r[0] == "" for r in rows):
        headers = headers[1:]
        rows = [r[1:] for r in rows]
    return headers, rows
