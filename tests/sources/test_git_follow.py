"""``homeplane run git://…``: following a repository served by a real ``git daemon`` on loopback,
as Flux does — new revisions applied, a broken one refused (the last good keeps serving),
``homeplane reconcile``, a force-pushed rollback, an unreachable remote."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from homeplane.sources.git import GitRef, semver_match
from tests.conftest import EXAMPLE, corpus_or_skip
from tests.integration.test_run import free_port, wait_for

NEW_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: newapp, namespace: selfhosted}
spec:
  parentRefs: [{name: envoy-internal, namespace: network, sectionName: https}]
  hostnames: [newapp.${SECRET_DOMAIN}]
  rules: [{backendRefs: [{name: whoami, port: 80}]}]
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}).stdout.strip()


class Remote:
    """A bare repository served by git daemon, and a clone to push from."""

    def __init__(self, tmp: Path):
        self.srv = tmp / "srv"
        self.bare = self.srv / "home.git"
        self.bare.mkdir(parents=True)
        git(self.bare, "init", "--bare", "-q", "-b", "main")
        self.work = tmp / "work"
        self.work.mkdir()
        git(self.work, "init", "-q", "-b", "main")
        git(self.work, "remote", "add", "origin", str(self.bare))
        shutil.copytree(EXAMPLE, self.work / "kubernetes")
        self.port = free_port()
        self.daemon: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}",
                                        f"--base-path={self.srv}", "--export-all", str(self.srv)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(["git", "ls-remote", self.url], capture_output=True).returncode == 0, what="git daemon")

    def stop(self) -> None:
        if self.daemon:
            self.daemon.terminate()
            self.daemon.wait(5)

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/home.git"

    def commit(self, message: str, files: dict[str, str | None] | None = None, force_to: str | None = None) -> str:
        for name, text in (files or {}).items():
            p = self.work / "kubernetes" / name
            if text is None:
                p.unlink()
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text)
        if force_to:
            git(self.work, "reset", "-q", "--hard", force_to)
        else:
            git(self.work, "add", "-A")
            git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "--force", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path):
    r = Remote(tmp_path)
    yield r
    r.stop()


class Follower:
    def __init__(self, remote: Remote, tmp: Path, interval: str | None, extra: list[str] | None = None, target: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "vars.env").write_text("SECRET_DOMAIN=home.example\n")
        every = ["--interval", interval] if interval else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "homeplane", "run", target or remote.url, *every, "--vars", str(tmp / "vars.env"),
             "--admin", f"127.0.0.1:{self.port}", "--state", str(tmp / "state" / "state.db"),
             "--gateway-address", "network/envoy-external=127.0.0.1", "--gateway-address", "network/envoy-internal=127.0.0.1",
             "--port-map", f"80={free_port()},443={free_port()}", "--no-external-dns", "--no-certificates", *(extra or [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        wait_for(lambda: httpx.get(self.url + "/readyz").status_code == 200, what="readyz")

    def flux(self) -> dict:
        return httpx.get(self.url + "/status").json()["runtime"]["flux"]

    def routes(self) -> set[str]:
        return {r["name"] for r in httpx.get(self.url + "/status").json()["routes"]}

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=15)
        return out


def test_follows_pushes_refuses_broken_revisions_and_rolls_back(remote, tmp_path):
    first = remote.commit("initial")
    hp = Follower(remote, tmp_path, "1s")
    try:
        flux = hp.flux()
        assert flux["gitRepository"]["artifact"]["revision"] == f"main@sha1:{first}"
        assert flux["kustomization"]["lastAppliedRevision"] == f"main@sha1:{first}"
        assert flux["gitRepository"]["conditions"][0]["reason"] == "Succeeded"
        # a new route: served on the next fetch
        second = remote.commit("add newapp", {"selfhosted/newapp.yaml": NEW_ROUTE})
        wait_for(lambda: hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{second}", what="second revision")
        assert "newapp" in hp.routes()
        # a broken manifest: refused, the last good revision keeps serving, the status names it
        bad = remote.commit("broken", {"selfhosted/broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n"})
        ks = wait_for(lambda: (k := hp.flux()["kustomization"])["conditions"][0]["reason"] == "BuildFailed" and k, what="refused")
        assert bad in ks["conditions"][0]["message"] and "broken.yaml" in ks["conditions"][0]["message"]
        assert ks["lastAppliedRevision"] == f"main@sha1:{second}" and ks["lastAttemptedRevision"] == f"main@sha1:{bad}"
        assert "newapp" in hp.routes()
        # a fix is applied
        fixed = remote.commit("fix", {"selfhosted/broken.yaml": None})
        wait_for(lambda: hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{fixed}", what="fix applied")
        # a force-pushed rollback to the first commit: its tree is served again
        remote.commit("", force_to=first)
        wait_for(lambda: hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{first}", what="rollback")
        assert "newapp" not in hp.routes()
        # the remote goes away: the status says why, the last good revision keeps serving
        remote.stop()
        cond = wait_for(lambda: (c := hp.flux()["gitRepository"]["conditions"][0])["reason"] == "GitOperationFailed" and c, what="fetch failure")
        assert "127.0.0.1" in cond["message"]
        assert hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{first}"
        assert 'gotk_reconcile_condition{kind="GitRepository",name="flux-system",namespace="flux-system",status="False",type="Ready"} 1.0' in \
            httpx.get(hp.url + "/metrics").text
    finally:
        hp.stop()


def test_reconcile_fetches_now(remote, tmp_path):
    remote.commit("initial")
    hp = Follower(remote, tmp_path, "1h")
    try:
        second = remote.commit("add newapp", {"selfhosted/newapp.yaml": NEW_ROUTE})
        out = subprocess.run([sys.executable, "-m", "homeplane", "reconcile", "--admin", f"127.0.0.1:{hp.port}"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{second}", timeout=15, what="reconcile")
    finally:
        hp.stop()


def test_refs_and_semver():
    assert GitRef.parse("main").branch == "main" and GitRef.parse("tag:v1.2.0").tag == "v1.2.0"
    assert GitRef.parse("semver:>=1.0.0 <2.0.0").semver == ">=1.0.0 <2.0.0"
    assert semver_match((1, 4, 2), ">=1.0.0 <2.0.0") and not semver_match((2, 0, 0), ">=1.0.0 <2.0.0")
    assert semver_match((1, 2, 9), "~1.2") and not semver_match((1, 3, 0), "~1.2")
    assert semver_match((1, 9, 0), "^1.2.0") and not semver_match((2, 0, 0), "^1.2.0")
    assert semver_match((3, 1, 0), "1.x || 3.1.x") and not semver_match((2, 0, 0), "1.x || 3.1.x")
    # Masterminds' rules, as Flux applies them: missing parts are wildcards, carets at 0.x
    table = [("^0", (0, 5, 0), True), ("^0.0", (0, 0, 7), True), ("^0.0", (0, 1, 0), False), (">1", (1, 0, 1), False),
             (">1", (2, 0, 0), True), (">1.2", (1, 2, 5), False), ("<=1.2", (1, 2, 5), True), ("!=1.2", (1, 2, 5), False),
             (">= 1.0.0", (1, 0, 0), True), ("1.2 - 1.4.5", (1, 4, 5), True), ("1.2 - 1.4.5", (1, 4, 6), False),
             ("~>1.2", (1, 2, 9), True), ("1.X", (1, 9, 9), True), ("^0.2.3", (0, 3, 0), False), ("^0.0.3", (0, 0, 4), False),
             ("<=2.x", (3, 0, 0), False), ("*", (0, 0, 1), True)]
    assert [c for c, v, want in table if semver_match(v, c) != want] == []
    for bad in ("semver:", "tag:", "commit:", "commit:refs/remotes/origin/main"):
        with pytest.raises(Exception):
            GitRef.parse(bad)


def test_tag_and_semver_refs_fetch_the_right_tree(remote, tmp_path):
    from homeplane.sources.git import GitSource

    remote.commit("initial")
    git(remote.work, "tag", "v1.0.0")
    remote.commit("newer", {"selfhosted/newapp.yaml": NEW_ROUTE})
    git(remote.work, "tag", "v1.1.0")
    remote.commit("unreleased", {"selfhosted/other.yaml": NEW_ROUTE.replace("newapp", "other")})
    git(remote.work, "push", "-q", "origin", "--tags")
    rev, tree = GitSource(remote.url, GitRef(semver="~1.0"), tmp_path / "a").fetch()
    assert rev.startswith("v1.0.0@sha1:") and not (tree / "kubernetes/selfhosted/newapp.yaml").exists()
    rev, tree = GitSource(remote.url, GitRef(semver=">=1.0.0"), tmp_path / "b").fetch()
    assert rev.startswith("v1.1.0@sha1:") and (tree / "kubernetes/selfhosted/newapp.yaml").exists()
    assert not (tree / "kubernetes/selfhosted/other.yaml").exists()


RECEIVER = """
apiVersion: notification.toolkit.fluxcd.io/v1
kind: Receiver
metadata: {name: flux-system, namespace: flux-system}
spec:
  type: github
  events: [ping, push]
  secretRef: {name: github-webhook-token-secret}
  resources: [{apiVersion: source.toolkit.fluxcd.io/v1, kind: GitRepository, name: flux-system, namespace: flux-system}]
---
apiVersion: v1
kind: Secret
metadata: {name: github-webhook-token-secret, namespace: flux-system}
stringData: {token: s3cret}
"""


def test_a_github_receiver_reconciles_at_once(remote, tmp_path):
    import hashlib
    import hmac

    remote.commit("initial", {"flux/receiver.yaml": RECEIVER})
    hook_port = free_port()
    hp = Follower(remote, tmp_path, "1h", ["--receiver-address", f"127.0.0.1:{hook_port}"])
    try:
        second = remote.commit("add newapp", {"selfhosted/newapp.yaml": NEW_ROUTE})
        path = "/hook/" + hashlib.sha256(b"s3cret" + b"flux-system" + b"flux-system").hexdigest()
        body = b'{"ref": "refs/heads/main"}'
        sign = lambda key: "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()  # noqa: E731
        url = f"http://127.0.0.1:{hook_port}"
        # a path for another token: 404, and nothing is fetched
        other = "/hook/" + hashlib.sha256(b"wrong" + b"flux-system" + b"flux-system").hexdigest()
        assert httpx.post(url + other, content=body).status_code == 404
        assert httpx.post(url + path, content=body, headers={"X-Hub-Signature-256": sign(b"wrong"), "X-GitHub-Event": "push"}).status_code == 401
        assert httpx.post(url + path, content=body, headers={"X-Hub-Signature-256": sign(b"s3cret"), "X-GitHub-Event": "ping"}).text == "pong\n"
        assert hp.flux()["kustomization"]["lastAppliedRevision"] != f"main@sha1:{second}"
        served = httpx.get(hp.url + "/status").json()["runtime"]["receivers"]["served"]
        assert served == [{"name": "flux-system/flux-system", "type": "github", "webhookPath": path}]
        assert "s3cret" not in httpx.get(hp.url + "/status").text
        r = httpx.post(url + path, content=body, headers={"X-Hub-Signature-256": sign(b"s3cret"), "X-GitHub-Event": "push"})
        assert r.status_code == 200
        wait_for(lambda: hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{second}", timeout=10, what="webhook reconcile")
    finally:
        hp.stop()


def test_the_export_is_the_tree_of_regular_files(remote, tmp_path):
    """As Flux's artifact: symlinks (even to outside the tree) and .gitattributes export rules
    play no part; a commit pinned after following the branch shallowly is fetched all the same."""
    import os

    from homeplane.sources.git import GitSource

    first = remote.commit("initial")
    os.symlink("/etc/passwd", remote.work / "kubernetes" / "passwd-link")
    (remote.work / ".gitattributes").write_text("kubernetes/network/** export-ignore\n")
    remote.commit("attributes and a link")
    rev, tree = GitSource(remote.url, GitRef(branch="main"), tmp_path / "w").fetch()
    assert not (tree / "kubernetes" / "passwd-link").exists()
    assert sorted(p.name for p in (tree / "kubernetes" / "network").iterdir()) == sorted(
        p.name for p in (remote.work / "kubernetes" / "network").iterdir())
    rev, tree = GitSource(remote.url, GitRef(commit=first), tmp_path / "w").fetch()
    assert rev == f"sha1:{first}" and not (tree / ".gitattributes").exists()


def test_receiver_verification_with_hostile_headers():
    """Attacker's input: missing, malformed, non-ASCII and doubly-encoded signatures never pass and
    never raise."""
    import hashlib
    import hmac

    from homeplane.sources.receiver import Receiver, verify

    gh = Receiver("flux-system", "r", "github", ("push",), "tok", True)
    body = b'{"a": 1}'
    good = "sha256=" + hmac.new(b"tok", body, hashlib.sha256).hexdigest()
    assert verify(gh, {"X-Hub-Signature-256": good, "X-GitHub-Event": "push"}, body)[:2] == (200, True)
    for sig in ("", "sha256=", "sha256=é" * 10, "md5=" + "0" * 32, "sha256=" + good, good + "\x00"):
        assert verify(gh, {"X-Hub-Signature-256": sig, "X-GitHub-Event": "push"}, body)[0] == 401, sig
    assert verify(gh, {"X-Hub-Signature-256": good.upper(), "X-GitHub-Event": "push"}, body)[0] == 200  # hex either case, as go-github
    assert verify(gh, {"X-Hub-Signature-256": good, "X-GitHub-Event": "delete"}, body)[0] == 400
    gl = Receiver("flux-system", "r", "gitlab", (), "tok", True)
    assert verify(gl, {"X-Gitlab-Token": "tök"}, body)[0] == 401 and verify(gl, {}, body)[0] == 401
    assert verify(gl, {"x-gitlab-token": "tok"}, body)[:2] == (200, True)


FLUX_INSTANCE = """\
apiVersion: fluxcd.controlplane.io/v1
kind: FluxInstance
metadata: {{name: flux, namespace: flux-system}}
spec:
  distribution: {{version: "2.x"}}
  sync: {{kind: GitRepository, url: "{url}", ref: {ref}, path: kubernetes, interval: 1s}}
"""


def _get(hp: Follower, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeplane", "get", *args, "--admin", f"127.0.0.1:{hp.port}"],
                          capture_output=True, text=True, timeout=60)


def test_follows_the_repos_own_sync_declaration(remote, tmp_path):
    """``run ./clone --follow``: URL, ref, path and interval from the repo's FluxInstance; a
    change of ``sync.ref`` pushed to the repo is followed; ``get gitrepositories`` / ``get ks``."""
    (remote.work / "flux").mkdir()
    (remote.work / "flux/instance.yaml").write_text(FLUX_INSTANCE.format(url=remote.url, ref="refs/heads/live"))
    remote.commit("declare the sync")
    git(remote.work, "checkout", "-q", "-b", "live")
    live = remote.commit("live has newapp", {"selfhosted/newapp.yaml": NEW_ROUTE})
    git(remote.work, "push", "-q", "origin", "live")
    git(remote.work, "checkout", "-q", "main")
    hp = Follower(remote, tmp_path, None, target=str(remote.work), extra=["--follow"])
    try:
        flux = hp.flux()
        repo = flux["gitRepository"]
        assert repo["artifact"]["revision"] == f"live@sha1:{live}" and repo["interval"] == 1.0
        assert "FluxInstance flux-system/flux" in repo["declaredBy"] and repo["url"] == remote.url
        assert "newapp" in hp.routes()
        out = _get(hp, "gitrepositories")
        assert out.returncode == 0 and f"live@sha1:{live}" in out.stdout and "stored artifact" in out.stdout, out.stderr
        out = _get(hp, "ks", "flux-system", "-o", "json")
        assert json.loads(out.stdout)["conditions"][0]["message"] == f"Applied revision: live@sha1:{live}"
        # the branch followed declares main instead: followed at once, without a flag
        git(remote.work, "checkout", "-q", "live")
        (remote.work / "flux/instance.yaml").write_text(FLUX_INSTANCE.format(url=remote.url, ref="refs/heads/main"))
        git(remote.work, "commit", "-q", "-am", "back to main")
        git(remote.work, "push", "-q", "origin", "live")
        main = git(remote.work, "rev-parse", "main")
        wait_for(lambda: hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{main}", what="main followed")
        assert "newapp" not in hp.routes()
    finally:
        hp.stop()


def test_sync_declarations_of_each_form(tmp_path):
    from homeplane.sources.sync import find_sync

    (tmp_path / "a").mkdir()
    (tmp_path / "a/gotk-sync.yaml").write_text(
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata: {name: flux-system, namespace: flux-system}\n"
        "spec: {url: ssh://git@github.com/me/home, interval: 10m, ref: {branch: main, tag: v1, name: refs/pull/1/head}}\n---\n"
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: flux-system, namespace: flux-system}\n"
        "spec: {path: ./clusters/home, sourceRef: {kind: GitRepository, name: flux-system}}\n")
    spec = find_sync(tmp_path / "a")
    assert spec and spec.url == "ssh://git@github.com/me/home" and spec.interval == 600 and spec.path == "clusters/home"
    assert spec.ref == GitRef(name="refs/pull/1/head")  # Flux: name before semver, tag and branch
    (tmp_path / "none").mkdir()
    assert find_sync(tmp_path / "none") is None
    # a real repo declares it through the flux-instance chart's values
    spec = find_sync(corpus_or_skip() / "onedr0p-home-ops")
    assert spec and spec.url == "https://github.com/onedr0p/home-ops" and spec.ref == GitRef(branch="main")
    assert spec.path == "kubernetes/flux/cluster" and spec.interval == 3600


def test_get_kustomizations_from_files_without_a_running_instance():
    from tests.importer.test_fixture_repo import REPO

    out = subprocess.run([sys.executable, "-m", "homeplane", "get", "ks", "-f", str(REPO), "--set", "SECRET_DOMAIN=x",
                          "--admin", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    rows = {line.split()[1]: line for line in out.stdout.splitlines()[1:]}
    assert "builds without errors" in rows["jellyfin"] and "dependsOn cycle" in rows["cycle-b"]
    out = subprocess.run([sys.executable, "-m", "homeplane", "get", "gitrepositories", "--admin", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no running homeplane" in out.stderr


def test_a_hostile_sync_declaration_is_refused_part_by_part(tmp_path, remote):
    """Refs reach git's command line and paths the file system: a declared ref that is an
    option, a path that climbs out of the revision, an interval that would fetch in a loop are
    each dropped (and said), never used."""
    from homeplane.sources.git import GitError, GitSource
    from homeplane.sources.sync import find_sync

    marker = tmp_path / "PWNED"
    (tmp_path / "d").mkdir()
    (tmp_path / "d/sync.yaml").write_text(
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata: {name: flux-system, namespace: flux-system}\n"
        f"spec: {{url: '{remote.url}', interval: 1ms, ref: {{commit: '--upload-pack=touch {marker};'}}}}\n---\n"
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: flux-system, namespace: flux-system}\n"
        "spec: {path: ../../../../etc, sourceRef: {kind: GitRepository, name: flux-system}}\n")
    spec = find_sync(tmp_path / "d")
    assert spec and spec.ref == GitRef() and spec.path == "" and spec.interval is None
    assert len(spec.problems) == 3 and "hexadecimal" in spec.problems[0] and "leaves the repository" in spec.problems[1]
    remote.commit("initial")
    with pytest.raises(GitError):
        GitSource(f"file://{remote.bare}", GitRef(commit=f"--upload-pack=touch {marker};"), tmp_path / "w").fetch()
    with pytest.raises(GitError):
        GitSource(f"file://{remote.bare}", GitRef(branch="--upload-pack=x"), tmp_path / "w").fetch()
    assert not marker.exists()
    # the flags are checked the same way
    for bad in (["--ref", "commit:--upload-pack=x"], ["--path", "../x"], ["--interval", "1ms"]):
        out = subprocess.run([sys.executable, "-m", "homeplane", "run", remote.url, *bad, "--state", str(tmp_path / "s.db")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (bad, out.stderr)
    # --follow on a declaration whose URL is a local path, not a Git URL
    (tmp_path / "e").mkdir()
    (tmp_path / "e/sync.yaml").write_text(
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata: {name: flux-system, namespace: flux-system}\n"
        "spec: {url: /etc}\n")
    out = subprocess.run([sys.executable, "-m", "homeplane", "run", str(tmp_path / "e"), "--follow"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a Git URL" in out.stderr


def test_get_ks_blames_only_the_kustomization_at_fault(tmp_path):
    k = tmp_path / "kubernetes"
    (k / "flux/cluster").mkdir(parents=True)
    (k / "apps").mkdir()
    (k / "flux/cluster/ks.yaml").write_text("".join(
        f"---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {{name: {n}, namespace: flux-system}}\n"
        f"spec: {{path: {p}, sourceRef: {{kind: GitRepository, name: flux-system}}}}\n"
        for n, p in (("good", "./kubernetes/apps"), ("broken", "./kubernetes/nothere"))))
    (k / "apps/cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\ndata: {a: b}\n")
    out = subprocess.run([sys.executable, "-m", "homeplane", "get", "ks", "-f", str(tmp_path), "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    ready = {i["name"]: i["conditions"][0]["status"] for i in json.loads(out.stdout)["items"]}
    assert ready == {"flux-system/good": "True", "flux-system/broken": "False"}
