"""Access log lines an Envoy Gateway user can read: Envoy Gateway's JSON fields, Envoy's default
text line, response flags with Envoy's meanings (NR, UH, UF, UAEX, DC), and an EnvoyProxy's
``telemetry.accessLog`` (formats, File sinks, disable) — from both lanes."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from homeplane.gateway.server import Settings
from homeplane.observe.accesslog import DEFAULT_JSON, FormatError, Record, compile_json, compile_text, response_flags
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway, free_port
from tests.gateway.manifests import gateway, route, service
from tests.gateway.test_auth import GRANT, auth_service, ext_auth_policy


def _lines(caplog: pytest.LogCaptureFixture, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [r.getMessage() for r in caplog.records if r.name == "homeplane.access"]
        if len(got) >= count:
            return got
        time.sleep(0.02)
    raise AssertionError(f"{count} access log lines expected, got {got}")


def _send(g: Gateway, host: str, path: str = "/echo", **headers: str) -> int:
    return httpx.get(g.url(80, path), headers={"host": host, **headers}, timeout=20).status_code


@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast", "python"])
def test_response_flags_say_what_went_wrong(backend: Backend, fast_lane: bool, caplog: pytest.LogCaptureFixture) -> None:
    from tests.gateway.authserver import AuthServer

    auth = AuthServer()
    dead = free_port()  # nothing listens there
    manifests = (gateway() + service("a", backend.port) + service("dead", dead) + service("down", backend.port, ready=False)
                 + route("r", "[auth.test]") + auth_service(auth.port) + GRANT + ext_auth_policy()
                 + route("ok", "[ok.test]") + route("gone", "[dead.test]", "\n    - backendRefs: [{name: dead, port: 80}]")
                 + route("none", "[down.test]", "\n    - backendRefs: [{name: down, port: 80}]"))
    g = Gateway(manifests, Settings(access_log=True, fast_lane=fast_lane))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            assert _send(g, "ok.test", **{"user-agent": "probe/2"}) == 200
            assert _send(g, "nowhere.test") == 404
            assert _send(g, "down.test") == 503
            assert _send(g, "dead.test") == 503
            assert _send(g, "auth.test") == 302
            lines = [json.loads(x) for x in _lines(caplog, 5)]
        by_host = {ln[":authority"]: ln for ln in lines}
        flags = {h: (ln["response_code"], ln["response_flags"]) for h, ln in by_host.items()}
        assert flags == {"ok.test": (200, "-"), "nowhere.test": (404, "NR"), "down.test": (503, "UH"),
                         "dead.test": (503, "UF"), "auth.test": (302, "UAEX")}
        ok = by_host["ok.test"]
        assert set(DEFAULT_JSON) <= set(ok) and ok["user-agent"] == "probe/2" and ok["method"] == "GET"
        assert ok["upstream_host"] == f"127.0.0.1:{backend.port}" and ok["route_name"].startswith("HTTPRoute/apps/ok")
        assert ok["gateway"] == "Gateway/network/gw" and ok["downstream_remote_address"] == "127.0.0.1"
        assert isinstance(ok["x-envoy-upstream-service-time"], int) and ok["x-envoy-upstream-service-time"] >= 0
        assert by_host["nowhere.test"]["route_name"] is None and by_host["nowhere.test"]["upstream_host"] is None
        assert by_host["dead.test"]["upstream_host"] == f"127.0.0.1:{dead}"
    finally:
        g.close()
        auth.close()


def test_a_client_that_leaves_is_DC(caplog: pytest.LogCaptureFixture) -> None:
    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(8)  # accepts, never answers
    g = Gateway(gateway() + service("a", stall.getsockname()[1]) + route(), Settings(access_log=True, fast_lane=False))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            c = socket.create_connection(("127.0.0.1", g.port(80)))
            c.sendall(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
            time.sleep(0.3)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # a reset
            c.close()
            (line,) = [json.loads(x) for x in _lines(caplog, 1)]
        assert line["response_flags"] == "DC" and line["response_code"] == 499
    finally:
        g.close()
        stall.close()


def test_envoys_default_text_line(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route(), Settings(access_log=True, access_log_format="text"))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            assert _send(g, "app.test", "/echo?q=1", **{"user-agent": "curl/8", "x-request-id": "rid-7"}) == 200
            (line,) = _lines(caplog, 1)
        pattern = (r'\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /echo\?q=1 HTTP/1.1" 200 - 0 \d+ \d+ \d+ "-" "curl/8" '
                   rf'"rid-7" "app.test" "127.0.0.1:{backend.port}"')
        assert re.fullmatch(pattern, line), line
    finally:
        g.close()


ENVOYPROXY = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {{name: proxy, namespace: network}}
spec:
  telemetry:
    accessLog:
{body}
"""


def _with_envoyproxy(manifests: str, body: str) -> str:
    manifests = manifests.replace(
        "spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}",
        "spec:\n  controllerName: gateway.envoyproxy.io/gatewayclass-controller\n"
        "  parametersRef: {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: proxy, namespace: network}")
    return manifests + ENVOYPROXY.format(body=body)


def test_envoyproxy_telemetry_access_log(backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = tmp_path / "access.log"
    body = f"""      settings:
        - format: {{type: Text, text: "%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS% %ROUTE_NAME% %REQ(X-CUSTOM):3%\\n"}}
          sinks: [{{type: File, file: {{path: {sink}}}}}]
        - format:
            type: JSON
            json: {{code: "%RESPONSE_CODE%", who: "%REQ(X-CUSTOM)%", what: "served %DURATION% ms"}}
          sinks: [{{type: File, file: {{path: /dev/stdout}}}}]"""
    base = gateway() + service("a", backend.port) + route()
    g = Gateway(_with_envoyproxy(base, body), Settings(access_log=True, access_log_dir=str(tmp_path)))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            assert _send(g, "app.test", **{"x-custom": "abcdef"}) == 200
            (line,) = _lines(caplog, 1)
        doc = json.loads(line)
        assert doc["code"] == 200 and doc["who"] == "abcdef" and re.fullmatch(r"served \d+ ms", doc["what"])
        deadline = time.monotonic() + 5
        while (not sink.exists() or not sink.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert re.fullmatch(r"GET 200 - HTTPRoute/apps/r\S* abc\n", sink.read_text())
        # disable: no line at all; an unsupported operator is a warning on the EnvoyProxy
        caplog.clear()
        g.apply(_with_envoyproxy(base, "      disable: true"))
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            assert _send(g, "app.test") == 200
            time.sleep(0.3)
        assert not [r for r in caplog.records if r.name == "homeplane.access"]
        tr = g.translate(_with_envoyproxy(base, '      settings: [{format: {type: Text, text: "%NOPE%"}}]'))
        assert any(d.code == "AccessLogUnsupported" and "%NOPE%" in d.message for d in tr.diagnostics)
    finally:
        g.close()


def test_formats_and_flags_units() -> None:
    rec = Record(start=0.5, duration=0.0123, method="GET", path="/a", authority="h", protocol="HTTP/2", status=200,
                 bytes_in=1, bytes_out=2, route="HTTPRoute/x/y", error=None)
    assert compile_text("%START_TIME% %DURATION% %UPSTREAM_HOST% %PROTOCOL%")(rec) == "1970-01-01T00:00:00.500Z 12 - HTTP/2"
    assert json.loads(compile_json({"a": "%BYTES_SENT%", "b": "%UPSTREAM_HOST%", "c": "x%BYTES_SENT%"})(rec)) == {"a": 2, "b": None, "c": "x2"}
    with pytest.raises(FormatError):
        compile_text("%NOT_AN_OPERATOR%")
    table = {("no healthy upstream", 503, 1): "UH", ("upstream connect error: refused", 503, 1): "UF",
             ("upstream connect error: refused", 503, 3): "UF,URX", ("upstream request timeout", 504, 1): "UT",
             ("circuit breaker: too many requests in flight", 503, 1): "UO", ("denied by ext auth (403)", 403, 0): "UAEX",
             ("client closed", 499, 1): "DC", ("upstream connection reset before the response", 502, 1): "UC",
             ("overload: memory", 503, 0): "OM", ("invalid request target", 400, 0): "DPE"}
    assert {k: response_flags(k[0], k[1], "r", k[2]) for k in table} == table
    assert response_flags(None, 404, None) == "NR" and response_flags(None, 200, "r") == "-"


def test_file_sinks_stay_in_the_log_dir_and_never_block(backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A manifest names the files: only inside --access-log-dir, regular files, opened without
    blocking; anything else (outside, a FIFO nobody reads, a device that fails) falls back to
    stdout, and an operator homeplane does not know prints '-'."""
    import os

    logs = tmp_path / "logs"
    logs.mkdir()
    os.mkfifo(logs / "fifo")
    outside = tmp_path / "outside.txt"
    body = f"""      settings:
        - format: {{type: Text, text: "%RESPONSE_CODE% %DYNAMIC_METADATA(x)% %REQ_WITHOUT_QUERY(:PATH)%"}}
          sinks: [{{type: File, file: {{path: {outside}}}}}, {{type: File, file: {{path: fifo}}}},
                  {{type: File, file: {{path: ok.log}}}}, {{type: File, file: {{path: /dev/full}}}}]"""
    base = gateway() + service("a", backend.port) + route()
    g = Gateway(_with_envoyproxy(base, body), Settings(access_log=True, access_log_dir=str(logs)))
    try:
        with caplog.at_level(logging.INFO, logger="homeplane.access"):
            assert _send(g, "app.test", "/echo?token=secret") == 200
            lines = _lines(caplog, 3)
            assert _send(g, "app.test") == 200  # the data plane still answers
        assert lines[:3] == ["200 - /echo"] * 3  # outside, fifo, /dev/full: to stdout instead
        deadline = time.monotonic() + 5  # the line is written once the answer is sent
        while (logs / "ok.log").read_text().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (logs / "ok.log").read_text() == "200 - /echo\n" * 2 and not outside.exists()
        tr = g.translate(_with_envoyproxy(base, body))
        assert any("%DYNAMIC_METADATA% is not supported; it prints -" in d.message for d in tr.diagnostics)
    finally:
        g.close()
