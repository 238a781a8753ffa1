"""cert-manager.io/v1 Certificate, Issuer and ClusterIssuer, with cert-manager defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from homeplane.api.models.base import Model, Resource
from homeplane.api.units import Duration


class IssuerRef(Model):
    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"


class PrivateKey(Model):
    algorithm: Literal["RSA", "ECDSA", "Ed25519"] = "RSA"
    size: int | None = None  # RSA 2048, ECDSA 256 when unset
    encoding: Literal["PKCS1", "PKCS8"] = "PKCS1"
    # Always is the default since cert-manager 1.18.
    rotation_policy: Literal["Never", "Always"] = "Always"

    @property
    def effective_size(self) -> int | None:
        if self.size is not None:
            return self.size
        return {"RSA": 2048, "ECDSA": 256}.get(self.algorithm)


class CertificateSpec(Model):
    secret_name: str
    issuer_ref: IssuerRef
    common_name: str | None = None
    dns_names: list[str] = Field(default_factory=list)
    ip_addresses: list[str] = Field(default_factory=list)
    uris: list[str] = Field(default_factory=list)
    email_addresses: list[str] = Field(default_factory=list)
    duration: Duration = "2160h"  # 90 days
    renew_before: Duration | None = None  # default: one third of duration
    renew_before_percentage: int | None = None
    private_key: PrivateKey = Field(default_factory=PrivateKey)
    usages: list[str] = Field(default_factory=lambda: ["digital signature", "key encipherment"])
    is_ca: bool = Field(default=False, alias="isCA")
    subject: dict | None = None
    secret_template: dict | None = None
    keystores: dict | None = None
    revision_history_limit: int | None = None
    additional_output_formats: list[dict] = Field(default_factory=list)
    literal_subject: str | None = None
    name_constraints: dict | None = None
    other_names: list[dict] = Field(default_factory=list)
    encode_usages_in_request: bool | None = None


class Certificate(Resource):
    spec: CertificateSpec


class IssuerSpec(Model):
    acme: dict | None = None
    ca: dict | None = None
    self_signed: dict | None = None
    vault: dict | None = None
    venafi: dict | None = None

    @property
    def type(self) -> str:
        for name in ("acme", "ca", "self_signed", "vault", "venafi"):
            if getattr(self, name) is not None:
                return {"self_signed": "selfSigned"}.get(name, name)
        return "unknown"


class Issuer(Resource):
    spec: IssuerSpec


class ClusterIssuer(Issuer):
    pass
