"""kubectl's JSONPath templates (``-o jsonpath=…``), the part scripts use.

Text outside braces is printed as it is; ``{.a.b}``, ``{.items[*].metadata.name}`` (several
results joined by spaces), ``[n]``, ``[a:b]``, ``['key']``, ``.*``, ``..name`` (recursive),
filters ``[?(@.type=="Ready")]`` with ``==``/``!=`` (and ``[?(@.x)]``: present), quoted literals
``{"\\n"}``, ``{range .items[*]}…{end}``, and escaped dots in keys
(``.labels.app\\.kubernetes\\.io/name``). Maps and lists print as JSON, as kubectl does.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator


class JSONPathError(ValueError):
    pass


_MISSING = object()


def _closing(text: str, pos: int, opening: str, closing: str, escapes: bool = False) -> int:
    """The index of the ``closing`` that balances the ``opening`` at ``pos`` (they nest; quotes hide
    them; with ``escapes`` a backslash hides the next character inside quotes)."""
    depth, quote, i = 0, "", pos
    while i < len(text):
        ch = text[i]
        if quote:
            if escapes and ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise JSONPathError(f"unclosed {opening} in {text!r}")


def _blocks(template: str) -> list[tuple[str, str]]:
    """("text", literal) and ("expr", inside-the-braces) in order."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(template):
        start = template.find("{", pos)
        if start < 0:
            out.append(("text", template[pos:]))
            break
        if start > pos:
            out.append(("text", template[pos:start]))
        end = _closing(template, start, "{", "}", escapes=True)
        out.append(("expr", template[start + 1:end].strip()))
        pos = end + 1
    return out


_STEP = re.compile(r"""\.\.(?P<deep>(?:[^.\[\\]|\\.)+)|\.(?P<key>(?:[^.\[\\]|\\.)+)""")


def _steps(expr: str) -> list[tuple[str, str]]:
    expr = expr.strip()
    if expr.startswith(("$", "@")):
        expr = expr[1:]
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        if expr[pos] == "[":
            end = _closing(expr, pos, "[", "]")
            out.append(("bracket", expr[pos + 1:end].strip()))
            pos = end + 1
            continue
        m = _STEP.match(expr, pos)
        if not m:
            raise JSONPathError(f"cannot read {expr[pos:]!r} in {expr!r}")
        if m.group("deep") is not None:
            out.append(("deep", m.group("deep").replace("\\.", ".")))
        else:
            out.append(("key", m.group("key").replace("\\.", ".")))
        pos = m.end()
    return out


def _walk_all(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for c in children:
        yield from _walk_all(c)


def _filter(cond: str, items: list[Any]) -> list[Any]:
    m = re.fullmatch(r"\?\(\s*(@[\w.\\/\[\]'\"*-]*)\s*(?:(==|!=)\s*(.+?))?\s*\)", cond)
    if not m:
        raise JSONPathError(f"cannot read filter {cond!r}")
    path, op, raw = m.group(1), m.group(2), m.group(3)
    want: Any = None
    if op:
        raw = raw.strip()
        want = raw[1:-1] if raw[:1] in "\"'" and raw[-1:] == raw[:1] else json.loads(raw) if re.fullmatch(r"-?\d+(\.\d+)?|true|false|null", raw) else raw
    out = []
    for it in items:
        got = evaluate(path, it)
        if not op:
            if got:
                out.append(it)
        elif (got[:1] == [want]) == (op == "=="):
            out.append(it)
    return out


def evaluate(expr: str, root: Any) -> list[Any]:
    """The nodes an expression selects from ``root``."""
    nodes = [root]
    for kind, arg in _steps(expr):
        nxt: list[Any] = []
        for n in nodes:
            if kind == "key":
                if arg == "*":
                    nxt += list(n.values()) if isinstance(n, dict) else list(n) if isinstance(n, list) else []
                elif isinstance(n, dict) and arg in n:
                    nxt.append(n[arg])
            elif kind == "deep":
                nxt += [x[arg] for x in _walk_all(n) if isinstance(x, dict) and arg in x]
            else:
                items = n if isinstance(n, list) else list(n.values()) if isinstance(n, dict) and arg == "*" else None
                if arg == "*":
                    nxt += items or []
                elif arg.startswith("?"):
                    nxt += _filter(arg, n if isinstance(n, list) else [n])
                elif arg[:1] in "\"'":
                    key = arg[1:-1]
                    if isinstance(n, dict) and key in n:
                        nxt.append(n[key])
                elif ":" in arg and isinstance(n, list):
                    bounds = [x.strip() for x in arg.split(":")]
                    if len(bounds) > 3 or not all(re.fullmatch(r"-?\d*", x) for x in bounds):
                        raise JSONPathError(f"cannot read slice [{arg}]")
                    a, b, step = (bounds + ["", ""])[:3]
                    if step == "0":
                        raise JSONPathError(f"slice [{arg}]: the step cannot be 0")
                    nxt += n[int(a) if a else None:int(b) if b else None:int(step) if step else None]
                elif re.fullmatch(r"-?\d+", arg) and isinstance(n, list):
                    i = int(arg)
                    if -len(n) <= i < len(n):
                        nxt.append(n[i])
                elif not re.fullmatch(r"-?\d+|[\d\s:-]*", arg):
                    raise JSONPathError(f"cannot read [{arg}]")
        nodes = nxt
    return nodes


def _show(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def render(template: str, data: Any) -> str:
    """The template applied to ``data`` (kubectl's ``-o jsonpath=``); a template that cannot be
    read is a :class:`JSONPathError`."""
    try:
        blocks = _blocks(template)
        out, _ = _render(blocks, 0, data, top=True)
    except (ValueError, IndexError, TypeError) as e:
        if isinstance(e, JSONPathError):
            raise
        raise JSONPathError(f"{template!r}: {e}") from None
    return out


def _render(blocks: list[tuple[str, str]], i: int, data: Any, top: bool = False) -> tuple[str, int]:
    out: list[str] = []
    while i < len(blocks):
        kind, text = blocks[i]
        if kind == "text":
            out.append(text)
        elif text == "end":
            if top:
                raise JSONPathError("{end} without {range}")
            return "".join(out), i
        elif text.startswith("range "):
            items = evaluate(text[6:], data)
            if len(items) == 1 and isinstance(items[0], list):
                items = items[0]
            end = i
            for item in items:
                body, end = _render(blocks, i + 1, item)
                out.append(body)
            if not items:  # find the matching end without output
                _, end = _render(blocks, i + 1, _MISSING)
            i = end
        elif text[:1] in "\"'":
            if len(text) < 2 or text[-1] != text[0]:
                raise JSONPathError(f"cannot read the literal {text!r}")
            out.append(json.loads(text, strict=False) if text[0] == '"' else text[1:-1])
        elif data is not _MISSING:
            out.append(" ".join(_show(v) for v in evaluate(text, data)))
        i += 1
    if not top:
        raise JSONPathError("{range} without {end}")
    return "".join(out), i
