"""Load + translate in one call, shared by ``check``, ``get`` and ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from homeplane.api.loader import LoadOptions, LoadResult, load_paths
from homeplane.api.models.cilium import CiliumLoadBalancerIPPool
from homeplane.api.models.core import Service
from homeplane.api.models.envoy import gateway_service_key
from homeplane.api.models.gateway import Gateway
from homeplane.importer.endpoints import endpoint_slices
from homeplane.importer.repo import is_flux_repo, load_repo
from homeplane.importer.sops import Decryptor
from homeplane.ipam.binding import BindingOptions, Bindings
from homeplane.ipam.binding import plan as plan_bindings
from homeplane.ipam.clusterip import DEFAULT_SERVICE_CIDR, ServiceRequest, allocate_cluster_ips
from homeplane.ipam.gatewayservice import gateway_services
from homeplane.ipam.lbipam import LBResult, PoolInput, ServiceInput
from homeplane.ipam.lbipam import allocate as allocate_lb
from homeplane.report import build_report
from homeplane.translate import TranslateOptions, Translation, translate
from homeplane.translate.gateways import requested_addresses


@dataclass(frozen=True)
class Inputs:
    paths: tuple[Path, ...]
    # None: no substitution. Otherwise Flux post-build substitution with these values.
    variables: Mapping[str, str] | None = field(default_factory=dict)
    strict: bool = False
    default_namespace: str = "default"
    translate: TranslateOptions = field(default_factory=TranslateOptions)
    # "auto": a tree with Flux Kustomizations is imported as a Flux repo, anything else read as plain manifests
    mode: str = "auto"
    endpoints: Path | None = None
    service_cidr: str = DEFAULT_SERVICE_CIDR
    # where Gateways listen on this machine: decided only when serving (None for check/get)
    bindings: BindingOptions | None = None
    # age identities for SOPS-encrypted files (secret: never printed)
    age_identities: tuple[str, ...] = field(default=(), repr=False)


@dataclass
class Result:
    load: LoadResult
    translation: Translation
    _report: dict[str, Any] | None = None
    cluster_ips: dict[tuple[str, str], str] = field(default_factory=dict)
    lb_ips: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    bindings: Bindings = field(default_factory=Bindings)

    @property
    def report(self) -> dict[str, Any]:
        if self._report is None:
            self._report = build_report(
                self.load.objects, self.load.diagnostics, self.translation, len(self.load.files)
            )
        return self._report

    @property
    def ok(self) -> bool:
        return self.report["summary"]["errors"] == 0


def run_pipeline(
    inputs: Inputs,
    version: int = 1,
    previous_cluster_ips: Mapping[tuple[str, str], str] | None = None,
    previous_lb_ips: Mapping[tuple[str, str], list[str]] | None = None,
    previous_bindings: Mapping[str, str] | None = None,
    issued_secrets: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    solver_objects: list[dict[str, Any]] | None = None,
    base_load: LoadResult | None = None,
) -> Result:
    """Load, run the address controllers (ClusterIPs, LB IPAM, where Gateways listen; each
    keeping what it handed out before), translate. ``issued_secrets`` are the certificates the
    certificate controller holds: each becomes a TLS Secret unless the manifests have one of
    that name (bring your own wins). ``base_load`` reuses objects loaded before (the last good
    configuration) instead of reading the files again."""
    if base_load is not None:
        from homeplane.api.diagnostics import Diagnostics

        load = LoadResult([o for o in base_load.objects if o.source.file != ISSUED_FILE],
                          Diagnostics(list(base_load.diagnostics.items)), list(base_load.files))
    else:
        load = _load(inputs)
    if issued_secrets:
        _add_issued(load, issued_secrets)
    if solver_objects:
        from homeplane.api.loader import add_object

        for doc in solver_objects:  # HTTP-01 challenge routes while an order is in flight
            add_object(doc, ISSUED_FILE, LoadOptions(variables=None), load, 0, 0)
    requests = [
        ServiceRequest((o.namespace or "", o.name), o.model.spec.cluster_ip)
        for o in load.objects
        if isinstance(o.model, Service) and o.model.spec.type != "ExternalName"
    ]
    alloc = allocate_cluster_ips(requests, inputs.service_cidr, previous_cluster_ips)
    lb = allocate_lb_ips(load.objects, previous_lb_ips)
    bindings = Bindings()
    if inputs.bindings is not None:
        opts = replace(inputs.bindings, previous=previous_bindings or inputs.bindings.previous)
        bindings = plan_bindings(gateway_addresses(load.objects, lb), opts)
    options = replace(
        inputs.translate, cluster_ips=alloc.addresses, cluster_ip_problems=alloc.problems, lb=lb, bindings=bindings.addresses,
    )
    return Result(
        load, translate(load.objects, options, version=version), cluster_ips=alloc.addresses, lb_ips=lb.addresses, bindings=bindings,
    )


def gateway_addresses(objects: list, lb: LBResult) -> list[tuple[str, list[str]]]:
    """Every Gateway's addresses: what LB IPAM gave its Service, else what it asks for."""
    out = []
    for o in objects:
        if isinstance(o.model, Gateway):
            got = lb.services.get(gateway_service_key(o.namespace or "", o.name))
            out.append((f"{o.namespace}/{o.name}", list(got.addresses) if got and got.addresses else requested_addresses(o.model)))
    return out


def allocate_lb_ips(objects: list, previous: Mapping[tuple[str, str], list[str]] | None) -> LBResult:
    """LB IPAM over the manifests' pools, their LoadBalancer Services and the Gateways' Services."""
    pools = []
    for o in objects:
        m = o.model
        if isinstance(m, CiliumLoadBalancerIPPool):
            pools.append(
                PoolInput(
                    o.name,
                    [b.model_dump() for b in m.spec.all_blocks()],
                    m.spec.allow_first_last_i_ps != "No",
                    m.spec.service_selector,
                    m.spec.disabled,
                    (m.metadata.creation_timestamp or "~",),
                )
            )
    services = [
        ServiceInput(
            key=(o.namespace or "", o.name),
            labels=o.labels,
            annotations=o.annotations,
            ports=[(p.port, p.protocol) for p in o.model.spec.ports],
            lb_ip=o.model.spec.load_balancer_ip,
            lb_class=o.model.spec.load_balancer_class,
            ip_families=list(o.model.spec.ip_families),
            ip_family_policy=o.model.spec.ip_family_policy,
            external_traffic_policy=o.model.spec.effective_external_traffic_policy or "Cluster",
            selector=o.model.spec.selector,
        )
        for o in objects
        if isinstance(o.model, Service) and o.model.spec.type == "LoadBalancer"
    ]
    return allocate_lb(pools, services + gateway_services(objects), previous)


def _load(inputs: Inputs) -> LoadResult:
    """A Flux repository (the first path, when it is one) with any further paths' objects added
    to its tree, or plain manifests; the mode chosen is said in an info diagnostic."""
    first = inputs.paths[0] if inputs.paths and inputs.paths[0].is_dir() else None
    if inputs.mode == "flux" or (inputs.mode == "auto" and first is not None and is_flux_repo(first)):
        assert first is not None, "a Flux repository is a folder"
        load = load_repo(first, dict(inputs.variables or {}), inputs.endpoints, inputs.default_namespace,
                         Decryptor(inputs.age_identities))
        extra = inputs.paths[1:]
        if extra:
            more = load_paths(extra, LoadOptions(
                variables=inputs.variables, strict=inputs.strict, default_namespace=inputs.default_namespace,
            ))
            load.objects += more.objects
            load.diagnostics.extend(more.diagnostics)
            load.files += more.files
            load.diagnostics.info(
                f"read {first} as a Flux repository, with the objects of {', '.join(map(str, extra))} added to it",
                code="LoadMode",
            )
        return load
    base = first if len(inputs.paths) == 1 else None
    load = load_paths(
        inputs.paths,
        LoadOptions(
            variables=inputs.variables,
            strict=inputs.strict,
            default_namespace=inputs.default_namespace,
            relative_to=base,
        ),
    )
    load.diagnostics.info(
        "read as plain manifests" + (" (--mode plain)" if inputs.mode == "plain" else " (no Flux Kustomization found)"),
        code="LoadMode",
    )
    if inputs.endpoints is not None:
        _add_endpoints(load, inputs.endpoints)
    return load


ISSUED_FILE = "(issued by homeplane)"


def _add_issued(load: LoadResult, issued: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
    from homeplane.api.loader import add_object
    from homeplane.certs.controller import secret_manifest

    have = {(o.namespace or "default", o.name) for o in load.objects if o.kind == "Secret"}
    for (ns, name), doc in sorted(issued.items()):
        if (ns, name) not in have:
            add_object(secret_manifest(ns, name, dict(doc)), ISSUED_FILE, LoadOptions(variables=None), load, 0, 0)


def _add_endpoints(load: LoadResult, path: Path) -> None:
    """The --endpoints overlay for plain manifests (a Flux import applies it itself)."""
    from homeplane.api.loader import add_object
    from homeplane.importer.docs import Doc

    docs = [Doc(o.raw, o.source.file) for o in load.objects if o.kind == "Service"]
    for d in endpoint_slices(path, docs, load.diagnostics):
        add_object(d.data, d.file, LoadOptions(variables=None), load, d.document, d.line)
