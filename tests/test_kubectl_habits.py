"""``get``, ``describe`` and the rest of a kubectl user's habits, against the bundled example:
every kind with its short names, -n/-A/-l, -o json|yaml|wide|name|jsonpath, sorted rows,
describe's related objects, --version, shell completion, rich tables only on a terminal, exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homeplane.kubectl.jsonpath import render
from homeplane.kubectl.output import print_table
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "home"
VARS = ["-f", str(EXAMPLE), "--vars", str(EXAMPLE / "cluster-secrets.env")]


def hp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeplane", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


def test_get_tables_are_kubectl_like_and_sorted() -> None:
    r = hp("get", "gtw", *VARS)
    assert r.returncode == 0 and r.stdout == (
        "NAMESPACE   NAME             CLASS   ADDRESS          PROGRAMMED\n"
        "network     envoy-external   envoy   192.168.42.120   True\n"
        "network     envoy-internal   envoy   192.168.42.121   True\n")
    r = hp("get", "svc", *VARS)
    names = [ln.split()[:2] for ln in r.stdout.splitlines()[1:]]
    assert names == sorted(names) and ["downloads", "sonarr"] in names
    # a kind homeplane loads but does not serve, by its flux short name, with where it is written
    r = hp("get", "hr", "-A", *VARS)
    assert r.stdout.splitlines()[0].split() == ["NAMESPACE", "NAME", "SOURCE"]
    assert "network     cloudflare-dns   network/external-dns.yaml:18" in r.stdout


def test_output_forms() -> None:
    assert hp("get", "hr", "-o", "name", *VARS).stdout.splitlines() == [
        "helmrelease.helm.toolkit.fluxcd.io/cloudflare-dns", "helmrelease.helm.toolkit.fluxcd.io/unifi-dns"]
    assert hp("get", "svc", "-n", "downloads", "-o", "name", *VARS).stdout == "service/sonarr\n"
    r = hp("get", "httproutes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.hostnames[0]}{\"\\n\"}{end}", *VARS)
    assert r.stdout == "sonarr=sonarr.home.example\nhttps-redirect=\nwhoami=whoami.home.example\n"
    r = hp("get", "gateway", "envoy-internal", "-o",
           "jsonpath='{.status.conditions[?(@.type==\"Programmed\")].status}'", *VARS)
    assert r.stdout == "True"
    doc = json.loads(hp("get", "endpointslices", "-l", "kubernetes.io/service-name=whoami", "-o", "json", *VARS).stdout)
    assert [i["metadata"]["name"] for i in doc["items"]] and all(
        i["metadata"]["labels"]["kubernetes.io/service-name"] == "whoami" for i in doc["items"])
    assert json.loads(hp("get", "endpointslices", "-l", "kubernetes.io/service-name notin (whoami)", "-o", "json", *VARS).stdout)["items"] == []
    assert "kind: HTTPRoute" in hp("get", "httproute", "sonarr", "-n", "downloads", "-o", "yaml", *VARS).stdout


def test_errors_have_scripts_exit_codes() -> None:
    r = hp("get", "frobnicators", *VARS)
    assert r.returncode == 2 and "unknown kind 'frobnicators'; the manifests' kinds: " in r.stderr and "HTTPRoute" in r.stderr
    r = hp("get", "svc", "nothere", *VARS)
    assert r.returncode == 1 and "Service 'nothere' not found" in r.stderr
    assert hp("get", "svc", "-l", "a in (", *VARS).returncode == 2
    assert hp("get", "svc", "-o", "jsonpath={.items[?(@.x ~ 1)]}", *VARS).returncode == 2
    assert hp("get", "svc", "-o", "pretty", *VARS).returncode == 2
    assert hp("check", str(EXAMPLE), "--set", "SECRET_DOMAIN=x").returncode == 0
    assert hp("no-such-command").returncode == 2


def test_describe_gateway_route_and_service() -> None:
    r = hp("describe", "gateway", "envoy-internal", "-n", "network", *VARS)
    assert r.returncode == 0
    assert "Listener https: HTTPRoute downloads/sonarr" in r.stdout and "Listener http: HTTPRoute network/https-redirect" in r.stdout
    assert "Programmed  True    Programmed" in r.stdout
    r = hp("describe", "httproute", "whoami", "-n", "selfhosted", *VARS)
    assert "Parent: Gateway network/envoy-external#https" in r.stdout
    assert "Policy: SecurityPolicy selfhosted/whoami" in r.stdout and "Backend: Service selfhosted/whoami:80 -> " in r.stdout
    r = hp("describe", "svc", "sonarr", "-n", "downloads", *VARS)
    assert "Port http (80/TCP): 127.0.0.1:8989" in r.stdout and "Used by: HTTPRoute downloads/sonarr" in r.stdout
    assert hp("describe", "svc", "nothere", *VARS).returncode == 1


def test_a_route_whose_backend_cannot_be_served_says_so(tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "home"
    shutil.copytree(EXAMPLE, repo)
    (repo / "selfhosted/broken.yaml").write_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken, namespace: selfhosted}\n"
        "spec:\n  parentRefs: [{name: envoy-external, namespace: network, sectionName: https}]\n"
        "  rules: [{backendRefs: [{name: nothere, port: 80}]}]\n")
    r = hp("get", "httproute", "broken", "-o", "wide", "-f", str(repo), "--set", "SECRET_DOMAIN=x")
    assert "network/envoy-external/https=Accepted,ResolvedRefs=False(BackendNotFound)" in r.stdout
    r = hp("describe", "httproute", "broken", "-f", str(repo), "--set", "SECRET_DOMAIN=x")
    assert "ResolvedRefs  False   BackendNotFound  rules[0].backendRefs[0]: Service selfhosted/nothere not found" in r.stdout


def test_version_and_completion() -> None:
    from homeplane import __version__

    assert hp("--version").stdout == f"homeplane {__version__}\n"
    for shell in ("bash", "zsh", "fish"):
        r = hp("--show-completion", shell)
        assert r.returncode == 0 and "_HOMEPLANE_COMPLETE" in r.stdout, (shell, r.stderr)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rich_tables_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [["network", "gw", "True"], ["apps", "other", "False"]]
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = _Tty()
    print_table(["NAMESPACE", "NAME", "READY"], rows, tty)
    assert "\x1b[" in tty.getvalue() and "other" in tty.getvalue()  # colour on a terminal
    plain = io.StringIO()
    print_table(["NAMESPACE", "NAME", "READY"], rows, plain)
    assert "\x1b[" not in plain.getvalue() and plain.getvalue().splitlines()[1].split() == ["network", "gw", "True"]
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Tty()
    print_table(["NAMESPACE", "NAME", "READY"], rows, tty)
    assert "\x1b[" not in tty.getvalue()


def test_jsonpath_units() -> None:
    d = {"items": [{"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}}}, {"metadata": {"name": "b"}}]}
    assert render("{.items[*].metadata.name}", d) == "a b"
    assert render(r"{.items[0].metadata.labels.app\.kubernetes\.io/name}", d) == "x"
    assert render("{.items[-1].metadata.name}/{.items[5].metadata.name}", d) == "b/"
    assert render("{range .items[*]}[{.metadata.name}]{end}", d) == "[a][b]"
    assert render("{..name}", d) == "a b" and render("{.items[?(@.metadata.labels)].metadata.name}", d) == "a"
    assert render("{.items[0].metadata}", d) == '{"name":"a","labels":{"app.kubernetes.io/name":"x"}}'


def test_kind_group_and_selector_units() -> None:
    from homeplane.api.selectors import parse_selector
    from homeplane.kubectl.kinds import resolve

    present = {("gateway.networking.k8s.io", "Gateway"), ("networking.istio.io", "Gateway"), ("helm.toolkit.fluxcd.io", "HelmRelease")}
    assert resolve("gateways", present) == ("gateway.networking.k8s.io", "Gateway")
    assert resolve("gateway.networking.istio.io", present) == ("networking.istio.io", "Gateway")
    assert resolve("gtw.gateway.networking.k8s.io", present) == ("gateway.networking.k8s.io", "Gateway")
    assert resolve("hr", present) == ("helm.toolkit.fluxcd.io", "HelmRelease") and resolve("svc.apps", present) is None
    for bad in ("a>1", "a=b=c", "a,", "a in (", "=x"):
        with pytest.raises(ValueError):
            parse_selector(bad)
    d = {"items": [{"spec": {"ports": [{"port": 80}]}, "n": "a"}, {"spec": {"ports": [{"port": 81}]}, "n": "b"}, {"n": "c"}]}
    assert render("{.items[?(@.spec.ports[0].port==80)].n}", d) == "a" and render("{.items[0:3:2].n}", d) == "a c"


GOLDEN = {
    ("httproutes", "-o", "wide"): """\
NAMESPACE    NAME             HOSTNAMES             PARENTS
downloads    sonarr           sonarr.home.example   network/envoy-internal/https=Accepted
network      https-redirect   *                     network/envoy-external/http=Accepted network/envoy-internal/http=Accepted
selfhosted   whoami           whoami.home.example   network/envoy-external/https=Accepted
""",
    ("svc", "-o", "wide"): """\
NAMESPACE    NAME                TYPE        CLUSTER-IP      EXTERNAL-IP   PORT(S)    ENDPOINTS   ALGORITHM   SOURCE          SELECTOR
downloads    sonarr              ClusterIP   10.43.137.125   <none>        80/TCP     1/1         maglev      Endpoints       <none>
security     authentik-outpost   ClusterIP   10.43.24.181    <none>        9000/TCP   1/1         maglev      Endpoints       <none>
selfhosted   whoami              ClusterIP   10.43.228.71    <none>        80/TCP     1/1         maglev      EndpointSlice   <none>
""",
    ("securitypolicies", "-o", "wide"): """\
NAMESPACE    NAME     ACCEPTED   TARGETS
selfhosted   whoami   True       HTTPRoute/whoami
""",
    ("gateways", "-o", "name"): "gateway.gateway.networking.k8s.io/envoy-external\ngateway.gateway.networking.k8s.io/envoy-internal\n",
    ("ns", "-o", "jsonpath={.items[*].metadata.name}"): "downloads network security selfhosted",
}


@pytest.mark.parametrize("args", list(GOLDEN), ids=[" ".join(a) for a in GOLDEN])
def test_get_forms_against_golden_output(args: tuple[str, ...]) -> None:
    """ClusterIPs are the allocator's, deterministic for these manifests (no state store)."""
    r = hp("get", *args, *VARS)
    assert r.returncode == 0 and r.stdout == GOLDEN[args], r.stdout + r.stderr
