"""The command line: check (text and JSON), get, exit codes, error messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, REPO

VARS = ["--vars", str(EXAMPLE / "cluster-secrets.env")]


def hp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeplane", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_check_example_is_clean_and_shows_what_is_served() -> None:
    r = hp("check", str(EXAMPLE), *VARS)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "network/envoy-external" in out and "network/envoy-internal" in out
    assert "sonarr.home.example" in out and "whoami.home.example" in out
    assert "protected by SecurityPolicy selfhosted/whoami" in out
    assert "redirect scheme=https (301)" in out
    assert "Problems: 0 errors, 0 warnings" in out


def test_check_json_schema() -> None:
    r = hp("check", str(EXAMPLE), *VARS, "-o", "json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["apiVersion"] == "homeplane.dev/v1alpha1" and doc["kind"] == "CheckReport"
    assert set(doc) >= {"summary", "gateways", "routes", "services", "policies", "diagnostics", "snapshot"}
    gw = {g["name"]: g for g in doc["gateways"]}
    https = next(ls for ls in gw["envoy-external"]["listeners"] if ls["name"] == "https")
    assert https["port"] == 443 and https["protocol"] == "HTTPS" and https["ready"]
    assert https["tls"]["certificates"][0]["secret"] == "network/home-example-tls"
    assert "*.home.example" in https["tls"]["certificates"][0]["dnsNames"]
    route = next(r for r in doc["routes"] if r["name"] == "whoami")
    assert route["hostnames"] == ["whoami.home.example"]
    assert route["parents"][0] == {
        "gateway": "network/envoy-external",
        "sectionName": "https",
        "accepted": True,
        "reason": "Accepted",
        "message": "Route is accepted",
        "resolvedRefs": True,
    }
    assert route["securityPolicies"] == ["selfhosted/whoami"]
    assert route["rules"][0]["backends"][0]["endpoints"] == {"ready": 1, "total": 1}
    svc = next(s for s in doc["services"] if s["name"] == "sonarr")
    assert svc["ports"][0]["endpoints"] == [{"address": "127.0.0.1", "port": 8989, "ready": True}]
    assert doc["summary"]["errors"] == 0


def test_check_exit_code_1_and_problems_grouped_by_file(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    shutil.copytree(EXAMPLE, work)
    (work / "downloads" / "sonarr.yaml").write_text(
        (work / "downloads" / "sonarr.yaml").read_text().replace("name: sonarr\n          port: 80", "name: sonar\n          port: 80")
    )
    (work / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n")
    r = hp("check", str(work), "--vars", str(work / "cluster-secrets.env"))
    assert r.returncode == 1
    assert "  broken.yaml" in r.stdout and "YAML syntax error" in r.stdout
    assert "  downloads/sonarr.yaml" in r.stdout
    assert "BackendNotFound" in r.stdout and "Service downloads/sonar not found" in r.stdout


def test_check_without_variables_warns_about_each_one() -> None:
    r = hp("check", str(EXAMPLE))
    assert "variable ${SECRET_DOMAIN} is not set" in r.stdout


def test_set_overrides_vars_file() -> None:
    r = hp("check", str(EXAMPLE), *VARS, "--set", "SECRET_DOMAIN=lab.test", "-o", "json")
    hosts = {h for rt in json.loads(r.stdout)["routes"] for h in rt["hostnames"]}
    assert hosts == {"sonarr.lab.test", "whoami.lab.test"}


def test_bad_arguments_are_clear() -> None:
    r = hp("check", "/no/such/dir")
    assert r.returncode == 2 and "path does not exist: /no/such/dir" in r.stderr
    r = hp("check", str(EXAMPLE), "--set", "bad name=x")
    assert r.returncode == 2 and "invalid" in r.stderr
    r = hp("get", "widgets", "-f", str(EXAMPLE))
    assert r.returncode == 2 and "unknown kind 'widgets'" in r.stderr
    r = hp("run", str(EXAMPLE), "--maglev-table-size", "1000")
    assert r.returncode == 2 and "--maglev-table-size must be one of 251, 509" in r.stderr


@pytest.mark.parametrize(
    "args,expect",
    [
        (["gateways", "-n", "network"], ["envoy-external", "envoy", "192.168.42.120", "True"]),
        (["httproutes", "-o", "wide"], ["whoami.home.example", "network/envoy-external/https=Accepted"]),
        (["svc", "-o", "wide"], ["sonarr", "ClusterIP", "1/1", "Endpoints"]),
        (["gatewayclass"], ["envoy", "gateway.envoyproxy.io/gatewayclass-controller", "True"]),
        (["securitypolicies", "-o", "wide"], ["whoami", "True", "HTTPRoute/whoami"]),
    ],
)
def test_get_tables(args: list[str], expect: list[str]) -> None:
    r = hp("get", *args, "-f", str(EXAMPLE), *VARS)
    assert r.returncode == 0, r.stderr
    for e in expect:
        assert e in r.stdout


def test_get_yaml_shows_computed_status() -> None:
    r = hp("get", "httproute", "sonarr", "-n", "downloads", "-o", "json", "-f", str(EXAMPLE), *VARS)
    doc = json.loads(r.stdout)
    assert doc["kind"] == "HTTPRoute" and doc["spec"]["hostnames"] == ["sonarr.home.example"]
    conds = {c["type"]: c for c in doc["status"]["parents"][0]["conditions"]}
    assert conds["Accepted"]["reason"] == "Accepted" and conds["ResolvedRefs"]["status"] == "True"
    r = hp("get", "gateway", "envoy-internal", "-o", "yaml", "-f", str(EXAMPLE), *VARS)
    assert "attachedRoutes: 1" in r.stdout and "reason: Programmed" in r.stdout
    r = hp("get", "gateway", "nope", "-f", str(EXAMPLE), *VARS)
    assert r.returncode == 1 and "not found" in r.stderr


L4_MANIFESTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: network}
spec:
  gatewayClassName: envoy
  listeners:
    - {name: ssh, protocol: TCP, port: 22, allowedRoutes: {namespaces: {from: All}}}
    - {name: pt, protocol: TLS, port: 443, hostname: "*.home.test", tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: ssh, namespace: dev}
spec:
  parentRefs: [{name: gw, namespace: network, sectionName: ssh}]
  rules: [{backendRefs: [{name: forgejo, port: 22}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: git, namespace: dev}
spec:
  parentRefs: [{name: gw, namespace: network, sectionName: pt}]
  hostnames: [git.home.test, git.other.test]
  rules: [{backendRefs: [{name: forgejo, port: 443}]}]
---
apiVersion: v1
kind: Service
metadata: {name: forgejo, namespace: dev}
spec: {ports: [{name: ssh, port: 22}, {name: https, port: 443}]}
"""


def test_check_and_get_show_tcp_and_tls_routes(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(L4_MANIFESTS)
    out = hp("check", str(tmp_path)).stdout
    assert "TCPRoute dev/ssh -> Service dev/forgejo:22 [0 ready]" in out
    # git.other.test is outside the listener's *.home.test: only git.home.test is taken
    assert "tls=passthrough" in out and "TLSRoute dev/git [git.home.test] -> Service dev/forgejo:443" in out
    doc = json.loads(hp("check", str(tmp_path), "-o", "json").stdout)
    pt = next(ls for ls in doc["gateways"][0]["listeners"] if ls["name"] == "pt")
    assert pt["l4Routes"][0]["hostnames"] == ["git.home.test"] and pt["l4Routes"][0]["served"] is True
    table = hp("get", "tlsroutes", "-o", "wide", "-f", str(tmp_path)).stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "HOSTNAMES", "BACKENDS", "PARENTS"]
    assert table[1].split() == ["dev", "git", "git.home.test,git.other.test", "forgejo:443", "network/gw/pt=Accepted"]


def test_an_internal_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from homeplane.importer import repo\n"
        "def boom(*a, **k):\n"
        "    raise KeyError('unexpected')\n"
        "repo.RENDERERS['app-template'] = boom\n"
        "from homeplane.cli import main\n"
        "sys.argv = ['homeplane', 'check', sys.argv[1]] + sys.argv[2:]\n"
        "main()\n"
    )
    fixture = str(REPO / "tests" / "fixtures" / "fluxrepo" / "kubernetes")
    r = subprocess.run([sys.executable, "-c", code, fixture], capture_output=True, text=True)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("homeplane: internal error while processing kubernetes/apps/media/jellyfin/app/helmrelease.yaml")
    assert "KeyError" in line
    r = subprocess.run([sys.executable, "-c", code, fixture, "--log-level", "debug"], capture_output=True, text=True)
    assert "Traceback" in r.stderr and r.returncode == 3


def test_a_repo_plus_extra_files_stays_a_flux_repo(tmp_path: Path) -> None:
    extra = tmp_path / "extra-secret.yaml"
    extra.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: extra-tls, namespace: network}\nstringData: {a: b}\n")
    fixture = REPO / "tests" / "fixtures" / "fluxrepo" / "kubernetes"
    alone = json.loads(hp("check", str(fixture), "--set", "SECRET_DOMAIN=x.test", "-o", "json").stdout)
    both = json.loads(hp("check", str(fixture), str(extra), "--set", "SECRET_DOMAIN=x.test", "-o", "json").stdout)
    assert [(g["namespace"], g["name"]) for g in both["gateways"]] == [(g["namespace"], g["name"]) for g in alone["gateways"]]
    assert both["summary"]["objects"] == alone["summary"]["objects"] + 1
    mode = [d["message"] for d in both["diagnostics"] if d["code"] == "LoadMode"]
    assert mode and "as a Flux repository" in mode[0] and "extra-secret.yaml" in mode[0]


def test_loaded_but_not_enforced_kinds_and_notes_in_text_output(tmp_path: Path) -> None:
    extra = tmp_path / "netpol.yaml"
    extra.write_text("apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata: {name: l2}\n"
                     "spec: {loadBalancerIPs: true}\n")
    out = hp("check", str(EXAMPLE), str(extra), *VARS).stdout
    first = out.splitlines()[0]
    # every served kind is acted on now (L2 announcements with run --l2-announcements)
    assert "not enforced" not in first and "28 objects: 25 served" in first, first
    assert "read as plain manifests" in out  # an info diagnostic, shown in text too


def test_a_yaml_error_in_a_file_a_kustomization_builds_is_reported(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "tests" / "fixtures" / "fluxrepo", repo)
    app_dir = repo / "kubernetes" / "apps" / "media" / "jellyfin" / "app"
    (app_dir / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: broken\n")
    k = app_dir / "kustomization.yaml"
    k.write_text(k.read_text().replace("resources:", "resources:\n  - broken.yaml", 1))
    out = json.loads(hp("check", str(repo / "kubernetes"), "--set", "SECRET_DOMAIN=x.test", "-o", "json").stdout)
    errs = [d for d in out["diagnostics"] if d["severity"] == "error" and d["file"].endswith("broken.yaml")]
    assert len(errs) == 1 and errs[0]["code"] == "YAMLSyntax" and errs[0]["line"] == 4


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        example = REPO / "examples" / "home"
        r = subprocess.run([sys.executable, "-m", "homeplane", "run", str(example), "--vars", str(example / "cluster-secrets.env"),
                            "--admin", f"127.0.0.1:{port}", "--state", str(tmp_path / "s.db"), "--no-external-dns",
                            "--no-certificates", "--log-level", "error"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"homeplane: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in r.stderr


def test_check_says_where_http3_cannot_be_served(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: plain, namespace: network}
spec:
  gatewayClassName: envoy
  listeners: [{name: http, protocol: HTTP, port: 80}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {name: quic, namespace: network}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: plain}]
  http3: {}
"""
    )
    out = hp("check", str(tmp_path)).stdout
    assert "ClientTrafficPolicy network/quic -> Gateway/network/plain  accepted; HTTP/3 not served: listener network/plain/http is HTTP, not HTTPS" in out
    doc = json.loads(hp("check", str(tmp_path), "-o", "json").stdout)
    (p,) = doc["policies"]
    prog = next(c for c in p["conditions"] if c["type"] == "Programmed")
    assert (prog["status"], prog["reason"]) == ("False", "NoHTTPSListener")


def _commands() -> list[str]:
    import typer.main

    from homeplane.cli import app

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", _commands())
def test_every_commands_help_renders(command: str) -> None:
    # (help text is rich markup: a "[/WORD]" in it once made `run --help` an internal error)
    out = hp(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: homeplane " + command in " ".join(out.stdout.split())
