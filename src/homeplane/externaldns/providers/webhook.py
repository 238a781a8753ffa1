"""The external-dns webhook provider protocol, both ways.

:class:`WebhookProvider` drives any webhook (the UniFi webhook container, or any other):
``GET /`` negotiates (the media type ``application/external.dns.webhook+json;version=1`` and
the provider's domain filter), ``GET /records``, ``POST /records`` with the changes (204),
``POST /adjustendpoints``. 5xx answers are retryable, other errors are not.

:func:`serve` puts one of homeplane's providers behind the same API, so a real external-dns
(``--provider=webhook``) can use it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from homeplane.externaldns.endpoint import DomainFilter, Endpoint
from homeplane.externaldns.plan import Changes
from homeplane.externaldns.providers.base import Provider, ProviderError

MEDIA_TYPE = "application/external.dns.webhook+json;version=1"
MAX_BODY = 8 * 1024 * 1024
log = logging.getLogger("homeplane.externaldns.webhook")


class WebhookProvider:
    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None):
        self.url = _redact(url.rstrip("/"))  # for messages: no user:password@
        self.calls = 0
        self.domain_filter: DomainFilter | None = None
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, transport=transport,
                                       headers={"Accept": MEDIA_TYPE})

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, expect: int, body: Any = None) -> Any:
        self.calls += 1
        try:
            r = await self._http.request(method, path, content=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": MEDIA_TYPE} if body is not None else None)
        except httpx.HTTPError as e:
            raise ProviderError(f"webhook {self.url}: {method} {path}: {type(e).__name__}: {e}") from None
        if r.status_code != expect:
            raise ProviderError(f"webhook {self.url}: {method} {path}: HTTP {r.status_code}",
                                permanent=not 500 <= r.status_code <= 510)
        if expect == 204:
            return None
        try:
            return r.json()
        except ValueError:
            raise ProviderError(f"webhook {self.url}: {method} {path}: the answer is not JSON") from None

    async def negotiate(self) -> DomainFilter:
        doc = await self._call("GET", "/", 200)
        doc = doc if isinstance(doc, dict) else {}
        lists = lambda v: [str(x) for x in v] if isinstance(v, list) else []  # noqa: E731
        try:
            self.domain_filter = DomainFilter(lists(doc.get("include") or doc.get("filters")), lists(doc.get("exclude")),
                                              str(doc.get("regexInclude") or ""), str(doc.get("regexExclude") or ""))
        except Exception as e:  # re.error
            raise ProviderError(f"webhook {self.url}: its domain filter does not parse: {e}", permanent=True) from None
        return self.domain_filter

    async def records(self) -> list[Endpoint]:
        if self.domain_filter is None:
            await self.negotiate()
        doc = await self._call("GET", "/records", 200)
        try:
            return [Endpoint.from_json(e) for e in doc or []]
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise ProviderError(f"webhook {self.url}: GET /records: {e}") from None

    async def apply_changes(self, changes: Changes) -> None:
        await self._call("POST", "/records", 204, changes.to_json())

    def adjust_endpoints(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        # adjusting is a remote call; the controller calls adjust_remote() before planning
        return endpoints

    async def adjust_remote(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        doc = await self._call("POST", "/adjustendpoints", 200, [e.to_json() for e in endpoints])
        try:
            return [Endpoint.from_json(e) for e in doc or []]
        except (ValueError, TypeError, AttributeError) as e:
            raise ProviderError(f"webhook {self.url}: POST /adjustendpoints: {e}") from None


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return urlunsplit(parts._replace(netloc=f"***@{host}" + (f":{parts.port}" if parts.port else "")))
    return url


def webhook_routes(provider: Provider, domain_filter: DomainFilter) -> dict[str, Any]:
    """The webhook API's handlers over a provider, for :class:`AdminServer.api_route`."""

    def reply(status: int, doc: Any = None) -> tuple[int, str, bytes]:
        return status, MEDIA_TYPE, b"" if doc is None else json.dumps(doc).encode()

    async def negotiate(method: str, _target: str, _body: bytes, _headers: dict[str, str]) -> tuple[int, str, bytes]:
        if method != "GET":
            return reply(400)
        doc = {"include": sorted(domain_filter.include), "exclude": sorted(domain_filter.exclude),
               "regexInclude": domain_filter.regex_include.pattern if domain_filter.regex_include else "",
               "regexExclude": domain_filter.regex_exclude.pattern if domain_filter.regex_exclude else ""}
        return reply(200, {k: v for k, v in doc.items() if v})

    async def records(method: str, _target: str, body: bytes, _headers: dict[str, str]) -> tuple[int, str, bytes]:
        try:
            if method == "GET":
                return reply(200, [e.to_json() for e in await provider.records()])
            if method == "POST":
                try:
                    changes = Changes.from_json(json.loads(body))
                except (ValueError, TypeError, AttributeError) as e:
                    log.warning("webhook: bad changes body: %s", e)
                    return reply(400)
                await provider.apply_changes(changes)
                return reply(204)
        except ProviderError as e:
            log.error("webhook: %s", e)
            return reply(500)
        return reply(400)

    async def adjust(method: str, _target: str, body: bytes, _headers: dict[str, str]) -> tuple[int, str, bytes]:
        if method != "POST":
            return reply(400)
        try:
            eps = [Endpoint.from_json(e) for e in json.loads(body)]
        except (ValueError, TypeError, AttributeError):
            return reply(400)
        return reply(200, [e.to_json() for e in provider.adjust_endpoints(eps)])

    return {"/": negotiate, "/records": records, "/adjustendpoints": adjust}


async def serve(provider: Provider, domain_filter: DomainFilter, host: str = "127.0.0.1", port: int = 8888) -> Any:
    """Serve the provider as an external-dns webhook (and ``/healthz``); returns the started server."""
    from homeplane.observe.admin import AdminServer

    server = AdminServer(host, port, max_body=MAX_BODY)
    for path, handler in webhook_routes(provider, domain_filter).items():
        server.api_route(path, handler)
    server.route("/healthz", lambda _: (200, "text/plain", b"ok\n"))
    await server.start()
    return server
