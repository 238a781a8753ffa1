"""A Cloudflare API v4 fake, written from Cloudflare's public API documentation (zones,
dns_records, dns_records/batch), for the parts external-dns uses:

- auth: ``Authorization: Bearer <token>`` (else 403, code 10000 "Authentication error");
- ``GET /zones`` (``name``, ``page``, ``per_page`` 5..50, default 20) and ``GET /zones/{id}``;
- ``GET /zones/{id}/dns_records`` (``page``, ``per_page`` 5..5,000,000, default 100; ``name``,
  ``type`` filters), with ``result_info`` {page, per_page, count, total_count, total_pages};
- ``POST``/``PUT``/``PATCH``/``DELETE`` of one record; ``POST dns_records/batch`` with
  ``deletes``, ``patches``, ``puts``, ``posts`` applied in that order, all or nothing;
- validation: name inside the zone; TTL 1 (automatic) or 60..86400; ``proxied`` only for A,
  AAAA, CNAME (code 9004); a CNAME cannot share its name (81053); an identical record already
  exists (81058); unknown record id (81044, 404);
- rate limit: 1200 requests per 5 minutes per token, then 429 with ``Retry-After`` (code 971).

Errors are ``{"success": false, "errors": [{"code", "message"}], "messages": [], "result": null}``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.externaldns.fakes.base import JsonServer

PROXIABLE = {"A", "AAAA", "CNAME"}


class CloudflareError(Exception):
    def __init__(self, status: int, code: int, message: str):
        self.status, self.code, self.message = status, code, message


class FakeCloudflare(JsonServer):
    def __init__(self, token: str = "cf-test-token", zones: tuple[str, ...] = ("home.example",),
                 rate_limit: int = 1200, window: float = 300.0):
        super().__init__()
        self.token = token
        self.zones = {uuid.uuid4().hex: z for z in zones}
        self.records: dict[str, dict[str, Any]] = {}
        self.rate_limit, self.window = rate_limit, window
        self._hits: list[float] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every accepted call
        self.fail_with: int | None = None  # answer every call with this HTTP status (an outage)
        self.url = self.base + "/client/v4"

    def serve_dns(self) -> int:
        """Answer DNS (UDP) for the zones from the records, as Cloudflare's nameservers would;
        returns the port."""
        import socket
        import threading

        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self._dns_sock = sock

        def serve() -> None:
            while True:
                try:
                    data, addr = sock.recvfrom(4096)
                except OSError:
                    return
                try:
                    q = dns.message.from_wire(data)
                except Exception:
                    continue
                r = dns.message.make_response(q)
                qn = q.question[0].name.to_text().rstrip(".").lower()
                qt = dns.rdatatype.to_text(q.question[0].rdtype)
                with self.lock:
                    hits = [x for x in self.records.values() if x["name"] == qn and x["type"] == qt]
                if hits:
                    texts = [(f'"{h["content"]}"' if qt == "TXT" and not h["content"].startswith('"') else h["content"]) for h in hits]
                    r.answer.append(dns.rrset.from_text_list(q.question[0].name, 60, "IN", qt, texts))
                elif not any(qn == z or qn.endswith("." + z) for z in self.zones.values()):
                    r.set_rcode(dns.rcode.REFUSED)
                sock.sendto(r.to_wire(), addr)

        threading.Thread(target=serve, daemon=True).start()
        return sock.getsockname()[1]

    def __exit__(self, *exc: Any) -> None:
        if getattr(self, "_dns_sock", None) is not None:
            self._dns_sock.close()
        super().__exit__(*exc)

    def zone_id(self, name: str) -> str:
        return next(k for k, v in self.zones.items() if v == name)

    def add(self, zone: str, name: str, rtype: str, content: str, ttl: int = 1, proxied: bool = False) -> str:
        with self.lock:
            return self._create(self.zone_id(zone), {"name": name, "type": rtype, "content": content, "ttl": ttl, "proxied": proxied})["id"]

    def find(self, name: str, rtype: str | None = None) -> list[dict[str, Any]]:
        return sorted((r for r in self.records.values() if r["name"] == name and (rtype is None or r["type"] == rtype)),
                      key=lambda r: r["content"])

    # --- semantics ------------------------------------------------------------------------

    def _validate(self, zid: str, rec: dict[str, Any], replacing: str | None = None) -> dict[str, Any]:
        zone = self.zones[zid]
        name = str(rec.get("name", "")).lower().rstrip(".")
        if name == "@":
            name = zone
        if not (name == zone or name.endswith("." + zone)):
            raise CloudflareError(400, 1004, f"DNS Validation Error: {name} is not in zone {zone}")
        rtype = str(rec.get("type", "")).upper()
        if rtype not in ("A", "AAAA", "CNAME", "TXT", "MX", "NS", "SRV", "CAA"):
            raise CloudflareError(400, 1004, f"DNS Validation Error: unsupported type {rtype!r}")
        content = rec.get("content")
        if not isinstance(content, str) or not content:
            raise CloudflareError(400, 1004, "DNS Validation Error: content is required")
        ttl = int(rec.get("ttl", 1))
        if ttl != 1 and not 60 <= ttl <= 86400:
            raise CloudflareError(400, 1004, "DNS Validation Error: TTL must be between 60 and 86400 seconds, or 1 for Automatic")
        proxied = bool(rec.get("proxied", False))
        if proxied and rtype not in PROXIABLE:
            raise CloudflareError(400, 9004, "This record type cannot be proxied.")
        for rid, r in self.records.items():
            if rid == replacing or r["zone_id"] != zid or r["name"] != name:
                continue
            if (rtype == "CNAME") != (r["type"] == "CNAME") or (rtype == r["type"] == "CNAME"):
                raise CloudflareError(400, 81053, "An A, AAAA, or CNAME record with that host already exists.")
            if r["type"] == rtype and r["content"] == content:
                raise CloudflareError(400, 81058, "An identical record already exists.")
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        return {"zone_id": zid, "zone_name": zone, "name": name, "type": rtype, "content": content,
                "proxiable": rtype in PROXIABLE, "proxied": proxied, "ttl": ttl, "comment": rec.get("comment"),
                "tags": rec.get("tags") or [], "meta": {}, "modified_on": now}

    def _create(self, zid: str, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._validate(zid, body)
        rec["id"] = uuid.uuid4().hex
        rec["created_on"] = rec["modified_on"]
        self.records[rec["id"]] = rec
        return rec

    def _get(self, zid: str, rid: str) -> dict[str, Any]:
        r = self.records.get(rid)
        if r is None or r["zone_id"] != zid:
            raise CloudflareError(404, 81044, "Record does not exist.")
        return r

    def _put(self, zid: str, rid: str, body: dict[str, Any], patch: bool = False) -> dict[str, Any]:
        old = self._get(zid, rid)
        merged = {**old, **body} if patch else body
        rec = self._validate(zid, merged, replacing=rid)
        rec["id"], rec["created_on"] = rid, old["created_on"]
        self.records[rid] = rec
        return rec

    def _delete(self, zid: str, rid: str) -> dict[str, Any]:
        self._get(zid, rid)
        del self.records[rid]
        return {"id": rid}

    def _batch(self, zid: str, body: dict[str, Any]) -> dict[str, Any]:
        saved = dict(self.records)
        try:
            out = {
                "deletes": [self._delete(zid, d["id"]) for d in body.get("deletes") or []],
                "patches": [self._put(zid, p["id"], {k: v for k, v in p.items() if k != "id"}, patch=True) for p in body.get("patches") or []],
                "puts": [self._put(zid, p["id"], {k: v for k, v in p.items() if k != "id"}) for p in body.get("puts") or []],
                "posts": [self._create(zid, p) for p in body.get("posts") or []],
            }
        except CloudflareError:
            self.records = saved  # all or nothing
            raise
        return out

    # --- HTTP -------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        parts = [p for p in path.split("/") if p][2:]  # after client/v4
        q = lambda k, d=None: (query.get(k) or [d])[0]  # noqa: E731
        if parts == ["zones"] and method == "GET":
            zones = [{"id": k, "name": v, "status": "active"} for k, v in sorted(self.zones.items(), key=lambda kv: kv[1])]
            if q("name"):
                zones = [z for z in zones if z["name"] == q("name")]
            return self._page(zones, int(q("page", 1)), int(q("per_page", 20)), 5, 50)
        if len(parts) >= 2 and parts[0] == "zones":
            zid = parts[1]
            if zid not in self.zones:
                raise CloudflareError(404, 7003, "Could not route to /zones/" + zid + ", perhaps your object identifier is invalid?")
            if len(parts) == 2 and method == "GET":
                return {"id": zid, "name": self.zones[zid], "status": "active"}, None
            if parts[2:3] == ["dns_records"]:
                if len(parts) == 3 and method == "GET":
                    recs = sorted((r for r in self.records.values() if r["zone_id"] == zid), key=lambda r: (r["name"], r["type"], r["content"]))
                    if q("name"):
                        recs = [r for r in recs if r["name"] == q("name")]
                    if q("type"):
                        recs = [r for r in recs if r["type"] == q("type")]
                    return self._page(recs, int(q("page", 1)), int(q("per_page", 100)), 5, 5_000_000)
                if len(parts) == 3 and method == "POST":
                    return self._create(zid, body), None
                if parts[3:] == ["batch"] and method == "POST":
                    return self._batch(zid, body), None
                if len(parts) == 4:
                    if method == "GET":
                        return self._get(zid, parts[3]), None
                    if method == "PUT":
                        return self._put(zid, parts[3], body), None
                    if method == "PATCH":
                        return self._put(zid, parts[3], body, patch=True), None
                    if method == "DELETE":
                        return self._delete(zid, parts[3]), None
        raise CloudflareError(404, 7000, f"No route for that URI: {method} {path}")

    @staticmethod
    def _page(items: list[Any], page: int, per_page: int, lo: int, hi: int) -> tuple[Any, dict[str, Any]]:
        if not lo <= per_page <= hi:
            raise CloudflareError(400, 1001, f"per_page must be between {lo} and {hi}")
        total = len(items)
        chunk = items[(page - 1) * per_page: page * per_page]
        return chunk, {"page": page, "per_page": per_page, "count": len(chunk), "total_count": total,
                       "total_pages": max(1, -(-total // per_page))}

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: Any) -> tuple[int, Any, dict[str, str]]:
        def error(status: int, code: int, message: str, extra: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
            return status, {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}, extra or {}

        if self.fail_with is not None:
            return error(self.fail_with, 10000 if self.fail_with < 500 else 10001, "Internal Server Error")
        if headers.get("Authorization") != f"Bearer {self.token}":
            return error(403, 10000, "Authentication error")
        with self.lock:
            now = time.monotonic()
            self._hits = [t for t in self._hits if now - t < self.window]
            if len(self._hits) >= self.rate_limit:
                wait = int(self.window - (now - self._hits[0])) + 1 if self._hits else int(self.window)
                return error(429, 971, "Please wait and consider throttling your request speed", {"Retry-After": str(wait)})
            self._hits.append(now)
            try:
                result, info = self._route(method, path, query, body)
            except CloudflareError as e:
                return error(e.status, e.code, e.message)
            except (KeyError, TypeError, ValueError) as e:
                return error(400, 1004, f"DNS Validation Error: {e}")
            self.requests.append((method, path))
        doc: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
        if info is not None:
            doc["result_info"] = info
        return 200, doc, {}
