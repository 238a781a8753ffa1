"""The package's layering, checked from the source: no import cycle inside gateway/ (lazy and
TYPE_CHECKING imports count), translate imports no data plane, and the layers' order holds."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "homeplane"


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(package: str) -> dict[str, set[str]]:
    """module -> homeplane modules it imports (anywhere in the file)."""
    out: dict[str, set[str]] = {}
    for path in (SRC.parent / package.replace(".", "/")).rglob("*.py"):
        mod = _module(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("homeplane"):
                deps.add(node.module)
                for alias in node.names:
                    deps.add(f"{node.module}.{alias.name}")  # "from pkg import module"
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("homeplane"))
        out[mod] = deps
    known = set(out)
    return {m: {d for d in deps if d in known and d != m} for m, deps in out.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_gateway_has_no_import_cycle() -> None:
    graph = imports("homeplane.gateway")
    graph = {m: {d for d in deps if not (m.startswith(d + ".") and m != d)} for m, deps in graph.items()}
    assert cycles(graph) == []


def test_translate_imports_no_data_plane() -> None:
    bad = []
    for path in (SRC / "translate").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                ("homeplane.gateway", "homeplane.l4", "homeplane.dns", "homeplane.store", "homeplane.runtime",
                 "homeplane.tunnel.mux", "homeplane.tunnel.edge", "homeplane.tunnel.connector", "homeplane.tunnel.cli")
            ):
                bad.append(f"{path.name}: {node.module}")
    assert bad == []


LAYERS = ["routing", "upstreams", "policies", "exchange", "frontends", "server"]


def test_gateway_layers_import_only_leftwards() -> None:
    """routing (pure) <- upstreams <- policies <- exchange <- frontends <- server; base and tls
    are leaves anyone may use, compile is pure and feeds the server."""
    graph = imports("homeplane.gateway")

    def layer(m: str) -> int | None:
        rest = m.removeprefix("homeplane.gateway.").split(".")[0]
        return LAYERS.index(rest) if rest in LAYERS else None

    wrong = []
    for m, deps in graph.items():
        lm = layer(m)
        for d in deps:
            ld = layer(d)
            if lm is not None and ld is not None and ld > lm:
                wrong.append(f"{m} -> {d}")
    assert wrong == []
