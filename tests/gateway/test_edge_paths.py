"""Path normalisation at the edge: an attacker's path cannot walk around a SecurityPolicy.

``/echo`` is open and ``/echo/admin`` needs basic auth. Every way of spelling a path that the
backend would resolve to ``/echo/admin/...`` must be routed (and authenticated) as that path,
and forwarded in its normalised form - on both lanes (the C fast lane hands such paths to the
Python lane, which must then answer as Envoy Gateway's defaults do).
"""

from __future__ import annotations

import json
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeplane.gateway.frontends import _fastlane
from homeplane.gateway.routing import paths
from homeplane.gateway.routing.paths import PathSettings, Verdict, is_canonical, normalize, remove_dot_segments
from homeplane.gateway.server import Settings
from tests.gateway.backends import Backend
from tests.gateway.harness import Gateway
from tests.gateway.manifests import gateway, route, service
from tests.gateway.test_fastlane import exchange, normalized, responses

ADMIN = """
    - matches: [{path: {type: PathPrefix, value: /echo/admin}}]
      backendRefs: [{name: a, port: 80}]"""
OPEN = """
    - matches: [{path: {type: PathPrefix, value: /echo}}]
      backendRefs: [{name: a, port: 80}]"""
POLICY = """
---
apiVersion: v1
kind: Secret
metadata: {name: users, namespace: apps}
stringData: {.htpasswd: "bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: admin-only, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: admin}]
  basicAuth: {users: {name: users}}
"""


def manifests(port: int, path_policy: str = "") -> str:
    admin, open_ = route("admin", rules=ADMIN), route("open", rules=OPEN)
    ctp = ""
    if path_policy:
        ctp = f"""
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {{name: paths, namespace: network}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]
  path: {path_policy}
"""
    return gateway() + service("a", port) + admin + open_ + POLICY + ctp


@pytest.fixture
def lanes(backend: Backend) -> Iterator[tuple[Gateway, Gateway]]:
    fast = Gateway(manifests(backend.port))
    slow = Gateway(manifests(backend.port), Settings(access_log=False, fast_lane=False))
    yield fast, slow
    fast.close()
    slow.close()


def ask(g: Gateway, path: bytes, auth: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
    creds = b"Authorization: Basic Ym9iOnNlY3JldA==\r\n" if auth else b""  # bob:secret
    raw = exchange(g.port(80), b"GET " + path + b" HTTP/1.1\r\nHost: app.test\r\n" + creds + b"Connection: close\r\n\r\n")
    (status, headers, body), = responses(raw)
    return int(status.split()[1]), headers, body


# (the path as sent, status without credentials, the Location of a redirect or the path the backend gets)
ATTACKS = [
    (b"/echo/admin/secret", 401, None),
    (b"/echo/x/../admin/secret", 401, None),
    (b"/echo/x/%2e%2e/admin/secret", 401, None),
    (b"/echo/x/%2E%2e/admin/secret", 401, None),
    (b"/echo//admin/secret", 401, None),
    (b"/echo/./admin/secret", 401, None),
    (b"/echo/%61dmin/secret", 401, None),  # %61 is "a": unreserved, decoded
    (b"/echo/x/..;jsessionid=1/admin/secret", 401, None),
    (b"/echo/x\\..\\admin/secret", 401, None),
    (b"/echo/x/..%2Fadmin/secret", 307, b"/echo/admin/secret"),  # escaped slash: redirect to the decoded path
    (b"/echo/x/..%5cadmin/secret", 307, b"/echo/admin/secret"),
    (b"/echo/x/..%2Fadmin/secret?a=%2F", 307, b"/echo/admin/secret?a=%2F"),  # the query is kept as it is
    (b"/echo/../../../echo/admin", 401, None),  # never above the root
    (b"/echo/%00/x", 400, None),
    (b"/echo/a/../b?x=../y", 200, b"/echo/b?x=../y"),
    (b"/echo/caf\xc3\xa9", 400, None),  # raw non-ASCII: llhttp refuses it
    (b"/echo/%7euser/%41", 200, b"/echo/~user/A"),
    (b"/echo/%zz/%2541", 200, b"/echo/%25zz/%2541"),  # an encoded "%" is kept; a stray "%" is escaped
    (b"/echo/.well-known/x", 200, b"/echo/.well-known/x"),
    # a "%" that starts no escape is escaped itself, else it would pair with a decoded byte
    (b"/echo/x/%2%65%2%65/admin/secret", 200, b"/echo/x/%252e%252e/admin/secret"),
    (b"/echo/x/..%2%66admin/secret", 200, b"/echo/x/..%252fadmin/secret"),
    (b"/echo/x/%%32%65%%32%65/admin", 200, b"/echo/x/%252e%252e/admin"),
    # path parameters do not hide a protected segment (Java servlet containers drop them)
    (b"/echo/admin;x/secret", 401, None),
    (b"/echo;x/admin/secret", 401, None),
]


@pytest.mark.parametrize("path,status,where", ATTACKS, ids=lambda v: v.decode("latin-1") if isinstance(v, bytes) else str(v))
def test_attack_paths_on_both_lanes(lanes: tuple[Gateway, Gateway], backend: Backend, path: bytes, status: int, where: bytes | None) -> None:
    for g in lanes:
        before = len(backend.requests)
        got, headers, body = ask(g, path)
        assert got == status, (g.settings.fast_lane, path, got, body)
        if status == 307:
            assert headers[b"location"] == where
        elif status == 200:
            assert json.loads(body)["target"] == where.decode()
        if status != 200:
            assert len(backend.requests) == before  # nothing reached the backend
    # with credentials the protected spellings reach the backend as the canonical path
    if status == 401:
        for g in lanes:
            got, _, body = ask(g, path, auth=True)
            # (path parameters are forwarded as sent: they only do not count for routing)
            assert got == 200 and paths.match_path(json.loads(body)["target"].encode()).startswith(b"/echo/admin")


def test_escaped_slash_actions(backend: Backend) -> None:
    sent = b"/echo/x/..%2Fadmin/secret"
    expect = {
        "{escapedSlashesAction: KeepUnchanged}": (200, "/echo/x/..%2Fadmin/secret"),  # one segment "..%2Fadmin"
        "{escapedSlashesAction: RejectRequest}": (400, None),
        "{escapedSlashesAction: UnescapeAndForward}": (401, None),  # decoded, then /echo/admin: auth
        "{disableMergeSlashes: true}": (307, None),
    }
    for policy, (status, target) in expect.items():
        g = Gateway(manifests(backend.port, policy))
        try:
            got, _, body = ask(g, sent)
            assert got == status, policy
            if target is not None:
                assert json.loads(body)["target"] == target
            if policy == "{disableMergeSlashes: true}":
                got, _, body = ask(g, b"/echo//x")
                assert got == 200 and json.loads(body)["target"] == "/echo//x"
                # the redirect never names another site ("//evil.example/..." is protocol-relative)
                got, headers, _ = ask(g, b"/%2Fevil.example/echo")
                assert got == 307 and headers[b"location"] == b"/evil.example/echo"
        finally:
            g.close()


# --- the pure functions ------------------------------------------------------------------


@pytest.mark.parametrize("path,want", [
    (b"/a/b/c/./../../g", b"/a/g"),  # RFC 3986 §5.4.2
    (b"/mid/content=5/../6", b"/mid/6"),
    (b"/..", b"/"),
    (b"/a/..", b"/"),
    (b"/a/.", b"/a/"),
    (b"/a/b/..;x", b"/a/"),
    (b"/a/.;x/b", b"/a/b"),
    (b"/.hidden/..x", b"/.hidden/..x"),
])
def test_remove_dot_segments(path: bytes, want: bytes) -> None:
    assert remove_dot_segments(path) == want


def test_the_c_lane_keeps_the_same_byte_sets() -> None:
    assert _fastlane.PATH_SAFE == paths.PATH_SAFE
    from homeplane.gateway.routing.router import valid_host

    for b in range(256):
        if b != ord(":"):  # the port separator: checked apart
            assert (bytes([b]) in _fastlane.HOST_SAFE) == valid_host(b"a" + bytes([b]) + b"a"), b


SEGMENTS = st.sampled_from([
    b"/", b"//", b".", b"..", b"%2e", b"%2E%2e", b"%2F", b"%2f", b"%5C", b"\\", b";", b"..;x", b"a", b"admin",
    b"%41", b"%zz", b"%", b"%25", b"~", b" ", b"\xc3\xa9", b"echo", b"%00", b"#", b"%2", b"%6", b"%65", b"%66", b"%5",
])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(SEGMENTS, max_size=12), st.sampled_from(sorted(paths.ESCAPED_SLASH_ACTIONS)), st.booleans())
def test_normalize_properties(parts: list[bytes], action: str, merge: bool) -> None:
    path = b"/" + b"".join(parts)
    out, verdict = normalize(path, PathSettings(action, merge))
    if is_canonical(path):
        assert (out, verdict) == (path, Verdict.FORWARD)  # the hot paths' shortcut is exact
    if verdict == Verdict.REJECT:
        return
    assert out.startswith(b"/")
    assert is_canonical(out) or (not merge and b"//" in out) or b"%" in out or b";" in out
    again, v2 = normalize(out, PathSettings(action, merge))
    if v2 != Verdict.REJECT:
        assert again == out  # idempotent: the backend sees what routing saw
    segs = out.split(b"/")
    assert b".." not in segs and b"." not in segs


@pytest.fixture(scope="module")
def module_lanes() -> Iterator[tuple[Backend, Gateway, Gateway]]:
    b = Backend("a")
    fast = Gateway(manifests(b.port))
    slow = Gateway(manifests(b.port), Settings(access_log=False, fast_lane=False))
    yield b, fast, slow
    fast.close()
    slow.close()
    b.close()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(SEGMENTS.filter(lambda s: s not in (b" ", b"#")), max_size=8))
def test_both_lanes_agree_on_fuzzed_paths(module_lanes: tuple[Backend, Gateway, Gateway], parts: list[bytes]) -> None:
    _, fast, slow = module_lanes
    raw = b"GET /echo/" + b"".join(parts) + b" HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    assert normalized(exchange(fast.port(80), raw)) == normalized(exchange(slow.port(80), raw))
