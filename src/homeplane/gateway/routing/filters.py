"""HTTPRoute filters as pure functions: header modifiers, redirects, URL rewrites.

Header lists are ``list[tuple[bytes, bytes]]`` with lower-case names, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from homeplane.gateway.routing.headers import Part, RequestInfo, compile_value, render
from homeplane.translate import snapshot as ir


@dataclass(frozen=True, slots=True)
class CompiledHeaderOps:
    set: tuple[tuple[bytes, tuple[Part, ...] | bytes], ...]
    add: tuple[tuple[bytes, tuple[Part, ...] | bytes], ...]
    drop: frozenset[bytes]  # removed names plus the names that "set" replaces

    def apply(self, headers: list[tuple[bytes, bytes]], info: RequestInfo) -> list[tuple[bytes, bytes]]:
        drop = self.drop
        out = [h for h in headers if h[0] not in drop] if drop else headers
        for n, v in self.set:
            out.append((n, render(v, info)))
        for n, v in self.add:
            out.append((n, render(v, info)))
        return out


def compile_header_ops(ops: ir.HeaderOps | None) -> CompiledHeaderOps | None:
    if ops is None:
        return None
    set_ = tuple((n.lower().encode(), compile_value(v)) for n, v in ops.set)
    return CompiledHeaderOps(
        set=set_,
        add=tuple((n.lower().encode(), compile_value(v)) for n, v in ops.add),
        drop=frozenset(n.lower().encode() for n in ops.remove) | {n for n, _ in set_},
    )


_DEFAULT_PORT = {"http": 80, "https": 443}


def replace_path(path: str, kind: str | None, value: str | None, matched_prefix: str | None) -> str:
    """Apply ReplaceFullPath / ReplacePrefixMatch to a path (no query)."""
    if kind == "ReplaceFullPath" and value is not None:
        return value
    if kind == "ReplacePrefixMatch" and value is not None and matched_prefix is not None:
        prefix = matched_prefix.rstrip("/")
        rest = path[len(prefix) :] if path.startswith(prefix) else path
        # "/foo" -> "/bar" keeps segments: "/foo/x" -> "/bar/x"; replacing with "/" gives "/x".
        base = value.rstrip("/")
        if not rest:
            return base or "/"
        if not rest.startswith("/"):
            rest = "/" + rest
        return (base + rest) if base else rest
    return path


def redirect_location(
    r: ir.Redirect,
    scheme: str,
    host: str,
    listener_port: int,
    path: str,
    query: str,
    matched_prefix: str | None,
    port_map: Mapping[int, int] | None = None,
) -> str:
    """Location for a RequestRedirect, per the Gateway API port rules.

    No port given: the well-known port of the redirect scheme if the scheme is set,
    else the listener port; a well-known port is left out of the Location. A redirect to this
    same host whose port ``--port-map`` moved names the port it was moved to (the listener on
    443 that answers on 8443 here is reached there).
    """
    new_scheme = r.scheme or scheme
    new_host = r.hostname or host
    if r.port is not None:
        port = r.port
    elif r.scheme:
        port = _DEFAULT_PORT[r.scheme]
    else:
        port = listener_port
    new_path = replace_path(path, r.path_type, r.path_value, matched_prefix)
    if port_map and new_host == host and port in port_map:
        port = port_map[port]
    netloc = new_host if port == _DEFAULT_PORT.get(new_scheme) else f"{new_host}:{port}"
    return f"{new_scheme}://{netloc}{new_path}" + (f"?{query}" if query else "")
