"""``homeplane dns plan|sync|webhook``: external-dns's work, from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import typer

from homeplane.externaldns.config import Instance, instances, resolve_env
from homeplane.externaldns.providers import make_provider
from homeplane.externaldns.providers.base import Provider, ProviderError
from homeplane.externaldns.sources import SourceInput
from homeplane.externaldns.sync import PlanResult, plan

app = typer.Typer(no_args_is_help=True, help="DNS automation as the repo's external-dns instances configure it.")

FileOpt = typer.Option([], "-f", "--filename", help="Manifests (files or folders; repeatable).")
SetOpt = typer.Option([], "--set", help="A variable NAME=VALUE: substitution, and credentials such as CF_API_TOKEN.")
VarsOpt = typer.Option([], "--vars", help="Variables file (dotenv or Secret/ConfigMap YAML; repeatable).")
InstanceOpt = typer.Option([], "--instance", help="Only these instances (NAME or NAMESPACE/NAME; repeatable).")
WebhookOpt = typer.Option([], "--dns-webhook", help="Drive a webhook provider: INSTANCE=http://HOST:PORT (repeatable).")
ModeOpt = typer.Option("auto", "--mode", help="auto, flux or plain (as for check).")


def _setup(paths: list[Path], set_: list[str], vars_: list[Path], mode: str) -> tuple[Any, dict[str, str]]:
    from homeplane.cli import _inputs
    from homeplane.pipeline import run_pipeline

    if not paths:
        paths = [Path(".")]
    inputs = _inputs(paths, set_, vars_, "default", False, False, None, mode)
    return run_pipeline(inputs), dict(inputs.variables or {})


def _pick(all_: list[Instance], names: list[str]) -> list[Instance]:
    if not names:
        return all_
    picked = [i for i in all_ if i.name in names or i.id in names]
    missing = [n for n in names if not any(n in (i.name, i.id) for i in all_)]
    if missing:
        typer.echo(f"homeplane: no external-dns instance {', '.join(missing)} (found: {', '.join(i.id for i in all_) or 'none'})", err=True)
        raise typer.Exit(2)
    return picked


def _webhooks(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, url = it.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            typer.echo(f"homeplane: --dns-webhook {it!r}: expected INSTANCE=http://HOST:PORT", err=True)
            raise typer.Exit(2)
        out[name] = url
    return out


async def _run_all(result: Any, insts: list[Instance], variables: dict[str, str], webhooks: dict[str, str],
                   offline: bool, apply: bool) -> list[PlanResult]:
    src = SourceInput.from_result(result)
    out = []
    for inst in insts:
        provider: Provider | None = None
        error = None
        if not offline:
            try:
                provider = make_provider(inst, resolve_env(inst, result.load.objects, variables),
                                         resolve_env(inst, result.load.objects, variables, webhook=True), webhooks)
            except ProviderError as e:
                error = str(e)
        try:
            try:
                res, _ = await plan(inst, src, provider)
                if apply and provider is not None and res.changes and not res.error and not inst.flag_bool("dry-run"):
                    await provider.apply_changes(res.changes)
            except ProviderError as e:
                res, _ = await plan(inst, src, None)
                error = str(e)
        finally:
            if provider is not None:
                await provider.close()
        res.error = res.error or error
        out.append(res)
    return out


def _table(results: list[PlanResult], applied: bool) -> str:
    from homeplane.render import table

    def row(r: dict[str, Any]) -> list[str]:
        proxied = "" if "proxied" not in r else ("yes" if r["proxied"] else "no")
        return [r["name"], r["type"], ",".join(r["targets"]), str(r.get("ttl", "")), proxied, r.get("resource", "")]

    head = ["NAME", "TYPE", "TARGETS", "TTL", "PROXIED", "RESOURCE"]
    out: list[str] = []
    for res in results:
        doc = res.to_json()
        i = doc["instance"]
        out.append(f"external-dns {i['name']}: provider {i['provider']}, owner {i['txtOwnerId']}, policy {i['policy']}, "
                   f"sources {', '.join(i['sources']) or '(none)'}")
        out.append(table([row(r) for r in doc["records"]], head) if doc["records"] else "  no records wanted")
        out.append(f"  registry: {len(doc['registry'])} TXT records"
                   + (f" (e.g. {doc['registry'][0]['name']})" if doc["registry"] else ""))
        for p in doc["problems"]:
            out.append(f"  problem: {p}")
        if "changes" in doc:
            ch = doc["changes"]
            verb = "applied" if applied else "would apply"
            if not any(ch.values()):
                out.append("  in sync: no changes")
            for r in ch["create"]:
                out.append(f"  {verb}: create {r['name']} {r['type']} {','.join(r['targets'])}")
            for u in ch["update"]:
                out.append(f"  {verb}: update {u['new']['name']} {u['new']['type']} {','.join(u['old']['targets'])} -> {','.join(u['new']['targets'])}")
            for r in ch["delete"]:
                out.append(f"  {verb}: delete {r['name']} {r['type']} {','.join(r['targets'])}")
        for b in doc.get("blocked", []):
            out.append(f"  left alone: {b['record']['name']} is held by {b['heldBy']} ({b['existing']['type']} {','.join(b['existing']['targets'])})")
        if res.error:
            out.append(f"  provider not reached: {res.error}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _emit(results: list[PlanResult], output: str, applied: bool) -> None:
    if not results and output != "json":
        typer.echo("no external-dns HelmRelease (kubernetes-sigs chart) in these manifests")
        return
    if output == "json":
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        typer.echo(_table(results, applied), nl=False)
    if any(r.error for r in results):
        raise typer.Exit(1)


PathsArg = typer.Argument(None, help="Manifests (files or folders).")
OutputOpt = typer.Option("table", "-o", "--output", help="table or json")


def _plan_or_sync(paths: list[Path], set_: list[str], vars_: list[Path], output: str, instance: list[str],
                  dns_webhook: list[str], mode: str, offline: bool, apply: bool) -> None:
    if output not in ("table", "json"):
        raise typer.BadParameter("--output must be table or json")
    result, variables = _setup(paths, set_, vars_, mode)
    insts = _pick(instances(result.load.objects), instance)
    _emit(asyncio.run(_run_all(result, insts, variables, _webhooks(dns_webhook), offline, apply)), output, apply)


@app.command("plan")
def plan_cmd(
    paths: list[Path] = PathsArg, filename: list[Path] = FileOpt, set_: list[str] = SetOpt, vars_: list[Path] = VarsOpt,
    output: str = OutputOpt, instance: list[str] = InstanceOpt, dns_webhook: list[str] = WebhookOpt, mode: str = ModeOpt,
    offline: bool = typer.Option(False, "--offline", help="Do not ask the providers: desired records only."),
) -> None:
    """For each external-dns instance: the records wanted, their registry TXT records, and (when
    the provider answers) the changes a sync would make. Exit 1 when a provider could not be asked."""
    _plan_or_sync(list(paths or []) + list(filename), set_, vars_, output, instance, dns_webhook, mode, offline, apply=False)


@app.command("sync")
def sync_cmd(
    paths: list[Path] = PathsArg, filename: list[Path] = FileOpt, set_: list[str] = SetOpt, vars_: list[Path] = VarsOpt,
    output: str = OutputOpt, instance: list[str] = InstanceOpt, dns_webhook: list[str] = WebhookOpt, mode: str = ModeOpt,
) -> None:
    """Plan and apply once (``homeplane run`` keeps records in sync continuously)."""
    _plan_or_sync(list(paths or []) + list(filename), set_, vars_, output, instance, dns_webhook, mode, False, apply=True)


@app.command("webhook")
def webhook_cmd(
    paths: list[Path] = PathsArg, filename: list[Path] = FileOpt, set_: list[str] = SetOpt, vars_: list[Path] = VarsOpt,
    instance: str = typer.Option(..., "--instance", help="The instance whose provider to serve."),
    listen: str = typer.Option("127.0.0.1:8888", "--listen", help="HOST:PORT (external-dns's default webhook port is 8888)."),
    mode: str = ModeOpt,
) -> None:
    """Serve an instance's provider (Cloudflare, UniFi, RFC 2136) as an external-dns webhook, for
    a real external-dns run with ``--provider=webhook``."""
    from homeplane.externaldns.providers.webhook import serve

    result, variables = _setup(list(paths or []) + list(filename), set_, vars_, mode)
    (inst,) = _pick(instances(result.load.objects), [instance])
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter("--listen must be HOST:PORT")
    try:
        provider = make_provider(inst, resolve_env(inst, result.load.objects, variables),
                                 resolve_env(inst, result.load.objects, variables, webhook=True))
    except ProviderError as e:
        typer.echo(f"homeplane: {e}", err=True)
        raise typer.Exit(1)

    async def main() -> None:
        server = await serve(provider, inst.domain_filter, host, int(port))
        print(f"serving {inst.id} as an external-dns webhook on http://{host}:{server.port}", file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()
            await provider.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


__all__ = ["app"]
