"""Printing what ``get`` found: tables (rich on a terminal, plain text otherwise), ``-o name``,
``-o jsonpath=…``."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from homeplane.render import table


def use_rich(stream: TextIO) -> bool:
    """Colour and rich tables only on a terminal, and never with ``NO_COLOR`` set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def print_table(headers: list[str], rows: list[list[str]], stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    if not use_rich(out):
        out.write(table(rows, headers) + "\n")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(box=None, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 3, 0, 0))
    # as kubectl: never cut a column to the terminal's width (lines may wrap instead)
    width = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, h in enumerate(headers)) if rows else 80
    for h in headers:
        t.add_column(h, no_wrap=True)
    styles = {"True": "green", "False": "red", "Unknown": "yellow"}
    for r in rows:
        t.add_row(*[f"[{styles[c]}]{c}[/]" if c in styles else escape(c) for c in r])
    Console(file=out, highlight=False, width=width).print(t)


def resource_name(obj: Any) -> str:
    """``-o name``: ``kind.group/name`` (``kind/name`` for the core group), as kubectl prints it."""
    kind = obj.kind.lower()
    return f"{kind}.{obj.group}/{obj.name}" if obj.group else f"{kind}/{obj.name}"


def jsonpath_template(output: str) -> str | None:
    """The template of ``-o jsonpath=…`` (quotes around it taken off), else None."""
    if not output.startswith("jsonpath="):
        return None
    t = output[len("jsonpath="):]
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        t = t[1:-1]
    return t
