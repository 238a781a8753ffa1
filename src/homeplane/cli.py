"""The ``homeplane`` command: check, get, run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from homeplane import __version__
from homeplane.api import registry
from homeplane.api.variables import VariablesError, load_vars_file, parse_set
from homeplane.pipeline import Inputs, Result, run_pipeline
from homeplane.render import render_check, table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="homeplane: serve a home-ops cluster's networking from its own Kubernetes manifests.",
)

PathsArg = typer.Argument(..., help="Manifest files or folders (searched recursively for *.yaml, *.yml).")
SetOpt = typer.Option([], "--set", help="A substitution variable NAME=VALUE (repeatable).")
VarsOpt = typer.Option([], "--vars", help="Variables file: dotenv, or a Kubernetes Secret/ConfigMap YAML (repeatable).")
NamespaceOpt = typer.Option("default", "--default-namespace", help="Namespace for objects that name none.")
NoSubstOpt = typer.Option(False, "--no-substitute", help="Do not apply Flux ${VAR} substitution.")
StrictOpt = typer.Option(False, "--strict", help="Unset variables are errors (Flux strict substitution).")


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"homeplane: {msg}", err=True)
    raise typer.Exit(code)


def _inputs(paths: list[Path], set_: list[str], vars_: list[Path], namespace: str, no_subst: bool, strict: bool) -> Inputs:
    variables: dict[str, str] = {}
    try:
        for f in vars_:
            variables.update(load_vars_file(Path(f)))
        variables.update(parse_set(set_))
    except VariablesError as e:
        _fail(str(e))
    for p in paths:
        if not Path(p).exists():
            _fail(f"path does not exist: {p}")
    return Inputs(
        paths=tuple(Path(p) for p in paths),
        variables=None if no_subst else variables,
        strict=strict,
        default_namespace=namespace,
    )


@app.command()
def check(
    paths: list[Path] = PathsArg,
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    output: str = typer.Option("text", "-o", "--output", help="text or json"),
    namespace: str = NamespaceOpt,
    no_substitute: bool = NoSubstOpt,
    strict: bool = StrictOpt,
) -> None:
    """Load manifests, resolve references and print what would be served, with every problem found.

    Exit code 0 when there are no errors, 1 when there are.
    """
    if output not in ("text", "json"):
        _fail("--output must be text or json")
    result = run_pipeline(_inputs(paths, set_, vars_, namespace, no_substitute, strict))
    if output == "json":
        typer.echo(json.dumps(result.report, indent=2, default=str))
    else:
        typer.echo(render_check(result.report))
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def get(
    kind: str = typer.Argument(..., help="Kind, kubectl style: gateways, httproute, svc, securitypolicies ..."),
    name: Optional[str] = typer.Argument(None),
    path: list[Path] = typer.Option([Path(".")], "-f", "--filename", help="Manifest files or folders."),
    ns: Optional[str] = typer.Option(None, "-n", "--namespace", help="Only this namespace."),
    output: str = typer.Option("table", "-o", "--output", help="table, wide, yaml or json"),
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    namespace: str = NamespaceOpt,
    no_substitute: bool = NoSubstOpt,
) -> None:
    """Show objects like `kubectl get`, with the status conditions homeplane computed."""
    info = registry.resolve_kind_name(kind)
    if info is None:
        known = ", ".join(sorted(k.kind for k in registry.SERVED_KINDS))
        _fail(f"unknown kind {kind!r}; served kinds: {known}")
    assert info is not None
    result = run_pipeline(_inputs(path, set_, vars_, namespace, no_substitute, False))
    objs = [
        o
        for o in result.load.objects
        if o.served and (o.group, o.kind) == (info.group, info.kind)
        and (name is None or o.name == name)
        and (ns is None or o.namespace == ns or o.namespace is None)
    ]
    if name is not None and not objs:
        _fail(f"{info.kind} {name!r} not found", 1)
    status = result.translation.status
    if output in ("yaml", "json"):
        docs = []
        for o in objs:
            d = dict(o.raw)
            if o.key in status:
                d["status"] = status[o.key]
            docs.append(d)
        payload: Any = docs[0] if name is not None and len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs}
        if output == "json":
            typer.echo(json.dumps(payload, indent=2, default=str))
        else:
            from ruamel.yaml import YAML

            y = YAML()
            y.default_flow_style = False
            y.dump(payload, sys.stdout)
        return
    if output not in ("table", "wide"):
        _fail("--output must be table, wide, yaml or json")
    from homeplane.tables import rows_for

    headers, rows = rows_for(info.kind, objs, result, wide=output == "wide")
    if not rows:
        typer.echo(f"No {info.kind} found.", err=True)
        return
    typer.echo(table(rows, headers))


@app.command()
def run(
    paths: list[Path] = PathsArg,
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    namespace: str = NamespaceOpt,
    no_substitute: bool = NoSubstOpt,
    admin: str = typer.Option("127.0.0.1:9901", "--admin", help="Admin endpoint address (host:port; port 0 picks one)."),
    state: Optional[Path] = typer.Option(
        None, "--state", help="State store file (SQLite). Default: $XDG_STATE_HOME/homeplane/state.db"
    ),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the manifests: load, translate, publish, and re-apply on every change."""
    from homeplane.runtime import Runtime
    from homeplane.store import SQLiteStore, StoreError

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    inputs = _inputs(paths, set_, vars_, namespace, no_substitute, False)
    host, _, port = admin.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--admin {admin!r}: expected host:port")
    if state is None:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        state = base / "homeplane" / "state.db"
    try:
        store = SQLiteStore(state)
    except StoreError as e:
        _fail(str(e))
        return
    rt = Runtime(inputs, store, admin_host=host, admin_port=int(port))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(rt.run())


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()


__all__ = ["app", "main", "Result"]
