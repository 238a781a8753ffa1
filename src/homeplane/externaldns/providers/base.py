"""What a DNS provider does for the planner: list records, apply changes, adjust endpoints."""

from __future__ import annotations

from typing import Protocol

from homeplane.externaldns.endpoint import Endpoint
from homeplane.externaldns.plan import Changes


class ProviderError(RuntimeError):
    """A provider call failed; ``retry_after`` (seconds) when the provider said when to come back."""

    def __init__(self, message: str, retry_after: float | None = None, permanent: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Provider(Protocol):
    name: str
    calls: int  # API calls made so far (for metrics and the benchmark)

    async def records(self) -> list[Endpoint]: ...

    async def apply_changes(self, changes: Changes) -> None: ...

    def adjust_endpoints(self, endpoints: list[Endpoint]) -> list[Endpoint]: ...

    async def close(self) -> None: ...
