"""A UniFi Network controller's static-DNS API, for the parts the UniFi external-dns webhook
uses (its public source and Ubiquiti's API notes):

- ``X-Api-Key`` on every call, or the legacy ``POST /api/auth/login`` (username, password)
  that sets a ``TOKEN`` cookie and answers an ``X-Csrf-Token`` that writes must send back;
  401 otherwise;
- ``GET/POST /proxy/network/v2/api/site/<site>/static-dns`` and ``PUT/DELETE …/static-dns/<id>``
  (``/v2/api/site/…`` and ``/api/login`` on a controller not on a UniFi OS console);
- records ``{_id, enabled, key, record_type, value, ttl, port, priority, weight}``; one value
  per record; a missing site or record is 404; an invalid record is 400 with
  ``{"code": "api.err.…", "message": …}``;
- and the statistics unpoller reads (the classic API, also under ``/proxy/network``):
  ``GET /api/stat/sites`` (each site with its ``health`` subsystems), ``GET /api/s/<site>/stat/sta``
  (clients) and ``GET /api/s/<site>/stat/device``, answered ``{"meta": {"rc": "ok"}, "data": [...]}``;
  an unknown site is 400 ``{"meta": {"rc": "error", "msg": "api.err.NoSiteContext"}, "data": []}``.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from tests.externaldns.fakes.base import JsonServer

TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "NS", "SRV")


class FakeUnifi(JsonServer):
    def __init__(self, api_key: str = "unifi-key", user: str = "", password: str = "", site: str = "default",
                 external: bool = False):
        super().__init__()
        self.api_key, self.user, self.password, self.site, self.external = api_key, user, password, site, external
        self.records: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, str] = {}  # cookie token -> csrf
        self.requests: list[tuple[str, str]] = []
        self.down = False
        # statistics: the sites (with "name", "desc", "health"), and per site name the clients and devices
        self.sites: list[dict[str, Any]] = [{"_id": "s1", "name": site, "desc": "Default", "health": []}]
        self.clients: dict[str, list[dict[str, Any]]] = {site: []}
        self.devices: dict[str, list[dict[str, Any]]] = {site: []}

    def add(self, key: str, rtype: str, value: str, ttl: int = 0) -> str:
        rid = uuid.uuid4().hex[:24]
        self.records[rid] = {"_id": rid, "enabled": True, "key": key, "record_type": rtype, "value": value, "ttl": ttl}
        return rid

    def find(self, key: str, rtype: str | None = None) -> list[str]:
        return sorted(r["value"] for r in self.records.values() if r["key"] == key and (rtype is None or r["record_type"] == rtype))

    def _authorized(self, method: str, headers: Any) -> bool:
        if self.api_key and headers.get("X-Api-Key") == self.api_key:
            return True
        cookie = headers.get("Cookie") or ""
        token = next((c.split("=", 1)[1] for c in cookie.split("; ") if c.startswith("TOKEN=")), None)
        if token is None or token not in self.sessions:
            return False
        return method == "GET" or headers.get("X-Csrf-Token") == self.sessions[token]

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: Any) -> tuple[int, Any, dict[str, str]]:
        err = lambda status, code, msg: (status, {"code": code, "message": msg, "errorCode": status}, {})  # noqa: E731
        if self.down:
            return 502, None, {}
        login = "/api/login" if self.external else "/api/auth/login"
        if path == login and method == "POST":
            if not self.user or (body or {}).get("username") != self.user or (body or {}).get("password") != self.password:
                return err(401, "AUTHENTICATION_FAILED_INVALID_CREDENTIALS", "Invalid username or password")
            token, csrf = secrets.token_hex(16), secrets.token_hex(16)
            self.sessions[token] = csrf
            return 200, {"username": self.user}, {"Set-Cookie": f"TOKEN={token}; Path=/; HttpOnly", "X-Csrf-Token": csrf}
        if not self._authorized(method, headers):
            return err(401, "api.err.LoginRequired", "Unauthorized")
        stats = ("" if self.external else "/proxy/network") + "/api/"
        if path.startswith(stats) and method == "GET":
            with self.lock:
                self.requests.append((method, path))
                return self._stats(path[len(stats):].split("/"))
        prefix = ("" if self.external else "/proxy/network") + "/v2/api/site/"
        if not path.startswith(prefix):
            return err(404, "api.err.NotFound", "not found")
        parts = path[len(prefix):].split("/")
        if parts[0] != self.site:
            return err(404, "api.err.NoSiteContext", f"site {parts[0]} not found")
        if parts[1:2] != ["static-dns"]:
            return err(404, "api.err.NotFound", "not found")
        with self.lock:
            self.requests.append((method, path))
            if len(parts) == 2 and method == "GET":
                return 200, list(self.records.values()), {}
            if len(parts) == 2 and method == "POST":
                rec = self._valid(body)
                if isinstance(rec, tuple):
                    return err(*rec)
                rec["_id"] = uuid.uuid4().hex[:24]
                self.records[rec["_id"]] = rec
                return 200, rec, {}
            if len(parts) == 3 and parts[2] in self.records:
                if method == "DELETE":
                    del self.records[parts[2]]
                    return 200, {}, {}
                if method == "PUT":
                    rec = self._valid(body)
                    if isinstance(rec, tuple):
                        return err(*rec)
                    rec["_id"] = parts[2]
                    self.records[parts[2]] = rec
                    return 200, rec, {}
            if len(parts) == 3:
                return err(404, "api.err.StaticDnsNotFound", "record not found")
        return err(400, "api.err.InvalidPayload", f"unsupported {method}")

    def _stats(self, parts: list[str]) -> tuple[int, Any, dict[str, str]]:
        ok = lambda data: (200, {"meta": {"rc": "ok"}, "data": data}, {})  # noqa: E731
        if parts == ["stat", "sites"]:
            return ok(self.sites)
        if len(parts) == 4 and parts[0] == "s" and parts[2] == "stat" and parts[3] in ("sta", "device"):
            if parts[1] not in self.clients:
                return 400, {"meta": {"rc": "error", "msg": "api.err.NoSiteContext"}, "data": []}, {}
            return ok((self.clients if parts[3] == "sta" else self.devices)[parts[1]])
        return 404, {"meta": {"rc": "error", "msg": "api.err.NotFound"}, "data": []}, {}

    @staticmethod
    def _valid(body: Any) -> dict[str, Any] | tuple[int, str, str]:
        if not isinstance(body, dict) or not body.get("key") or not body.get("value"):
            return 400, "api.err.InvalidPayload", "key and value are required"
        if body.get("record_type") not in TYPES:
            return 400, "api.err.InvalidRecordType", f"record_type {body.get('record_type')!r} is not supported"
        rec = {k: body[k] for k in ("enabled", "key", "record_type", "value", "ttl", "port", "priority", "weight") if k in body}
        rec.setdefault("enabled", True)
        return rec
