"""Request paths made canonical before routing and policy (pure; no I/O).

Routing and SecurityPolicy decide on the path, and the backend resolves it again: if the
two read ``/app/x/../admin`` differently, a rule on ``/app/admin`` is walked around. Envoy
Gateway therefore has Envoy rewrite every path first, and forwards the rewritten one. Its
defaults, which a ClientTrafficPolicy ``spec.path`` can change per listener:

1. escaped slashes (``%2F``, ``%5C``, either case): ``UnescapeAndRedirect`` - decode them and,
   after the steps below, answer a redirect to the result (``KeepUnchanged``,
   ``RejectRequest`` (400) and ``UnescapeAndForward`` are the other choices);
2. RFC 3986 §6 normalisation (Envoy's ``normalize_path``): percent-encoded unreserved
   characters decoded (other escapes kept as written), bytes that may not stand in a path
   escaped as Chromium's canonicaliser escapes them, a backslash read as a slash, dot segments
   removed (§5.2.4, never above ``/``; ``..;x`` and ``.;x`` count as dot segments, so Java
   path parameters cannot hide one); a NUL byte, raw or escaped, is refused (400);
3. runs of slashes merged into one (``disableMergeSlashes: true`` keeps them).

:func:`normalize` does all three on the path part of a request target (never the query).
:func:`is_canonical` is the cheap test the hot paths make first: most paths need nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

ESCAPED_SLASH_ACTIONS = ("KeepUnchanged", "RejectRequest", "UnescapeAndRedirect", "UnescapeAndForward")
DEFAULT_ESCAPED_SLASHES = "UnescapeAndRedirect"  # Envoy Gateway's default

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Bytes kept as they are in a path: printable ASCII but for those Chromium's path canonicaliser
# (which Envoy uses) escapes, and the backslash, read as a slash. _fastlane.c has the same set.
PATH_SAFE = bytes(c for c in range(0x21, 0x7F) if c not in b'"#<>\\^`{|}')
_PATH_SAFE = frozenset(PATH_SAFE)
# what is_canonical refuses, found in one C-speed scan: an unsafe byte, "%", ";", "//", or a
# dot segment ("/." or "/.." before "/", ";" or the end)
_NOT_CANONICAL = re.compile(
    rb"[^" + re.escape(bytes(c for c in PATH_SAFE if c not in b"%;")) + rb"]|//|/\.\.?(?:[/;]|$)"
)


class Verdict(IntEnum):
    FORWARD = 0  # route and forward the (possibly rewritten) path
    REDIRECT = 1  # answer a redirect to the rewritten path (escaped slashes were decoded)
    REJECT = 2  # answer 400


@dataclass(frozen=True, slots=True)
class PathSettings:
    """A listener's ClientTrafficPolicy ``spec.path``, lowered."""

    escaped_slashes: str = DEFAULT_ESCAPED_SLASHES
    merge_slashes: bool = True


DEFAULT = PathSettings()


def is_canonical(path: bytes) -> bool:
    """True when :func:`normalize` would return ``path`` unchanged under any settings: no
    escapes, backslashes, empty segments, dot segments or path parameters, only safe bytes."""
    return _NOT_CANONICAL.search(path) is None


class _Nul(ValueError):
    pass


def _decode_escapes(path: bytes, slashes: bool) -> tuple[bytes, bool]:
    """Decode %XX of unreserved characters (and of "/" and "\\" when ``slashes``), keep every
    other escape as written; returns the path and whether a slash was decoded."""
    out = bytearray()
    decoded_slash = False
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25 and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            v = int(path[i + 1 : i + 3], 16)
            if v in _UNRESERVED:
                out.append(v)
            elif v == 0:
                raise _Nul
            elif slashes and v in (0x2F, 0x5C):
                out.append(v)
                decoded_slash = True
            else:
                out += path[i : i + 3]
            i += 3
            continue
        if c == 0x25:
            # a "%" that starts no escape is escaped itself (as Chromium's canonicaliser does):
            # else "%2%65" would decode to a fresh "%2e" that the backend decodes once more
            out += b"%25"
            i += 1
            continue
        out.append(c)
        i += 1
    return bytes(out), decoded_slash


def _escape_unsafe(path: bytes) -> bytes:
    """Escape bytes that may not stand in a path (controls, spaces, quotes, non-ASCII ...)."""
    if not path.translate(None, PATH_SAFE):
        return path
    return b"".join(bytes((b,)) if b in _PATH_SAFE else b"%%%02X" % b for b in path)


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 for an absolute path: "." segments go, ".." removes the one before it
    (never above the root); a trailing dot segment leaves a trailing slash."""
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg[:3] == b"..;":
            seg = b".."
        elif seg[:2] == b".;":
            seg = b"."
        if seg == b".":
            if last:
                out.append(b"")
        elif seg == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        else:
            out.append(seg)
    return b"/" + b"/".join(out)


def _merge_slashes(path: bytes) -> bytes:
    while b"//" in path:
        path = path.replace(b"//", b"/")
    return path


def has_escaped_slash(path: bytes) -> bool:
    low = path.lower()
    return b"%2f" in low or b"%5c" in low


def normalize(path: bytes, settings: PathSettings = DEFAULT) -> tuple[bytes, Verdict]:
    """The canonical form of an origin-form path (without its query) and what to do with the
    request. ``path`` must start with "/"."""
    if is_canonical(path):
        return path, Verdict.FORWARD
    verdict = Verdict.FORWARD
    if b"#" in path or b"\0" in path:
        return path, Verdict.REJECT  # a fragment is never sent in a request target (Envoy: 400)
    action = settings.escaped_slashes
    escaped = has_escaped_slash(path)
    if escaped and action == "RejectRequest":
        return path, Verdict.REJECT
    unescape = escaped and action in ("UnescapeAndRedirect", "UnescapeAndForward")
    try:
        path, decoded = _decode_escapes(path, unescape)
    except _Nul:
        return path, Verdict.REJECT
    if decoded and action == "UnescapeAndRedirect":
        verdict = Verdict.REDIRECT
    path = _escape_unsafe(path.replace(b"\\", b"/"))
    path = remove_dot_segments(path)
    if settings.merge_slashes:
        path = _merge_slashes(path)
    return path, verdict


def match_path(path: bytes) -> bytes:
    """The path routing matches on: without path parameters (``/a;jsessionid=1/b`` is ``/a/b``),
    as Java servlet containers resolve it, so a rule on ``/a`` also covers ``/a;x/...``. The
    request is forwarded with its parameters."""
    if b";" not in path:
        return path
    return b"/".join(seg.split(b";", 1)[0] for seg in path.split(b"/"))


def valid_target_bytes(target: bytes) -> bool:
    """No control bytes, spaces, DEL or non-ASCII anywhere in a request target (llhttp refuses
    them in HTTP/1.1; an HTTP/2 :path must be held to the same before it is forwarded)."""
    return not target.translate(None, _TARGET_OK)


_TARGET_OK = bytes(range(0x21, 0x7F))
