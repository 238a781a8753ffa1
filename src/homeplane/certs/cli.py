"""``homeplane certs status|renew``: cmctl's two everyday commands, against a running homeplane."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Certificates a running homeplane holds (like cmctl).")
AdminOpt = typer.Option("127.0.0.1:9901", "--admin", help="The running homeplane's admin endpoint (host:port).")
NsOpt = typer.Option(None, "-n", "--namespace", help="The Certificate's namespace (default: the only one of that name).")


def _fetch(admin: str, path: str, method: str = "GET") -> Any:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{admin}{path}", method=method), timeout=10) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise typer.BadParameter(f"{path}: HTTP {e.code}: {e.read().decode(errors='replace').strip()}") from None
    except (OSError, ValueError) as e:
        typer.echo(f"homeplane: no running homeplane at {admin} ({e})", err=True)
        raise typer.Exit(2)


def _find(certs: dict[str, Any], name: str, ns: str | None) -> str:
    ids = [k for k in certs if k.split("/", 1)[1] == name and (ns is None or k.split("/", 1)[0] == ns)]
    if len(ids) != 1:
        what = "found" if not ids else f"ambiguous ({', '.join(ids)}): give -n"
        typer.echo(f"homeplane: Certificate {name!r} not {what}" if not ids else f"homeplane: Certificate {name!r} is {what}", err=True)
        raise typer.Exit(1)
    return ids[0]


@app.command()
def status(name: str = typer.Argument(...), ns: Optional[str] = NsOpt, admin: str = AdminOpt) -> None:
    """Where a Certificate stands, step by step (like ``cmctl status certificate``)."""
    doc = _fetch(admin, "/status")
    certs = (doc.get("runtime") or {}).get("certificates") or {}
    cid = _find(certs, name, ns)
    c = certs[cid]
    ns_, nm = cid.split("/", 1)
    lines = [f"Name: {nm}", f"Namespace: {ns_}"]
    if c.get("createdBy"):
        lines.append(f"Created by: {c['createdBy']}")
    lines.append("Conditions:")
    for cond in c.get("conditions", []):
        lines.append(f"  {cond['type']}: {cond['status']}, Reason: {cond['reason']}, Message: {cond['message']}")
    lines.append("DNS Names:\n" + "".join(f"- {d}\n" for d in c.get("dnsNames", [])).rstrip())
    lines.append(f"Issuer:\n  Name: {c['issuerRef']['name']}\n  Kind: {c['issuerRef']['kind']}")
    lines.append(f"Secret:\n  Name: {c['secretName']}")
    for k, label in (("notBefore", "Not Before"), ("notAfter", "Not After"), ("renewalTime", "Renewal Time"), ("revision", "Revision")):
        if k in c:
            lines.append(f"{label}: {c[k]}")
    if c.get("failedIssuanceAttempts"):
        lines.append(f"Failed issuance attempts: {c['failedIssuanceAttempts']} (last {c.get('lastFailureTime')})")
    listeners = [ls for cert in doc.get("certificates", []) if f"{cert['namespace']}/{cert['name']}" == cid for ls in cert["listeners"]]
    lines.append("Served by: " + (", ".join(listeners) or "no listener names its Secret"))
    typer.echo("\n".join(lines))


@app.command()
def renew(name: str = typer.Argument(...), ns: Optional[str] = NsOpt, admin: str = AdminOpt) -> None:
    """Re-issue a Certificate now (like ``cmctl renew``)."""
    certs = ((_fetch(admin, "/status").get("runtime") or {}).get("certificates")) or {}
    cid = _find(certs, name, ns)
    _fetch(admin, f"/api/certificates/renew?name={cid}", method="POST")
    typer.echo(f"Manually triggered issuance of Certificate {cid}")
