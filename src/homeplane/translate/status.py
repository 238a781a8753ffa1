"""Status conditions in the upstream vocabulary (Gateway API, Envoy Gateway, Cilium).

Translation is pure, so conditions carry no lastTransitionTime; whoever writes
status (``homeplane run``) stamps the time when a condition changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONTROLLER_NAME = "gateway.envoyproxy.io/gatewayclass-controller"
HOMEPLANE_CONTROLLER = "homeplane.dev/gateway-controller"
DEFAULT_CONTROLLERS = (CONTROLLER_NAME, HOMEPLANE_CONTROLLER)

# Condition types
ACCEPTED = "Accepted"
PROGRAMMED = "Programmed"
RESOLVED_REFS = "ResolvedRefs"
CONFLICTED = "Conflicted"
OVERRIDDEN = "Overridden"
SUPPORTED_VERSION = "SupportedVersion"

# Reasons (gateway-api apis/v1 and Envoy Gateway)
R_ACCEPTED = "Accepted"
R_PROGRAMMED = "Programmed"
R_RESOLVED_REFS = "ResolvedRefs"
R_INVALID_PARAMETERS = "InvalidParameters"
R_INVALID = "Invalid"
R_LISTENERS_NOT_VALID = "ListenersNotValid"
R_PENDING = "Pending"
R_NO_CONFLICTS = "NoConflicts"
R_HOSTNAME_CONFLICT = "HostnameConflict"
R_PROTOCOL_CONFLICT = "ProtocolConflict"
R_UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
R_INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
R_INVALID_ROUTE_KINDS = "InvalidRouteKinds"
R_REF_NOT_PERMITTED = "RefNotPermitted"
R_NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
R_NO_MATCHING_LISTENER_HOSTNAME = "NoMatchingListenerHostname"
R_NO_MATCHING_PARENT = "NoMatchingParent"
R_UNSUPPORTED_VALUE = "UnsupportedValue"
R_UNSUPPORTED_REF_VALUE = "UnsupportedRefValue"
R_BACKEND_NOT_FOUND = "BackendNotFound"
R_INVALID_KIND = "InvalidKind"
R_PORT_NOT_FOUND = "PortNotFound"  # Envoy Gateway's reason for a backendRef port missing on the Service
R_TARGET_NOT_FOUND = "TargetNotFound"
R_CONFLICTED = "Conflicted"
R_OVERRIDDEN = "Overridden"
R_SUPPORTED_VERSION = "SupportedVersion"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool | None  # None = Unknown
    reason: str
    message: str = ""
    observed_generation: int | None = None

    @property
    def status_str(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "status": self.status_str,
            "reason": self.reason,
            "message": self.message,
        }
        if self.observed_generation is not None:
            d["observedGeneration"] = self.observed_generation
        return d


def cond(type_: str, ok: bool | None, reason: str, message: str = "", generation: int | None = None) -> Condition:
    return Condition(type_, ok, reason, message, generation)


def conditions_json(conditions: list[Condition] | tuple[Condition, ...]) -> list[dict[str, Any]]:
    return [c.to_json() for c in conditions]


def problems(conditions: list[Condition] | tuple[Condition, ...]) -> list[Condition]:
    """Conditions that describe something wrong (a positive type that is not True, or a conflict)."""
    bad = []
    for c in conditions:
        if c.type in (CONFLICTED, OVERRIDDEN):
            if c.status and c.type == CONFLICTED:
                bad.append(c)
        elif c.status is not True:
            bad.append(c)
    return bad
