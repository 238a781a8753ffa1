"""The kinds homeplane serves: (group, kind) -> model, versions and scope."""

from __future__ import annotations

from dataclasses import dataclass

from homeplane.api.models import certmanager, cilium, core, envoy, externaldns, gateway, networking
from homeplane.api.models.base import Resource


@dataclass(frozen=True, slots=True)
class KindInfo:
    group: str
    kind: str
    versions: tuple[str, ...]
    model: type[Resource]
    namespaced: bool = True
    # False: typed and checked, but nothing acts on it yet ("loaded, not enforced" in check)
    enforced: bool = True


_GW = gateway.GATEWAY_GROUP
_EG = envoy.ENVOY_GROUP

SERVED_KINDS: tuple[KindInfo, ...] = (
    KindInfo("", "Namespace", ("v1",), core.Namespace, namespaced=False),
    KindInfo("", "Service", ("v1",), core.Service),
    KindInfo("", "Endpoints", ("v1",), core.Endpoints),
    KindInfo("", "Secret", ("v1",), core.Secret),
    KindInfo("", "ConfigMap", ("v1",), core.ConfigMap),
    KindInfo("discovery.k8s.io", "EndpointSlice", ("v1",), core.EndpointSlice),
    KindInfo(_GW, "GatewayClass", ("v1", "v1beta1"), gateway.GatewayClass, namespaced=False),
    KindInfo(_GW, "Gateway", ("v1", "v1beta1"), gateway.Gateway),
    KindInfo(_GW, "HTTPRoute", ("v1", "v1beta1"), gateway.HTTPRoute),
    KindInfo(_GW, "TCPRoute", ("v1alpha2",), gateway.TCPRoute),
    KindInfo(_GW, "UDPRoute", ("v1alpha2",), gateway.UDPRoute),
    KindInfo(_GW, "TLSRoute", ("v1alpha2", "v1alpha3"), gateway.TLSRoute),
    KindInfo(_GW, "ReferenceGrant", ("v1", "v1beta1", "v1alpha2"), gateway.ReferenceGrant),
    KindInfo(_GW, "BackendTLSPolicy", ("v1", "v1alpha3"), gateway.BackendTLSPolicy),
    KindInfo(_EG, "EnvoyProxy", ("v1alpha1",), envoy.EnvoyProxy),
    KindInfo(_EG, "SecurityPolicy", ("v1alpha1",), envoy.SecurityPolicy),
    KindInfo(_EG, "ClientTrafficPolicy", ("v1alpha1",), envoy.ClientTrafficPolicy),
    KindInfo(_EG, "BackendTrafficPolicy", ("v1alpha1",), envoy.BackendTrafficPolicy),
    KindInfo(_EG, "EnvoyExtensionPolicy", ("v1alpha1",), envoy.EnvoyExtensionPolicy),
    KindInfo(_EG, "Backend", ("v1alpha1",), envoy.Backend),
    KindInfo(_EG, "HTTPRouteFilter", ("v1alpha1",), envoy.EnvoyHTTPRouteFilter),
    KindInfo("cilium.io", "CiliumLoadBalancerIPPool", ("v2alpha1", "v2"), cilium.CiliumLoadBalancerIPPool, namespaced=False),
    KindInfo("cilium.io", "CiliumL2AnnouncementPolicy", ("v2alpha1",), cilium.CiliumL2AnnouncementPolicy, namespaced=False),
    KindInfo("cilium.io", "CiliumNetworkPolicy", ("v2",), cilium.CiliumNetworkPolicy),
    KindInfo("cilium.io", "CiliumClusterwideNetworkPolicy", ("v2",), cilium.CiliumClusterwideNetworkPolicy, namespaced=False),
    KindInfo("networking.k8s.io", "NetworkPolicy", ("v1",), networking.NetworkPolicy),
    KindInfo("cert-manager.io", "Certificate", ("v1",), certmanager.Certificate),
    KindInfo("cert-manager.io", "Issuer", ("v1",), certmanager.Issuer),
    KindInfo("cert-manager.io", "ClusterIssuer", ("v1",), certmanager.ClusterIssuer, namespaced=False),
    KindInfo("externaldns.k8s.io", "DNSEndpoint", ("v1alpha1",), externaldns.DNSEndpoint),
)

_BY_GROUP_KIND = {(k.group, k.kind): k for k in SERVED_KINDS}
_BY_KIND = {k.kind.lower(): k for k in SERVED_KINDS}

# Cluster-scoped kinds that homeplane does not serve, so their namespace is not defaulted.
_CLUSTER_SCOPED_UNSERVED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "CiliumCIDRGroup",
    "CiliumBGPClusterConfig",
    "CiliumBGPPeerConfig",
    "CiliumBGPAdvertisement",
    "CiliumBGPNodeConfigOverride",
    "APIService",
    "IngressClass",
    "RuntimeClass",
}


def split_api_version(api_version: str) -> tuple[str, str]:
    """``gateway.networking.k8s.io/v1`` -> (group, version); ``v1`` -> ("", "v1")."""
    if "/" in api_version:
        group, version = api_version.rsplit("/", 1)
        return group, version
    return "", api_version


def lookup(group: str, kind: str) -> KindInfo | None:
    return _BY_GROUP_KIND.get((group, kind))


def enforced(group: str, kind: str) -> bool:
    info = _BY_GROUP_KIND.get((group, kind))
    return info is not None and info.enforced


def namespaced(group: str, kind: str) -> bool:
    info = lookup(group, kind)
    if info is not None:
        return info.namespaced
    return kind not in _CLUSTER_SCOPED_UNSERVED


# Short names and plurals accepted by ``homeplane get`` (kubectl-like).
_ALIASES = {
    "ns": "namespace",
    "svc": "service",
    "ep": "endpoints",
    "gc": "gatewayclass",
    "gtw": "gateway",
    "cm": "configmap",
    "netpol": "networkpolicy",
    "cnp": "ciliumnetworkpolicy",
    "ccnp": "ciliumclusterwidenetworkpolicy",
    "ippool": "ciliumloadbalancerippool",
    "ippools": "ciliumloadbalancerippool",
    "cert": "certificate",
    "certs": "certificate",
    "l2announcement": "ciliuml2announcementpolicy",
}


def resolve_kind_name(name: str) -> KindInfo | None:
    """Find a served kind from a kubectl-style name: ``httproutes``, ``svc``, ``Gateway``."""
    n = name.lower().split(".", 1)[0]
    n = _ALIASES.get(n, n)
    if n in _BY_KIND:
        return _BY_KIND[n]
    if n.endswith("ies") and n[:-3] + "y" in _BY_KIND:
        return _BY_KIND[n[:-3] + "y"]
    for suffix in ("es", "s"):
        if n.endswith(suffix) and n[: -len(suffix)] in _BY_KIND:
            return _BY_KIND[n[: -len(suffix)]]
    return None
