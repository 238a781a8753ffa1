"""The ``--endpoints FILE`` overlay: where the pods behind each Service are.

homeplane starts no pods, so a Service with a selector has no endpoints until
this file says where its workload runs::

    # NAMESPACE/SERVICE[:PORT] -> host:port list (PORT: the Service port's name or number;
    # without it, the Service's first port)
    default/sonarr: ["192.168.1.50:8989"]
    media/jellyfin:http: ["127.0.0.1:8096", "127.0.0.1:8097"]
    network/echo-server: ["echo.lan:8080"]      # a hostname becomes an FQDN endpoint

Each entry becomes an EndpointSlice for that Service, as the endpoint controller
would have made one.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from homeplane.api.diagnostics import Diagnostics
from homeplane.api.yamlio import YamlSyntaxError, parse_chunk, split_documents
from homeplane.importer.docs import Doc


def parse_target(t: str) -> tuple[str, int]:
    host, _, port = t.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{t!r}: expected host:port")
    return host.strip("[]"), int(port)


def endpoint_slices(path: Path, objects: list[Doc], diags: Diagnostics) -> list[Doc]:
    name = str(path)
    try:
        chunks = split_documents(path.read_text(encoding="utf-8"))
        doc = parse_chunk(chunks[0]) if chunks else None
    except (OSError, YamlSyntaxError) as e:
        diags.error(f"endpoints file: {e}", file=name, code="EndpointsFile")
        return []
    data = doc.data if doc else {}
    if not isinstance(data, dict):
        diags.error("endpoints file must be a mapping of NAMESPACE/SERVICE to host:port lists", file=name, code="EndpointsFile")
        return []
    services = {(d.namespace or "default", d.name): d for d in objects if d.kind == "Service" and not d.group}
    out: list[Doc] = []
    for key, targets in data.items():
        line = doc.positions.get((key,), 1) if doc else 1
        svc_ref, _, port_ref = str(key).partition(":")
        ns, _, svc_name = svc_ref.partition("/")
        svc = services.get((ns, svc_name))
        if not svc_name or svc is None:
            diags.error(f"endpoints file: Service {svc_ref} is not in the manifests", file=name, line=line, code="EndpointsUnknownService")
            continue
        ports: list[dict[str, Any]] = (svc.data.get("spec") or {}).get("ports") or []
        port = ports[0] if ports and not port_ref else next(
            (p for p in ports if str(p.get("name")) == port_ref or str(p.get("port")) == port_ref), None
        )
        if port is None:
            diags.error(f"endpoints file: Service {svc_ref} has no port {port_ref or '(none)'}", file=name, line=line, code="EndpointsUnknownPort")
            continue
        if not isinstance(targets, list):
            targets = [targets]
        by_family: dict[str, list[tuple[str, int]]] = {}
        for t in targets:
            try:
                host, tport = parse_target(str(t))
            except ValueError as e:
                diags.error(f"endpoints file: {key}: {e}", file=name, line=line, code="EndpointsInvalid")
                continue
            try:
                fam = "IPv6" if ipaddress.ip_address(host).version == 6 else "IPv4"
            except ValueError:
                fam = "FQDN"
            by_family.setdefault(fam, []).append((host, tport))
        for fam, eps in by_family.items():
            for i, (host, tport) in enumerate(eps):
                slice_name = f"{svc_name}-homeplane-{(port.get('name') or port.get('port'))}-{fam.lower()}-{i}"
                out.append(
                    Doc(
                        {
                            "apiVersion": "discovery.k8s.io/v1",
                            "kind": "EndpointSlice",
                            "metadata": {
                                "name": slice_name,
                                "namespace": ns,
                                "labels": {"kubernetes.io/service-name": svc_name, "endpointslice.kubernetes.io/managed-by": "homeplane"},
                            },
                            "addressType": fam,
                            "ports": [{"name": port.get("name"), "port": tport, "protocol": port.get("protocol", "TCP")}],
                            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
                        },
                        name,
                        0,
                        line,
                    )
                )
    return out
