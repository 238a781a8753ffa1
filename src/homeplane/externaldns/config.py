"""external-dns instances as a repo configures them: the kubernetes-sigs chart's HelmRelease values.

Each HelmRelease of the external-dns chart is one instance. Its values become the flags the
chart would pass (``--source``, ``--policy``, ``--txt-owner-id``, ``--domain-filter`` …, then
``extraArgs``), and flags may also come from the container's environment as external-dns reads
them (``EXTERNAL_DNS_<FLAG>``). ``$(VAR)`` in an argument is expanded from the container's
env, as Kubernetes does. Secret values are resolved separately (:func:`resolve_env`) and never
kept on the instance, so printing an instance cannot leak a token.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from homeplane.api.secrets import secret_values
from homeplane.externaldns.endpoint import DEFAULT_MANAGED, DomainFilter

CHART = "external-dns"
GA_PREFIX = "external-dns.kubernetes.io/"
ALPHA_PREFIX = "external-dns.alpha.kubernetes.io/"

# flags homeplane understands (others are reported, not silently ignored)
KNOWN_FLAGS = {
    "source", "policy", "registry", "txt-owner-id", "txt-prefix", "txt-suffix", "txt-wildcard-replacement",
    "domain-filter", "exclude-domains", "namespace", "gateway-namespace", "gateway-name", "gateway-label-filter",
    "label-filter", "annotation-filter", "annotation-prefix", "managed-record-types", "exclude-record-types",
    "provider", "interval", "events", "once", "dry-run", "log-level", "log-format", "metrics-address",
    "cloudflare-proxied", "cloudflare-dns-records-per-page", "zone-id-filter", "zone-name-filter",
    "crd-source-apiversion", "crd-source-kind", "ignore-hostname-annotation", "publish-internal-services",
    "webhook-provider-url", "txt-cache-interval", "min-event-sync-interval", "default-targets",
    "rfc2136-host", "rfc2136-port", "rfc2136-zone", "rfc2136-tsig-keyname", "rfc2136-tsig-secret",
    "rfc2136-tsig-secret-alg", "rfc2136-tsig-axfr", "rfc2136-insecure", "rfc2136-min-ttl", "rfc2136-batch-change-size",
    "request-timeout", "txt-new-format-only",
}
REPEATED = {"source", "domain-filter", "exclude-domains", "managed-record-types", "exclude-record-types",
            "zone-id-filter", "zone-name-filter", "rfc2136-zone"}
BOOLEAN = {"events", "once", "dry-run", "cloudflare-proxied", "ignore-hostname-annotation", "publish-internal-services",
           "rfc2136-tsig-axfr", "rfc2136-insecure", "txt-new-format-only"}
SUPPORTED_SOURCES = ("gateway-httproute", "gateway-grpcroute", "gateway-tlsroute", "gateway-tcproute", "gateway-udproute",
                     "service", "crd")
# the chart version from which external-dns reads the GA annotation prefix only (v0.22, #6424)
GA_PREFIX_CHART = (1, 22)


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None
    secret: tuple[str, str] | None = None  # (Secret name, key)


@dataclass(frozen=True)
class Instance:
    name: str
    namespace: str
    file: str = ""
    line: int | None = None
    provider: str = "aws"
    webhook_image: str = ""
    sources: tuple[str, ...] = ()
    include_domains: tuple[str, ...] = ()
    exclude_domains: tuple[str, ...] = ()
    owner: str = "default"
    txt_prefix: str = ""
    txt_suffix: str = ""
    txt_wildcard: str = ""
    policy: str = "upsert-only"
    interval: float = 60.0
    events: bool = False
    gateway_name: str = ""
    gateway_namespace: str = ""
    source_namespace: str = ""
    label_filter: str = ""
    annotation_filter: str = ""
    annotation_prefixes: tuple[str, ...] = (ALPHA_PREFIX, GA_PREFIX)
    managed: tuple[str, ...] = DEFAULT_MANAGED
    exclude_types: tuple[str, ...] = ()
    flags: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), repr=False)  # may hold a TSIG secret
    env: tuple[EnvVar, ...] = field(default=(), repr=False)
    webhook_env: tuple[EnvVar, ...] = field(default=(), repr=False)
    problems: tuple[str, ...] = ()
    # problems that make syncing unsafe (a source homeplane cannot read would look like records to
    # delete): the instance plans but does not change anything until they are fixed
    fatal: tuple[str, ...] = ()
    chart_version: str = ""

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def domain_filter(self) -> DomainFilter:
        return DomainFilter(self.include_domains, self.exclude_domains)

    def flag(self, name: str, default: str = "") -> str:
        values = dict(self.flags).get(name)
        return values[-1] if values else default

    def flag_list(self, name: str) -> tuple[str, ...]:
        return dict(self.flags).get(name, ())

    def flag_bool(self, name: str) -> bool:
        return name in dict(self.flags) and self.flag(name).lower() in ("true", "1", "yes")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.id, "provider": self.provider + (f" ({self.webhook_image})" if self.webhook_image else ""),
            "sources": list(self.sources), "policy": self.policy, "txtOwnerId": self.owner,
            "txtPrefix": self.txt_prefix, "txtSuffix": self.txt_suffix, "domainFilters": list(self.include_domains),
            "excludeDomains": list(self.exclude_domains), "interval": self.interval, "triggerLoopOnEvent": self.events,
            **({"gatewayName": self.gateway_name} if self.gateway_name else {}),
        }


def is_external_dns(obj: Any, chart: str | None) -> bool:
    if chart and chart.rsplit("/", 1)[-1] == CHART:
        return True
    values = ((obj.raw.get("spec") or {}).get("values")) if obj is not None else None
    return isinstance(values, dict) and "provider" in values and ("sources" in values or "txtOwnerId" in values)


def _duration(text: str) -> float:
    """A Go duration (``1m``, ``30s``, ``1h30m``) in seconds."""
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def _env_list(items: Any) -> tuple[EnvVar, ...]:
    out = []
    for e in items if isinstance(items, list) else []:
        if not isinstance(e, dict) or not e.get("name"):
            continue
        vf = e.get("valueFrom")
        ref = vf.get("secretKeyRef") if isinstance(vf, dict) else None
        ref = ref if isinstance(ref, dict) else {}
        if ref.get("name") and ref.get("key"):
            out.append(EnvVar(str(e["name"]), secret=(str(ref["name"]), str(ref["key"]))))
        else:
            out.append(EnvVar(str(e["name"]), value=None if e.get("value") is None else str(e.get("value"))))
    return tuple(out)


def _list(v: Any) -> list[Any]:
    """A list value as Helm would range over it (a lone scalar counts as one item)."""
    if isinstance(v, list):
        return v
    return [] if v is None or isinstance(v, dict) else [v]


def _chart_args(values: dict[str, Any]) -> list[str]:
    """The arguments the chart's deployment template passes for these values."""
    args = [f"--interval={values.get('interval', '1m')}"]
    if values.get("triggerLoopOnEvent"):
        args.append("--events")
    for s in _list(values.get("sources")) if values.get("sources") is not None else ["service", "ingress"]:
        args.append(f"--source={s}")
    args.append(f"--policy={values.get('policy') or 'upsert-only'}")
    args.append(f"--registry={values.get('registry') or 'txt'}")
    if values.get("txtOwnerId"):
        args.append(f"--txt-owner-id={values['txtOwnerId']}")
    if values.get("txtPrefix"):
        args.append(f"--txt-prefix={values['txtPrefix']}")
    elif values.get("txtSuffix"):
        args.append(f"--txt-suffix={values['txtSuffix']}")
    if values.get("namespaced"):
        args.append(f"--namespace={values.get('sourceNamespace') or values.get('_namespace')}")
    if values.get("gatewayNamespace"):
        args.append(f"--gateway-namespace={values['gatewayNamespace']}")
    for d in _list(values.get("domainFilters")):
        args.append(f"--domain-filter={d}")
    for d in _list(values.get("excludeDomains")):
        args.append(f"--exclude-domains={d}")
    for key in ("labelFilter", "annotationFilter", "annotationPrefix"):
        if values.get(key):
            args.append(f"--{re.sub(r'([A-Z])', lambda m: '-' + m.group(1).lower(), key)}={values[key]}")
    for t in _list(values.get("managedRecordTypes")):
        args.append(f"--managed-record-types={t}")
    provider = values.get("provider")
    name = provider.get("name") if isinstance(provider, dict) else provider
    args.append(f"--provider={name or 'aws'}")
    extra = values.get("extraArgs")
    if isinstance(extra, dict):
        for k, v in extra.items():
            if v is None:
                args.append(f"--{k}")
            elif isinstance(v, list):
                args += [f"--{k}={x}" for x in v]
            elif isinstance(v, bool):
                args.append(f"--{k}" if v else f"--no-{k}")
            else:
                args.append(f"--{k}={v}")
    elif isinstance(extra, list):
        args += [str(a) for a in extra]
    return args


def _parse_flags(args: list[str], env: Mapping[str, str | None], problems: list[str]) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    expand = lambda s: re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1)) or m.group(0), s)  # noqa: E731
    i = 0
    last = "(the start)"
    while i < len(args):
        a = expand(args[i])
        i += 1
        if not a.startswith("--"):
            problems.append(f"the argument after {last} is not a flag (its value is not shown)")
            continue
        name, sep, value = a[2:].partition("=")
        last = "--" + name
        if not sep:
            if name.startswith("no-") and name[3:] in BOOLEAN:
                name, value = name[3:], "false"
            elif name in BOOLEAN or name not in KNOWN_FLAGS:
                value = "true"
            elif i < len(args) and not expand(args[i]).startswith("--"):  # "--flag value", as kingpin reads it
                value = expand(args[i])
                i += 1
            else:
                problems.append(f"flag --{name} has no value")
                continue
        if name not in KNOWN_FLAGS:
            problems.append(f"flag --{name} is not supported by homeplane (ignored)")
            continue
        if name in REPEATED:
            flags.setdefault(name, []).append(value)
        else:
            flags[name] = [value]
    # flags from the environment, as external-dns reads them (EXTERNAL_DNS_TXT_OWNER_ID …)
    for k, v in env.items():
        if k.startswith("EXTERNAL_DNS_") and v is not None:
            name = k[len("EXTERNAL_DNS_"):].lower().replace("_", "-")
            if name in KNOWN_FLAGS and name not in flags:
                flags[name] = v.split(",") if name in REPEATED else [v]
    return flags


def _version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def instance_from_values(name: str, namespace: str, values: dict[str, Any], file: str = "", line: int | None = None,
                         chart_version: str = "") -> Instance:
    problems: list[str] = []
    fatal: list[str] = []
    env = _env_list(values.get("env"))
    provider = values.get("provider")
    webhook = provider.get("webhook") if isinstance(provider, dict) else None
    webhook = webhook if isinstance(webhook, dict) else {}
    webhook_env = _env_list(webhook.get("env"))
    image = webhook.get("image") or {}
    webhook_image = str(image.get("repository") or "") if isinstance(image, dict) else ""
    plain_env = {e.name: e.value for e in env}
    flags = _parse_flags(_chart_args({**values, "_namespace": namespace}), plain_env, problems)
    if webhook.get("args"):
        problems.append("provider.webhook.args configure the webhook container; homeplane reads its env only")
    if webhook.get("extraArgs"):
        problems.append("provider.webhook.extraArgs is not a value of the external-dns chart: the chart ignores it, and so does homeplane")
    one = lambda k, d="": flags.get(k, [d])[-1]  # noqa: E731
    try:
        interval = _duration(one("interval", "1m"))
    except ValueError:
        problems.append(f"interval {one('interval')!r} is not a duration; using 1m")
        interval = 60.0
    policy = one("policy", "upsert-only")
    if policy not in ("sync", "upsert-only", "create-only"):
        problems.append(f"policy {policy!r} is not one of sync, upsert-only, create-only; using upsert-only")
        policy = "upsert-only"
    if one("registry", "txt") != "txt":
        fatal.append(f"registry {one('registry')!r}: homeplane keeps the TXT registry only")
    if values.get("txtPrefix") and values.get("txtSuffix"):
        problems.append("txtPrefix and txtSuffix are mutually exclusive (the chart refuses both); using txtPrefix")
    for s in flags.get("source", []):
        if s not in SUPPORTED_SOURCES:
            fatal.append(f"source {s!r} is not supported by homeplane (supported: {', '.join(SUPPORTED_SOURCES)}): "
                         "its records would look unwanted, so nothing is changed")
    from homeplane.api.selectors import parse_selector

    for f in ("label-filter", "annotation-filter", "gateway-label-filter"):
        if one(f):
            try:
                parse_selector(one(f))
            except ValueError as e:
                fatal.append(f"--{f}: {e}")
    if "annotation-prefix" in flags:
        prefixes: tuple[str, ...] = (one("annotation-prefix"),)
    elif (v := _version(chart_version)) is not None:
        prefixes = (GA_PREFIX,) if v >= GA_PREFIX_CHART else (ALPHA_PREFIX,)
    else:
        prefixes = (ALPHA_PREFIX, GA_PREFIX)
    managed = tuple(dict.fromkeys(flags.get("managed-record-types") or DEFAULT_MANAGED))
    return Instance(
        name=name, namespace=namespace, file=file, line=line,
        provider=one("provider", "aws"), webhook_image=webhook_image,
        sources=tuple(flags.get("source", [])),
        include_domains=tuple(d for v in flags.get("domain-filter", []) for d in v.split(",") if d),
        exclude_domains=tuple(d for v in flags.get("exclude-domains", []) for d in v.split(",") if d),
        owner=one("txt-owner-id", "default"), txt_prefix=one("txt-prefix"),
        txt_suffix="" if one("txt-prefix") else one("txt-suffix"), txt_wildcard=one("txt-wildcard-replacement"),
        policy=policy, interval=interval, events=one("events", "false") == "true",
        gateway_name=one("gateway-name"), gateway_namespace=one("gateway-namespace"),
        source_namespace=one("namespace"), label_filter=one("label-filter"), annotation_filter=one("annotation-filter"),
        annotation_prefixes=prefixes, managed=managed, exclude_types=tuple(flags.get("exclude-record-types", [])),
        flags=tuple((k, tuple(v)) for k, v in sorted(flags.items())),
        env=env, webhook_env=webhook_env, problems=tuple(problems), fatal=tuple(fatal), chart_version=chart_version,
    )


def instances(objects: list[Any], by_url: Mapping[tuple[str, str], str] | None = None) -> list[Instance]:
    """Every external-dns HelmRelease in the objects, as an instance."""
    sources = {(o.kind, o.namespace or "", o.name): o.raw.get("spec") or {}
               for o in objects if o.kind in ("OCIRepository", "HelmRepository")}
    out = []
    for o in objects:
        if o.kind != "HelmRelease":
            continue
        spec = o.raw.get("spec") or {}
        chart, version = None, ""
        ref = spec.get("chartRef")
        if isinstance(ref, dict):
            src = sources.get((str(ref.get("kind")), str(ref.get("namespace") or o.namespace or ""), str(ref.get("name"))))
            if isinstance(src, dict):
                chart = str(src.get("url", ""))
                version = str((src.get("ref") or {}).get("tag") or "") if isinstance(src.get("ref"), dict) else ""
        else:
            cs = (spec.get("chart") or {}).get("spec") or {} if isinstance(spec.get("chart"), dict) else {}
            chart, version = cs.get("chart"), str(cs.get("version") or "")
        if not is_external_dns(o, chart):
            continue
        values = spec.get("values") or {}
        if not isinstance(values, dict):
            continue
        release = str(spec.get("releaseName") or o.name)
        out.append(instance_from_values(release, str(spec.get("targetNamespace") or o.namespace or "default"), values,
                                        o.source.file, o.source.line, version))
    return out


# credentials a provider reads even when the HelmRelease's env does not name them
CREDENTIALS = {
    "cloudflare": ("CF_API_TOKEN", "CF_API_KEY", "CF_API_EMAIL"),
    "rfc2136": ("EXTERNAL_DNS_RFC2136_TSIG_SECRET",),
}
WEBHOOK_CREDENTIALS = ("UNIFI_HOST", "UNIFI_API_KEY", "UNIFI_USER", "UNIFI_PASS", "UNIFI_SITE")


def resolve_env(inst: Instance, objects: list[Any], variables: Mapping[str, str] | None = None,
                environ: Mapping[str, str] | None = None, webhook: bool = False) -> dict[str, str]:
    """The instance's container environment with secrets filled in: a Secret in the manifests
    (``stringData`` or ``data``), else a variable of the env name (``--vars``/``--set``), else the
    process environment. The provider's own credential names (``CF_API_TOKEN`` …) are looked up
    in the variables and the environment even when the env does not list them. Values that
    cannot be found are left out."""
    environ = os.environ if environ is None else environ
    variables = variables or {}
    secrets = {(o.namespace or "", o.name): secret_values(o.raw) for o in objects if o.kind == "Secret"}
    out: dict[str, str] = {}
    for e in inst.webhook_env if webhook else inst.env:
        value = e.value
        if e.secret is not None:
            value = secrets.get((inst.namespace, e.secret[0]), {}).get(e.secret[1])
        if value is None:
            value = variables.get(e.name) or environ.get(e.name)
        if value is not None:
            out[e.name] = value
    for name in WEBHOOK_CREDENTIALS if webhook else CREDENTIALS.get(inst.provider, ()):
        if name not in out and (variables.get(name) or environ.get(name)):
            out[name] = variables.get(name) or environ[name]
    return out
