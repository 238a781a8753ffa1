"""The ``homeplane`` command: check, get, run."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from homeplane import __version__
from homeplane.api.variables import VariablesError, load_vars_file, parse_set
from homeplane.pipeline import Inputs, Result, run_pipeline
from homeplane.render import render_check, table
from homeplane.translate import TranslateOptions

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="homeplane: serve a home-ops cluster's networking from its own Kubernetes manifests.",
)

def _version(value: bool) -> None:
    if value:
        typer.echo(f"homeplane {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """homeplane: serve a home-ops cluster's networking from its own Kubernetes manifests."""


PathsArg = typer.Argument(..., help="Manifest files or folders (searched recursively for *.yaml, *.yml).")
SetOpt = typer.Option([], "--set", help="A substitution variable NAME=VALUE (repeatable).")
VarsOpt = typer.Option([], "--vars", help="Variables file: dotenv, or a Kubernetes Secret/ConfigMap YAML (repeatable).")
NamespaceOpt = typer.Option("default", "--default-namespace", help="Namespace for objects that name none.")
NoSubstOpt = typer.Option(False, "--no-substitute", help="Do not apply Flux ${VAR} substitution.")
StrictOpt = typer.Option(False, "--strict", help="Unset variables are errors (Flux strict substitution).")
EndpointsOpt = typer.Option(
    None, "--endpoints", help="Where Services' pods run: YAML of NAMESPACE/SERVICE[:PORT] -> [host:port, ...]."
)
ModeOpt = typer.Option("auto", "--mode", help="auto (Flux repo if it has Flux Kustomizations), flux, or plain.")
MergeOpt = typer.Option(
    False, "--merge-gateways", help="Envoy Gateway's merged gateways for every class: Gateways share one address, "
    "listeners on a port told apart by hostname/SNI (as EnvoyProxy mergeGateways: true does for its class)."
)
AgeKeyOpt = typer.Option([], "--age-key", help="An age key file for SOPS-encrypted files (repeatable; "
                         "also $SOPS_AGE_KEY_FILE, $SOPS_AGE_KEY).")
LogLevelOpt = typer.Option("warning", "--log-level", help="debug shows tracebacks of internal errors too.")


def _logging(level: str, log_format: str = "text") -> None:
    """Process logs on stderr, one line each (text or JSON); the access log on stdout, each
    line exactly as its format makes it (nothing before the ``{``), as Envoy writes it."""
    from homeplane.observe.logs import setup_logging

    if log_format not in ("text", "json"):
        _fail("--log-format must be text or json")
    setup_logging(getattr(logging, level.upper(), logging.INFO), log_format)


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"homeplane: {msg}", err=True)
    raise typer.Exit(code)


def _inputs(
    paths: list[Path],
    set_: list[str],
    vars_: list[Path],
    namespace: str,
    no_subst: bool,
    strict: bool,
    endpoints: Path | None = None,
    mode: str = "auto",
    merge_gateways: bool = False,
    age_keys: Sequence[Path] = (),
) -> Inputs:
    from homeplane.importer.sops import Decryptor, KeyFileError, user_identities

    variables: dict[str, str] = {}
    try:
        identities = user_identities(list(age_keys))
        for f in vars_:
            variables.update(load_vars_file(Path(f), Decryptor(identities)))
        variables.update(parse_set(set_))
    except (VariablesError, KeyFileError) as e:
        _fail(str(e))
    for p in paths:
        if not Path(p).exists():
            _fail(f"path does not exist: {p}")
    if endpoints is not None and not Path(endpoints).is_file():
        _fail(f"--endpoints: no such file: {endpoints}")
    if mode not in ("auto", "flux", "plain"):
        _fail("--mode must be auto, flux or plain")
    if mode == "flux" and not Path(paths[0]).is_dir():
        _fail("--mode flux takes the repository's folder first (more paths add their objects to it)")
    return Inputs(
        paths=tuple(Path(p) for p in paths),
        variables=None if no_subst else variables,
        strict=strict,
        default_namespace=namespace,
        mode=mode,
        endpoints=Path(endpoints) if endpoints else None,
        translate=TranslateOptions(merge_gateways=merge_gateways),
        age_identities=tuple(identities),
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
    endpoints: Optional[Path] = EndpointsOpt,
    mode: str = ModeOpt,
    log_level: str = LogLevelOpt,
    merge_gateways: bool = MergeOpt,
    age_key: list[Path] = AgeKeyOpt,
) -> None:
    """Load manifests, resolve references and print what would be served, with every problem found.

    Exit code 0 when there are no errors, 1 when there are.
    """
    _logging(log_level)
    if output not in ("text", "json"):
        _fail("--output must be text or json")
    result = run_pipeline(_inputs(paths, set_, vars_, namespace, no_substitute, strict, endpoints, mode, merge_gateways, age_key))
    if output == "json":
        typer.echo(json.dumps(result.report, indent=2, default=str))
    else:
        typer.echo(render_check(result.report))
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def get(
    kind: str = typer.Argument(..., help="Kind, kubectl style: gateways, httproute, svc, hr, cnp, cert … (KIND.GROUP to pick one)."),
    name: Optional[str] = typer.Argument(None),
    path: list[Path] = typer.Option([], "-f", "--filename", help="Manifest files or folders (default: the current folder; "
                                    "for gitrepositories/kustomizations, -f reads files instead of the running homeplane)."),
    ns: Optional[str] = typer.Option(None, "-n", "--namespace", help="Only this namespace."),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces", help="Every namespace (also the default: without "
                                        "a cluster there is no current namespace)."),
    selector: Optional[str] = typer.Option(None, "-l", "--selector", help="Label selector: app=x,tier!=db,env in (a,b),!legacy"),
    output: str = typer.Option("table", "-o", "--output", help="table, wide, yaml, json, name or jsonpath=TEMPLATE"),
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    namespace: str = NamespaceOpt,
    no_substitute: bool = NoSubstOpt,
    endpoints: Optional[Path] = EndpointsOpt,
    mode: str = ModeOpt,
    log_level: str = LogLevelOpt,
    merge_gateways: bool = MergeOpt,
    age_key: list[Path] = AgeKeyOpt,
    state: Optional[str] = typer.Option(None, "--state", help="The state store `run` uses (certificates: READY and dates; "
                                        "nodes: an etcd://… store); default as for run."),
    admin: str = typer.Option("127.0.0.1:9901", "--admin", help="gitrepositories, kustomizations: the running homeplane to ask."),
) -> None:
    """Show objects like `kubectl get`, with the status conditions homeplane computed.

    Every kind the manifests hold; served kinds with their status. `gitrepositories` and
    `kustomizations` (`ks`) show Flux's view, like `flux get sources git` and `flux get ks`: from
    the running homeplane at --admin, else (Kustomizations) from the files."""
    from homeplane.api.selectors import parse_selector, selector_matches
    from homeplane.kubectl import kinds
    from homeplane.kubectl.jsonpath import JSONPathError, render
    from homeplane.kubectl.output import jsonpath_template, print_table, resource_name

    _logging(log_level)
    if all_namespaces:
        ns = None
    if kind.lower() in ("nodes", "node", "no"):
        _get_nodes(state, output)
        return
    if kind.lower() in ("l2announcements", "l2announcement", "l2a"):
        _get_l2(state, output)
        return
    if kind.lower() in FLUX_KINDS:
        _get_flux(FLUX_KINDS[kind.lower()], name, ns, admin if not path else None, output,
                  lambda: run_pipeline(_inputs(path or [Path(".")], set_, vars_, namespace, no_substitute, False, endpoints, mode,
                                               False, age_key)))
        return
    template = jsonpath_template(output)
    if template is None and output not in ("table", "wide", "yaml", "json", "name"):
        _fail("--output must be table, wide, yaml, json, name or jsonpath=TEMPLATE")
    try:
        reqs = parse_selector(selector) if selector else None
    except ValueError as e:
        _fail(f"-l: {e}")
        return
    result = run_pipeline(_inputs(path or [Path(".")], set_, vars_, namespace, no_substitute, False, endpoints, mode,
                                  merge_gateways, age_key))
    present = {(o.group, o.kind) for o in result.load.objects}
    resolved = kinds.resolve(kind, present)
    if resolved is None:
        loaded = ", ".join(sorted({k for _, k in present}))
        _fail(f"unknown kind {kind!r}; the manifests' kinds: {loaded or 'none'}")
        return
    group, kname = resolved
    objs = sorted(
        (o for o in result.load.objects
         if (o.group, o.kind) == resolved and (name is None or o.name == name)
         and (ns is None or o.namespace == ns or o.namespace is None)
         and (reqs is None or selector_matches(reqs, o.labels))),
        key=lambda o: (o.namespace or "", o.name),
    )
    if name is not None and not objs:
        _fail(f"{kname} {name!r} not found", 1)
    status = result.translation.status
    if output in ("yaml", "json") or template is not None:
        docs = []
        for o in objs:
            d = dict(o.raw)
            if kname == "Secret":  # values (perhaps decrypted from SOPS) are never printed
                d = _redacted_secret(d)
            if o.key in status:
                d["status"] = status[o.key]
            docs.append(d)
        payload: Any = docs[0] if name is not None and len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs}
        if template is not None:
            try:
                sys.stdout.write(render(template, payload))
            except JSONPathError as e:
                _fail(f"jsonpath: {e}")
        elif output == "json":
            typer.echo(json.dumps(payload, indent=2, default=str))
        else:
            from homeplane.api.yamlio import dump

            sys.stdout.write(dump(payload))
        return
    if output == "name":
        for o in objs:
            typer.echo(resource_name(o))
        return
    from homeplane.tables import rows_for

    local_state = Path(state) if state and not state.startswith("etcd://") else None
    headers, rows = rows_for(kname, objs, result, wide=output == "wide", state=local_state)
    if objs and not objs[0].served:  # kinds homeplane loads but does not serve: where each one is written
        headers = headers + ["SOURCE"]
        rows = [r + [f"{o.source.file}:{o.source.line or 1}"] for r, o in zip(rows, objs)]
    if not rows:
        typer.echo(f"No {kname} found.", err=True)
        return
    print_table(headers, rows)


@app.command()
def describe(
    kind: str = typer.Argument(..., help="Kind, kubectl style: gateway, httproute, svc, hr …"),
    name: str = typer.Argument(...),
    path: list[Path] = typer.Option([Path(".")], "-f", "--filename", help="Manifest files or folders."),
    ns: Optional[str] = typer.Option(None, "-n", "--namespace", help="Its namespace (needed when the name is in several)."),
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    namespace: str = NamespaceOpt,
    no_substitute: bool = NoSubstOpt,
    endpoints: Optional[Path] = EndpointsOpt,
    mode: str = ModeOpt,
    log_level: str = LogLevelOpt,
    merge_gateways: bool = MergeOpt,
    age_key: list[Path] = AgeKeyOpt,
) -> None:
    """Show one object like `kubectl describe`: spec, status conditions, related objects, and the
    problems found in it as events."""
    from homeplane.kubectl import kinds
    from homeplane.kubectl.describe import describe as render_describe

    _logging(log_level)
    result = run_pipeline(_inputs(path, set_, vars_, namespace, no_substitute, False, endpoints, mode, merge_gateways, age_key))
    resolved = kinds.resolve(kind, {(o.group, o.kind) for o in result.load.objects})
    if resolved is None:
        _fail(f"unknown kind {kind!r}")
        return
    objs = [o for o in result.load.objects if (o.group, o.kind) == resolved and o.name == name
            and (ns is None or o.namespace == ns or o.namespace is None)]
    if not objs:
        _fail(f"{resolved[1]} {name!r} not found{' in namespace ' + ns if ns else ''}", 1)
    if len(objs) > 1:
        _fail(f"{resolved[1]} {name!r} is in several namespaces ({', '.join(sorted(o.namespace or '-' for o in objs))}); "
              "say which with -n", 2)
    typer.echo(render_describe(objs[0], result, redact=resolved[1] == "Secret"), nl=False)


def _get_nodes(state: Optional[str], output: str) -> None:
    """The nodes sharing a state store, as ``kubectl get nodes`` lists a cluster's."""
    import datetime as dt

    from homeplane.store import StoreError
    from homeplane.store.leader import nodes

    if not state or not state.startswith("etcd://"):
        _fail("nodes live in a shared state store: --state etcd://HOST:PORT (one machine is one node)")
        return
    try:
        store = open_store(state)
        items = nodes(store)
        store.close()
    except StoreError as e:
        _fail(str(e))
        return
    if output == "json":
        typer.echo(json.dumps({"kind": "NodeList", "items": items}, indent=2))
        return
    from homeplane.kubectl.output import print_table

    now = dt.datetime.now().timestamp()
    rows = [[n["name"], "Ready", "leader" if n["leader"] else "<none>", _age(now - (n["started"] or now)), n["version"], n["address"]]
            for n in sorted(items, key=lambda n: n["name"])]
    if not rows:
        typer.echo("No nodes found.", err=True)
        return
    print_table(["NAME", "STATUS", "ROLES", "AGE", "VERSION", "ADDRESS"], rows)


def _get_l2(state: Optional[str], output: str) -> None:
    """Which node announces each Service's LB IPs (the L2 announcement leases in the state store)."""
    import time as _time

    from homeplane.l2.lease import PREFIX
    from homeplane.store import StoreError

    if not state:
        _fail("L2 announcement leases live in the state store: --state etcd://HOST:PORT (or the SQLite file run uses)")
        return
    try:
        store = open_store(state)
        entries = store.list(PREFIX)
        store.close()
    except StoreError as e:
        _fail(str(e))
        return
    now = _time.time()
    items = []
    for e in entries:
        try:
            rec = json.loads(e.value)
        except ValueError:
            continue
        name = e.key[len(PREFIX):]
        items.append({"lease": name, "service": rec.get("service"), "ips": rec.get("ips", []), "holder": rec.get("holder"),
                      "interfaces": rec.get("interfaces", []), "renewed": rec.get("renewed"), "duration": rec.get("duration"),
                      "valid": now < float(rec.get("renewed") or 0) + float(rec.get("duration") or 0)})
    if output == "json":
        typer.echo(json.dumps({"kind": "L2AnnouncementList", "items": items}, indent=2))
        return
    from homeplane.kubectl.output import print_table

    if not items:
        typer.echo("No L2 announcements found.", err=True)
        return
    print_table(["SERVICE", "IPS", "LEADER", "INTERFACES", "RENEWED", "VALID"],
                [[i["service"] or i["lease"], ",".join(i["ips"]) or "<none>", i["holder"], ",".join(i["interfaces"]) or "<none>",
                  f"{now - float(i['renewed'] or now):.1f}s ago", str(i["valid"]).lower()] for i in items])


def _age(seconds: float) -> str:
    """kubectl's AGE: 45s, 12m, 3h, 2d."""
    s = int(max(0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


FLUX_KINDS = {k: "GitRepository" for k in ("gitrepositories", "gitrepository", "gitrepos", "gitrepo")} | {
    k: "Kustomization" for k in ("kustomizations", "kustomization", "ks")}


def _get_flux(kind: str, name: Optional[str], ns: Optional[str], admin: Optional[str], output: str, load: Any) -> None:
    """Flux's GitRepository / Kustomizations as the running homeplane at ``admin`` follows them;
    Kustomizations from the files (whether each one builds) with -f or when none runs."""
    import urllib.request

    from homeplane.sources.follow import kustomization_status

    flux, running = None, False
    if admin is not None:
        try:
            with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as r:
                doc = json.loads(r.read())
            running = True
            flux = (doc.get("runtime") or {}).get("flux") if isinstance(doc, dict) else None
            if flux is not None and not (isinstance(flux, dict) and isinstance(flux.get("gitRepository"), dict)
                                         and all(isinstance(k, dict) and isinstance(k.get("name"), str)
                                                 for k in flux.get("kustomizations") or [flux.get("kustomization")])
                                         and isinstance(flux["gitRepository"].get("name"), str)):
                _fail(f"{admin} did not answer as a homeplane does (its /status has no readable runtime.flux)", 1)
        except (OSError, ValueError):
            running = False
    if admin is None and kind == "GitRepository":
        _fail("gitrepositories come from a running homeplane (--admin), not from files", 2)
    if kind == "GitRepository":
        if not flux:
            _fail(f"{'the homeplane at ' + admin + ' is not following a Git repository' if running else 'no running homeplane at ' + admin}"
                  " (homeplane run URL, or homeplane run ./clone --follow)", 1)
        items = [flux["gitRepository"]]
        revision = lambda i: (i.get("artifact") or {}).get("revision") or ""  # noqa: E731
    else:
        if flux:
            items = flux.get("kustomizations") or [flux["kustomization"]]
        else:
            result = load()
            items = kustomization_status(result.load.objects, [d.to_json() for d in result.load.diagnostics.errors], None, None)
        revision = lambda i: i.get("lastAppliedRevision") or ""  # noqa: E731
    if ns is not None:
        items = [i for i in items if i["name"].split("/", 1)[0] == ns]
    if name is not None:
        items = [i for i in items if i["name"].split("/", 1)[-1] == name or i["name"] == name]
        if not items:
            _fail(f"{kind} {name!r} not found", 1)
    if output in ("json", "yaml"):
        payload = items[0] if name is not None and len(items) == 1 else {"kind": f"{kind}List", "items": items}
        if output == "json":
            typer.echo(json.dumps(payload, indent=2, default=str))
        else:
            from homeplane.api.yamlio import dump

            sys.stdout.write(dump(payload))
        return
    if output not in ("table", "wide"):
        _fail("--output must be table, wide, yaml or json")
    rows = []
    for i in items:
        ns, _, n = i["name"].partition("/")
        cond = (i.get("conditions") or [{}])[0]
        rows.append([ns, n, revision(i) or "-", "True" if i.get("suspended") else "False", cond.get("status", "Unknown"),
                     cond.get("message", "")])
    typer.echo(table(rows, ["NAMESPACE", "NAME", "REVISION", "SUSPENDED", "READY", "MESSAGE"]))


def _redacted_secret(d: dict[str, Any]) -> dict[str, Any]:
    """A Secret for printing: its values and annotations (which SOPS may have encrypted too) as
    ``(redacted)``."""
    d = dict(d)
    for field in ("data", "stringData"):
        if isinstance(d.get(field), dict):
            d[field] = {k: "(redacted)" for k in d[field]}
    meta = d.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
        d["metadata"] = {**meta, "annotations": {k: "(redacted)" for k in meta["annotations"]}}
    return d


GIT_URL = ("https://", "http://", "ssh://", "git://", "file://")


def _is_git_url(text: str) -> bool:
    import re

    return text.startswith(GIT_URL) or bool(re.match(r"^[\w.-]+@[\w.-]+:", text))


@app.command()
def run(
    paths: list[str] = typer.Argument(..., help="Manifest files or folders, or a Git URL (https://, ssh://, git@host:…, git://) "
                                       "to follow as Flux does."),
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    namespace: str = NamespaceOpt,
    no_substitute: bool = NoSubstOpt,
    endpoints: Optional[Path] = EndpointsOpt,
    mode: str = ModeOpt,
    merge_gateways: bool = MergeOpt,
    age_key: list[Path] = AgeKeyOpt,
    admin: str = typer.Option("127.0.0.1:9901", "--admin", help="Admin endpoint address (host:port; port 0 picks one)."),
    state: Optional[str] = typer.Option(
        None, "--state", help="State store: a SQLite file (default $XDG_STATE_HOME/homeplane/state.db), or "
        "etcd://HOST:PORT (more members comma-separated, a key prefix after a slash) to share it with other nodes."
    ),
    etcd_cacert: Optional[Path] = typer.Option(None, "--etcd-cacert", help="etcd over TLS: the CA that signed its certificates."),
    etcd_cert: Optional[Path] = typer.Option(None, "--etcd-cert", help="etcd over TLS: this node's client certificate."),
    etcd_key: Optional[Path] = typer.Option(None, "--etcd-key", help="etcd over TLS: its key."),
    etcd_user: Optional[str] = typer.Option(None, "--etcd-user", help="etcd authentication: USER (password from "
                                            "$ETCD_PASSWORD)."),
    leader_lease: int = typer.Option(15, "--leader-lease", min=2, help="Several nodes: seconds a leader's lease lasts "
                                     "(renewed every third); the longest a dead leader's controllers stay unrun."),
    log_level: str = typer.Option("info", "--log-level"),
    port_map: Optional[str] = typer.Option(
        None, "--port-map", help="Listener port mapping, e.g. 80=8080,443=8443. Default: none as root, +8000 below 1024 otherwise."
    ),
    gateway_address: list[str] = typer.Option(
        [], "--gateway-address", help="Where a Gateway listens: NAMESPACE/NAME=IP (repeatable)."
    ),
    bind_address: Optional[str] = typer.Option(
        None, "--bind-address", help="Address for every Gateway without one (default: its own 127.0.1.x)."
    ),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="One line per request on stdout."),
    access_log_format: str = typer.Option("json", "--access-log-format", help="json (Envoy Gateway's fields) or text "
                                          "(Envoy's default line), where no EnvoyProxy telemetry.accessLog says."),
    log_format: str = typer.Option("text", "--log-format", help="Process logs on stderr: text or json, one line each."),
    access_log_dir: Optional[Path] = typer.Option(None, "--access-log-dir", help="Where an EnvoyProxy's accessLog File sinks "
                                                  "may write (paths relative to it, or inside it); without it they go to stdout."),
    unifi_stats: bool = typer.Option(False, "--unifi-stats/--no-unifi-stats", help="Poll the UniFi controller of the repo's "
                                     "UniFi external-dns webhook and export unpoller's metrics (elected node)."),
    unifi_stats_interval: float = typer.Option(30.0, "--unifi-stats-interval", min=1.0, help="Seconds between UniFi polls."),
    flows: int = typer.Option(4095, "--flows", min=0, max=65535, help="Flows kept for `homeplane observe` (Hubble's ring; "
                              "0: none)."),
    request_stats: bool = typer.Option(True, "--request-stats/--no-request-stats", help="Envoy's per-request metrics."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Data-plane processes sharing the listeners (SO_REUSEPORT)."),
    dns: list[str] = typer.Option(
        [], "--dns", help="Serve DNS on HOST:PORT (repeatable; port 53 follows --port-map). Off when not given."
    ),
    dns_domain: list[str] = typer.Option([], "--dns-domain", help="Gateway zone: answer route hostnames under this domain."),
    dns_gateway: list[str] = typer.Option([], "--dns-gateway", help="Gateways feeding the gateway zone (NAMESPACE/NAME; default all)."),
    dns_upstream: list[str] = typer.Option([], "--dns-upstream", help="Forward other names to HOST[:PORT] (default: /etc/resolv.conf)."),
    cluster_domain: Optional[str] = typer.Option(None, "--cluster-domain", help="Cluster DNS zone (default cluster.local)."),
    dns_recursion: list[str] = typer.Option(
        [], "--dns-allow-recursion", help="Clients (CIDR, repeatable) whose other names are forwarded; default loopback and "
        "private ranges, so the server is not an open resolver (0.0.0.0/0 and ::/0 open it)."
    ),
    dns_rrl: Optional[float] = typer.Option(
        None, "--dns-rrl", help="Response rate limit per client network and answer, per second (BIND's RRL; 0 off). "
        "Default 10, for clients outside loopback and private ranges."
    ),
    max_memory: Optional[str] = typer.Option(
        None, "--max-memory", help="Memory budget (e.g. 512Mi): near it idle connections are shed and new ones refused, "
        "at 98%% new requests get 503. Default: 80%% of the cgroup's limit, if any."
    ),
    l4: str = typer.Option(
        "off", "--l4", help="Service load balancing: off, userspace (TCP/UDP proxies), or nftables (kernel DNAT; root)."
    ),
    service_cidr: str = typer.Option("10.43.0.0/16", "--service-cidr", help="Where ClusterIPs are allocated."),
    maglev_size: Optional[int] = typer.Option(
        None, "--maglev-table-size", help="Maglev table size M, a prime Cilium allows (251 ... 131071, or 65537). "
        "Default 16381 (Cilium's) for --l4 userspace; 1021 for --l4 nftables, where every change reloads the maps."
    ),
    l2_announcements: bool = typer.Option(False, "--l2-announcements/--no-l2-announcements", help="Answer ARP for LB IPs "
                                          "as CiliumL2AnnouncementPolicies say, one node per Service (a lease in the state store)."),
    node_label: list[str] = typer.Option([], "--node-label", help="KEY=VALUE: this node's labels, for nodeSelectors (repeatable)."),
    l2_lease_duration: float = typer.Option(0.8, "--l2-announcements-lease-duration", help="L2: seconds before another node takes a Service "
                                            "over (Cilium's flag and name; its default is 15)."),
    l2_renew_deadline: float = typer.Option(0.5, "--l2-announcements-renew-deadline", help="L2: the holder stops announcing when it could not "
                                            "renew for this long (Cilium: 5)."),
    l2_retry_period: float = typer.Option(0.1, "--l2-announcements-retry-period", help="L2: seconds between lease renewals and attempts (Cilium: 2)."),
    node_name: Optional[str] = typer.Option(
        None, "--node-name", help="This machine's node name: externalTrafficPolicy: Local LB IPs use only endpoints on it "
        "(endpoints that name no node count as local)."
    ),
    external_dns: bool = typer.Option(
        True, "--external-dns/--no-external-dns", help="Publish records as the repo's external-dns HelmReleases say "
        "(an instance without credentials reports so in /status and does nothing)."
    ),
    dns_webhook: list[str] = typer.Option([], "--dns-webhook", help="Drive a webhook provider: INSTANCE=http://HOST:PORT."),
    ref: str = typer.Option("", "--ref", help="Git: BRANCH, tag:NAME, semver:RANGE, commit:SHA or refs/… (default: as the repo "
                            "declares, else the remote's HEAD)."),
    git_path: str = typer.Option("", "--path", help="Git: the folder inside the repo (default kubernetes/ when present)."),
    interval: str = typer.Option("", "--interval", help="Git: how often to fetch (default: as the repo declares, else Flux's 1m)."),
    follow: bool = typer.Option(False, "--follow", help="Git: PATH is a clone of the repo; follow the URL its own sync declaration "
                                "names (FluxInstance, flux-instance values, or the flux-system GitRepository)."),
    git_ssh_key: Optional[Path] = typer.Option(None, "--git-ssh-key", help="Git over SSH: a deploy key file."),
    git_known_hosts: Optional[Path] = typer.Option(None, "--git-known-hosts", help="Git over SSH: known_hosts to verify the server."),
    git_username: str = typer.Option("", "--git-username", help="Git over HTTPS: basic-auth user (password: --git-password-file or $GIT_PASSWORD)."),
    git_password_file: Optional[Path] = typer.Option(None, "--git-password-file", help="Git over HTTPS: a file holding the password."),
    git_token_file: Optional[Path] = typer.Option(None, "--git-token-file", help="Git over HTTPS: a bearer token file (or $GIT_TOKEN)."),
    receiver_address: Optional[str] = typer.Option(None, "--receiver-address", help="Git: serve the repo's Flux Receivers "
                                                   "(webhooks that reconcile at once) on HOST:PORT (Flux's port is 9292)."),
    dns01_nameservers: str = typer.Option(
        "", "--dns01-recursive-nameservers", help="Certificates: HOST:PORT,... where DNS-01 records made through an API "
        "(Cloudflare) must be visible before the CA is asked (cert-manager's flag; default: the zone's authoritative servers)."
    ),
    certificates: bool = typer.Option(
        True, "--certificates/--no-certificates", help="Issue and renew the repo's cert-manager Certificates (and the "
        "Gateway shim's) into the state store; a Secret of the same name in the manifests wins."
    ),
    tunnel_edge: list[str] = typer.Option([], "--tunnel-edge", help="Tunnel: dial out to this `homeplane edge` (HOST:PORT, "
                                          "repeatable); public traffic comes in through it, no port is opened here."),
    tunnel_token_file: Optional[Path] = typer.Option(None, "--tunnel-token-file", help="Tunnel: the token the edge knows "
                                                     "(or $HOMEPLANE_TUNNEL_TOKEN)."),
    tunnel_ca: Optional[Path] = typer.Option(None, "--tunnel-ca", help="Tunnel: the CA of the edge's tunnel certificate "
                                             "(default: the system's)."),
    tunnel_connections: int = typer.Option(4, "--tunnel-connections", min=1, max=64, help="Tunnel: connections kept, spread "
                                           "over the edges (cloudflared keeps 4)."),
    tunnel_config: Optional[Path] = typer.Option(None, "--tunnel-config", help="Tunnel: a cloudflared config.yaml whose "
                                                 "ingress rules to follow (default: the one in the manifests)."),
    tunnel_gateway: list[str] = typer.Option([], "--tunnel-gateway", help="Tunnel: serve the routes of this Gateway "
                                             "(NAMESPACE/NAME, repeatable) through it, instead of a cloudflared config."),
) -> None:
    """Serve the manifests: load, translate, publish, and re-apply on every change."""
    from homeplane.gateway.server import BindPlan, DataPlane, Settings, default_port_map
    from homeplane.runtime import Runtime
    from homeplane.store import StoreError

    _logging(log_level, log_format)
    if access_log_format not in ("json", "text"):
        _fail("--access-log-format must be json or text")
    follower = None
    if follow:
        from homeplane.sources.sync import find_sync

        if not paths or _is_git_url(paths[0]) or not Path(paths[0]).is_dir():
            _fail("--follow takes a folder: a clone of the repository whose sync declaration names the URL to follow")
        declared = find_sync(Path(paths[0]))
        if declared is None:
            _fail(f"--follow: {paths[0]} declares no sync source (a FluxInstance with spec.sync, the flux-instance chart's "
                  "values.instance.sync, or a GitRepository flux-system in flux-system)")
        assert declared is not None
        if not _is_git_url(declared.url):
            _fail(f"--follow: {declared.origin} names {declared.url!r}, which is not a Git URL (https://, ssh://, git@host:…, git://)")
        paths = [declared.url] + list(paths[1:])
    if paths and _is_git_url(paths[0]):
        local_state = Path(state) if state and not state.startswith("etcd://") else None
        follower = _git_follower(paths[0], ref, git_path, interval, local_state, git_ssh_key, git_known_hosts, git_username,
                                 git_password_file, git_token_file)
        try:
            first = follower.first()
        except Exception as e:
            _fail(f"{follower.source.safe_url}: {e}", 1)
            return
        paths = [str(first)] + list(paths[1:])
    inputs = _inputs([Path(p) for p in paths], set_, vars_, namespace, no_substitute, False, endpoints, mode, merge_gateways, age_key)
    try:
        import ipaddress

        ipaddress.ip_network(service_cidr, strict=False)
    except ValueError as e:
        _fail(f"--service-cidr: {e}")
    inputs = dataclasses.replace(inputs, service_cidr=service_cidr)
    import ipaddress

    if l4 not in ("off", "userspace", "nftables"):
        _fail("--l4 must be off, userspace or nftables")
    if l4 == "nftables" and os.geteuid() != 0:
        _fail("--l4 nftables needs root (use --l4 userspace otherwise)")
    if maglev_size is not None:
        from homeplane.l4 import maglev

        if maglev_size not in maglev.CILIUM_SIZES + (65537,):
            _fail(f"--maglev-table-size must be one of {', '.join(map(str, maglev.CILIUM_SIZES + (65537,)))}")
    host, _, port = admin.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--admin {admin!r}: expected host:port")
    try:
        store = open_store(state, etcd_cacert, etcd_cert, etcd_key, etcd_user)
    except StoreError as e:
        _fail(str(e))
        return
    try:
        pmap = parse_port_map(port_map) if port_map is not None else default_port_map()
        gw_addrs = dict(parse_assignment(a, "--gateway-address") for a in gateway_address)
    except ValueError as e:
        _fail(str(e))
        return
    from homeplane.ipam.binding import BindingOptions

    inputs = dataclasses.replace(inputs, bindings=BindingOptions(explicit=gw_addrs, default_address=bind_address))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    try:
        from homeplane.api.units import parse_quantity
        from homeplane.gateway.server import cgroup_memory_limit

        limit = cgroup_memory_limit()
        budget = parse_quantity(max_memory) if max_memory else (int(limit * 0.8) if limit else None)
        recursion = [ipaddress.ip_network(c, strict=False) for c in dns_recursion]
    except ValueError as e:
        _fail(f"{e}")
        return
    if dns_rrl is not None and dns_rrl < 0:
        _fail("--dns-rrl must be 0 (off) or more")

    async def main_async() -> None:
        rt = Runtime(inputs, store, admin_host=host, admin_port=int(port), watch_files=follower is None)
        if follower is not None:
            follower.rt = rt
            rt.registry.register(follower.m_cond)
            rt.on_start.append(follower.start)
            rt.on_stop.append(follower.close)
            rt.status_extras["flux"] = follower.status

            async def reconcile_api(method: str, _target: str, _body: bytes, _headers: dict[str, str]) -> tuple[int, str, bytes]:
                if method != "POST":
                    return 405, "text/plain", b"POST only\n"
                follower.reconcile()
                return 202, "application/json", b'{"reconciling": true}'

            rt.admin.api_route("/api/reconcile", reconcile_api)
            if receiver_address:
                from homeplane.sources.receiver import attach

                attach(rt, follower, receiver_address, inputs.variables)
        settings = Settings(access_log=access_log, access_log_format=access_log_format, reuse_port=workers > 1, max_memory=budget,
                            access_log_dir=str(access_log_dir) if access_log_dir else None, flows=flows,
                            request_stats=request_stats)
        dp = DataPlane(settings, BindPlan(pmap))
        if request_stats:
            rt.registry.register(dp.envoy_stats)
        ring = dp.flow_ring
        if ring is not None:
            from homeplane.observe import flowapi

            ring.node_name = node_name or ring.node_name
            flowapi.attach(rt.admin, ring)
            rt.status_extras["flows"] = lambda: {"capacity": ring.capacity, "stored": len(ring.entries), "seen": ring.last_seq}
        from homeplane.observe import trace as tr
        from homeplane.observe import web

        dns_service: list[Any] = []  # set below when homeplane serves DNS
        tr.attach(rt.admin, lambda: rt.current, lambda: dns_service[0].server.cfg if dns_service else None, dp.health_of)
        web.attach(rt.admin, rt.status_doc, lambda: rt.current)
        rt.status_extras["l4"] = lambda: {"mode": l4}
        rt.subscribe(dp.apply)
        rt.on_start.append(dp.start)
        rt.on_stop.append(dp.close)
        if workers > 1:
            from homeplane.gateway.workers import WorkerPool

            pool = WorkerPool(workers - 1, settings, pmap)

            async def fan_out(snapshot) -> None:
                pool.apply(snapshot)

            async def stop_workers() -> None:
                pool.close()

            rt.subscribe(fan_out)
            rt.on_stop.append(stop_workers)
        rt.status_extras["listeners"] = lambda: dp.bindings
        rt.status_patches.append(dp.patch_status)
        if tunnel_edge:
            from homeplane.tunnel.cli import TunnelOptionError, attach_connector

            try:
                attach_connector(rt, dp, tunnel_edge, tunnel_token_file, tunnel_ca, tunnel_connections, tunnel_config, node_name,
                                 cluster_domain, tunnel_gateway)
            except (TunnelOptionError, ValueError) as e:
                _fail(str(e))
        if l2_announcements:
            from homeplane.l2.announcer import L2Announcer
            from homeplane.l2.lease import Timing

            try:
                timing = Timing(l2_lease_duration, l2_renew_deadline, l2_retry_period)
                labels = {}
                for x in node_label:
                    k, sep, v = x.partition("=")
                    if not sep or not k:
                        raise ValueError(f"--node-label {x!r}: expected KEY=VALUE")
                    labels[k] = v
            except ValueError as e:
                _fail(str(e))
            announcer = L2Announcer(store, node_name or socket.gethostname(), labels, timing)
            rt.subscribe(announcer.apply)
            rt.on_start.append(announcer.start)
            rt.on_stop.append(announcer.close)
            rt.status_extras["l2announcements"] = announcer.status
        if l4 == "userspace":
            from homeplane.l4.proxy import UserspaceProxy

            proxy = UserspaceProxy(node_name=node_name, table_size=maglev_size)
            proxy.flow_ring = ring
            rt.subscribe(proxy.apply)
            rt.on_start.append(proxy.start)
            rt.on_stop.append(proxy.close)
        elif l4 == "nftables":
            from homeplane.l4.nftables import NftDataPlane

            nft = NftDataPlane(node_name=node_name) if maglev_size is None else NftDataPlane(node_name=node_name, table_size=maglev_size)
            rt.subscribe(nft.apply)
            rt.on_stop.append(nft.close)
        if dns:
            from homeplane.dns.service import DNSService

            try:
                listen = [parse_host_port(d, "--dns", pmap) for d in dns]
            except ValueError as e:
                _fail(str(e))
            svc = DNSService(listen, dns_domain, dns_gateway, dns_upstream, cluster_domain, tuple(recursion), dns_rrl)
            svc.server.flow_ring = ring
            dns_service.append(svc)
            rt.subscribe(svc.apply)
            rt.on_start.append(svc.start)
            rt.on_stop.append(svc.close)
            rt.registry.register(svc)
            rt.status_extras["dns"] = svc.status
        controllers: list[Any] = []  # acting on the outside world: on the elected node only
        if external_dns:
            from homeplane.externaldns.cli import _webhooks
            from homeplane.externaldns.controller import DNSController

            edns = DNSController(lambda: rt.current, inputs.variables, webhook_urls=_webhooks(dns_webhook), registry=rt.registry)
            rt.subscribe(edns.apply)
            controllers.append(edns)
            rt.status_extras["externalDNS"] = edns.status
        if certificates:
            from homeplane.certs.controller import CertController

            try:
                ns01 = tuple(parse_host_port(x.strip(), "--dns01-recursive-nameservers", {}) if ":" in x else (x.strip(), 53)
                             for x in dns01_nameservers.split(",") if x.strip())
            except ValueError as e:
                _fail(str(e))
            certs = CertController(lambda: rt.current, store, lambda: rt.reload("certificates", controller=True), inputs.variables,
                                   registry=rt.registry, dns01_nameservers=ns01)
            rt.subscribe(certs.apply)
            controllers.append(certs)
            rt.status_extras["certificates"] = certs.status

            async def renew_api(method: str, target: str, _body: bytes, _headers: dict[str, str]) -> tuple[int, str, bytes]:
                from urllib.parse import parse_qs, urlsplit

                if method != "POST":
                    return 405, "text/plain", b"POST only\n"
                cid = (parse_qs(urlsplit(target).query).get("name") or [""])[0]
                if not certs.renew(cid):
                    return 404, "text/plain", f"no Certificate {cid}\n".encode()
                return 202, "application/json", json.dumps({"renewing": cid}).encode()

            rt.admin.api_route("/api/certificates/renew", renew_api)
        if unifi_stats:
            from homeplane.observe.unpoller import UnifiStats

            stats = UnifiStats(lambda: rt.current, inputs.variables, unifi_stats_interval)
            rt.subscribe(stats.apply)
            rt.registry.register(stats)
            controllers.append(stats)
            rt.status_extras["unifiStats"] = stats.status
        from homeplane.store.leader import Elector

        async def lead() -> None:
            for c in controllers:
                await c.start()

        async def follow() -> None:
            for c in controllers:
                await c.close()

        elector = Elector(store, node_name or socket.gethostname(), leader_lease, address=admin, on_elected=lead, on_lost=follow,
                          on_store_changed=lambda: rt.reload("the shared state store changed", controller=True))
        rt.on_start.append(elector.start)
        rt.on_stop.append(elector.close)
        rt.status_extras["leader"] = elector.status
        await rt.run()

    asyncio.run(main_async())


def open_store(state: Optional[str], cacert: Optional[Path] = None, cert: Optional[Path] = None, key: Optional[Path] = None,
               user: Optional[str] = None) -> Any:
    """The state store ``--state`` names: etcd (shared by several nodes) or a SQLite file."""
    from homeplane.store import SQLiteStore

    if state and state.startswith("etcd://"):
        from homeplane.store.etcd import EtcdOptions, EtcdStore

        return EtcdStore(EtcdOptions.parse(state, ca_file=str(cacert) if cacert else None, cert_file=str(cert) if cert else None,
                                           key_file=str(key) if key else None, username=user,
                                           password=os.environ.get("ETCD_PASSWORD") if user else None))
    if state is None:
        from homeplane.certs.controller import default_state_path

        return SQLiteStore(default_state_path())
    return SQLiteStore(Path(state))


def _git_follower(url: str, ref: str, path: str, interval: str, state: Optional[Path], ssh_key: Optional[Path],
                  known_hosts: Optional[Path], username: str, password_file: Optional[Path], token_file: Optional[Path]):  # noqa: ANN202
    from homeplane.api.units import parse_duration
    from homeplane.certs.controller import default_state_path
    from homeplane.sources.follow import GitFollower
    from homeplane.sources.git import Auth, GitError, GitRef, GitSource

    try:
        git_ref = GitRef.parse(ref)
        every = parse_duration(interval or "1m")
        if every < 1:
            raise ValueError(f"--interval {interval}: at least 1s")
        if ".." in Path(path).parts:
            raise ValueError(f"--path {path}: a folder inside the repository")
    except (GitError, ValueError) as e:
        _fail(str(e))
        raise
    read = lambda p: p.read_text().strip() if p else ""  # noqa: E731
    from homeplane.sources.git import split_credentials

    url, url_user, url_password = split_credentials(url)  # user:password@ in the URL: out of git's argv
    auth = Auth(ssh_key=ssh_key, known_hosts=known_hosts, username=username or url_user,
                password=read(password_file) or os.environ.get("GIT_PASSWORD", "") or url_password,
                bearer_token=read(token_file) or os.environ.get("GIT_TOKEN", ""))
    import hashlib

    # the working tree lives beside the state store, not in it
    work = (state or default_state_path()).parent / "git" / hashlib.sha256(url.encode()).hexdigest()[:16]
    pinned = frozenset(k for k, v in (("ref", ref), ("path", path), ("interval", interval)) if v)
    return GitFollower(None, GitSource(url, git_ref, work, auth), path, every, pinned=pinned)


def parse_port_map(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        a, sep, b = item.partition("=")
        if not sep or not a.isdigit() or not b.isdigit() or not (0 < int(a) < 65536 and 0 < int(b) < 65536):
            raise ValueError(f"--port-map {item!r}: expected LISTENER_PORT=LOCAL_PORT")
        out[int(a)] = int(b)
    return out


def parse_host_port(text: str, flag: str, port_map: dict[int, int]) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{flag} {text!r}: expected HOST:PORT")
    p = int(port)
    return host.strip("[]"), port_map.get(p, p)


def parse_assignment(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or "/" not in key or not value:
        raise ValueError(f"{flag} {text!r}: expected NAMESPACE/NAME=VALUE")
    return key, value


@app.command()
def dig(
    name: str = typer.Argument(..., help="The name to look up."),
    rdtype: str = typer.Argument("A", help="Record type (A, AAAA, SRV, PTR, TXT, CNAME, SOA, NS, ANY)."),
    server: Optional[str] = typer.Option(None, "--server", help="Ask a running server at HOST:PORT instead."),
    tcp: bool = typer.Option(False, "--tcp"),
    path: list[Path] = typer.Option([Path(".")], "-f", "--filename", help="Manifests to answer from (without --server)."),
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    dns_domain: list[str] = typer.Option([], "--dns-domain", help="Gateway zone domain(s)."),
    cluster_domain: Optional[str] = typer.Option(None, "--cluster-domain"),
    mode: str = ModeOpt,
) -> None:
    """Look a name up: in a running homeplane DNS server, or straight from the manifests."""
    import dns.message
    import dns.query
    import dns.rdatatype

    try:
        query = dns.message.make_query(name, rdtype)
    except (dns.rdatatype.UnknownRdatatype, ValueError) as e:
        _fail(f"{e}")
        return
    if server:
        host, _, port = server.rpartition(":")
        try:
            fn = dns.query.tcp if tcp else dns.query.udp
            msg = fn(query, host.strip("[]") or "127.0.0.1", port=int(port or 53), timeout=5)
        except Exception as e:
            _fail(f"no answer from {server}: {e}", 1)
            return
        typer.echo(msg.to_text())
        return
    from homeplane.dns.config import DNSConfig, from_coredns_values
    from homeplane.dns.responder import FORWARD, Responder
    from homeplane.dns.zones import compile_zones

    result = run_pipeline(_inputs(path, set_, vars_, "default", False, False, None, mode))
    snap = result.translation.snapshot
    cfg = from_coredns_values(snap.extras["coredns"], DNSConfig()) if "coredns" in snap.extras else DNSConfig()
    if dns_domain:
        cfg.gateway_domains = list(dns_domain)
    if cluster_domain:
        cfg.cluster_domain = cluster_domain
    resp = Responder(compile_zones(snap, cfg)).respond(query.to_wire(), "tcp")
    if resp is FORWARD:
        typer.echo(f";; {name} is not in homeplane's zones: it would be forwarded to {', '.join(cfg.forward.upstreams) or '/etc/resolv.conf'}")
        raise typer.Exit(0)
    assert isinstance(resp, bytes)
    typer.echo(dns.message.from_wire(resp).to_text())


from homeplane.externaldns.cli import app as _dns_app  # noqa: E402

app.add_typer(_dns_app, name="dns")
from homeplane.certs.cli import app as _certs_app  # noqa: E402

app.add_typer(_certs_app, name="certs")
from homeplane.policy.cli import app as _policy_app  # noqa: E402

app.add_typer(_policy_app, name="policy")


@app.command()
def reconcile(
    admin: str = typer.Option("127.0.0.1:9901", "--admin", help="The running homeplane's admin endpoint (host:port)."),
) -> None:
    """Fetch the followed Git repository now and apply a new revision (like ``flux reconcile source git``)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{admin}/api/reconcile", method="POST"), timeout=10):
            pass
    except urllib.error.HTTPError as e:
        _fail(f"{admin}: {'homeplane is not following a Git repository' if e.code == 404 else f'HTTP {e.code}'}", 1)
    except OSError as e:
        _fail(f"no running homeplane at {admin} ({e})")
    typer.echo("► annotating GitRepository flux-system\n◎ waiting for the revision to be fetched and applied (see /status runtime.flux)")


@app.command()
def status(
    admin: str = typer.Option("127.0.0.1:9901", "--admin", "--server", help="The running homeplane's admin endpoint (host:port)."),
    output: str = typer.Option("text", "-o", "--output", help="text or json."),
) -> None:
    """One screen on a running homeplane, like ``cilium status``: every component with OK,
    warning, error or disabled, and what is wrong. Exit 1 when a component is in error."""
    import urllib.error
    import urllib.request

    from homeplane.observe.status import ERROR, overall, render, summarize

    if output not in ("text", "json"):
        _fail("-o must be text or json")
    try:
        with urllib.request.urlopen(f"http://{admin}/status", timeout=10) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        _fail(f"{admin}: HTTP {e.code}: {e.read().decode(errors='replace').strip()}", 1)
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        _fail(f"cannot reach homeplane's admin endpoint at {admin}: {getattr(e, 'reason', e)}", 1)
        return
    components = summarize(doc)
    if output == "json":
        typer.echo(json.dumps({"state": overall(components), "components": [c.to_json() for c in components]}, indent=2))
    else:
        for line in render(components, doc):
            typer.echo(line)
    if overall(components) == ERROR:
        raise typer.Exit(1)


connectivity_app = typer.Typer(help="End-to-end checks of a running homeplane (like `cilium connectivity test`).",
                                no_args_is_help=True)
app.add_typer(connectivity_app, name="connectivity")


@connectivity_app.command("test")
def connectivity_test(
    admin: str = typer.Option("127.0.0.1:9901", "--admin", "--server", help="The running homeplane's admin endpoint (host:port)."),
    only: list[str] = typer.Option([], "--only", help="route, dns or service (repeatable; default: all)."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds for each connection, request or query."),
    output: str = typer.Option("text", "-o", "--output", help="text or json."),
) -> None:
    """Send real traffic to a running homeplane: a request per route and listener (the route's
    host, path, method and headers), DNS queries for route and Service names, a connection to
    every LoadBalancer IP. Failures are explained from the request's flow. Exit 1 on a failure."""
    import urllib.error

    from homeplane.observe import connectivity

    kinds = {"route", "dns", "service"}
    if output not in ("text", "json") or not set(only) <= kinds:
        _fail("-o must be text or json; --only route, dns or service")
    try:
        report = connectivity.run(admin, timeout, (lambda k: k in only) if only else (lambda _k: True))
    except (urllib.error.URLError, OSError, ValueError) as e:
        _fail(f"cannot reach homeplane's admin endpoint at {admin}: {getattr(e, 'reason', e)}", 1)
        return
    if output == "json":
        typer.echo(json.dumps({"checks": [c.to_json() for c in report.checks], "failed": len(report.failed)}, indent=2))
    else:
        for line in report.render():
            typer.echo(line)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def trace(
    url: str = typer.Argument(..., help="The request's URL (https://app.example.com/path)."),
    path: list[Path] = typer.Option([], "-f", "--filename", help="Manifests to trace through (default: the current folder)."),
    set_: list[str] = SetOpt,
    vars_: list[Path] = VarsOpt,
    source: str = typer.Option("lan", "--from", help="Where the request comes from: internet, lan, an address or a CIDR."),
    method: str = typer.Option("GET", "-X", "--method"),
    header: list[str] = typer.Option([], "-H", "--header", help="A request header, 'Name: value' (repeatable)."),
    dns_domain: list[str] = typer.Option([], "--dns-domain", help="Gateway zone domain(s) homeplane's DNS serves."),
    cluster_domain: Optional[str] = typer.Option(None, "--cluster-domain"),
    admin: Optional[str] = typer.Option(None, "--admin", help="Ask a running homeplane (its Snapshot, DNS and live "
                                        "endpoint health) instead of reading manifests."),
    output: str = typer.Option("text", "-o", "--output", help="text or json."),
    mode: str = ModeOpt,
) -> None:
    """The path of one request, step by step, with the object that made each decision: DNS,
    tunnel, Gateway and listener, route and rule, policies, backend, endpoint. Exit 1 when the
    request would not be served (no DNS answer, no route, no healthy endpoint, a broken policy)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from homeplane.observe import trace as tr

    if output not in ("text", "json"):
        _fail("-o must be text or json")
    if admin:
        params = [("url", url), ("from", source), ("method", method)] + [("header", h) for h in header]
        try:
            with urllib.request.urlopen(f"http://{admin}/api/v1/trace?" + urllib.parse.urlencode(params), timeout=30) as r:
                result = tr.from_json(json.loads(r.read()))
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                msg = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                msg = f"HTTP {e.code}"
            _fail(f"{admin}: {msg}", 1)
            return
        except (urllib.error.URLError, OSError, ValueError) as e:
            _fail(f"cannot reach homeplane's admin endpoint at {admin}: {getattr(e, 'reason', e)}", 1)
            return
    else:
        try:
            headers = [tr._header(h) for h in header]
            res = run_pipeline(_inputs(path or [Path(".")], set_, vars_, "default", False, False, None, mode))
            result = tr.trace(tr.context_from(res, dns_domains=dns_domain, cluster_domain=cluster_domain), url, method, headers, source)
        except tr.TraceError as e:
            _fail(str(e))
            return
    if output == "json":
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        for line in result.render():
            typer.echo(line)
    if result.outcome not in tr.GOOD_OUTCOMES:
        raise typer.Exit(1)


@app.command()
def observe(
    server: str = typer.Option("127.0.0.1:9901", "--server", "--admin", help="The running homeplane's admin endpoint (host:port)."),
    last: Optional[int] = typer.Option(None, "--last", min=0, help="The newest N flows (default 20; with --follow, none)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing flows as they happen."),
    output: str = typer.Option("compact", "-o", "--output", help="compact, table, json (Hubble's flow fields) or jsonpb."),
    namespace: list[str] = typer.Option([], "--namespace", help="Flows from or to this namespace."),
    from_namespace: list[str] = typer.Option([], "--from-namespace"),
    to_namespace: list[str] = typer.Option([], "--to-namespace"),
    ip: list[str] = typer.Option([], "--ip", help="Flows from or to this address or CIDR."),
    from_ip: list[str] = typer.Option([], "--from-ip"),
    to_ip: list[str] = typer.Option([], "--to-ip"),
    from_service: list[str] = typer.Option([], "--from-service"),
    to_service: list[str] = typer.Option([], "--to-service", help="NAMESPACE/NAME (or NAME, in any namespace), by prefix."),
    verdict: list[str] = typer.Option([], "--verdict", help="FORWARDED, DROPPED or ERROR."),
    protocol: list[str] = typer.Option([], "--protocol", help="http, dns, tcp or udp."),
    http_status: list[str] = typer.Option([], "--http-status", help="A code (404) or a class (5+)."),
    http_method: list[str] = typer.Option([], "--http-method"),
    http_path: list[str] = typer.Option([], "--http-path", help="A regular expression on the path."),
    port: list[str] = typer.Option([], "--port"),
    to_port: list[str] = typer.Option([], "--to-port"),
    since: Optional[str] = typer.Option(None, "--since", help="A duration back from now (5m) or a time (RFC 3339)."),
    until: Optional[str] = typer.Option(None, "--until"),
) -> None:
    """Show the flows a running homeplane saw, with ``hubble observe``'s filters: values of one flag
    are alternatives, different flags must all match."""
    from homeplane.observe.flowapi import ObserveError
    from homeplane.observe.flowapi import observe as run_observe
    from homeplane.observe.flows import FilterError

    given = {"namespace": namespace, "from-namespace": from_namespace, "to-namespace": to_namespace, "ip": ip,
             "from-ip": from_ip, "to-ip": to_ip, "from-service": from_service, "to-service": to_service, "verdict": verdict,
             "protocol": protocol, "http-status": http_status, "http-method": http_method, "http-path": http_path,
             "port": port, "to-port": to_port, "since": [since] if since else [], "until": [until] if until else []}
    filters = [(k, v) for k, values in given.items() for v in values]
    try:
        run_observe(server, filters, last, follow, output, write=lambda line: typer.echo(line))
    except (ObserveError, FilterError) as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        pass


@app.command()
def edge(
    config: Path = typer.Option(..., "--config", "-c", help="The edge's edge.yaml: tunnel listener, tokens, public ports."),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format"),
) -> None:
    """Run a tunnel edge on a public host: connectors (`homeplane run --tunnel-edge`) dial in, and
    public HTTPS, HTTP and TCP reach them with no port open at home."""
    from homeplane.tunnel.cli import run_edge
    from homeplane.tunnel.edge_config import EdgeConfigError

    _logging(log_level, log_format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        run_edge(config)
    except EdgeConfigError as e:
        _fail(str(e))


@app.command()
def version() -> None:
    """Print the version (as --version)."""
    typer.echo(f"homeplane {__version__}")


def main() -> None:
    """Run a command. Exit codes: 0 clean, 1 problems found in the manifests, 2 usage or
    environment (a busy port is one line), 3 internal error — one line naming the file being
    processed; the traceback only with ``--log-level debug``."""
    try:
        app(prog_name="homeplane")  # usage errors and exits are handled inside, as click does
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            _internal_error(e)
        typer.echo(f"homeplane: {_environment_message(e)}", err=True)
        sys.exit(2)
    except Exception as e:
        _internal_error(e)


# the machine, not homeplane: a port in use or not allowed, an address not here (exit 2)
_ENVIRONMENT_ERRNOS = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL, errno.EPERM}


def _environment_message(e: OSError) -> str:
    import re

    m = re.search(r"address \('?([^',]+)'?, (\d+)\)", str(e))
    where = f" on {m.group(1)}:{m.group(2)}" if m else ""
    return f"cannot listen{where}: {str(e).rsplit(': ', 1)[-1].lower()}" if m else str(e)


def _internal_error(e: BaseException) -> None:
    """Anything unexpected: one line naming the file being processed, exit 3."""
    from homeplane.api.diagnostics import current_file

    if _debug_requested(sys.argv):
        import traceback

        traceback.print_exception(e)
    where = getattr(e, "failed_file", None) or current_file.get()
    place = f" while processing {where}" if where else ""
    typer.echo(
        f"homeplane: internal error{place}: {type(e).__name__}: {e} "
        "(a bug: please report it; --log-level debug shows the traceback)",
        err=True,
    )
    sys.exit(3)


def _debug_requested(argv: list[str]) -> bool:
    for i, a in enumerate(argv):
        if a == "--log-level" and i + 1 < len(argv) and argv[i + 1].lower() == "debug":
            return True
        if a.lower() == "--log-level=debug":
            return True
    return False


__all__ = ["app", "main", "Result"]
