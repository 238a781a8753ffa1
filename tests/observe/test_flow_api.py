"""The flow API's long polls: many followers cost one watcher, they all wake when a flow comes,
and bad parameters are refused with the parameter named."""

from __future__ import annotations

import asyncio
import json
import time

from homeplane.observe.flowapi import MAX_WAITERS, _Arrivals, attach
from homeplane.observe.flows import DNS, FlowRing


def _append(ring: FlowRing) -> None:
    ring.entries.append((next(ring.seq), DNS, time.monotonic(), b"\x7f\x00\x00\x01", "udp", b"", None, ("127.0.0.1", 53)))


def test_followers_wake_together_and_extra_ones_do_not_spin() -> None:
    async def go() -> None:
        ring = FlowRing(16)
        arrivals = _Arrivals(ring)
        t0 = time.monotonic()
        held = [asyncio.ensure_future(arrivals.wait_past(0, 10)) for _ in range(MAX_WAITERS)]
        extra = asyncio.ensure_future(arrivals.wait_past(0, 10))
        await asyncio.sleep(0.2)
        assert arrivals.waiters == MAX_WAITERS and not any(t.done() for t in held)
        await asyncio.wait_for(extra, 2)  # over the cap: a short pause, then an (empty) answer
        assert 0.9 < time.monotonic() - t0 < 2
        _append(ring)
        await asyncio.wait_for(asyncio.gather(*held), 1)
        assert arrivals.waiters == 0
        await asyncio.sleep(0.1)
        assert arrivals.task is None  # the watcher stops with the last waiter

    asyncio.run(go())


def test_parameters_are_checked() -> None:
    class Admin:
        def api_route(self, path, handler):  # noqa: ANN001
            self.handler = handler

    admin = Admin()
    ring = FlowRing(4)
    attach(admin, ring)
    _append(ring)

    def get(query: str) -> tuple[int, dict]:
        status, _, body = asyncio.run(admin.handler("GET", f"/api/v1/flows?{query}", b"", {}))
        return status, json.loads(body)

    for query, said in (("wait=nan", "wait"), ("wait=-1", "wait"), ("after=x", "after"), ("last=100001", "last"),
                        ("http-path=(", "--http-path"), ("verdict=MAYBE", "--verdict"), ("color=blue", "unknown filter")):
        status, doc = get(query)
        assert status == 400 and said in doc["error"], (query, doc)
    status, doc = get("last=5&protocol=dns")
    assert status == 200 and [w["flow"]["l7"]["dns"]["query"] for w in doc["flows"]] == ["?"] and doc["next"] == 1
    assert asyncio.run(admin.handler("POST", "/api/v1/flows", b"", {}))[0] == 405


def test_filters_cannot_stall_and_output_cannot_steer_a_terminal() -> None:
    from homeplane.observe.flows import FilterError, FlowFilter, compact, printable

    flt = FlowFilter.parse({"http-path": ["(b+)+c"]})  # backtracking regexps take exponential time on this
    flow = {"flow": {"l7": {"http": {"url": "http://x/" + "b" * 100_000, "code": 200, "method": "GET"}}}}
    t0 = time.monotonic()
    assert not flt.matches(flow) and time.monotonic() - t0 < 1
    for bad in ("(a", "(a)\\1", "x" * 2000):  # RE2 has no backreferences, as Hubble's Go regexp
        try:
            FlowFilter.parse({"http-path": [bad]})
            raise AssertionError(bad)
        except FilterError as e:
            assert "--http-path" in str(e)
    assert printable("evil\x1b]0;PWNED\x07\x1b[2J\x9b") == "evil\\x1b]0;PWNED\\x07\\x1b[2J\\x9b"
    ring = FlowRing(4)
    ring.l4("TCP", ("127.0.0.1", 5), "", "r", None, 0, 0, 0.1, sni="a\x1b[2Jb")
    line = compact(ring.read()[0])
    assert "\x1b" not in line and "a\\x1b[2Jb" in line


def test_the_admin_endpoint_refuses_other_sites_names() -> None:
    import h11

    from homeplane.observe.admin import AdminServer

    admin = AdminServer("127.0.0.1", 0, check_host=True)

    def allowed(host: str) -> bool:
        return admin.host_allowed(h11.Request(method="GET", target="/status", headers=[("Host", host)]))

    assert allowed("127.0.0.1:9901") and allowed("[::1]:9901") and allowed("localhost:9901") and allowed("192.168.1.5")
    assert not allowed("attacker.example") and not allowed("attacker.example:9901")
