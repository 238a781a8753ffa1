"""UniFi Network's static DNS records, as the UniFi external-dns webhook drives them - built in.

The webhook's env configures it (``UNIFI_HOST``, ``UNIFI_API_KEY``, or ``UNIFI_USER`` and
``UNIFI_PASS`` for the legacy cookie login with its CSRF token, ``UNIFI_SITE`` default
``default``, ``UNIFI_EXTERNAL_CONTROLLER`` for a controller not on a UniFi OS console,
``UNIFI_SKIP_TLS_VERIFY`` default true). Records live at
``/proxy/network/v2/api/site/<site>/static-dns``; the controller keeps one value per record,
so an endpoint with several targets is several records. An update deletes the old records
and creates the new ones; deletes use the ids from the last listing (no list per delete).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import httpx

from homeplane.externaldns.config import Instance
from homeplane.externaldns.endpoint import CNAME, DomainFilter, Endpoint, normalize
from homeplane.externaldns.plan import Changes
from homeplane.externaldns.providers.base import ProviderError

SUPPORTED = ("A", "AAAA", "CNAME", "TXT", "MX", "NS", "SRV")


@dataclass
class UnifiConfig:
    host: str
    api_key: str = ""
    user: str = ""
    password: str = ""
    site: str = "default"
    external_controller: bool = False
    verify_tls: bool = False
    timeout: float = 10.0
    domain_filter: DomainFilter | None = None  # the webhook's DOMAIN_FILTER / REGEXP_DOMAIN_FILTER env


def _bool(v: str | None, default: bool) -> bool:
    return default if v is None or v == "" else v.strip().lower() in ("1", "true", "t", "yes")


def unifi_config(inst: Instance, env: Mapping[str, str], timeout: float = 10.0) -> UnifiConfig:
    host = env.get("UNIFI_HOST", "")
    if not host:
        raise ProviderError(f"{inst.id}: the UniFi webhook's env has no UNIFI_HOST", permanent=True)
    if not env.get("UNIFI_API_KEY") and not (env.get("UNIFI_USER") and env.get("UNIFI_PASS")):
        raise ProviderError(f"{inst.id}: UniFi needs UNIFI_API_KEY (or UNIFI_USER and UNIFI_PASS): set it in the "
                            "webhook's env Secret, with --set/--vars, or in the environment", permanent=True)
    split = lambda k: [x.strip() for x in env.get(k, "").split(",") if x.strip()]  # noqa: E731
    try:
        df = DomainFilter(split("DOMAIN_FILTER"), split("EXCLUDE_DOMAIN_FILTER"), env.get("REGEXP_DOMAIN_FILTER", ""),
                          env.get("REGEXP_DOMAIN_FILTER_EXCLUSION", "") if env.get("REGEXP_DOMAIN_FILTER") else "")
    except Exception as e:  # re.error
        raise ProviderError(f"{inst.id}: REGEXP_DOMAIN_FILTER does not parse: {e}", permanent=True) from None
    return UnifiConfig(
        domain_filter=df if (df.include or df.exclude or df.regex_include or df.regex_exclude) else None,
        host=host.rstrip("/"), api_key=env.get("UNIFI_API_KEY", ""), user=env.get("UNIFI_USER", ""),
        password=env.get("UNIFI_PASS", ""), site=env.get("UNIFI_SITE") or "default",
        external_controller=_bool(env.get("UNIFI_EXTERNAL_CONTROLLER"), False),
        verify_tls=not _bool(env.get("UNIFI_SKIP_TLS_VERIFY"), True), timeout=timeout,
    )


class UnifiAPI:
    """A session with a UniFi Network controller: an API key, or the legacy login with its
    cookie and CSRF token (logged in again once when the session expires). Shared by the DNS
    provider and the stats exporter (observe/unpoller.py)."""

    def __init__(self, cfg: UnifiConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.cfg = cfg
        self.calls = 0
        headers = {"Accept": "application/json"}
        if cfg.api_key:
            headers["X-Api-Key"] = cfg.api_key
        self._http = httpx.AsyncClient(base_url=cfg.host, headers=headers, timeout=cfg.timeout,
                                       verify=cfg.verify_tls, transport=transport)
        self._csrf = ""
        self._logged_in = False

    @property
    def prefix(self) -> str:
        """Where the Network application's API is: under /proxy/network on a UniFi OS console."""
        return "" if self.cfg.external_controller else "/proxy/network"

    async def close(self) -> None:
        await self._http.aclose()

    async def _login(self) -> None:
        path = "/api/login" if self.cfg.external_controller else "/api/auth/login"
        r = await self._raw("POST", path, {"username": self.cfg.user, "password": self.cfg.password, "remember": True})
        if r.status_code != 200:
            raise ProviderError(f"unifi: login to {self.cfg.host} failed: HTTP {r.status_code}", permanent=r.status_code in (400, 401, 403))
        self._csrf = r.headers.get("x-csrf-token", self._csrf)
        self._logged_in = True

    async def _raw(self, method: str, path: str, body: Any = None) -> httpx.Response:
        self.calls += 1
        headers = {"X-Csrf-Token": self._csrf} if self._csrf and not self.cfg.api_key else {}
        try:
            r = await self._http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as e:
            raise ProviderError(f"unifi: {method} {path}: {type(e).__name__}: {e}") from None
        if r.headers.get("x-csrf-token"):
            self._csrf = r.headers["x-csrf-token"]
        return r

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.cfg.api_key and not self._logged_in:
            await self._login()
        r = await self._raw(method, path, body)
        if r.status_code == 401 and not self.cfg.api_key:
            await self._login()  # the session expired: log in once more
            r = await self._raw(method, path, body)
        if r.status_code >= 400:
            try:
                msg = r.json().get("message") or r.reason_phrase
            except (ValueError, AttributeError):
                msg = r.reason_phrase
            raise ProviderError(f"unifi: {method} {path}: HTTP {r.status_code}: {msg}",
                                permanent=r.status_code in (400, 401, 403, 404))
        try:
            return r.json() if r.content else None
        except ValueError:
            raise ProviderError(f"unifi: {method} {path}: the answer is not JSON") from None


class UnifiProvider(UnifiAPI):
    name = "unifi"

    def __init__(self, cfg: UnifiConfig, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(cfg, transport)
        self.domain_filter = cfg.domain_filter
        self._ids: dict[tuple[str, str, str], list[str]] = {}  # (name, type, value) -> record ids

    @property
    def _records_path(self) -> str:
        return f"{self.prefix}/v2/api/site/{self.cfg.site}/static-dns"

    async def records(self) -> list[Endpoint]:
        doc = await self._call("GET", self._records_path)
        if not isinstance(doc, list):
            raise ProviderError(f"unifi: GET {self._records_path}: expected a list of records")
        self._ids = {}
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in doc:
            if not isinstance(r, dict):
                raise ProviderError(f"unifi: GET {self._records_path}: a record is not an object")
            rtype = str(r.get("record_type", ""))
            if rtype not in SUPPORTED or not isinstance(r.get("key"), str):
                continue
            value = str(r.get("value", ""))
            if rtype == "SRV":
                value = f"{r.get('priority', 0)} {r.get('weight', 0)} {r.get('port', 0)} {value}"
            key = normalize(r["key"])
            self._ids.setdefault((key, rtype, value), []).append(str(r.get("_id")))
            grouped.setdefault((key, rtype), []).append({**r, "value": value})
        def ttl(v: object) -> int:
            try:
                return int(v or 0)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                return 0

        return [Endpoint(name, rtype, tuple(x["value"] for x in recs), ttl(recs[0].get("ttl")))
                for (name, rtype), recs in grouped.items()]

    def adjust_endpoints(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        return endpoints

    def _body(self, ep: Endpoint, target: str) -> dict[str, Any]:
        body: dict[str, Any] = {"enabled": True, "key": ep.dns_name, "record_type": ep.record_type, "value": target}
        if ep.ttl:
            body["ttl"] = ep.ttl
        if ep.record_type == "SRV":
            parts = target.split()
            if len(parts) != 4:
                raise ProviderError(f"unifi: SRV target {target!r} is not 'priority weight port target'", permanent=True)
            body.update(priority=int(parts[0]), weight=int(parts[1]), port=int(parts[2]), value=parts[3])
        return body

    async def apply_changes(self, changes: Changes) -> None:
        for ep in changes.update_old + changes.delete:
            for t in ep.targets:
                for rid in self._ids.pop((normalize(ep.dns_name), ep.record_type, t), []):
                    await self._call("DELETE", f"{self._records_path}/{rid}")
        for ep in changes.create + changes.update_new:
            targets = ep.targets[:1] if ep.record_type == CNAME else ep.targets  # one canonical name
            for t in targets:
                created = await self._call("POST", self._records_path, self._body(ep, t))
                if isinstance(created, dict) and created.get("_id"):
                    self._ids.setdefault((normalize(ep.dns_name), ep.record_type, t), []).append(str(created["_id"]))
