"""EnvoyExtensionPolicy Lua extensions, end to end through the gateway."""

from __future__ import annotations

import json
import socket

from homeplane.gateway.frontends import fastlane
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route, service

BLOCKER = """
function envoy_on_request(request_handle)
  local ua = request_handle:headers():get("user-agent") or ""
  for _, pattern in ipairs({"GPTBot", "CCBot"}) do
    if string.find(ua, pattern, 1, true) then
      request_handle:respond({[":status"] = "403", ["x-blocked"] = pattern}, "no crawling")
      return
    end
  end
  request_handle:headers():add("x-lua-seen", "1")
  request_handle:headers():remove("x-drop-me")
end
"""

ROUTE_SCRIPT = """
function envoy_on_response(response_handle)
  local ctx = response_handle:filterContext()
  response_handle:headers():add("x-route-lua", ctx.tag)
  response_handle:headers():remove("x-backend")
end
"""


def eep(name: str, target_kind: str, target: str, lua: str, ns: str = "network") -> str:
    return f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: {target_kind}, name: {target}}}]
  lua:
{lua}
"""


def configmap(name: str, script: str, key: str = "bots.lua") -> str:
    body = "\n".join("    " + line for line in script.strip().splitlines())
    return f"""
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: network}}
data:
  {key}: |
{body}
"""


def get(port: int, path: str, host: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), hdrs, body


def manifests(port: int, extra: str = "") -> str:
    listeners = "- {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}"
    return (
        gateway(listeners) + service("a", port)
        + route("site", "[site.test]") + route("api", "[api.test]")
        + configmap("bots", BLOCKER)
        + eep("gw", "Gateway", "gw", "    - {type: ValueRef, valueRef: {group: v1, kind: ConfigMap, name: bots}}")
        + extra
    )


def test_gateway_lua_blocks_crawlers_and_edits_requests(backend: Backend) -> None:
    g = Gateway(manifests(backend.port))
    try:
        before = fastlane.served()
        status, hdrs, body = get(g.port(80), "/echo", "site.test", user_agent="Mozilla/5.0 (compatible; GPTBot/1.2)")
        assert (status, hdrs.get("x-blocked"), body) == (403, "GPTBot", b"no crawling")
        assert not backend.requests  # answered by the script
        status, hdrs, body = get(g.port(80), "/echo", "site.test", user_agent="Mozilla/5.0", x_drop_me="1")
        assert status == 200
        seen = dict(json.loads(body)["headers"])
        assert seen["x-lua-seen"] == "1" and "x-drop-me" not in seen
        assert fastlane.served() == before  # routes with Lua take the Python path
    finally:
        g.close()


def test_a_route_policy_overrides_the_gateway_one(backend: Backend) -> None:
    route_policy = eep("api", "HTTPRoute", "api", "    - type: Inline\n      filterContext: {tag: api-v1}\n      inline: |\n"
                       + "\n".join("        " + ln for ln in ROUTE_SCRIPT.strip().splitlines()), ns="apps")
    g = Gateway(manifests(backend.port, route_policy))
    try:
        status, hdrs, _ = get(g.port(80), "/echo", "api.test", user_agent="GPTBot")
        assert status == 200  # the gateway's blocker does not run on this route
        assert hdrs["x-route-lua"] == "api-v1" and "x-backend" not in hdrs
        assert get(g.port(80), "/echo", "site.test", user_agent="GPTBot")[0] == 403
        tr = g.translate(manifests(backend.port, route_policy))
        gw_status = tr.status[("gateway.envoyproxy.io", "EnvoyExtensionPolicy", "network", "gw")]
        conds = {c["type"]: c for c in gw_status["ancestors"][0]["conditions"]}
        assert conds["Accepted"]["status"] == "True" and conds["Overridden"]["status"] == "True"
    finally:
        g.close()


def test_a_broken_script_fails_the_routes_closed_and_a_runtime_error_does_not(backend: Backend) -> None:
    broken = manifests(backend.port).replace("    if string.find", "    if string.find(((")
    g = Gateway(broken)
    try:
        assert get(g.port(80), "/echo", "site.test")[0] == 500
        tr = g.translate(broken)
        st = tr.status[("gateway.envoyproxy.io", "EnvoyExtensionPolicy", "network", "gw")]
        cond = st["ancestors"][0]["conditions"][0]
        assert (cond["type"], cond["status"], cond["reason"]) == ("Accepted", "False", "Invalid")
        assert "syntax error" in cond["message"]
        # a script that fails while running: logged, and the request goes on
        failing = manifests(backend.port).replace('request_handle:headers():add("x-lua-seen", "1")', 'error("boom")')
        g.apply(failing)
        status, _, body = get(g.port(80), "/echo", "site.test", x_drop_me="1")
        assert status == 200 and "x-drop-me" in dict(json.loads(body)["headers"])
    finally:
        g.close()


def test_lua_runs_before_authorization(backend: Backend) -> None:
    """Envoy Gateway's filter order: authentication, then Lua, then the RBAC rules - so a header
    a script sets is what authorization sees."""
    tagger = eep("tag", "HTTPRoute", "api", "    - type: Inline\n      inline: |\n"
                 "        function envoy_on_request(h) h:headers():replace('x-zone', 'trusted') end", ns="apps")
    authz = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: zone, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]
  authorization:
    defaultAction: Deny
    rules:
      - action: Allow
        principal: {headers: [{name: x-zone, values: [trusted]}]}
"""
    g = Gateway(manifests(backend.port, tagger + authz))
    try:
        assert get(g.port(80), "/echo", "api.test", x_zone="outside")[0] == 200
        g.apply(manifests(backend.port, authz))  # without the script: denied
        assert get(g.port(80), "/echo", "api.test", x_zone="outside")[0] == 403
    finally:
        g.close()
