"""SecurityPolicy jwt end to end: local and remote JWKS, Envoy's answers, claims to headers."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route, service

ISSUER = "https://idp.home.test"


class Keys:
    def __init__(self, kid: str):
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwks = json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]})

    def token(self, **claims: object) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": "homeapps", "sub": "alice", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, self.private, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys("k1")


def policy(provider: str, optional: bool = False) -> str:
    return f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: jwt, namespace: apps}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}}]
  jwt:
    optional: {str(optional).lower()}
    providers:
      - name: idp
        issuer: {ISSUER}
        audiences: [homeapps]
        claimToHeaders: [{{header: x-user, claim: sub}}, {{header: x-groups, claim: groups}}]
{provider}
"""


def local(keys: Keys) -> str:
    return f"        localJWKS: {{type: Inline, inline: '{keys.jwks}'}}"


def get(g: Gateway, token: str | None = None, **headers: str) -> httpx.Response:
    h = {"host": "app.test", **headers}
    if token:
        h["authorization"] = f"Bearer {token}"
    return httpx.get(g.url(80, "/echo"), headers=h, timeout=20)


def test_local_jwks_follows_envoy_answers(backend: Backend, keys: Keys) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route() + policy(local(keys)))
    try:
        r = get(g)
        assert (r.status_code, r.text) == (401, "Jwt is missing")
        assert r.headers["www-authenticate"] == 'Bearer realm="http://app.test/echo"'
        r = get(g, keys.token(groups=["admins", "users"]), x_user="root")
        assert r.status_code == 200
        h = {n: v for n, v in r.json()["headers"]}
        assert h["x-user"] == "alice" and h["x-groups"] == "admins,users"  # the forged x-user is gone
        assert h["authorization"].startswith("Bearer ")  # forwarded, as Envoy Gateway configures it
        r = get(g, keys.token(exp=int(time.time()) - 3600))
        assert (r.status_code, r.text) == (401, "Jwt is expired")
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert (get(g, keys.token(aud="other")).status_code, get(g, keys.token(aud="other")).text) == (403, "Audiences in Jwt are not allowed")
        assert get(g, keys.token(iss="https://evil.test")).status_code == 401
        forged = Keys("k1").token()  # same kid, another private key
        assert (get(g, forged).status_code, get(g, forged).text) == (401, "Jwt verification fails")
        assert get(g, "not-a-jwt").status_code == 401
        assert len(backend.requests) == 1
    finally:
        g.close()


def test_optional_lets_anonymous_through_but_not_bad_tokens(backend: Backend, keys: Keys) -> None:
    g = Gateway(gateway() + service("a", backend.port) + route() + policy(local(keys), optional=True))
    try:
        assert get(g).status_code == 200
        assert get(g, keys.token(exp=1)).status_code == 401
    finally:
        g.close()


class JWKSServer:
    def __init__(self, body: str, port: int = 0):
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[JWKSServer]:
    s = JWKSServer(keys.jwks)
    yield s
    s.close()


def test_remote_jwks_is_fetched_once_and_cached(backend: Backend, keys: Keys, jwks_server: JWKSServer) -> None:
    remote = f"        remoteJWKS: {{uri: 'http://127.0.0.1:{jwks_server.port}/jwks.json'}}"
    g = Gateway(gateway() + service("a", backend.port) + route() + policy(remote))
    try:
        token = keys.token()
        assert [get(g, token).status_code for _ in range(5)] == [200] * 5
        # Envoy's other default place for a token: the access_token query parameter
        r = httpx.get(g.url(80, f"/echo?access_token={token}"), headers={"host": "app.test"})
        assert r.status_code == 200
        assert jwks_server.hits == 1
    finally:
        g.close()


def test_unreachable_remote_jwks_denies(backend: Backend, keys: Keys, jwks_server: JWKSServer) -> None:
    jwks_server.close()
    remote = f"        remoteJWKS: {{uri: 'http://127.0.0.1:{jwks_server.port}/jwks.json'}}"
    g = Gateway(gateway() + service("a", backend.port) + route() + policy(remote))
    try:
        r = get(g, keys.token())
        assert (r.status_code, r.text) == (401, "Jwks remote fetch is failed")
        assert backend.requests == []
        # the key server comes back: after the pause it is asked again and tokens pass
        revived = JWKSServer(keys.jwks, port=jwks_server.port)
        try:
            assert get(g, keys.token()).status_code == 401  # within the pause: not asked yet
            assert revived.hits == 0
            time.sleep(5.2)
            assert get(g, keys.token()).status_code == 200 and revived.hits == 1
        finally:
            revived.close()
    finally:
        g.close()


def test_local_jwks_from_a_config_map_and_a_missing_one_fails_closed(backend: Backend, keys: Keys) -> None:
    ref = "        localJWKS: {type: ValueRef, valueRef: {group: '', kind: ConfigMap, name: idp-jwks}}"
    cm = f"""
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: idp-jwks, namespace: apps}}
data:
  jwks: '{keys.jwks}'
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + policy(ref) + cm)
    try:
        assert get(g, keys.token()).status_code == 200
        assert get(g).status_code == 401
        tr = g.apply(gateway() + service("a", backend.port) + route() + policy(ref))  # the ConfigMap is gone
        cond = tr.status[("gateway.envoyproxy.io", "SecurityPolicy", "apps", "jwt")]["ancestors"][0]["conditions"][0]
        assert (cond["status"], cond["reason"]) == ("False", "Invalid") and "ConfigMap apps/idp-jwks" in cond["message"]
        r = get(g, keys.token())
        assert r.status_code == 500  # an invalid SecurityPolicy never lets traffic through
    finally:
        g.close()


def test_authorization_by_jwt_claims_and_scopes(backend: Backend, keys: Keys) -> None:
    rules = """
  authorization:
    defaultAction: Deny
    rules:
      - name: banned
        action: Deny
        principal: {jwt: {provider: idp, claims: [{name: groups, valueType: StringArray, values: [banned]}]}}
      - name: infra-readers
        action: Allow
        operation: {methods: [GET]}
        principal:
          jwt:
            provider: idp
            scopes: [read]
            claims: [{name: org.team, values: [infra, platform]}]
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + policy(local(keys)) + rules)
    try:
        ok = keys.token(org={"team": "infra"}, scope="read write", groups=["users"])
        assert get(g, ok).status_code == 200
        r = httpx.post(g.url(80, "/echo"), headers={"host": "app.test", "authorization": f"Bearer {ok}"}, timeout=20)
        assert (r.status_code, r.text) == (403, "RBAC: access denied\n")  # GET only
        assert get(g, keys.token(org={"team": "infra"}, scope="write")).status_code == 403  # no read scope
        assert get(g, keys.token(org={"team": "infra"}, scp=["read"])).status_code == 200  # scopes as a list
        assert get(g, keys.token(org={"team": "sales"}, scope="read")).status_code == 403
        assert get(g, keys.token(org={"team": ["infra"]}, scope="read")).status_code == 403  # String, not an array
        assert get(g, keys.token(org={"team": "infra"}, scope="read", groups=["users", "banned"])).status_code == 403  # first rule wins
        assert get(g).status_code == 401  # no token: authentication fails before authorization
    finally:
        g.close()


def test_authorization_naming_an_unknown_jwt_provider_fails_closed(backend: Backend, keys: Keys) -> None:
    rules = """
  authorization:
    defaultAction: Allow
    rules:
      - {action: Deny, principal: {jwt: {provider: other, claims: [{name: sub, values: [mallory]}]}}}
"""
    g = Gateway(gateway() + service("a", backend.port) + route() + policy(local(keys)) + rules)
    try:
        # the policy is invalid (its Deny rule could never be evaluated): its route fails closed
        assert get(g, keys.token()).status_code == 500
    finally:
        g.close()
