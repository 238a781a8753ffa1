"""SecurityPolicy enforcement on the request path (placeholder: fail closed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homeplane.gateway.exchange import Exchange
    from homeplane.gateway.server import DataPlane


class Auth:
    def __init__(self, dp: "DataPlane"):
        self.dp = dp

    def check(self, ex: "Exchange", security: Any, headers: dict[bytes, bytes]) -> None:
        ex.error = "SecurityPolicy not enforceable"
        ex.respond_simple(500, b"")
