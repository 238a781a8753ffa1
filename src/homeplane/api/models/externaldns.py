"""externaldns.k8s.io/v1alpha1 DNSEndpoint."""

from __future__ import annotations

from pydantic import Field

from homeplane.api.models.base import Model, Resource


class ProviderSpecificProperty(Model):
    name: str
    value: str


class Endpoint(Model):
    dns_name: str
    targets: list[str] = Field(default_factory=list)
    record_type: str = "A"
    set_identifier: str | None = None
    record_ttl: int | None = Field(default=None, alias="recordTTL")
    labels: dict[str, str] = Field(default_factory=dict)
    provider_specific: list[ProviderSpecificProperty] = Field(default_factory=list)


class DNSEndpointSpec(Model):
    endpoints: list[Endpoint] = Field(default_factory=list)


class DNSEndpoint(Resource):
    spec: DNSEndpointSpec = Field(default_factory=DNSEndpointSpec)
