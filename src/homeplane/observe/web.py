"""The status page on the admin endpoint (``/ui``): gateways and listeners, routes with their
status, Services and their addresses, the DNS records external-dns publishes, certificates and
their expiry, the components of ``homeplane status``, and live flows.

A static page and script (``observe/ui``) that read the admin API: ``/status``, the flows
(``/api/v1/flows``) and ``/api/v1/ui-summary`` (what the page needs beyond ``/status``, computed
here so the page and ``homeplane status`` say the same). Nothing is fetched from elsewhere.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Callable

from homeplane.observe.status import overall, summarize

_FILES = {"/ui": ("index.html", "text/html; charset=utf-8"), "/ui/": ("index.html", "text/html; charset=utf-8"),
          "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"), "/ui/style.css": ("style.css", "text/css; charset=utf-8")}


def _asset(name: str) -> bytes:
    return resources.files("homeplane.observe").joinpath("ui", name).read_bytes()


def attach(admin: Any, status_doc: Callable[[], dict[str, Any] | None], current: Callable[[], Any]) -> None:
    """``status_doc``: the document ``/status`` serves (None before the first configuration);
    ``current``: the pipeline result being served (for the published DNS records)."""
    assets = {path: (_asset(name), ctype) for path, (name, ctype) in _FILES.items()}
    for path, (body, ctype) in assets.items():
        admin.route(path, lambda _target, body=body, ctype=ctype: (200, ctype, body))

    def ui_summary(_target: str) -> tuple[int, str, bytes]:
        doc = status_doc()
        if doc is None:
            return 503, "application/json", b'{"error": "no configuration applied yet"}\n'
        components = summarize(doc)
        out = {"state": overall(components), "components": [c.to_json() for c in components],
               "records": published(current()), "certificates": certificates(doc)}
        return 200, "application/json", json.dumps(out).encode() + b"\n"

    admin.route("/api/v1/ui-summary", ui_summary)


_published: tuple[Any, list[dict[str, Any]]] = (None, [])  # (the result they were computed for, the records)


def published(result: Any) -> list[dict[str, Any]]:
    """The records external-dns instances publish, computed once per served configuration (the
    page asks every few seconds)."""
    global _published
    if result is None:
        return []
    if _published[0] is result:
        return _published[1]
    from homeplane.observe.trace import context_from

    try:
        ctx = context_from(result)
    except Exception:  # the page must not fail on a record source's bug
        return []
    records = [{"name": r.name, "type": r.type, "targets": list(r.targets), "instance": f"{r.instance} ({r.provider})",
                "resource": r.resource} for r in sorted(ctx.published, key=lambda r: (r.name, r.type))]
    _published = (result, records)
    return records


def certificates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    live = (doc.get("runtime") or {}).get("certificates") or {}
    out = []
    for c in doc.get("certificates") or ():
        key = f"{c.get('namespace')}/{c.get('name')}"
        st = live.get(key, {})
        ready = next((x.get("status") for x in st.get("conditions", ()) if x.get("type") == "Ready"), "Unknown")
        out.append({"name": key, "dnsNames": list(c.get("dnsNames") or ()), "secret": c.get("secretName", ""),
                    "ready": ready, "notAfter": st.get("notAfter")})
    return out
