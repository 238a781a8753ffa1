"""Cloudflare API v4, as external-dns's ``cloudflare`` provider uses it.

Zones are listed (``--zone-id-filter`` / ``--zone-name-filter`` / the domain filter narrow them);
records are read page by page (``--cloudflare-dns-records-per-page``, default 100); changes go
to the batch endpoint (deletes, puts, posts; 200 per call), falling back to one call per record
when a batch is refused. Cloudflare keeps one content per record, so an endpoint with several
targets is several records. ``proxied`` comes from ``--cloudflare-proxied`` or the
``cloudflare-proxied`` annotation; record types that cannot be proxied (TXT, MX, NS, SRV …)
and private addresses never are, and a proxied record's TTL is automatic (1).
429 answers become a :class:`ProviderError` carrying ``Retry-After``, and the provider keeps
itself under Cloudflare's 1200 requests per 5 minutes.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Mapping

import httpx

from homeplane.externaldns.config import Instance
from homeplane.externaldns.endpoint import Endpoint, normalize
from homeplane.externaldns.plan import Changes
from homeplane.externaldns.providers.base import ProviderError

API = "https://api.cloudflare.com/client/v4"
PROXIED_KEYS = ("external-dns.alpha.kubernetes.io/cloudflare-proxied", "external-dns.kubernetes.io/cloudflare-proxied")
NOT_PROXIABLE = {"LOC", "MX", "NS", "SPF", "TXT", "SRV"}
BATCH = 200
AUTO_TTL = 1
RATE_LIMIT, RATE_WINDOW = 1200, 300.0  # Cloudflare's global API limit: 1200 requests per 5 minutes


@dataclass
class CloudflareConfig:
    token: str = ""
    api_key: str = ""
    email: str = ""
    proxied_by_default: bool = False
    per_page: int = 100
    zone_ids: tuple[str, ...] = ()
    zone_names: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    base_url: str = API
    timeout: float = 10.0
    proxied_key: str = PROXIED_KEYS[0]


def cloudflare_config(inst: Instance, env: Mapping[str, str], timeout: float = 10.0) -> CloudflareConfig:
    from homeplane.externaldns.providers import expand

    token = env.get("CF_API_TOKEN", "")
    if token.startswith("file:"):
        try:
            with open(token[5:]) as f:
                token = f.read().strip()
        except OSError as e:
            raise ProviderError(f"{inst.id}: CF_API_TOKEN file: {e}", permanent=True) from None
    if not token and not (env.get("CF_API_KEY") and env.get("CF_API_EMAIL")):
        raise ProviderError(f"{inst.id}: cloudflare needs CF_API_TOKEN (or CF_API_KEY and CF_API_EMAIL): set it in the "
                            "HelmRelease's env Secret, with --set/--vars, or in the environment", permanent=True)
    try:
        per_page = int(inst.flag("cloudflare-dns-records-per-page", "100"))
    except ValueError:
        raise ProviderError(f"{inst.id}: --cloudflare-dns-records-per-page is not a number", permanent=True) from None
    zone_ids = tuple(z for v in inst.flag_list("zone-id-filter") for z in expand(v, env).split(",") if z and not z.startswith("$("))
    unresolved = [v for v in inst.flag_list("zone-id-filter") if "$(" in expand(v, env)]
    if unresolved:
        raise ProviderError(f"{inst.id}: --zone-id-filter={unresolved[0]} names a variable that is not set", permanent=True)
    return CloudflareConfig(
        token=token, api_key=env.get("CF_API_KEY", ""), email=env.get("CF_API_EMAIL", ""),
        proxied_by_default=inst.flag_bool("cloudflare-proxied"), per_page=max(5, per_page),
        zone_ids=zone_ids, zone_names=tuple(inst.flag_list("zone-name-filter")), domains=inst.include_domains,
        base_url=os.environ.get("HOMEPLANE_CLOUDFLARE_API_URL", API), timeout=timeout,
        proxied_key=inst.annotation_prefixes[0] + "cloudflare-proxied",
    )


def _private(target: str) -> bool:
    try:
        return not ipaddress.ip_address(target).is_global
    except ValueError:
        return False


def should_be_proxied(ep: Endpoint, by_default: bool, key: str) -> bool:
    proxied = by_default
    for k in (key, *PROXIED_KEYS):
        v = ep.prop(k)
        if v is not None:
            if v.lower() in ("true", "1", "t"):
                proxied = True
            elif v.lower() in ("false", "0", "f"):
                proxied = False
            break
    if ep.record_type in NOT_PROXIABLE or any(_private(t) for t in ep.targets):
        return False
    return proxied


def adjust(endpoints: list[Endpoint], by_default: bool, key: str) -> list[Endpoint]:
    """external-dns's AdjustEndpoints for Cloudflare: every proxiable record carries its
    ``cloudflare-proxied`` property ("true"/"false"), so a flip is seen as a change."""
    out = []
    for ep in endpoints:
        proxied = should_be_proxied(ep, by_default, key)
        props = tuple((k, v) for k, v in ep.provider_specific if k not in PROXIED_KEYS and k != key)
        # tags compare in order (external-dns sorts them)
        props = tuple((k, ",".join(sorted(t.strip() for t in v.split(",") if t.strip())) if k.endswith("/cloudflare-tags") else v)
                      for k, v in props)
        if ep.record_type not in NOT_PROXIABLE:
            props += ((key, "true" if proxied else "false"),)
        # a proxied record's TTL is Cloudflare's to choose: not compared
        out.append(replace(ep, provider_specific=props, ttl=0 if proxied else ep.ttl))
    return out


def offline_adjust(inst: Instance, endpoints: list[Endpoint]) -> list[Endpoint]:
    """The same adjustment from the instance's flags alone (a plan without credentials)."""
    return adjust(endpoints, inst.flag_bool("cloudflare-proxied"), inst.annotation_prefixes[0] + "cloudflare-proxied")


class CloudflareProvider:
    name = "cloudflare"

    def __init__(self, cfg: CloudflareConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.cfg = cfg
        self.calls = 0
        headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {"X-Auth-Key": cfg.api_key, "X-Auth-Email": cfg.email}
        self._http = httpx.AsyncClient(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=cfg.timeout, transport=transport)
        self._zones: list[dict[str, Any]] | None = None
        self._sent: deque[float] = deque()
        # (zone id, name, type, content) -> record id, from the last listing
        self._ids: dict[tuple[str, str, str, str], str] = {}

    async def close(self) -> None:
        await self._http.aclose()

    # --- HTTP -------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        # stay under Cloudflare's limit ourselves rather than learn it from a 429
        now = time.monotonic()
        while self._sent and now - self._sent[0] >= RATE_WINDOW:
            self._sent.popleft()
        if len(self._sent) >= RATE_LIMIT:
            raise ProviderError(f"cloudflare: {RATE_LIMIT} requests in {RATE_WINDOW:.0f} s, Cloudflare's limit: waiting",
                                retry_after=RATE_WINDOW - (now - self._sent[0]))
        self._sent.append(now)
        self.calls += 1
        try:
            r = await self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ProviderError(f"cloudflare: {method} {path}: {type(e).__name__}: {e}") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if r.status_code == 429:
            ra = r.headers.get("retry-after")
            raise ProviderError(f"cloudflare: rate limited on {method} {path}", retry_after=float(ra) if ra and ra.isdigit() else 60.0)
        if r.status_code >= 400 or not body.get("success", False):
            errors = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in body.get("errors") or []) or r.reason_phrase
            raise ProviderError(f"cloudflare: {method} {path}: HTTP {r.status_code}: {errors}",
                                permanent=r.status_code in (400, 401, 403, 404))
        return body

    async def _pages(self, path: str, per_page: int, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self._call("GET", path, params={**(params or {}), "page": page, "per_page": per_page})
            result = body.get("result") or []
            if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
                raise ProviderError(f"cloudflare: GET {path}: result is not a list of objects")
            out += result
            info = body.get("result_info") if isinstance(body.get("result_info"), dict) else {}
            try:
                pages = int(info.get("total_pages") or 1)
            except (TypeError, ValueError):
                raise ProviderError(f"cloudflare: GET {path}: result_info.total_pages is not a number") from None
            if page >= pages or not result or page >= 100_000:
                return out
            page += 1

    # --- zones and records ------------------------------------------------------------------

    async def zones(self) -> list[dict[str, Any]]:
        if self.cfg.zone_ids:
            zones = [(await self._call("GET", f"/zones/{z}"))["result"] for z in self.cfg.zone_ids]
        else:
            zones = await self._pages("/zones", 50)
        from homeplane.externaldns.endpoint import DomainFilter

        df = DomainFilter(self.cfg.domains)
        out = []
        for z in zones:
            name = normalize(z.get("name", ""))
            if self.cfg.zone_names and name not in {normalize(n) for n in self.cfg.zone_names}:
                continue
            # a zone is kept when the domain filter could match a name in it
            if self.cfg.domains and not (df.match(name) or any(normalize(d.lstrip(".")).endswith("." + name) for d in self.cfg.domains)):
                continue
            out.append(z)
        self._zones = out
        return out

    def _zone_for(self, name: str) -> dict[str, Any] | None:
        n = normalize(name)
        best = None
        for z in self._zones or []:
            zn = normalize(z["name"])
            if (n == zn or n.endswith("." + zn)) and (best is None or len(zn) > len(normalize(best["name"]))):
                best = z
        return best

    async def records(self) -> list[Endpoint]:
        try:
            return await self._records()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProviderError(f"cloudflare: an answer is not what the API documents: {type(e).__name__}: {e}") from None

    async def _records(self) -> list[Endpoint]:
        self._ids = {}
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for z in await self.zones():
            for r in await self._pages(f"/zones/{z['id']}/dns_records", self.cfg.per_page):
                name = normalize(r.get("name", ""))
                self._ids[(z["id"], name, r.get("type", ""), str(r.get("content", "")))] = r["id"]
                grouped.setdefault((name, r.get("type", "")), []).append(r)
        out = []
        for (name, rtype), recs in grouped.items():
            first = recs[0]
            props: tuple[tuple[str, str], ...] = ()
            if rtype not in NOT_PROXIABLE:
                props = ((self.cfg.proxied_key, "true" if first.get("proxied") else "false"),)
            prefix = self.cfg.proxied_key.rsplit("/", 1)[0] + "/"
            if first.get("comment"):
                props += ((prefix + "cloudflare-record-comment", str(first["comment"])),)
            if first.get("tags"):
                props += ((prefix + "cloudflare-tags", ",".join(sorted(str(t) for t in first["tags"]))),)
            out.append(Endpoint(name, rtype, tuple(str(r.get("content", "")) for r in recs), int(first.get("ttl") or 0), "", {}, props))
        return out

    def _proxied(self, ep: Endpoint) -> bool:
        return should_be_proxied(ep, self.cfg.proxied_by_default, self.cfg.proxied_key)

    def adjust_endpoints(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        return adjust(endpoints, self.cfg.proxied_by_default, self.cfg.proxied_key)

    # --- changes ----------------------------------------------------------------------------

    def _body(self, ep: Endpoint, content: str) -> dict[str, Any]:
        proxied = self._proxied(ep)
        body: dict[str, Any] = {"type": ep.record_type, "name": ep.dns_name, "content": content,
                                "ttl": AUTO_TTL if proxied or not ep.ttl else ep.ttl}
        if ep.record_type not in NOT_PROXIABLE:
            body["proxied"] = proxied
        for k, v in ep.provider_specific:
            if k.endswith("/cloudflare-record-comment"):
                body["comment"] = v
            elif k.endswith("/cloudflare-tags"):
                body["tags"] = sorted(t.strip() for t in v.split(",") if t.strip())
        return body

    async def apply_changes(self, changes: Changes) -> None:
        per_zone: dict[str, dict[str, list[dict[str, Any]]]] = {}

        def zone_ops(ep: Endpoint) -> tuple[str, dict[str, list[dict[str, Any]]]] | None:
            z = self._zone_for(ep.dns_name)
            if z is None:
                return None
            return z["id"], per_zone.setdefault(z["id"], {"deletes": [], "puts": [], "posts": []})

        for ep in changes.delete:
            if (zo := zone_ops(ep)) is not None:
                for t in ep.targets:
                    rid = self._ids.get((zo[0], normalize(ep.dns_name), ep.record_type, t))
                    if rid:
                        zo[1]["deletes"].append({"id": rid})
        for old, new in zip(changes.update_old, changes.update_new):
            if (zo := zone_ops(new)) is None:
                continue
            zid, ops = zo
            old_ids = {t: self._ids.get((zid, normalize(old.dns_name), old.record_type, t)) for t in old.targets}
            for t in old.targets:
                if t not in new.targets and old_ids.get(t):
                    ops["deletes"].append({"id": old_ids[t]})
            for t in new.targets:
                rid = old_ids.get(t)
                if rid:
                    ops["puts"].append({"id": rid, **self._body(new, t)})
                else:
                    ops["posts"].append(self._body(new, t))
        for ep in changes.create:
            if (zo := zone_ops(ep)) is not None:
                zo[1]["posts"] += [self._body(ep, t) for t in ep.targets]
        for zid, ops in per_zone.items():
            await self._submit(zid, ops)

    async def _submit(self, zid: str, ops: dict[str, list[dict[str, Any]]]) -> None:
        items = [(k, op) for k in ("deletes", "puts", "posts") for op in ops[k]]
        for i in range(0, len(items), BATCH):
            chunk: dict[str, list[dict[str, Any]]] = {"deletes": [], "puts": [], "posts": []}
            for k, op in items[i:i + BATCH]:
                chunk[k].append(op)
            try:
                await self._call("POST", f"/zones/{zid}/dns_records/batch", json={k: v for k, v in chunk.items() if v})
            except ProviderError as e:
                if e.retry_after is not None or not e.permanent:
                    raise
                await self._one_by_one(zid, chunk)

    async def _one_by_one(self, zid: str, chunk: dict[str, list[dict[str, Any]]]) -> None:
        """A refused batch is all-or-nothing; record by record, what can be applied is."""
        failed: list[str] = []
        for op in chunk["deletes"]:
            try:
                await self._call("DELETE", f"/zones/{zid}/dns_records/{op['id']}")
            except ProviderError as e:
                if "81044" not in str(e):  # already gone
                    failed.append(str(e))
        for op in chunk["puts"]:
            body = {k: v for k, v in op.items() if k != "id"}
            try:
                await self._call("PUT", f"/zones/{zid}/dns_records/{op['id']}", json=body)
            except ProviderError as e:
                failed.append(str(e))
        for op in chunk["posts"]:
            try:
                await self._call("POST", f"/zones/{zid}/dns_records", json=op)
            except ProviderError as e:
                failed.append(str(e))
        if failed:
            raise ProviderError("; ".join(failed), permanent=True)
