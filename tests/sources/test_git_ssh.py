"""Following a repository over SSH with a deploy key, as Flux takes one: a real OpenSSH ``sshd``
on loopback, started by the test with its own host key; the client checks it against the
known_hosts it is given."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from homeplane.sources.git import Auth, GitError, GitRef, GitSource
from tests.integration.test_run import free_port, wait_for
from tests.sources.test_git_follow import NEW_ROUTE, Follower, Remote, git

SSHD = "/usr/sbin/sshd"


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


class Sshd:
    def __init__(self, tmp: Path):
        self.dir = tmp / "sshd"
        self.dir.mkdir()
        self.host_pub = keygen(self.dir / "host.key")
        self.deploy_pub = keygen(self.dir / "deploy.key")
        (self.dir / "authorized_keys").write_text(self.deploy_pub + "\n")
        self.port = free_port()
        (self.dir / "config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host.key'}\nPidFile {self.dir / 'pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.dir / "config")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._listening, what="sshd")
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_pub}\n")
        self.key = self.dir / "deploy.key"

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else "sshd exited"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def url(self, bare: Path) -> str:
        return f"ssh://{os.environ.get('USER') or 'root'}@127.0.0.1:{self.port}{bare}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def sshd(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("sshd in this test runs as root (CI does); run the suite as root")
    s = Sshd(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def remote(tmp_path):
    r = Remote(tmp_path)
    yield r
    r.stop()


def test_deploy_key_with_known_hosts(sshd, remote, tmp_path):
    first = remote.commit("initial")
    url = sshd.url(remote.bare)
    rev, tree = GitSource(url, GitRef(), tmp_path / "w1", Auth(ssh_key=sshd.key, known_hosts=sshd.known_hosts)).fetch()
    assert rev == f"main@sha1:{first}" and (tree / "kubernetes/selfhosted/whoami.yaml").is_file()
    # a server whose host key is not the one known: refused before any fetch
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {keygen(tmp_path / 'other.key')}\n")
    with pytest.raises(GitError, match="(?i)host key"):
        GitSource(url, GitRef(), tmp_path / "w2", Auth(ssh_key=sshd.key, known_hosts=wrong)).fetch()
    # a key the server does not know
    keygen(tmp_path / "stranger.key")
    with pytest.raises(GitError, match="(?i)permission denied"):
        GitSource(url, GitRef(), tmp_path / "w3", Auth(ssh_key=tmp_path / "stranger.key", known_hosts=sshd.known_hosts)).fetch()


def test_run_follows_over_ssh(sshd, remote, tmp_path):
    remote.commit("initial")
    url = sshd.url(remote.bare)
    hp = Follower(remote, tmp_path, "1s", target=url,
                  extra=["--git-ssh-key", str(sshd.key), "--git-known-hosts", str(sshd.known_hosts)])
    try:
        second = remote.commit("add newapp", {"selfhosted/newapp.yaml": NEW_ROUTE})
        wait_for(lambda: hp.flux()["kustomization"]["lastAppliedRevision"] == f"main@sha1:{second}", what="pushed revision")
        assert "newapp" in hp.routes()
        assert hp.flux()["gitRepository"]["url"] == url
        # the deploy key's path may show; its content never does
        assert sshd.key.read_text().splitlines()[1] not in hp.stop()
    finally:
        if hp.proc.poll() is None:
            hp.stop()
    assert git(remote.work, "rev-parse", "HEAD") == second
