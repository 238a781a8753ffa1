"""A Git source with Flux's ``GitRepository`` semantics, on the ``git`` command.

``ref`` is Flux's ``spec.ref``: a branch (default: the remote's HEAD), a tag, a semver range
over the tags (the highest match), or a commit. Each fetch is shallow where the ref allows it;
the checkout of a revision is an export of its tree (``git archive``) into its own folder
outside the state store, and older folders are removed. The revision is written as Flux writes
it: ``main@sha1:<sha>``, ``v1.2.3@sha1:<sha>``, or ``sha1:<sha>``.

Credentials as Flux takes them: an SSH key with known_hosts (``GIT_SSH_COMMAND``), or HTTPS
basic auth / a bearer token, given to git through ``GIT_CONFIG_*`` variables (never in argv).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tarfile
import io
from dataclasses import dataclass, field
from pathlib import Path

KEEP_REVISIONS = 2


class GitError(RuntimeError):
    pass


@dataclass(frozen=True)
class GitRef:
    branch: str = ""
    tag: str = ""
    semver: str = ""
    commit: str = ""

    @classmethod
    def parse(cls, text: str) -> GitRef:
        """``main``, ``branch:main``, ``tag:v1``, ``semver:>=1.0 <2``, ``commit:<sha>``."""
        kind, sep, value = text.partition(":")
        if not sep:
            return cls(branch=text) if text else cls()
        if kind in ("branch", "tag", "semver", "commit"):
            return cls(**{kind: value})
        raise GitError(f"--ref {text!r}: expected BRANCH, branch:NAME, tag:NAME, semver:RANGE or commit:SHA")

    def __str__(self) -> str:
        for k in ("commit", "semver", "tag", "branch"):
            if getattr(self, k):
                return f"{k}:{getattr(self, k)}"
        return "HEAD"


@dataclass
class Auth:
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    bearer_token: str = field(default="", repr=False)

    def env(self) -> dict[str, str]:
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true"}
        if self.ssh_key is not None:
            opts = f"-i {self.ssh_key} -o IdentitiesOnly=yes -o BatchMode=yes"
            opts += f" -o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes" if self.known_hosts else " -o StrictHostKeyChecking=accept-new"
            env["GIT_SSH_COMMAND"] = f"ssh {opts}"
        header = ""
        if self.bearer_token:
            header = f"Authorization: Bearer {self.bearer_token}"
        elif self.username or self.password:
            header = "Authorization: Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if header:
            env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader", GIT_CONFIG_VALUE_0=header)
        return env


def _semver(tag: str) -> tuple[int, int, int] | None:
    m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", tag)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def semver_match(version: tuple[int, int, int], constraint: str) -> bool:
    """Masterminds-style ranges as Flux takes them: comparators (``>=1.0.0 <2.0.0``, commas and
    spaces are AND, ``||`` is OR), ``~1.2`` (same minor), ``^1.2`` (same major), ``1.2.x``."""
    def one(c: str) -> bool:
        c = c.strip()
        if not c or c in ("*", "x"):
            return True
        m = re.fullmatch(r"(>=|<=|>|<|=|!=|~|\^)?\s*v?(\d+|x|\*)(?:\.(\d+|x|\*))?(?:\.(\d+|x|\*))?", c)
        if not m:
            raise GitError(f"semver range {constraint!r}: cannot read {c!r}")
        op = m.group(1) or "="
        parts = [m.group(i) for i in (2, 3, 4)]
        wild = next((i for i, p in enumerate(parts) if p is None or p in ("x", "*")), 3)
        nums = tuple(int(p) if p and p not in ("x", "*") else 0 for p in parts)
        if op == "=" and wild < 3:
            return version[:wild] == nums[:wild]
        if op == "~":
            return version >= nums and version[:2 if wild > 1 else 1] == nums[:2 if wild > 1 else 1]
        if op == "^":
            head = next((i for i, n in enumerate(nums) if n), 2)
            return version >= nums and version[:head + 1] == nums[:head + 1]
        return {"=": version == nums, "!=": version != nums, ">": version > nums, ">=": version >= nums,
                "<": version < nums, "<=": version <= nums}[op]

    return any(all(one(c) for c in re.split(r"[,\s]+(?=[<>=!~^\dv])", alt.strip()) if c.strip())
               for alt in constraint.split("||"))


class GitSource:
    def __init__(self, url: str, ref: GitRef, workdir: Path, auth: Auth | None = None, timeout: float = 60.0):
        self.url = url
        self.ref = ref
        self.workdir = workdir
        self.auth = auth or Auth()
        self.timeout = timeout
        self.repo = workdir / "repo.git"

    def _git(self, *args: str, cwd: Path | None = None, binary: bool = False) -> str | bytes:
        env = {**os.environ, **self.auth.env()}
        try:
            p = subprocess.run(["git", *args], cwd=cwd or self.repo, env=env, capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]}: no answer from {self.safe_url} in {self.timeout:.0f} s") from None
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip().splitlines()
            raise GitError(f"git {args[0]} {self.safe_url}: {err[-1] if err else 'failed'}")
        return p.stdout if binary else p.stdout.decode()

    @property
    def safe_url(self) -> str:
        return re.sub(r"//[^/@]*@", "//***@", self.url)

    def _init(self) -> None:
        if not (self.repo / "HEAD").exists():
            self.repo.mkdir(parents=True, exist_ok=True)
            self._git("init", "--bare", "-q", str(self.repo), cwd=self.workdir)

    def resolve(self) -> tuple[str, str]:
        """(the ref to fetch, Flux's name for the revision) from the remote's refs."""
        refs = {}
        for line in str(self._git("ls-remote", "--symref", self.url, cwd=self.workdir)).splitlines():
            if line.startswith("ref: "):
                target, name = line[5:].split("\t")
                refs["symref:" + name] = target
                continue
            sha, _, name = line.partition("\t")
            refs[name] = sha
        r = self.ref
        if r.commit:
            return r.commit, f"sha1:{r.commit}"
        if r.tag:
            name = f"refs/tags/{r.tag}"
            if name not in refs:
                raise GitError(f"tag {r.tag!r} not found at {self.safe_url}")
            return name, r.tag
        if r.semver:
            tags = [(v, n) for n in refs if n.startswith("refs/tags/") and not n.endswith("^{}")
                    for v in [_semver(n[len("refs/tags/"):])] if v and semver_match(v, r.semver)]
            if not tags:
                raise GitError(f"no tag at {self.safe_url} matches semver {r.semver!r}")
            best = max(tags)[1]
            return best, best[len("refs/tags/"):]
        branch = r.branch or refs.get("symref:HEAD", "refs/heads/main").removeprefix("refs/heads/")
        if f"refs/heads/{branch}" not in refs:
            raise GitError(f"branch {branch!r} not found at {self.safe_url}")
        return f"refs/heads/{branch}", branch

    def fetch(self, protect: tuple[Path, ...] = ()) -> tuple[str, Path]:
        """Fetch the ref; returns (revision as Flux writes it, the folder holding that revision's tree)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._init()
        ref, name = self.resolve()
        if self.ref.commit:
            self._git("fetch", "-q", "--no-tags", self.url, "+refs/heads/*:refs/remotes/origin/*")
            sha = str(self._git("rev-parse", "--verify", f"{self.ref.commit}^{{commit}}")).strip()
        else:
            self._git("fetch", "-q", "--no-tags", "--depth", "1", "--force", self.url, f"+{ref}:refs/homeplane/fetched")
            sha = str(self._git("rev-parse", "refs/homeplane/fetched^{commit}")).strip()
        revision = f"sha1:{sha}" if self.ref.commit else f"{name}@sha1:{sha}"
        out = self.workdir / "revisions" / sha
        if not out.exists():
            tmp = out.with_name(sha + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            data = self._git("archive", "--format=tar", sha, binary=True)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # type: ignore[arg-type]
                tar.extractall(tmp, filter="data")
            tmp.rename(out)
        os.utime(out)
        self._prune(keep=(out, *protect))
        return revision, out

    def _prune(self, keep: tuple[Path, ...]) -> None:
        """Old revisions go; the newest ones and those in use (the one served) stay."""
        revs = sorted((p for p in (self.workdir / "revisions").iterdir() if p.is_dir() and not p.name.endswith(".tmp")),
                      key=lambda p: p.stat().st_mtime)
        for old in revs[:-KEEP_REVISIONS]:
            if not any(old == k or k.is_relative_to(old) for k in keep):
                shutil.rmtree(old, ignore_errors=True)
