"""Hostname matching and listener/route hostname intersection (Gateway API rules).

A wildcard ``*.example.com`` matches any name ending in ``.example.com`` with at
least one more label (``a.example.com``, ``a.b.example.com``), never
``example.com`` itself.
"""

from __future__ import annotations


def wildcard_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def intersect(listener: str | None, route_hosts: list[str]) -> list[str]:
    """Hostnames a route serves on a listener; empty when they do not overlap.

    ``["*"]`` means any host (neither side names one).
    """
    if not listener:
        return list(dict.fromkeys(h.lower() for h in route_hosts)) or ["*"]
    listener = listener.lower()
    if not route_hosts:
        return [listener]
    out: list[str] = []
    for rh in (h.lower() for h in route_hosts):
        if rh == listener:
            out.append(rh)
        elif listener.startswith("*.") and not rh.startswith("*."):
            if wildcard_matches(listener, rh):
                out.append(rh)
        elif rh.startswith("*.") and not listener.startswith("*."):
            if wildcard_matches(rh, listener):
                out.append(listener)
        elif rh.startswith("*.") and listener.startswith("*."):
            # both wildcards: the narrower one, if one contains the other
            if rh.endswith(listener[1:]):
                out.append(rh)
            elif listener.endswith(rh[1:]):
                out.append(listener)
    return list(dict.fromkeys(out))


def specificity(hostname: str | None) -> tuple[int, int]:
    """Sort key, most specific first: exact names, then longer wildcards, then any."""
    if not hostname or hostname == "*":
        return (2, 0)
    if hostname.startswith("*."):
        return (1, -len(hostname))
    return (0, -len(hostname))
