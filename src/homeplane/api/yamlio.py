"""YAML documents with line numbers, via ruamel.yaml's round-trip loader.

ruamel is used (not PyYAML) because real repos rely on YAML 1.2 details PyYAML
rejects, such as an anchor name reused within one document, and because its
round-trip nodes remember where each key came from. Documents are turned into
plain dicts/lists right away (the rest of homeplane never sees ruamel types);
line numbers are kept in a side table keyed by field path.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

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
    for s, e in pieces:
        body = text[s:e]
        if not _has_content(body):
            continue
        first_line = text.count("\n", 0, s) + 1
        chunks.append(Chunk(body, index, first_line))
        index += 1
    return chunks


def _has_content(body: str) -> bool:
    for line in body.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.startswith("%"):
            return True
    return False


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.line = line


def parse_chunk(chunk: Chunk) -> Document | None:
    """Parse one document; line numbers are made relative to the file.

    Raises :class:`YamlSyntaxError` with a file line on malformed YAML.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ReusedAnchorWarning: allowed by YAML 1.2
            node = _yaml().load(chunk.text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = chunk.first_line + mark.line if mark is not None else chunk.first_line
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        cmark = getattr(e, "context_mark", None)
        if context and cmark is not None:
            context += f" that starts at line {chunk.first_line + cmark.line}"
        msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        raise YamlSyntaxError(msg, line) from None
    except Exception as e:  # ruamel raises a few non-YAMLError types on odd input
        raise YamlSyntaxError(f"YAML error: {e}", chunk.first_line) from None
    if node is None:
        return None
    positions: dict[Path, int] = {}
    data = _plain(node, (), positions, chunk.first_line - 1, set())
    first = _first_line(node, chunk.first_line)
    return Document(data, chunk.index, first, positions)


def _first_line(node: Any, default: int) -> int:
    lc = getattr(node, "lc", None)
    if lc is not None and getattr(lc, "line", None) is not None:
        return default + lc.line
    return default


def _plain(node: Any, path: Path, positions: dict[Path, int], base: int, active: set[int]) -> Any:
    """Convert ruamel nodes to dict/list/scalars, recording key line numbers."""
    if isinstance(node, CommentedMap):
        if id(node) in active:  # a recursive alias: cut the cycle
            return None
        active.add(id(node))
        out: dict[Any, Any] = {}
        # merged keys (<<:) are included by ruamel's mapping interface
        for key in node:
            value = node[key]
            k = key if isinstance(key, (str, int, float, bool)) or key is None else str(key)
            child = path + (k,)
            try:
                ln = node.lc.key(key)[0]
                positions[child] = base + ln + 1
            except (KeyError, TypeError, AttributeError):
                pass
            out[k] = _plain(value, child, positions, base, active)
        active.discard(id(node))
        return out
    if isinstance(node, CommentedSeq):
        if id(node) in active:
            return None
        active.add(id(node))
        items = []
        for i, value in enumerate(node):
            child = path + (i,)
            try:
                positions[child] = base + node.lc.item(i)[0] + 1
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            items.append(_plain(value, child, positions, base, active))
        active.discard(id(node))
        return items
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if node is None:
        return None
    # timestamps, binary, sets: keep a printable form
    if hasattr(node, "isoformat"):
        return node.isoformat()
    return str(node)
