"""Text views for people: the ``check`` report and ``get`` tables."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable


def _cond_summary(conditions: list[dict[str, Any]], t: str) -> str:
    for c in conditions:
        if c["type"] == t:
            return c["status"] if c["status"] == "True" else f"{c['status']} ({c['reason']})"
    return "-"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    lines = ["   ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for r in rows:
        lines.append("   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def render_check(report: dict[str, Any]) -> str:
    out: list[str] = []
    s = report["summary"]
    served = sum(s["served"].values())
    not_served = ", ".join(f"{k} {v}" for k, v in s["notServed"].items())
    loaded = s.get("loadedNotEnforced") or {}
    out.append(
        f"Loaded {s['files']} files, {s['objects']} objects: {served} served"
        + (f", {sum(loaded.values())} loaded, not enforced ({', '.join(f'{k} {v}' for k, v in loaded.items())})" if loaded else "")
        + (f", {sum(s['notServed'].values())} not served ({not_served})" if s["notServed"] else "")
    )
    out.append("")
    out.append("Gateways")
    if not report["gateways"]:
        out.append("  (none)")
    for g in report["gateways"]:
        addrs = ", ".join(g["addresses"]) or "-"
        out.append(
            f"  {g['namespace']}/{g['name']}  class={g['class']}  addresses={addrs}  "
            f"Programmed={_cond_summary(g['conditions'], 'Programmed')}"
        )
        for ls in g["listeners"]:
            line = f"    {ls['name']:<10} {ls['protocol']:<5} :{ls['port']:<5} host={ls['hostname'] or '*'}"
            if "tls" in ls and ls["tls"]["mode"] == "Passthrough":
                line += "  tls=passthrough"
            elif "tls" in ls:
                certs = ls["tls"]["certificates"]
                line += "  tls=" + (
                    ", ".join(f"{c['secret']} [{' '.join(c['dnsNames'])}]" for c in certs) if certs else "(no usable certificate)"
                )
            line += f"  routes={ls['attachedRoutes']}  {'ready' if ls['ready'] else 'NOT READY'}"
            out.append(line)
            for r in ls.get("l4Routes", []):
                backends = ", ".join(
                    b["ref"] + (f" (invalid: {b['invalid']})" if "invalid" in b else f" [{b.get('endpoints', {}).get('ready', 0)} ready]")
                    for b in r["backends"]
                )
                names = f" [{' '.join(r['hostnames'])}]" if r.get("hostnames") else ""
                out.append(f"      {r['route']}{names} -> {backends or 'no backends'}" + ("" if r["served"] else "  (waiting: an older route serves this listener)"))
    out.append("")
    out.append("Routes")
    if not report["routes"]:
        out.append("  (none)")
    for r in report["routes"]:
        hosts = ", ".join(r["hostnames"]) or "*"
        parents = ", ".join(
            f"{p['gateway']}{'/' + p['sectionName'] if p['sectionName'] else ''} "
            + ("accepted" if p["accepted"] else f"NOT ACCEPTED ({p['reason']})")
            for p in r["parents"]
        )
        out.append(f"  {r['namespace']}/{r['name']}  {hosts}  -> {parents or 'no parents'}")
        if r["securityPolicies"]:
            out.append(f"      protected by SecurityPolicy {', '.join(r['securityPolicies'])}")
        for rule in r["rules"]:
            matches = "; ".join(
                f"{m['path']['type']} {m['path']['value']}" + (f" {m['method']}" if "method" in m else "")
                for m in rule["matches"]
            )
            if "directResponse" in rule:
                target = f"answer {rule['directResponse']['status']} ({rule['directResponse']['reason']})"
            elif "redirect" in rule:
                rd = rule["redirect"]
                target = "redirect " + " ".join(f"{k}={v}" for k, v in rd.items() if k != "statusCode") + f" ({rd['statusCode']})"
            else:
                target = ", ".join(_backend_text(b) for b in rule["backends"])
            out.append(f"      rule {rule['index']}: {matches} -> {target}")
    out.append("")
    out.append("Services")
    if not report["services"]:
        out.append("  (none)")
    for svc in report["services"]:
        extra = ""
        if svc["loadBalancerIPs"]:
            extra = f"  lb={','.join(svc['loadBalancerIPs'])}"
        out.append(f"  {svc['namespace']}/{svc['name']}  {svc['type']}{extra}")
        for p in svc["ports"]:
            eps = p["endpoints"]
            ep_text = ", ".join(f"{e['address']}:{e['port']}{'' if e['ready'] else ' (not ready)'}" for e in eps) or "no endpoints"
            out.append(f"      {p['port']}/{p['protocol']} -> {p['targetPort']}: {ep_text}")
    if report["policies"]:
        out.append("")
        out.append("Policies")
        for p in report["policies"]:
            targets = ", ".join(p["targets"]) or "(no target)"
            state = ("accepted" + (f"; {p['message']}" if p["message"] else "")) if p["accepted"] else f"NOT ACCEPTED: {p['message']}"
            out.append(f"  {p['kind']} {p['namespace']}/{p['name']} -> {targets}  {state}")
    if report.get("certificates"):
        out.append("")
        out.append("Certificates")
        for c in report["certificates"]:
            where = ", ".join(c["listeners"]) or "no listener names its Secret"
            out.append(f"  {c['namespace']}/{c['name']} -> Secret {c['secretName']}  issuer {c['issuer']}  [{' '.join(c['dnsNames'])}]")
            out.append(f"      served by {where}" + (f"  (made by {c['createdBy']})" if c.get("createdBy") else ""))
            for p in c.get("problems", []):
                out.append(f"      problem: {p}")
    out.append("")
    out.extend(render_diagnostics(report["diagnostics"]))
    return "\n".join(out)


def _backend_text(b: dict[str, Any]) -> str:
    if "invalid" in b:
        return f"{b['ref']} INVALID ({b['invalid']})"
    eps = b.get("endpoints")
    ready = f" ({eps['ready']}/{eps['total']} ready)" if eps else ""
    weight = f" weight {b['weight']}" if b["weight"] != 1 else ""
    return f"{b['ref']}{weight}{ready}"


def render_diagnostics(diags: Iterable[dict[str, Any]]) -> list[str]:
    """Problems grouped by file, so a person can fix one file at a time."""
    diags = list(diags)
    shown = diags
    errors = sum(1 for d in diags if d["severity"] == "error")
    warnings = sum(1 for d in diags if d["severity"] == "warning")
    notes = sum(1 for d in diags if d["severity"] == "info")
    out = [f"Problems: {errors} errors, {warnings} warnings" + (f" ({notes} notes)" if notes else "")]
    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in shown:
        by_file[d.get("file") or "(no file)"].append(d)
    for f in sorted(by_file):
        out.append(f"  {f}")
        for d in sorted(by_file[f], key=lambda d: (d["severity"] == "info", d.get("line") or 0)):
            ident = ""
            if d.get("kind"):
                ident = f"{d['kind']}/{(d['namespace'] + '/') if d.get('namespace') else ''}{d.get('name') or ''} "
            fld = f"{d['field']}: " if d.get("field") else ""
            line = f"{d['line']}" if d.get("line") else "-"
            out.append(f"    {line:>5}  {d['severity']:<7} {ident}{fld}{d['message']}")
    return out
