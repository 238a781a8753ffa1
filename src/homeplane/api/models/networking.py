"""networking.k8s.io/v1 NetworkPolicy."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from homeplane.api.models.base import LabelSelector, Model, Resource
from homeplane.api.units import IntOrString


def check_cidr(value: str) -> str:
    """A CIDR as network policies take it (host bits allowed, as Kubernetes and Cilium do)."""
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR (address/prefix length)") from None
    return str(value)


class IPBlock(Model):
    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return check_cidr(v)

    @field_validator("except_")
    @classmethod
    def _excepts(cls, v: list[str]) -> list[str]:
        return [check_cidr(x) for x in v]


class NetworkPolicyPeer(Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


class NetworkPolicyPort(Model):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: IntOrString | None = None
    end_port: int | None = None


class IngressRule(Model):
    from_: list[NetworkPolicyPeer] = Field(default_factory=list, alias="from")
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class EgressRule(Model):
    to: list[NetworkPolicyPeer] = Field(default_factory=list)
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicySpec(Model):
    pod_selector: LabelSelector = Field(default_factory=LabelSelector)
    policy_types: list[Literal["Ingress", "Egress"]] = Field(default_factory=list)
    ingress: list[IngressRule] = Field(default_factory=list)
    egress: list[EgressRule] = Field(default_factory=list)

    def effective_policy_types(self) -> list[str]:
        # Kubernetes: Ingress always, Egress only if egress rules are present.
        if self.policy_types:
            return list(self.policy_types)
        return ["Ingress"] + (["Egress"] if self.egress else [])


class NetworkPolicy(Resource):
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
