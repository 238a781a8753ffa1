"""Flux post-build variable substitution (``${VAR}`` and bash-style operators).

Flux's kustomize-controller runs its fork of drone/envsubst over each resource
before applying it. This module implements the same language:

=============================  ===============================================
``${var}``                     value (empty when unset, unless ``strict``)
``${var:-d}`` ``${var:=d}``    ``d`` when var is unset or empty (``d`` may nest ``${..}``)
``${var=d}``                   same (Flux treats ``=``/``:=``/``:-`` alike)
``${#var}``                    length
``${var^}`` ``${var^^}``       upper-case first / all
``${var,}`` ``${var,,}``       lower-case first / all
``${var:n}`` ``${var:n:len}``  substring
``${var#p}`` ``${var##p}``     strip shortest/longest glob match from the start
``${var%p}`` ``${var%%p}``     strip shortest/longest glob match from the end
``${var/p/r}`` ``${var//p/r}`` replace first/all occurrences of literal ``p``
``${var/#p/r}`` ``${var/%p/r}`` replace a literal prefix / suffix
``$$``                         a literal ``$`` (so ``$${var}`` gives ``${var}``)
=============================  ===============================================

Anything else that merely looks like a template (``$VAR``, ``$(VAR)``, ``{{ .x }}``,
``%VAR%``, ``%{x}``) is plain text and passes through untouched.

The parser and evaluator are separate: :func:`parse` turns text into nodes (and
raises :class:`SubstitutionError` with the offset of a malformed expression),
:func:`expand` evaluates nodes against a lookup.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

# Flux rejects substitute keys that are not shell identifiers.
VAR_NAME_RE = re.compile(r"^[_A-Za-z][_A-Za-z0-9]*$")

# No substitution may make a document larger than this (a manifest document is at most 3 MiB,
# api/yamlio.py): nested replacements grow exponentially, so the bound is checked as they run.
MAX_EXPANSION = 4 * 1024 * 1024

# Resources carrying this annotation or label with value "disabled" are left alone.
SUBSTITUTE_ANNOTATION = "kustomize.toolkit.fluxcd.io/substitute"


class SubstitutionError(ValueError):
    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Text:
    value: str


@dataclass(frozen=True, slots=True)
class Expr:
    name: str
    op: str = ""  # "", "#len", ":-", ":=", "=", ":?", ":+", "^", "^^", ",", ",,", ":", "#", "##", "%", "%%", "/", "//", "/#", "/%"
    args: tuple[tuple["Node", ...], ...] = ()
    offset: int = 0


Node = Text | Expr


class _Parser:
    def __init__(self, s: str):
        self.s = s
        self.i = 0

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def parse_top(self) -> tuple[Node, ...]:
        out: list[Node] = []
        buf: list[str] = []
        s = self.s
        n = len(s)
        while self.i < n:
            j = s.find("$", self.i)
            if j < 0:
                buf.append(s[self.i :])
                self.i = n
                break
            buf.append(s[self.i : j])
            self.i = j
            nxt = self.peek(1)
            if nxt == "$":  # escape: "$$" is a literal "$"
                buf.append("$")
                self.i += 2
                continue
            if nxt == "{":
                if buf:
                    out.append(Text("".join(buf)))
                    buf = []
                self.i += 2
                out.append(self.parse_expr(self.i - 2))
                continue
            buf.append("$")
            self.i += 1
        text = "".join(buf)
        if text:
            out.append(Text(text))
        return tuple(out)

    def _name(self, start: int) -> str:
        j = self.i
        s = self.s
        while j < len(s) and (s[j].isalnum() or s[j] == "_"):
            j += 1
        if j == self.i:
            raise SubstitutionError("unable to parse variable name", start)
        name = s[self.i : j]
        self.i = j
        return name

    def _close(self, start: int) -> None:
        if self.peek() != "}":
            raise SubstitutionError("bad substitution", start)
        self.i += 1

    def parse_expr(self, start: int) -> Expr:
        if self.peek() == "#":
            self.i += 1
            name = self._name(start)
            self._close(start)
            return Expr(name, "#len", (), start)
        name = self._name(start)
        c = self.peek()
        if c == "}":
            self.i += 1
            return Expr(name, "", (), start)
        if c == ":":
            if self.peek(1) in ("=", "-", "?", "+") and self.peek(1):
                op = ":" + self.peek(1)
                self.i += 2
                return Expr(name, op, self._default_args(start), start)
            self.i += 1
            first = self._param(start, stop=":}")
            args = [first]
            if self.peek() == ":":
                self.i += 1
                args.append(self._param(start, stop="}"))
            self._close(start)
            return Expr(name, ":", tuple(args), start)
        if c == "=":
            self.i += 1
            return Expr(name, "=", self._default_args(start), start)
        if c in (",", "^"):
            j = self.i
            while j < len(self.s) and j - self.i < 2 and self.s[j] in ",^":
                j += 1
            op = self.s[self.i : j]
            self.i = j
            if op not in (",", ",,", "^", "^^"):
                raise SubstitutionError("bad substitution", start)
            self._close(start)
            return Expr(name, op, (), start)
        if c == "/":
            op = "/"
            self.i += 1
            if self.peek() in ("/", "#", "%") and self.peek():
                op += self.peek()
                self.i += 1
            pattern = self._param(start, stop="/", escapes=True)
            if self.peek() != "/":
                raise SubstitutionError("bad substitution", start)
            self.i += 1
            repl = self._param(start, stop="}", escapes=True)
            self._close(start)
            return Expr(name, op, (pattern, repl), start)
        if c in ("#", "%"):
            op = c
            self.i += 1
            if self.peek() == c:
                op += c
                self.i += 1
            pattern = self._param(start, stop="}")
            self._close(start)
            return Expr(name, op, (pattern,), start)
        if c == "":
            raise SubstitutionError("missing closing brace", start)
        raise SubstitutionError("missing closing brace", start)

    def _default_args(self, start: int) -> tuple[tuple[Node, ...], ...]:
        arg = self._param(start, stop="}")
        self._close(start)
        return (arg,)

    def _param(self, start: int, stop: str, escapes: bool = False) -> tuple[Node, ...]:
        """Text up to a stop character, with nested ``${..}`` and ``$$`` escapes."""
        out: list[Node] = []
        buf: list[str] = []
        s = self.s
        while True:
            if self.i >= len(s):
                raise SubstitutionError("missing closing brace", start)
            c = s[self.i]
            if c in stop:
                break
            if c == "$" and self.peek(1) == "$":
                buf.append("$")
                self.i += 2
                continue
            if c == "$" and self.peek(1) == "{":
                if buf:
                    out.append(Text("".join(buf)))
                    buf = []
                self.i += 2
                out.append(self.parse_expr(self.i - 2))
                continue
            if escapes and c == "\\" and self.peek(1) in ("/", "\\") and self.peek(1):
                buf.append(self.peek(1))
                self.i += 2
                continue
            buf.append(c)
            self.i += 1
        if buf:
            out.append(Text("".join(buf)))
        return tuple(out)


def parse(text: str) -> tuple[Node, ...]:
    """Parse text into literal and expression nodes; raises SubstitutionError."""
    return _Parser(text).parse_top()


Lookup = Callable[[str], "str | None"]


@dataclass
class Expansion:
    """Result of :func:`substitute`: the text and the variables that were unset."""

    text: str
    missing: list[str] = field(default_factory=list)


_DEFAULT_OPS = {":-", ":=", "=", ":?", ":+"}


def _glob(pattern: str) -> re.Pattern[str]:
    # Flux's fork of path.Match lets "*" cross "/", like fnmatch does.
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


def _strip_prefix(value: str, pattern: str, longest: bool) -> str:
    rx = _glob(pattern)
    ends = range(len(value), -1, -1) if longest else range(0, len(value) + 1)
    for end in ends:
        if rx.match(value[:end]) and (end > 0 or longest is False and pattern == ""):
            return value[end:]
    return value


def _strip_suffix(value: str, pattern: str, longest: bool) -> str:
    rx = _glob(pattern)
    starts = range(0, len(value) + 1) if longest else range(len(value), -1, -1)
    for start in starts:
        if start < len(value) and rx.match(value[start:]):
            return value[:start]
    return value


def _substr(value: str, args: list[str]) -> str:
    try:
        pos = int(args[0])
    except ValueError:
        return value
    if pos < 0:
        pos = max(0, len(value) + pos)
    if len(args) == 1:
        return value[pos:]
    try:
        length = int(args[1])
    except ValueError:
        return value
    if length < 0:
        end = len(value) + length
        return "" if end < pos else value[pos:end]
    return value[pos : pos + length]


def _apply(op: str, value: str, args: list[str]) -> str:
    if op == "":
        return value
    if op == "#len":
        return str(len(value))
    if op in _DEFAULT_OPS:
        return value if value else "".join(args)
    if op == "^":
        return value[:1].upper() + value[1:]
    if op == "^^":
        return value.upper()
    if op == ",":
        return value[:1].lower() + value[1:]
    if op == ",,":
        return value.lower()
    if op == ":":
        return _substr(value, args)
    if op in ("#", "##"):
        return _strip_prefix(value, args[0], longest=op == "##")
    if op in ("%", "%%"):
        return _strip_suffix(value, args[0], longest=op == "%%")
    pattern, repl = args[0], args[1] if len(args) > 1 else ""
    if op == "//" and pattern and value.count(pattern) * max(len(repl) - len(pattern), 0) > MAX_EXPANSION:
        raise _TooLarge()
    if op == "/":
        return value.replace(pattern, repl, 1)
    if op == "//":
        return value.replace(pattern, repl) if pattern else value
    if op == "/#":
        return repl + value[len(pattern) :] if value.startswith(pattern) else value
    if op == "/%":
        return value[: len(value) - len(pattern)] + repl if value.endswith(pattern) else value
    raise SubstitutionError(f"unknown operator {op!r}", 0)


class _TooLarge(Exception):
    pass


def expand(nodes: tuple[Node, ...], lookup: Lookup, *, strict: bool = False, missing: list[str] | None = None) -> str:
    try:
        return _expand(nodes, lookup, strict, missing)
    except _TooLarge:
        offset = next((n.offset for n in nodes if isinstance(n, Expr)), 0)
        raise SubstitutionError(f"substitution would make the document larger than {MAX_EXPANSION:,} bytes", offset) from None


def _expand(nodes: tuple[Node, ...], lookup: Lookup, strict: bool, missing: list[str] | None) -> str:
    out: list[str] = []
    size = 0
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.value)
            size += len(node.value)
            if size > MAX_EXPANSION:
                raise _TooLarge()
            continue
        args = [_expand(a, lookup, strict, missing) for a in node.args]
        value = lookup(node.name)
        if value is None:
            if node.op not in _DEFAULT_OPS:
                if strict:
                    raise SubstitutionError(f"variable not set (strict mode): {node.name!r}", node.offset)
                if missing is not None:
                    missing.append(node.name)
            value = ""
        piece = _apply(node.op, value, args)
        size += len(piece)
        if size > MAX_EXPANSION:
            raise _TooLarge()
        out.append(piece)
    return "".join(out)


def substitute(text: str, variables: Mapping[str, str], *, strict: bool = False) -> Expansion:
    """Expand ``${..}`` expressions in text the way Flux post-build substitution does.

    Raises :class:`SubstitutionError` for malformed expressions (or, when ``strict``,
    for unset variables). Without ``strict`` an unset variable expands to the empty
    string, as in Flux; its name is listed in ``Expansion.missing``.
    """
    if "$" not in text:
        return Expansion(text)
    missing: list[str] = []
    result = expand(parse(text), variables.get, strict=strict, missing=missing)
    return Expansion(result, missing)


def offset_to_line(text: str, offset: int) -> int:
    """1-based line number of a character offset."""
    return text.count("\n", 0, offset) + 1
