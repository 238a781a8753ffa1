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
from dataclasses import dataclass, field
from pathlib import Path

KEEP_REVISIONS = 2


class GitError(RuntimeError):
    pass


# what a branch, tag or reference name may hold here (git allows more; none of it starts an option)
_REF_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+@-]*")


@dataclass(frozen=True)
class GitRef:
    branch: str = ""
    tag: str = ""
    semver: str = ""
    commit: str = ""
    name: str = ""  # a full reference, ``refs/heads/main``, ``refs/pull/1/head`` (Flux's spec.ref.name)

    @classmethod
    def parse(cls, text: str) -> GitRef:
        """``main``, ``branch:main``, ``tag:v1``, ``semver:>=1.0 <2``, ``commit:<sha>``,
        ``refs/heads/main`` (or ``name:refs/…``)."""
        if text.startswith("refs/"):
            return cls(name=text).checked()
        kind, sep, value = text.partition(":")
        if not sep:
            return cls(branch=text).checked() if text else cls()
        if kind == "name" and not value.startswith("refs/"):
            raise GitError(f"--ref {text!r}: a reference name starts with refs/")
        if kind in ("branch", "tag", "semver", "commit", "name"):
            if not value.strip():
                raise GitError(f"--ref {text!r}: the {kind} is empty")
            return cls(**{kind: value.strip()}).checked()
        raise GitError(f"--ref {text!r}: expected BRANCH, branch:NAME, tag:NAME, semver:RANGE or commit:SHA")

    def checked(self) -> GitRef:
        """Itself, when each part is what it claims to be: refs reach git's command line, so a
        value that is not a plain reference (an option, a revision expression) is refused."""
        if self.commit and not re.fullmatch(r"[0-9a-f]{7,40}", self.commit):
            raise GitError(f"ref commit {self.commit!r}: a commit is its hexadecimal SHA-1")
        for kind in ("branch", "tag", "name"):
            value = getattr(self, kind)
            if value and (not _REF_NAME.fullmatch(value) or ".." in value or value.endswith((".lock", "/", "."))):
                raise GitError(f"ref {kind} {value!r} is not a valid Git reference name")
        if self.name and not self.name.startswith("refs/"):
            raise GitError(f"ref name {self.name!r}: a reference name starts with refs/")
        if self.semver.startswith("-"):
            raise GitError(f"ref semver {self.semver!r} is not a version range")
        return self

    def __str__(self) -> str:
        for k in ("commit", "name", "semver", "tag", "branch"):
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


def _redact(text: str) -> str:
    """Credentials out of URLs in text: any user info of http(s) (a token may be the user), a
    password elsewhere (``ssh://git@`` keeps its user, which is no secret)."""
    text = re.sub(r"(?i)(https?://)[^/\s]*@", r"\1***@", text)  # up to the last @ before the path
    text = re.sub(r"(?i)([?&](?:access_token|token|private_token|password)=)[^&\s]*", r"\1***", text)
    text = re.sub(r"(\w://[^/:@\s]*):[^/\s]*@", r"\1:***@", text)
    return re.sub(r"(?<![\w/])([\w.-]+):[^@\s/:]+@", r"\1:***@", text)  # user:password@host, as git echoes it


def _git_message(stderr: str) -> str:
    """The lines of git's stderr that say what went wrong: up to its first ``fatal:`` (ssh's
    reason comes just before it), without the advice that follows."""
    lines = [ln.strip() for ln in _redact(stderr).splitlines() if ln.strip()]
    fatal = next((i for i, ln in enumerate(lines) if ln.startswith("fatal:")), None)
    if fatal is None:
        return lines[-1] if lines else "failed"
    return "; ".join(lines[max(0, fatal - 1):fatal + 1])


def split_credentials(url: str) -> tuple[str, str, str]:
    """(URL without user:password@, user, password): credentials in an https URL move into the
    environment git reads (http.extraHeader), so they are in no process's arguments."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not (parts.username or parts.password):
        return url, "", ""
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.username or ""), unquote(parts.password or "")


def _semver(tag: str) -> tuple[int, int, int] | None:
    """A release tag's version (``v1.2.3``, ``1.2``; pre-releases and builds are not releases)."""
    m = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", tag)
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)) if m else None


_CONSTRAINT = re.compile(r"(=>|=<|>=|<=|!=|~>|>|<|=|~|\^)?\s*v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?")


def semver_match(version: tuple[int, int, int], constraint: str) -> bool:
    """Masterminds semver constraints, as Flux evaluates ``spec.ref.semver``: comparators joined
    by commas or spaces (AND) and ``||`` (OR), hyphen ranges ``1.2 - 1.4.5``, ``~``/``~>``, ``^``,
    and wildcards ``x``/``X``/``*`` or missing parts (``>1`` means 2.0.0 or later, ``<=1.2`` any
    1.2.x, ``^0.0`` below 0.1.0)."""
    def one(op: str, parts: list[str | None]) -> bool:
        wild = next((i for i, p in enumerate(parts) if p is None or p in ("x", "X", "*")), 3)
        low = tuple(int(p) if i < wild else 0 for i, p in enumerate(parts))  # type: ignore[arg-type]
        if wild == 0:
            up = None  # no upper bound
        else:
            b = list(low[:wild])
            b[-1] += 1
            up = tuple(b + [0] * (3 - len(b)))
        within = low <= version and (up is None or version < up)
        op = {"=>": ">=", "=<": "<=", "~>": "~"}.get(op, op or "=")
        if op == "=":
            return version == low if wild == 3 else within
        if op == "!=":
            return not (version == low if wild == 3 else within)
        if op == ">":
            return version > low if wild == 3 else (up is not None and version >= up)
        if op == ">=":
            return version >= low
        if op == "<":
            return version < low
        if op == "<=":
            return version <= low if wild == 3 else (up is None or version < up)
        if op == "~":
            top = (low[0] + 1, 0, 0) if wild <= 1 else (low[0], low[1] + 1, 0)
            return low <= version < top
        # ^: the left-most non-zero part may not change
        if low[0] > 0 or wild <= 1:
            top = (low[0] + 1, 0, 0)
        elif low[1] > 0 or wild == 2:
            top = (0, low[1] + 1, 0)
        else:
            top = (0, 0, low[2] + 1)
        return low <= version < top

    def conj(text: str) -> bool:
        text = re.sub(r"(\S+)\s+-\s+(\S+)", r">=\1, <=\2", text.strip())  # hyphen range
        pos, ok, seen = 0, True, False
        while pos < len(text):
            if text[pos] in " ,":
                pos += 1
                continue
            m = _CONSTRAINT.match(text, pos)
            if not m or m.end() == pos:
                raise GitError(f"semver range {constraint!r}: cannot read {text[pos:]!r}")
            ok = ok and one(m.group(1) or "", [m.group(2), m.group(3), m.group(4)])
            seen = True
            pos = m.end()
        if not seen:
            raise GitError(f"semver range {constraint!r} is empty")
        return ok

    return any(conj(alt) for alt in constraint.split("||"))


class GitSource:
    def __init__(self, url: str, ref: GitRef, workdir: Path, auth: Auth | None = None, timeout: float = 60.0):
        self.url = url
        self.ref = ref
        self.workdir = workdir
        self.auth = auth or Auth()
        self.timeout = timeout
        self.repo = workdir / "repo.git"

    def _git(self, *args: str, cwd: Path | None = None, binary: bool = False, stdin: bytes | None = None) -> str | bytes:
        env = {**os.environ, **self.auth.env()}
        # its own process group, so a timeout also stops git's remote helpers (and ssh)
        p = subprocess.Popen(["git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=30", *args], cwd=cwd or self.repo,
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err_b = p.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise GitError(f"git {args[0]}: no answer from {self.safe_url} in {self.timeout:.0f} s") from None
        if p.returncode != 0:
            raise GitError(f"git {args[0]} {self.safe_url}: {_git_message(err_b.decode(errors='replace'))}")
        return out if binary else out.decode()

    @property
    def safe_url(self) -> str:
        return _redact(self.url)

    def _init(self) -> None:
        if not (self.repo / "HEAD").exists():
            self.repo.mkdir(parents=True, exist_ok=True)
            self._git("init", "--bare", "-q", str(self.repo), cwd=self.workdir)

    def resolve(self) -> tuple[str, str]:
        """(the ref to fetch, Flux's name for the revision) from the remote's refs."""
        refs = {}
        for line in str(self._git("ls-remote", "--symref", "--", self.url, cwd=self.workdir)).splitlines():
            if line.startswith("ref: "):
                target, name = line[5:].split("\t")
                refs["symref:" + name] = target
                continue
            sha, _, name = line.partition("\t")
            refs[name] = sha
        r = self.ref
        if r.commit:
            return r.commit, f"sha1:{r.commit}"
        if r.name:
            if r.name not in refs:
                raise GitError(f"reference {r.name!r} not found at {self.safe_url}")
            return r.name, r.name
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
        self.ref.checked()
        if self.url.startswith("-"):
            raise GitError(f"{self.safe_url!r} is not a Git URL")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._init()
        ref, name = self.resolve()
        if self.ref.commit:
            try:  # the commit itself, shallow (servers allow it for full SHAs)
                self._git("fetch", "-q", "--no-tags", "--depth", "1", "--", self.url, self.ref.commit)
            except GitError:  # an abbreviated SHA: the history, unshallowed if an earlier fetch was shallow
                deepen = ["--unshallow"] if (self.repo / "shallow").exists() else []
                self._git("fetch", "-q", "--no-tags", *deepen, "--", self.url, "+refs/heads/*:refs/remotes/origin/*")
            sha = str(self._git("rev-parse", "--verify", f"{self.ref.commit}^{{commit}}")).strip()
        else:
            self._git("fetch", "-q", "--no-tags", "--depth", "1", "--force", "--", self.url, f"+{ref}:refs/homeplane/fetched")
            sha = str(self._git("rev-parse", "refs/homeplane/fetched^{commit}")).strip()
        revision = f"sha1:{sha}" if self.ref.commit else f"{name}@sha1:{sha}"
        out = self.workdir / "revisions" / sha
        if not out.exists():
            tmp = out.with_name(sha + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self._export(sha, tmp)
                tmp.rename(out)
            except OSError as e:
                raise GitError(f"revision {sha[:12]}: cannot write its tree: {e}") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        os.utime(out)
        self._prune(keep=(out, *protect))
        return revision, out

    def _export(self, sha: str, dest: Path) -> None:
        """The revision's regular files, byte for byte, as Flux's artifact holds them: symlinks,
        submodules and ``.gitattributes`` export rules play no part."""
        listing = bytes(self._git("ls-tree", "-r", "-z", "--full-tree", sha, binary=True))
        blobs: list[tuple[str, str, str]] = []
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta, _, path = entry.partition(b"\t")
            mode, kind, obj = meta.decode().split()
            name = path.decode(errors="replace")
            parts = Path(name).parts
            if kind != "blob" or mode not in ("100644", "100755") or ".." in parts or Path(name).is_absolute():
                continue
            blobs.append((mode, obj, name))
        data = bytes(self._git("cat-file", "--batch", binary=True, stdin="".join(f"{o}\n" for _, o, _ in blobs).encode()))
        pos = 0
        dest.mkdir(parents=True)
        for mode, obj, name in blobs:
            header_end = data.index(b"\n", pos)
            size = int(data[pos:header_end].split()[2])
            content = data[header_end + 1:header_end + 1 + size]
            pos = header_end + 1 + size + 1
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            if mode == "100755":
                target.chmod(0o755)

    def _prune(self, keep: tuple[Path, ...]) -> None:
        """Old revisions go; the newest ones and those in use (the one served) stay."""
        revs = sorted((p for p in (self.workdir / "revisions").iterdir() if p.is_dir() and not p.name.endswith(".tmp")),
                      key=lambda p: p.stat().st_mtime)
        for old in revs[:-KEEP_REVISIONS]:
            if not any(old == k or k.is_relative_to(old) for k in keep):
                shutil.rmtree(old, ignore_errors=True)
