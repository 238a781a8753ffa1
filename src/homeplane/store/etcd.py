"""The state store on etcd: several homeplane nodes share allocations, certificates and leases.

etcd's v3 API through its JSON gateway (``/v3/kv/range``, ``/put``, ``/deleterange``, ``/txn``),
so no gRPC stack is needed: keys and values travel base64-encoded, 64-bit numbers as strings,
and fields at their default value are left out (proto3 JSON). The store's revisions *are*
etcd's: ``Entry.mod_revision`` is the key's ``mod_revision``, and a transaction's compare is
etcd's ``MOD`` compare (0: the key must not exist), so compare-and-swap means across nodes what
it means in one process. Every key lives under a prefix (``/homeplane/`` by default), so one etcd
can hold other data. Endpoints are tried in order; a node that does not answer is skipped.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import httpx

from homeplane.store.base import Entry, StoreError, Txn


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


@dataclass
class EtcdOptions:
    endpoints: list[str]
    prefix: str = "/homeplane/"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0

    @classmethod
    def parse(cls, spec: str, **kw: Any) -> EtcdOptions:
        """``etcd://host:2379,host2:2379[/prefix]``; https when a CA file is given."""
        if not spec.startswith("etcd://"):
            raise StoreError(f"{spec!r}: an etcd store is etcd://HOST:PORT[,HOST:PORT…][/PREFIX]")
        rest = spec[len("etcd://"):]
        hosts, _, prefix = rest.partition("/")
        scheme = "https" if kw.get("ca_file") else "http"
        endpoints = [f"{scheme}://{h.strip()}" for h in hosts.split(",") if h.strip()]
        if not endpoints:
            raise StoreError(f"{spec!r}: no etcd endpoint")
        return cls(endpoints, f"/{prefix.strip('/')}/" if prefix.strip("/") else "/homeplane/", **kw)


class EtcdStore:
    def __init__(self, options: EtcdOptions):
        self.options = options
        self._prefix = options.prefix.encode()
        verify: Any = options.ca_file or True
        cert = (options.cert_file, options.key_file) if options.cert_file else None
        self._http = httpx.Client(timeout=options.timeout, verify=verify, cert=cert)
        self._token: str | None = None
        self._first = 0  # the endpoint that answered last: tried first next time
        if options.username:
            self._authenticate()
        self.revision()  # fail now, with the endpoints named, when none answers

    def with_timeout(self, seconds: float) -> "EtcdStore":
        """The same store through a client whose calls give up after ``seconds`` (per endpoint):
        for callers with deadlines, such as L2 announcement leases."""
        return EtcdStore(dataclasses.replace(self.options, timeout=seconds))

    def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (etcd keeps every version until compacted)."""
        self._call("/v3/kv/compaction", {"revision": str(revision)})

    # --- the wire --------------------------------------------------------------------------

    def _authenticate(self) -> None:
        doc = self._call("/v3/auth/authenticate", {"name": self.options.username, "password": self.options.password or ""},
                         auth=False)
        self._token = doc.get("token")

    def _call(self, path: str, body: dict[str, Any], auth: bool = True) -> dict[str, Any]:
        errors = []
        n = len(self.options.endpoints)
        for i in range(n):
            j = (self._first + i) % n
            url = self.options.endpoints[j] + path
            headers = {"Authorization": self._token} if auth and self._token else {}
            try:
                r = self._http.post(url, json=body, headers=headers)
            except httpx.HTTPError as e:
                errors.append(f"{self.options.endpoints[j]}: {type(e).__name__}")
                continue
            if r.status_code == 401 and auth and self.options.username:  # the token expired
                self._authenticate()
                return self._call(path, body)
            try:
                doc = r.json()
            except ValueError:
                doc = {}
            if r.status_code != 200:
                raise StoreError(f"etcd {self.options.endpoints[j]}{path}: HTTP {r.status_code}: {doc.get('error') or doc.get('message') or r.text[:200]}")
            self._first = j
            return doc
        raise StoreError("no etcd endpoint answered: " + "; ".join(errors))

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _entry(self, kv: dict[str, Any]) -> Entry:
        raw = base64.b64decode(kv["key"])
        return Entry(raw[len(self._prefix):].decode(), base64.b64decode(kv.get("value", "")), int(kv.get("mod_revision", 0)))

    # --- the StateStore protocol ---------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        kvs = self._call("/v3/kv/range", {"key": _b64(self._key(key))}).get("kvs") or []
        return self._entry(kvs[0]) if kvs else None

    def list(self, prefix: str) -> list[Entry]:
        start = self._key(prefix)
        doc = self._call("/v3/kv/range", {"key": _b64(start), "range_end": _b64(_prefix_end(start)),
                                          "sort_order": "ASCEND", "sort_target": "KEY"})
        return [self._entry(kv) for kv in doc.get("kvs") or []]

    def put(self, key: str, value: bytes) -> int:
        doc = self._call("/v3/kv/put", {"key": _b64(self._key(key)), "value": _b64(value)})
        return int((doc.get("header") or {}).get("revision", 0))

    def delete(self, key: str) -> bool:
        doc = self._call("/v3/kv/deleterange", {"key": _b64(self._key(key))})
        return int(doc.get("deleted", 0)) > 0

    def commit(self, txn: Txn) -> bool:
        compare = [{"key": _b64(self._key(k)), "target": "MOD", "result": "EQUAL", "mod_revision": str(rev)}
                   for k, rev in txn.compares]
        success = [{"request_put": {"key": _b64(self._key(k)), "value": _b64(v)}} for k, v in txn.puts]
        success += [{"request_delete_range": {"key": _b64(self._key(k))}} for k in txn.deletes]
        doc = self._call("/v3/kv/txn", {"compare": compare, "success": success})
        return bool(doc.get("succeeded", False))

    def revision(self) -> int:
        doc = self._call("/v3/kv/range", {"key": _b64(self._prefix), "count_only": True})
        return int((doc.get("header") or {}).get("revision", 0))

    def close(self) -> None:
        self._http.close()

    # --- leases: one leader among the nodes, and who is alive -------------------------------

    def campaign(self, key: str, value: bytes, ttl: int) -> int | None:
        """Hold ``key`` (with ``value``) under a new lease of ``ttl`` seconds, unless someone holds
        it: the lease ID, or None."""
        lease = int(self._call("/v3/lease/grant", {"TTL": str(ttl)}).get("ID", 0))
        doc = self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(self._key(key)), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(self._key(key)), "value": _b64(value), "lease": str(lease)}}],
        })
        if doc.get("succeeded"):
            return lease
        self.revoke(lease)
        return None

    def attach(self, key: str, value: bytes, lease: int) -> None:
        """Put ``key`` under an existing lease (it goes when the lease does)."""
        self._call("/v3/kv/put", {"key": _b64(self._key(key)), "value": _b64(value), "lease": str(lease)})

    def grant(self, ttl: int) -> int:
        return int(self._call("/v3/lease/grant", {"TTL": str(ttl)}).get("ID", 0))

    def keep_alive(self, lease: int) -> bool:
        """Renew a lease; False when it is gone (expired: whatever it held is gone too)."""
        doc = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int((doc.get("result") or {}).get("TTL", 0)) > 0

    def revoke(self, lease: int) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease)})
        except StoreError:
            pass
