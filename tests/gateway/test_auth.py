"""Forward auth and the other SecurityPolicy features, end to end through the gateway."""

from __future__ import annotations

import base64
import time
from typing import Iterator

import bcrypt
import httpx
import pytest

from tests.gateway.authserver import AuthServer
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway, free_port
from tests.gateway.manifests import gateway, route, service


def auth_service(port: int) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: authentik-outpost, namespace: security}}
spec: {{ports: [{{name: http, port: 9000}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: authentik-outpost, namespace: security}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: http, port: {port}}}]}}]
"""


GRANT = """
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: authentik-outpost, namespace: security}
spec:
  from: [{group: gateway.envoyproxy.io, kind: SecurityPolicy, namespace: apps}]
  to: [{group: "", kind: Service, name: authentik-outpost}]
"""


def ext_auth_policy(extra: str = "", path: str = "/outpost.goauthentik.io/auth/envoy", target: str = "kind: HTTPRoute, name: r") -> str:
    return f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: authentik, namespace: apps}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, {target}}}]
  extAuth:
    {extra}
    http:
      backendRefs: [{{name: authentik-outpost, namespace: security, port: 9000}}]
      path: "{path}"
      headersToBackend: ["x-authentik-*", set-cookie]
    headersToExtAuth: [cookie]
"""


@pytest.fixture
def auth() -> Iterator[AuthServer]:
    a = AuthServer()
    yield a
    a.close()


def make(backend: Backend, auth_port: int, policy: str, grant: str = GRANT) -> Gateway:
    return Gateway(gateway() + service("a", backend.port) + route() + auth_service(auth_port) + grant + policy)


def get(g: Gateway, path: str = "/echo", cookie: str | None = None, **headers: str) -> httpx.Response:
    h = {"host": "app.test", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if cookie:
        h["cookie"] = cookie
    return httpx.get(g.url(80, path), headers=h, timeout=20)


def test_unauthenticated_gets_the_login_redirect(backend: Backend, auth: AuthServer) -> None:
    g = make(backend, auth.port, ext_auth_policy())
    try:
        r = get(g, "/secret?a=1")
        assert r.status_code == 302
        assert r.headers["location"].startswith("https://auth.home.test/outpost.goauthentik.io/start?rd=")
        assert "authentik_proxy_1234=state" in r.headers["set-cookie"]
        assert r.content == b"redirecting to login"
        assert backend.requests == []
    finally:
        g.close()


def test_authenticated_request_carries_identity_and_forgery_is_stripped(backend: Backend, auth: AuthServer) -> None:
    g = make(backend, auth.port, ext_auth_policy())
    try:
        r = get(g, cookie="authentik_session=valid:alice", x_authentik_username="admin", x_authentik_groups="admins")
        assert r.status_code == 200
        h = {}
        for n, v in r.json()["headers"]:
            h.setdefault(n, []).append(v)
        assert h["x-authentik-username"] == ["alice"]  # the client's "admin" is gone
        assert h["x-authentik-groups"] == ["users"]
        assert h["x-authentik-email"] == ["alice@home.test"] and h["x-authentik-uid"] == ["uid-alice"]
        assert "x-unrelated" not in h  # only headersToBackend are copied
        # a forged identity without a session never reaches the backend
        r = get(g, x_authentik_username="admin")
        assert r.status_code == 302 and len(backend.requests) == 1
    finally:
        g.close()


def test_check_request_follows_envoy_ext_authz(backend: Backend, auth: AuthServer) -> None:
    g = make(backend, auth.port, ext_auth_policy())
    try:
        httpx.post(
            g.url(80, "/upload?x=1&y=2"),
            headers={"host": "app.test", "cookie": "authentik_session=valid:bob", "authorization": "Bearer t", "x-custom": "no"},
            content=b"request body",
        )
        (check,) = auth.checks
        assert check["method"] == "POST"
        assert check["target"] == "/outpost.goauthentik.io/auth/envoy/upload?x=1&y=2"
        assert check["body"] == b"" and check["headers"]["content-length"] == "0"
        h = check["headers"]
        assert h["host"] == "app.test" and h["authorization"] == "Bearer t" and h["cookie"] == "authentik_session=valid:bob"
        assert "x-custom" not in h
        assert h["x-forwarded-proto"] == "http" and h["x-forwarded-for"] == "127.0.0.1" and h["x-forwarded-host"] == "app.test"
        # the body still reaches the backend after the check
        assert backend.requests[-1]["body_len"] == len(b"request body")
    finally:
        g.close()


def test_path_prefix_with_a_query(backend: Backend, auth: AuthServer) -> None:
    g = make(backend, auth.port, ext_auth_policy(path="/api/auth/envoy?path="))
    try:
        get(g, "/a/b?c=d", cookie="authentik_session=valid:x")
        assert auth.checks[0]["target"] == "/api/auth/envoy?path=/a/b?c=d"
    finally:
        g.close()


@pytest.mark.parametrize("mode", ["down", "500", "hang"])
def test_auth_errors_deny_with_403_or_allow_with_fail_open(backend: Backend, auth: AuthServer, mode: str) -> None:
    port = auth.port
    if mode == "down":
        auth.close()
        port = free_port()
    else:
        auth.mode = mode
    for fail_open, expected in ((False, 403), (True, 200)):
        extra = f"timeout: 1s\n    failOpen: {str(fail_open).lower()}"
        g = make(backend, port, ext_auth_policy(extra))
        try:
            t = time.monotonic()
            r = get(g, cookie="authentik_session=valid:x")
            assert r.status_code == expected
            assert time.monotonic() - t < 5
            # the same over HTTP/2, where the answer is sent after the auth call returns
            with httpx.Client(http1=False, http2=True, timeout=5) as c:
                r = c.get(g.url(80, "/echo"), headers={"host": "app.test", "cookie": "authentik_session=valid:x"})
            assert r.http_version == "HTTP/2" and r.status_code == expected
        finally:
            g.close()


def test_missing_reference_grant_fails_closed(backend: Backend, auth: AuthServer) -> None:
    g = make(backend, auth.port, ext_auth_policy(), grant="")
    try:
        r = get(g, cookie="authentik_session=valid:alice")
        assert r.status_code == 500
        assert backend.requests == [] and auth.checks == []
        tr = g.translate(gateway() + service("a", backend.port) + route() + auth_service(auth.port) + ext_auth_policy())
        st = tr.status[("gateway.envoyproxy.io", "SecurityPolicy", "apps", "authentik")]["ancestors"][0]["conditions"][0]
        assert st["status"] == "False" and "ReferenceGrant" in st["message"]
    finally:
        g.close()


def test_gateway_level_policy_and_route_override(backend: Backend, auth: AuthServer) -> None:
    gw_policy = ext_auth_policy(target="kind: Gateway, name: gw").replace("namespace: apps", "namespace: network", 1)
    gw_grant = GRANT.replace("namespace: apps", "namespace: network")
    open_route = route("open", "[open.test]")
    basic_open = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: open-allow, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: open}]
  authorization: {defaultAction: Allow}
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + open_route + auth_service(auth.port) + gw_grant + gw_policy + basic_open)
    try:
        assert get(g).status_code == 302  # the gateway-level policy protects every route...
        r = httpx.get(g.url(80, "/echo"), headers={"host": "open.test"})
        assert r.status_code == 200  # ...except where a route-level policy overrides it
    finally:
        g.close()


def test_basic_auth(backend: Backend) -> None:
    bc = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    sha = "{SHA}" + base64.b64encode(__import__("hashlib").sha1(b"pw2").digest()).decode()
    htpasswd = f"alice:{bc}\nbob:{sha}\n"
    secret = f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: users, namespace: apps}}
stringData:
  .htpasswd: |
{chr(10).join('    ' + line for line in htpasswd.splitlines())}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: basic, namespace: apps}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}}]
  basicAuth: {{users: {{name: users}}, forwardUsernameHeader: X-User}}
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + secret)
    try:
        r = get(g)
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="http://app.test"'
        assert httpx.get(g.url(80, "/echo"), headers={"host": "app.test"}, auth=("alice", "wrong")).status_code == 401
        r = httpx.get(g.url(80, "/echo"), headers={"host": "app.test", "x-user": "mallory"}, auth=("alice", "s3cret"))
        assert r.status_code == 200 and ["x-user", "alice"] in r.json()["headers"] and ["x-user", "mallory"] not in r.json()["headers"]
        assert httpx.get(g.url(80, "/echo"), headers={"host": "app.test"}, auth=("bob", "pw2")).status_code == 200
        assert backend.requests and all(q["target"] == "/echo" for q in backend.requests)
    finally:
        g.close()


def test_authorization_by_client_cidr_uses_detected_client_ip(backend: Backend) -> None:
    policies = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: lan-only, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  authorization:
    defaultAction: Deny
    rules:
      - {name: block-guest, action: Deny, principal: {clientCIDRs: [192.168.50.0/24]}}
      - {name: lan, action: Allow, principal: {clientCIDRs: [192.168.0.0/16]}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: xff, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  clientIPDetection: {xForwardedFor: {trustedCIDRs: [127.0.0.0/8]}}
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + policies)
    try:
        assert get(g).status_code == 403  # 127.0.0.1 is neither allowed nor denied: default Deny
        assert get(g, x_forwarded_for="192.168.1.20").status_code == 200
        assert get(g, x_forwarded_for="192.168.50.9").status_code == 403
        assert get(g, x_forwarded_for="192.168.1.20, 10.0.0.1").status_code == 403  # 10.0.0.1 is untrusted: the client
    finally:
        g.close()


def test_cors_preflight_is_answered_before_auth_and_responses_carry_the_origin(backend: Backend, auth: AuthServer) -> None:
    policy = ext_auth_policy().rstrip() + """
  cors:
    allowOrigins: ["https://*.home.test", "https://exact.example"]
    allowMethods: [GET, POST]
    allowHeaders: [x-custom]
    exposeHeaders: [x-backend]
    maxAge: 10m
    allowCredentials: true
"""
    g = make(backend, auth.port, policy)
    try:
        origin = "https://ui.home.test"
        with httpx.Client(timeout=20) as c:
            r = c.options(g.url(80, "/api"), headers={"host": "app.test", "origin": origin, "access-control-request-method": "POST"})
            assert r.status_code == 200 and backend.requests == [] and auth.checks == []
            assert r.headers["access-control-allow-origin"] == origin
            assert r.headers["access-control-allow-methods"] == "GET, POST"
            assert r.headers["access-control-allow-headers"] == "x-custom"
            assert r.headers["access-control-max-age"] == "600"
            assert r.headers["access-control-allow-credentials"] == "true"
        # the actual request: the auth wall still applies, and its answer carries the CORS headers
        r = get(g, "/api", origin=origin)
        assert r.status_code == 302 and r.headers["access-control-allow-origin"] == origin
        r = get(g, "/echo", cookie="authentik_session=valid:alice", origin="https://exact.example")
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://exact.example"
        assert r.headers["access-control-expose-headers"] == "x-backend"
        # another origin gets no CORS headers, and its preflight is not answered by the gateway
        r = get(g, "/echo", cookie="authentik_session=valid:alice", origin="https://evil.example")
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = httpx.options(g.url(80, "/api"), headers={"host": "app.test", "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in r.headers
    finally:
        g.close()


def test_authorization_by_headers_sees_the_identity_ext_auth_set(backend: Backend, auth: AuthServer) -> None:
    # Envoy's RBAC runs after ext_authz: a rule on x-authentik-username sees the outpost's value,
    # never one the client sent (it is replaced before authorization looks)
    authz = """authorization:
    defaultAction: Deny
    rules:
      - {action: Allow, operation: {methods: [GET, HEAD]}, principal: {headers: [{name: X-Authentik-Username, values: [alice, carol]}]}}
  extAuth:"""
    policy = ext_auth_policy().replace("  extAuth:", "  " + authz, 1)
    g = make(backend, auth.port, policy)
    try:
        assert get(g, cookie="authentik_session=valid:alice").status_code == 200
        r = get(g, cookie="authentik_session=valid:bob", x_authentik_username="alice")
        assert (r.status_code, r.text) == (403, "RBAC: access denied\n")
        r = httpx.post(g.url(80, "/echo"), headers={"host": "app.test", "cookie": "authentik_session=valid:alice"}, timeout=20)
        assert r.status_code == 403  # the rule allows GET and HEAD only
        assert [q["method"] for q in backend.requests] == ["GET"]
    finally:
        g.close()


def test_api_key_auth(backend: Backend) -> None:
    secrets = """
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: apps}
stringData: {ci-runner: key-one, grafana: key-two}
---
apiVersion: v1
kind: Secret
metadata: {name: more-keys, namespace: apps}
stringData: {grafana: shadowed, phone: key-three}
"""
    policy = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: keys, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  apiKeyAuth:
    credentialRefs: [{name: keys}, {name: more-keys}]
    extractFrom:
      - headers: [x-api-key]
      - params: [api_key]
      - cookies: [apikey]
    forwardClientIDHeader: x-client-id
    sanitize: true
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + secrets + policy)
    try:
        r = get(g)
        assert (r.status_code, r.text) == (401, "Client authentication failed.\n")
        assert get(g, **{"x-api-key": "nope"}).status_code == 401
        assert get(g, **{"x-api-key": "shadowed"}).status_code == 401  # grafana's key is the first Secret's
        r = get(g, **{"x-api-key": "key-two", "x-client-id": "forged"})
        seen = r.json()["headers"]
        assert r.status_code == 200 and ["x-client-id", "grafana"] in seen and ["x-client-id", "forged"] not in seen
        assert not [h for h in seen if h[0] == "x-api-key"]  # sanitized
        r = get(g, "/echo?a=1&api_key=key-three&b=2")
        assert r.status_code == 200 and r.json()["target"] == "/echo?a=1&b=2" and ["x-client-id", "phone"] in r.json()["headers"]
        r = get(g, cookie="theme=dark; apikey=key-one")
        seen = r.json()["headers"]
        assert r.status_code == 200 and ["cookie", "theme=dark"] in seen and ["x-client-id", "ci-runner"] in seen
        # a Secret that is not there: the policy is invalid and the route fails closed
        g.apply(gateway() + service("a", backend.port) + route() + policy)
        assert get(g, **{"x-api-key": "key-one"}).status_code == 500
    finally:
        g.close()
