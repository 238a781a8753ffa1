"""``homeplane policy``: trace a connection through the network policies, check the policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(help="Network policies: why a connection is allowed or denied (like `cilium policy trace`).",
                  no_args_is_help=True)

FileOpt = typer.Option([], "-f", "--filename", help="Manifests (files or folders; default: the current folder).")
SetOpt = typer.Option([], "--set", help="A variable NAME=VALUE for substitution.")
VarsOpt = typer.Option([], "--vars", help="Variables file (dotenv or Secret/ConfigMap YAML; repeatable).")
EndpointsOpt = typer.Option(None, "--endpoints", help="Where Services' pods run (as for run/check).")
ModeOpt = typer.Option("auto", "--mode", help="auto, flux or plain (as for check).")


def _snapshot(paths: list[Path], set_: list[str], vars_: list[Path], endpoints: Optional[Path], mode: str) -> Any:
    from homeplane.cli import _inputs
    from homeplane.pipeline import run_pipeline

    inputs = _inputs(paths or [Path(".")], set_, vars_, "default", False, False, endpoints, mode)
    return run_pipeline(inputs).translation.snapshot


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@app.command("trace")
def trace_cmd(
    source: str = typer.Option(..., "--from", help="NS/SERVICE, gateway:NS/NAME, pod:NS:KEY=VALUE,…, world, host or an address."),
    destination: str = typer.Option(..., "--to", help="The same, with :PORT[/PROTO] (a Service's port, or the pods')."),
    http_path: Optional[str] = typer.Option(None, "--http-path", help="Trace an HTTP request to this path (L7 rules)."),
    method: Optional[str] = typer.Option(None, "-X", "--http-method", help="The request's method (with --http-path; GET)."),
    header: list[str] = typer.Option([], "-H", "--header", help="A request header 'Name: value' (repeatable)."),
    path: list[Path] = FileOpt,
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    endpoints: Optional[Path] = EndpointsOpt,
    mode: str = ModeOpt,
    output: str = typer.Option("text", "-o", "--output", help="text or json."),
) -> None:
    """The verdict on one connection, with each policy and rule that decided it. Exit 1 when denied."""
    from homeplane.policy.trace import PolicyTraceError, trace

    if output not in ("text", "json"):
        _fail("-o must be text or json")
    headers = {}
    for h in header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            _fail(f"-H {h!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    snap = _snapshot(path, set_, vars_, endpoints, mode)
    try:
        res = trace(snap, source, destination, method, http_path, headers, headers.get("Host", headers.get("host", "")))
    except PolicyTraceError as e:
        _fail(str(e))
        return
    if output == "json":
        typer.echo(json.dumps(res.to_json(), indent=2))
    else:
        for line in res.render():
            typer.echo(line)
    raise typer.Exit(0 if res.allowed else 1)


@app.command("check")
def check_cmd(
    path: list[Path] = typer.Argument(None, help="Manifests (files or folders; default: the current folder)."),
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    endpoints: Optional[Path] = EndpointsOpt,
    mode: str = ModeOpt,
    output: str = typer.Option("text", "-o", "--output", help="text or json."),
) -> None:
    """Each policy: the pods and gateways it selects, what homeplane cannot enforce of it, and
    selectors that match nothing. Exit 1 when a policy could not be read."""
    from homeplane.policy.trace import check

    if output not in ("text", "json"):
        _fail("-o must be text or json")
    snap = _snapshot(list(path or []), set_, vars_, endpoints, mode)
    ps = snap.network_policy
    report = check(ps) if ps is not None else {}
    if output == "json":
        typer.echo(json.dumps(report, indent=2))
    elif not report:
        typer.echo("no network policies in the manifests")
    else:
        for policy, r in sorted(report.items()):
            typer.echo(policy)
            typer.echo(f"  selects: {', '.join(r['selects']) or 'nothing'}")
            for p in r["problems"]:
                typer.echo(f"  not enforced: {p}")
            for m in r["matchesNothing"]:
                typer.echo(f"  matches nothing: {m}")
    bad = any(p.startswith("not enforced:") for r in report.values() for p in r["problems"])
    raise typer.Exit(1 if bad else 0)
