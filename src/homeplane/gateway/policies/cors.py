"""SecurityPolicy ``cors``, as Envoy's CORS filter applies it.

Preflights (OPTIONS with Origin and Access-Control-Request-Method) from an allowed origin are
answered by the gateway itself, before any authentication (Envoy Gateway orders the CORS filter
first, so a login wall never blocks a preflight). Other requests from an allowed origin get
Access-Control-Allow-Origin (the origin itself) and friends on the response, local replies
included. Requests from other origins pass through untouched: the browser enforces the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from homeplane.translate.security import CorsSettings


@dataclass(frozen=True, slots=True)
class CompiledCors:
    any_origin: bool
    origins: tuple[re.Pattern[bytes], ...]
    allow_methods: bytes
    allow_headers: bytes
    expose_headers: bytes
    max_age: bytes
    credentials: bool

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or any(p.fullmatch(origin) for p in self.origins)

    def preflight_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        out = [(b"access-control-allow-origin", origin)]
        if self.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        if self.allow_methods:
            out.append((b"access-control-allow-methods", self.allow_methods))
        if self.allow_headers:
            out.append((b"access-control-allow-headers", self.allow_headers))
        if self.max_age:
            out.append((b"access-control-max-age", self.max_age))
        return out

    def response_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        out = [(b"access-control-allow-origin", origin)]
        if self.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        if self.expose_headers:
            out.append((b"access-control-expose-headers", self.expose_headers))
        return out


def _origin_pattern(origin: str) -> re.Pattern[bytes]:
    # "https://*.example.com": the wildcard stands for any run of characters, as Envoy Gateway's
    # translation to a regex does; everything else is literal
    parts = [re.escape(p) for p in origin.split("*")]
    return re.compile(".*".join(parts).encode(), re.IGNORECASE)


def compile_cors(s: CorsSettings) -> CompiledCors:
    return CompiledCors(
        any_origin=s.any_origin,
        origins=tuple(_origin_pattern(o) for o in s.origins),
        allow_methods=", ".join(s.allow_methods).encode(),
        allow_headers=", ".join(s.allow_headers).encode(),
        expose_headers=", ".join(s.expose_headers).encode(),
        max_age=str(int(s.max_age)).encode() if s.max_age else b"",
        credentials=s.credentials,
    )
