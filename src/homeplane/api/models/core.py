"""Core kinds: Namespace, Service, Endpoints, EndpointSlice, Secret, ConfigMap."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from homeplane.api.models.base import LabelSelector, Model, Resource
from homeplane.api.units import IntOrString


class Namespace(Resource):
    spec: dict | None = None


class ServicePort(Model):
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None
    port: int = Field(ge=1, le=65535)
    target_port: IntOrString | None = None  # defaults to port
    node_port: int | None = None

    @property
    def effective_target_port(self) -> IntOrString:
        return self.target_port if self.target_port is not None else self.port


class SessionAffinityConfig(Model):
    client_ip: dict | None = Field(default=None, alias="clientIP")


class ServiceSpec(Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: list[str] = Field(default_factory=list, alias="clusterIPs")
    external_ips: list[str] = Field(default_factory=list, alias="externalIPs")
    external_name: str | None = None
    load_balancer_ip: str | None = Field(default=None, alias="loadBalancerIP")
    load_balancer_class: str | None = None
    load_balancer_source_ranges: list[str] = Field(default_factory=list)
    allocate_load_balancer_node_ports: bool | None = None
    external_traffic_policy: Literal["Cluster", "Local"] | None = None
    internal_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    health_check_node_port: int | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    ip_families: list[Literal["IPv4", "IPv6"]] = Field(default_factory=list)
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = None
    publish_not_ready_addresses: bool = False
    traffic_distribution: str | None = None

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def effective_external_traffic_policy(self) -> str | None:
        # Kubernetes defaults it to Cluster for NodePort/LoadBalancer only.
        if self.external_traffic_policy:
            return self.external_traffic_policy
        return "Cluster" if self.type in ("NodePort", "LoadBalancer") else None


class Service(Resource):
    spec: ServiceSpec = Field(default_factory=ServiceSpec)


class EndpointAddress(Model):
    ip: str
    hostname: str | None = None
    node_name: str | None = None
    target_ref: dict | None = None


class EndpointPort(Model):
    name: str | None = None
    port: int
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None


class EndpointSubset(Model):
    addresses: list[EndpointAddress] = Field(default_factory=list)
    not_ready_addresses: list[EndpointAddress] = Field(default_factory=list)
    ports: list[EndpointPort] = Field(default_factory=list)


class Endpoints(Resource):
    subsets: list[EndpointSubset] = Field(default_factory=list)


class EndpointConditions(Model):
    # Per the EndpointSlice API, a nil "ready" is interpreted as ready.
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready is not False


class SliceEndpoint(Model):
    addresses: list[str]
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    target_ref: dict | None = None
    hints: dict | None = None


class SlicePort(Model):
    name: str | None = None
    port: int | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None


class EndpointSlice(Resource):
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: list[SliceEndpoint] = Field(default_factory=list)
    ports: list[SlicePort] = Field(default_factory=list)


class Secret(Resource):
    type: str = "Opaque"
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict)
    immutable: bool | None = None
    sops: dict | None = None  # SOPS metadata of an encrypted Secret (values are then ENC[...])

    def value(self, key: str) -> bytes | None:
        """Decoded value: stringData wins over data, as the API server merges them."""
        import base64
        import binascii

        if key in self.string_data:
            return self.string_data[key].encode()
        if key in self.data:
            try:
                return base64.b64decode(self.data[key], validate=False)
            except (binascii.Error, ValueError):
                return None
        return None

    def keys(self) -> set[str]:
        return set(self.data) | set(self.string_data)


class ConfigMap(Resource):
    data: dict[str, str] = Field(default_factory=dict)
    binary_data: dict[str, str] = Field(default_factory=dict)
    immutable: bool | None = None
    sops: dict | None = None


__all__ = [
    "ConfigMap",
    "EndpointSlice",
    "Endpoints",
    "LabelSelector",
    "Namespace",
    "Secret",
    "Service",
]
