"""Cilium kinds (cilium.io): LB IPAM pools, L2 announcement policies, network policies."""

from __future__ import annotations

# Cilium LB IPAM's annotations and Service condition types (shared by the IPAM controller, translate and tools)
LBIPAM_IPS = "lbipam.cilium.io/ips"
LBIPAM_SHARING_KEY = "lbipam.cilium.io/sharing-key"
LBIPAM_SHARING_CROSS_NS = "lbipam.cilium.io/sharing-cross-namespace"
LBIPAM_SATISFIED = "cilium.io/IPAMRequestSatisfied"  # the condition type in Cilium's source since 1.17
LBIPAM_LEGACY_SATISFIED = "io.cilium/lb-ipam-request-satisfied"  # older releases, and Cilium's documentation

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from homeplane.api.models.base import LabelSelector, Model, Resource
from homeplane.api.models.networking import check_cidr
from homeplane.api.units import LooseStr

CILIUM_GROUP = "cilium.io"


class IPBlock(Model):
    cidr: str | None = None
    start: str | None = None
    stop: str | None = None

    @model_validator(mode="after")
    def _cidr_or_range(self) -> "IPBlock":
        if self.cidr is None and self.start is None:
            raise ValueError("a block needs either cidr or start (with an optional stop)")
        if self.cidr is not None and (self.start is not None or self.stop is not None):
            raise ValueError("a block has either cidr or start/stop, not both")
        return self


class CiliumLoadBalancerIPPoolSpec(Model):
    blocks: list[IPBlock] = Field(default_factory=list)
    cidrs: list[IPBlock] = Field(default_factory=list)  # v2alpha1's older name for blocks
    service_selector: LabelSelector | None = None
    # "Yes" or unset: the first and last address of each CIDR are allocatable.
    allow_first_last_i_ps: Literal["Yes", "No"] = Field(default="Yes", alias="allowFirstLastIPs")
    disabled: bool = False

    def all_blocks(self) -> list[IPBlock]:
        return list(self.blocks) + list(self.cidrs)


class CiliumLoadBalancerIPPool(Resource):
    spec: CiliumLoadBalancerIPPoolSpec


class CiliumL2AnnouncementPolicySpec(Model):
    service_selector: LabelSelector | None = None
    node_selector: LabelSelector | None = None
    interfaces: list[str] = Field(default_factory=list)

    @field_validator("interfaces")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return [_re2(p, "interface pattern") or p for p in v]
    external_i_ps: bool = Field(default=False, alias="externalIPs")
    load_balancer_i_ps: bool = Field(default=False, alias="loadBalancerIPs")


class CiliumL2AnnouncementPolicy(Resource):
    spec: CiliumL2AnnouncementPolicySpec = Field(default_factory=CiliumL2AnnouncementPolicySpec)


class CIDRRule(Model):
    cidr: str | None = None
    cidr_group_ref: str | None = None
    cidr_group_selector: LabelSelector | None = None
    except_: list[str] = Field(default_factory=list, alias="except")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        return check_cidr(v) if v is not None else None

    @field_validator("except_")
    @classmethod
    def _excepts(cls, v: list[str]) -> list[str]:
        return [check_cidr(x) for x in v]


class PortProtocol(Model):
    port: LooseStr | None = None
    end_port: int | None = None
    protocol: Literal["TCP", "UDP", "SCTP", "ICMP", "ICMPv6", "ANY"] = "ANY"


def _re2(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    import re2

    try:
        re2.compile(value)
    except re2.error as e:
        raise ValueError(f"{what} {value!r} is not a valid RE2 pattern: {e}") from None
    return value


class HeaderMatch(Model):
    name: str
    value: str | None = None
    mismatch: Literal["LOG", "ADD", "DELETE", "REPLACE"] | None = None
    secret: dict | None = None


class PortRuleHTTP(Model):
    """An L7 HTTP rule: method, path and host are RE2 patterns matched against the whole value."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: list[str] = Field(default_factory=list)
    header_matches: list[HeaderMatch] = Field(default_factory=list)

    @field_validator("method", "path", "host")
    @classmethod
    def _pattern(cls, v: str | None, info: Any) -> str | None:
        return _re2(v, info.field_name)


class PortRuleDNS(Model):
    match_name: str | None = None
    match_pattern: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "PortRuleDNS":
        if self.match_name is None and self.match_pattern is None:
            raise ValueError("a DNS rule needs matchName or matchPattern")
        for v in (self.match_name, self.match_pattern):
            if v is not None and not all(c.isalnum() or c in "-_.*" for c in v):
                raise ValueError(f"{v!r}: a DNS name or pattern has letters, digits, '-', '_', '.' and '*' only")
        return self


class L7Rules(Model):
    http: list[PortRuleHTTP] | None = None
    dns: list[PortRuleDNS] | None = None
    kafka: list[dict] | None = None
    l7proto: str | None = None
    l7: list[dict] | None = None


class PortRule(Model):
    ports: list[PortProtocol] = Field(default_factory=list)
    rules: L7Rules | None = None
    terminating_tls: dict | None = Field(default=None, alias="terminatingTLS")
    originating_tls: dict | None = Field(default=None, alias="originatingTLS")
    server_names: list[str] = Field(default_factory=list)
    listener: dict | None = None


class K8sServiceRef(Model):
    service_name: str | None = None
    namespace: str | None = None


class ServiceRef(Model):
    k8s_service: K8sServiceRef | None = Field(default=None, alias="k8sService")
    k8s_service_selector: dict | None = Field(default=None, alias="k8sServiceSelector")


class FQDNSelector(Model):
    match_name: str | None = None
    match_pattern: str | None = None


class PeerRule(Model):
    """One ingress/egress (or *Deny) rule: L3 peers and L4 ports."""

    from_endpoints: list[LabelSelector] = Field(default_factory=list)
    to_endpoints: list[LabelSelector] = Field(default_factory=list)
    from_entities: list[str] = Field(default_factory=list)
    to_entities: list[str] = Field(default_factory=list)
    from_cidr: list[str] = Field(default_factory=list, alias="fromCIDR")
    to_cidr: list[str] = Field(default_factory=list, alias="toCIDR")
    from_cidr_set: list[CIDRRule] = Field(default_factory=list, alias="fromCIDRSet")
    to_cidr_set: list[CIDRRule] = Field(default_factory=list, alias="toCIDRSet")

    @field_validator("from_cidr", "to_cidr")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return [check_cidr(x) for x in v]
    to_fqd_ns: list[FQDNSelector] = Field(default_factory=list, alias="toFQDNs")
    to_services: list[ServiceRef] = Field(default_factory=list)
    from_groups: list[dict] = Field(default_factory=list)
    to_groups: list[dict] = Field(default_factory=list)
    from_nodes: list[LabelSelector] = Field(default_factory=list)
    to_nodes: list[LabelSelector] = Field(default_factory=list)
    from_requires: list[LabelSelector] = Field(default_factory=list)
    to_requires: list[LabelSelector] = Field(default_factory=list)
    to_ports: list[PortRule] = Field(default_factory=list)
    icmps: list[dict] = Field(default_factory=list)
    authentication: dict | None = None


class DefaultDeny(Model):
    ingress: bool | None = None
    egress: bool | None = None


class CiliumPolicyRule(Model):
    endpoint_selector: LabelSelector | None = None
    node_selector: LabelSelector | None = None
    ingress: list[PeerRule] = Field(default_factory=list)
    ingress_deny: list[PeerRule] = Field(default_factory=list)
    egress: list[PeerRule] = Field(default_factory=list)
    egress_deny: list[PeerRule] = Field(default_factory=list)
    labels: list[dict] = Field(default_factory=list)
    description: str | None = None
    enable_default_deny: DefaultDeny | None = None

    @model_validator(mode="after")
    def _selects(self) -> "CiliumPolicyRule":
        # Cilium refuses a rule that says neither whom (endpointSelector) nor which nodes it is for
        if self.endpoint_selector is None and self.node_selector is None:
            raise ValueError("a rule needs endpointSelector (or nodeSelector for a host policy)")
        if self.endpoint_selector is not None and self.node_selector is not None:
            raise ValueError("a rule has endpointSelector or nodeSelector, not both")
        return self


class CiliumNetworkPolicy(Resource):
    spec: CiliumPolicyRule | None = None
    specs: list[CiliumPolicyRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_rules(self) -> "CiliumNetworkPolicy":
        if self.spec is None and not self.specs:
            raise ValueError("a Cilium network policy needs spec or specs")
        return self

    def rules(self) -> list[CiliumPolicyRule]:
        return ([self.spec] if self.spec is not None else []) + list(self.specs)


class CiliumClusterwideNetworkPolicy(CiliumNetworkPolicy):
    pass
