"""YAML documents with line numbers: libyaml's event stream, composed here.

libyaml (through PyYAML's C parser) scans and parses; this module composes the events into
plain dicts, lists and scalars itself, because the composers on offer each fail real repos:
PyYAML's refuses an anchor name reused in a document and resolves YAML 1.1 (``yes`` is
true), and ruamel's round-trip loader is pure Python (about 2.5 ms for a ten-line manifest:
minutes for a large repo). Composing here also gives what homeplane needs and neither
offers: YAML 1.2 core-schema scalars (as ruamel), the line of every key and list item in a
side table keyed by field path, duplicate keys reported (the last one wins, as with
Kubernetes), aliases usable as keys, merge keys (``<<``), and bounds against hostile input
(document size, nesting depth, alias expansion) checked while composing, before anything is
expanded.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import yaml as _pyyaml
from yaml import events as ev

try:
    from yaml import CSafeLoader as _Loader, CSafeDumper as _Dumper
except ImportError:  # PyYAML built without libyaml: same events, slower
    from yaml import SafeLoader as _Loader, SafeDumper as _Dumper  # type: ignore[assignment]

Path = tuple[str | int, ...]

# A document separator at column 0: "---" optionally followed by space, a comment or content.
_SEPARATOR = re.compile(r"^---(?=\s|$)|^\.\.\.\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Chunk:
    """The raw text of one YAML document and where it starts in its file."""

    text: str
    index: int  # document index within the file, counting from 0
    first_line: int  # 1-based line of the chunk's first character


@dataclass
class Document:
    data: Any
    index: int
    line: int  # 1-based line where the document content starts
    positions: dict[Path, int] = field(default_factory=dict)
    warnings: list[tuple[int, str]] = field(default_factory=list)  # (line, message): duplicate keys

    def line_of(self, path: Path) -> int:
        """Closest known line for a field path (falls back to parents, then the document)."""
        p = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.line


def split_documents(text: str) -> list[Chunk]:
    """Split a multi-document stream on ``---`` lines, keeping line offsets.

    Chunks with no content (before a leading ``---``, comments only) are dropped
    and not counted, so document indexes match what kubectl reports.
    """
    chunks: list[Chunk] = []
    seps: list[tuple[int, int]] = []
    for m in _SEPARATOR.finditer(text):
        line_end = text.find("\n", m.start())
        line_end = len(text) if line_end < 0 else line_end + 1
        if m.group(0).startswith("..."):
            seps.append((m.start(), line_end))
        else:
            # "--- value" keeps the content after the marker on the same line.
            seps.append((m.start(), m.end()))
    pieces: list[tuple[int, int]] = []
    pos = 0
    for s, e in seps:
        pieces.append((pos, s))
        pos = e
    pieces.append((pos, len(text)))
    index = 0
    line, counted = 1, 0  # lines are counted once, moving forward (files can hold 10k documents)
    for s, e in pieces:
        body = text[s:e]
        if not _has_content(body):
            continue
        line += text.count("\n", counted, s)
        counted = s
        chunks.append(Chunk(body, index, line))
        index += 1
    return chunks


def _has_content(body: str) -> bool:
    for line in body.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.startswith("%"):
            return True
    return False


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None, code: str = "YAMLSyntax"):
        super().__init__(message)
        self.line = line
        self.code = code


# Limits against hostile YAML (a "billion laughs" alias bomb expands to gigabytes from a few
# hundred bytes). The API server refuses objects over 1.5 MiB, so a manifest document is never
# legitimately larger than this:
MAX_DOCUMENT_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 200
# Alias expansion, bounded as Kubernetes' own YAML decoder (go-yaml v3) bounds it: a document
# may expand to any size while few of its nodes come through aliases, but from 400,000 nodes
# on the share that comes through aliases must shrink (99 % allowed up to 400k, 10 % from 4M).
_ALIAS_RATIO_RANGE = (400_000, 4_000_000)
MAX_NODES = 4_000_000
# ...and the text aliases repeat: a few aliases of a megabyte string are few nodes but much text
MAX_ALIASED_BYTES = 16 * 1024 * 1024


def _allowed_alias_ratio(decoded: int) -> float:
    low, high = _ALIAS_RATIO_RANGE
    if decoded <= low:
        return 0.99
    if decoded >= high:
        return 0.10
    return 0.99 - 0.89 * (decoded - low) / (high - low)


# --- YAML 1.2 core schema (what ruamel and Kubernetes' newer decoders resolve) -------------

_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_TRUE = frozenset(("true", "True", "TRUE"))
_FALSE = frozenset(("false", "False", "FALSE"))


def resolve_plain(v: str) -> Any:
    """A plain (unquoted, untagged) scalar as the YAML 1.2 core schema reads it."""
    if v in _NULLS:
        return None
    c = v[0]
    if c in "tTfF":
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        return v
    if c in "0123456789+-.":
        if _INT.fullmatch(v):
            return int(v)
        if _OCT.fullmatch(v):
            return int(v[2:], 8)
        if _HEX.fullmatch(v):
            return int(v[2:], 16)
        if _FLOAT.fullmatch(v):
            return float(v)
        if _INF.fullmatch(v):
            return float("-inf") if c == "-" else float("inf")
        if _NAN.fullmatch(v):
            return float("nan")
    return v


def _tagged(tag: str, v: str, line: int) -> Any:
    """A scalar with an explicit tag. Standard tags convert; a custom tag (``!Ref``) keeps the
    text, as Kubernetes does with tags it does not know."""
    if tag in ("tag:yaml.org,2002:str", "!"):
        return v
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        if v in _TRUE or v in _FALSE:
            return v in _TRUE
        raise YamlSyntaxError(f"YAML error: {v!r} is not a !!bool", line)
    if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        r = resolve_plain(v)
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise YamlSyntaxError(f"YAML error: {v!r} is not a !!{tag.rsplit(':', 1)[1]}", line)
        return float(r) if tag.endswith("float") else r
    return v


_MERGE = "<<"


class _Composer:
    """Events of one document -> plain data, key lines, warnings; aliases are bounded."""

    __slots__ = ("events", "base", "positions", "warnings", "anchors", "decoded", "aliased", "aliased_bytes", "text")

    def __init__(self, events: Any, base: int):
        self.events = events
        self.base = base  # file line of the chunk's first line, minus one
        self.positions: dict[Path, int] = {}
        self.warnings: list[tuple[int, str]] = []
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, expanded nodes, text bytes)
        self.decoded = 0
        self.aliased = 0
        self.aliased_bytes = 0
        self.text = 0  # scalar bytes composed so far, aliases included

    def line(self, e: Any) -> int:
        return self.base + e.start_mark.line + 1

    def node(self, e: Any, path: Path, depth: int) -> tuple[Any, int]:
        """One node starting with event ``e``: (value, expanded size in nodes)."""
        t = type(e)
        text_before = self.text
        if t is ev.ScalarEvent:
            v = e.value
            if e.tag is not None and e.tag != "!":
                value: Any = _tagged(e.tag, v, self.line(e))
            elif e.implicit[0] and not e.style:
                value = resolve_plain(v) if v else None
            else:
                value = v
            size = 1
            self.text += len(v)
        elif t is ev.AliasEvent:
            got = self.anchors.get(e.anchor)
            if got is None:
                raise YamlSyntaxError(f"YAML syntax error: found undefined alias {e.anchor!r}", self.line(e))
            value, size, nbytes = got
            self.aliased += size
            self.decoded += size
            self.aliased_bytes += nbytes
            self.text += nbytes
            self._check()
            if isinstance(value, (dict, list)):
                value = copy.deepcopy(value)  # each use is its own object, as if written out
            return value, size
        elif t is ev.MappingStartEvent:
            value, size = self.mapping(e, path, depth)
        elif t is ev.SequenceStartEvent:
            value, size = self.sequence(e, path, depth)
        else:
            raise YamlSyntaxError(f"YAML syntax error: unexpected {t.__name__}", self.line(e))
        self.decoded += 1
        if e.anchor is not None:
            # a reused name refers to the latest node (YAML 1.2)
            self.anchors[e.anchor] = (value, size, self.text - text_before)
        return value, size

    def _check(self) -> None:
        d = self.decoded
        if self.aliased_bytes > MAX_ALIASED_BYTES:
            raise YamlSyntaxError(
                f"YAML document contains excessive aliasing: its aliases repeat more than {MAX_ALIASED_BYTES:,} "
                "bytes of text; document skipped",
                None,
                "YAMLTooLarge",
            )
        if d > MAX_NODES or (d > _ALIAS_RATIO_RANGE[0] and self.aliased / d > _allowed_alias_ratio(d)):
            raise YamlSyntaxError(
                "YAML document contains excessive aliasing: its aliases expand it to more than "
                f"{d:,} nodes (a YAML alias bomb?); document skipped",
                None,
                "YAMLTooLarge",
            )

    def _deeper(self, e: Any, depth: int) -> int:
        if depth >= MAX_DEPTH:
            raise YamlSyntaxError(f"YAML document is nested more than {MAX_DEPTH} levels deep", self.line(e), "YAMLTooLarge")
        return depth + 1

    def mapping(self, start: Any, path: Path, depth: int) -> tuple[dict[Any, Any], int]:
        depth = self._deeper(start, depth)
        out: dict[Any, Any] = {}
        merged: list[tuple[dict[Any, Any], int]] = []
        size = 1
        events = self.events
        while True:
            ke = next(events)
            if type(ke) is ev.MappingEndEvent:
                break
            key, ksize = self.node(ke, path, depth)
            if isinstance(key, (dict, list)):
                # a Kubernetes object is JSON: its keys are strings
                raise YamlSyntaxError("YAML error: a mapping or sequence cannot be a key in a Kubernetes object", self.line(ke))
            elif isinstance(key, float) or key is None:
                key = "null" if key is None else repr(key)
            ve = next(events)
            if key == _MERGE and type(ke) is ev.ScalarEvent and not ke.style:
                value, vsize = self.node(ve, path, depth)
                for m in value if isinstance(value, list) else [value]:
                    if not isinstance(m, dict):
                        raise YamlSyntaxError("YAML error: a merge key (<<) takes a mapping or a list of mappings", self.line(ve))
                    merged.append((m, vsize))
                continue
            child = path + (key,)
            line = self.line(ke)
            if key in out:
                self.warnings.append((line, f"duplicate key {key!r} (line {self.positions.get(child, '?')} too); the last one is used"))
            self.positions[child] = line
            value, vsize = self.node(ve, child, depth)
            out[key] = value
            size += ksize + vsize
        for m, msize in merged:  # explicit keys win; among merged maps, the first one listed
            for k, v in m.items():
                if k not in out:
                    out[k] = copy.deepcopy(v)
            size += msize
        return out, size

    def sequence(self, start: Any, path: Path, depth: int) -> tuple[list[Any], int]:
        depth = self._deeper(start, depth)
        out: list[Any] = []
        size = 1
        events = self.events
        while True:
            e = next(events)
            if type(e) is ev.SequenceEndEvent:
                break
            child = path + (len(out),)
            self.positions[child] = self.line(e)
            value, vsize = self.node(e, child, depth)
            out.append(value)
            size += vsize
        return out, size


def _events(text: str) -> Any:
    loader = _Loader(text)
    get = loader.get_event
    try:
        while True:
            e = get()
            if e is None or type(e) is ev.StreamEndEvent:
                return
            yield e
    finally:
        loader.dispose()


def _syntax_error(e: Exception, first_line: int) -> YamlSyntaxError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = first_line + mark.line if mark is not None else first_line
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    cmark = getattr(e, "context_mark", None)
    if context and cmark is not None and cmark is not mark:
        context += f" that starts at line {first_line + cmark.line}"
    return YamlSyntaxError(f"YAML syntax error: {problem}" + (f" ({context})" if context else ""), line)


def _compose(text: str, first_line: int) -> tuple[list[tuple[Any, int]], _Composer | None]:
    """All documents of a text: [(data, first line)], and the composer of the last one."""
    docs: list[tuple[Any, int]] = []
    comp = None
    events = _events(text)
    try:
        for e in events:
            if type(e) is ev.DocumentStartEvent:
                comp = _Composer(events, first_line - 1)
                root = next(events)
                if type(root) is ev.DocumentEndEvent:
                    docs.append((None, first_line))
                    continue
                data, _ = comp.node(root, (), 0)
                docs.append((data, comp.line(root)))
    except YamlSyntaxError:
        raise
    except _pyyaml.YAMLError as e:
        raise _syntax_error(e, first_line) from None
    except RecursionError:
        raise YamlSyntaxError(f"YAML document is nested more than {MAX_DEPTH} levels deep", first_line, "YAMLTooLarge") from None
    except (ValueError, TypeError, OverflowError) as e:  # odd scalars under explicit tags
        raise YamlSyntaxError(f"YAML error: {e}", first_line) from None
    return docs, comp


def parse_chunk(chunk: Chunk) -> Document | None:
    """Parse one document; line numbers are made relative to the file.

    Raises :class:`YamlSyntaxError` with a file line on malformed or oversized YAML.
    """
    if len(chunk.text) > MAX_DOCUMENT_BYTES:
        raise YamlSyntaxError(
            f"YAML document is {len(chunk.text):,} bytes, more than {MAX_DOCUMENT_BYTES:,} "
            "(the Kubernetes API refuses objects over 1.5 MiB); document skipped",
            chunk.first_line,
            "YAMLTooLarge",
        )
    try:
        docs, comp = _compose(chunk.text, chunk.first_line)
    except YamlSyntaxError as e:
        if e.line is None:
            e.line = chunk.first_line
        raise
    if not docs or docs[0][0] is None or comp is None:
        return None
    data, line = docs[0]
    return Document(data, chunk.index, line, comp.positions, comp.warnings)


def load_all(text: str) -> list[Any]:
    """Every document of a YAML text as plain data (no line numbers); for values, patches and
    text produced by homeplane itself. Raises :class:`YamlSyntaxError`."""
    return [d for d, _ in _compose(text, 1)[0]]


def load(text: str) -> Any:
    docs = load_all(text)
    return docs[0] if docs else None


def dump(data: Any) -> str:
    """Block-style YAML text for plain data (Flux substitution serialises objects with it)."""
    return _pyyaml.dump(data, Dumper=_Dumper, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1 << 30)
