"""The flows over the admin endpoint, and ``homeplane observe`` reading them.

``GET /api/v1/flows?after=SEQ&last=N&wait=SECONDS&<filter>=<value>…`` answers
``{"flows": [...], "next": SEQ, …}``: the flows after ``after`` that pass the filters (the names of
``hubble observe``'s flags: ``namespace``, ``from-ip``, ``to-service``, ``verdict``, ``protocol``,
``http-status``, …; a flag given twice is either value). ``wait`` holds the answer until a flow
arrives (at most 30 s), which is how ``--follow`` streams without a busy poll. Filtering happens
in the server, as in Hubble, so a follow over a busy gateway sends only what was asked for.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from homeplane.observe.flows import TABLE_HEADER, FilterError, FlowFilter, FlowRing, compact, table_row

MAX_WAIT = 30.0
MAX_LAST = 100_000


MAX_WAITERS = 64  # long polls held at once; more are answered at once


class _Arrivals:
    """Long polls wait here. One task looks at the ring every 50 ms while anyone waits, so the
    data planes never pay for waking readers, and a thousand followers cost one timer."""

    def __init__(self, ring: FlowRing):
        self.ring = ring
        self.waiters = 0
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        last = self.ring.last_seq
        while self.waiters:
            await asyncio.sleep(0.05)
            if self.ring.last_seq != last:
                last = self.ring.last_seq
                event, self.event = self.event, asyncio.Event()
                event.set()
        self.task = None

    async def wait_past(self, seq: int, seconds: float) -> None:
        if seconds <= 0 or self.ring.last_seq > seq:
            return
        if self.waiters >= MAX_WAITERS:  # too many held: a short pause, so a follower does not spin
            await asyncio.sleep(min(seconds, 1.0))
            return
        self.waiters += 1
        if self.task is None:
            self.task = asyncio.ensure_future(self._watch())
        deadline = time.monotonic() + seconds
        try:
            while self.ring.last_seq <= seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    await asyncio.wait_for(self.event.wait(), left)
                except asyncio.TimeoutError:
                    return
        finally:
            self.waiters -= 1


def attach(admin: Any, ring: FlowRing) -> None:
    """Serve ``ring`` at ``/api/v1/flows`` on the admin endpoint."""
    arrivals = _Arrivals(ring)

    async def flows_api(method: str, target: str, _body: bytes, _headers: dict[str, str]) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, keep_blank_values=True)
        try:
            since = _int(query.pop("after", ["0"])[-1], "after")
            last_text = query.pop("last", [""])[-1]
            last = _int(last_text, "last") if last_text else None
            if last is not None and last > MAX_LAST:
                raise FilterError(f"last: at most {MAX_LAST}")
            wait = float(query.pop("wait", ["0"])[-1] or 0)
            if not 0 <= wait < float("inf"):  # (nan and negatives too)
                raise FilterError("wait: seconds, 0 or more")
            flt = FlowFilter.parse(query)
        except (FilterError, ValueError) as e:
            return 400, "application/json", json.dumps({"error": str(e)}).encode() + b"\n"
        await arrivals.wait_past(since, min(wait, MAX_WAIT))
        head = ring.last_seq
        flows = ring.read(since, flt, last)
        doc = {"flows": flows, "next": head, "capacity": ring.capacity, "nodeName": ring.node_name,
               "oldest": ring.entries[0][0] if ring.entries else head + 1}
        return 200, "application/json", json.dumps(doc).encode() + b"\n"

    admin.api_route("/api/v1/flows", flows_api)


def _int(text: str, name: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise FilterError(f"{name}: not a number: {text!r}") from None
    if v < 0:
        raise FilterError(f"{name}: must not be negative")
    return v


class ObserveError(Exception):
    pass


def fetch(admin: str, params: list[tuple[str, str]], timeout: float = 40.0) -> dict[str, Any]:
    url = f"http://{admin}/api/v1/flows?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            msg = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            msg = body.decode(errors="replace").strip() or str(e)
        if e.code == 404:
            msg = "this homeplane keeps no flows (started with --flows 0?)"
        raise ObserveError(msg) from None
    except (urllib.error.URLError, OSError) as e:
        raise ObserveError(f"cannot reach homeplane's admin endpoint at {admin}: {getattr(e, 'reason', e)}") from None
    except ValueError:
        raise ObserveError(f"{admin} did not answer with flows: is it homeplane's admin endpoint?") from None


def observe(admin: str, filters: list[tuple[str, str]], last: int | None, follow: bool, output: str,
            write: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False) -> int:
    """Print flows like ``hubble observe``; returns how many were printed."""
    if output not in ("compact", "json", "jsonpb", "table"):
        raise ObserveError(f"-o {output!r}: compact, json, jsonpb or table")
    FlowFilter.parse(_grouped(filters))  # refuse a bad filter before asking the server
    shown = 0
    rows: list[tuple[str, ...]] = []

    def emit(flows: list[dict[str, Any]]) -> None:
        nonlocal shown
        for f in flows:
            shown += 1
            if output in ("json", "jsonpb"):
                write(json.dumps(f))
            elif output == "table":
                rows.append(table_row(f))
            else:
                write(compact(f))

    if follow:
        first = fetch(admin, filters + ([("last", str(last))] if last else [("last", "0")]))
        if last:
            emit(first["flows"])
        since = first["next"]
        while not stop():
            doc = fetch(admin, filters + [("after", str(since)), ("wait", "5")])
            if doc["oldest"] > since + 1 and since:
                print(f"homeplane observe: {doc['oldest'] - since - 1} flows were lost (the ring holds {doc['capacity']})",
                      file=sys.stderr)
            emit(doc["flows"])
            if output == "table" and rows:
                _table(rows, write, header=shown == len(rows))
                rows.clear()
            since = doc["next"]
        return shown
    doc = fetch(admin, filters + [("last", str(20 if last is None else last))])
    emit(doc["flows"])
    if output == "table":
        _table(rows, write)
    return shown


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def _table(rows: list[tuple[str, ...]], write: Callable[[str], None], header: bool = True) -> None:
    all_rows = ([TABLE_HEADER] if header else []) + rows
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(TABLE_HEADER) - 1)]
    for r in all_rows:
        write("   ".join(c.ljust(w) for c, w in zip(r, widths)) + "   " + r[-1])
