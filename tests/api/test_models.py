"""Model defaults follow the upstream CRDs and APIs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from homeplane.api.models.certmanager import Certificate
from homeplane.api.models.cilium import CiliumLoadBalancerIPPool, CiliumNetworkPolicy
from homeplane.api.models.core import EndpointSlice, Secret, Service
from homeplane.api.models.envoy import Backend, BackendTrafficPolicy, ClientTrafficPolicy, SecurityPolicy
from homeplane.api.models.gateway import HTTPRoute, ReferenceGrant
from homeplane.api.models.networking import NetworkPolicy


def meta(kind: str, api: str, **spec) -> dict:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "x", "namespace": "ns"}, **spec}


def test_httproute_defaults() -> None:
    r = HTTPRoute.model_validate(meta("HTTPRoute", "gateway.networking.k8s.io/v1", spec={"parentRefs": [{"name": "gw"}]}))
    (rule,) = r.spec.rules
    (m,) = rule.matches
    assert (m.path.type, m.path.value) == ("PathPrefix", "/")
    p = r.spec.parent_refs[0]
    assert (p.group, p.kind, p.namespace, p.section_name) == ("gateway.networking.k8s.io", "Gateway", None, None)
    r2 = HTTPRoute.model_validate(
        meta("HTTPRoute", "gateway.networking.k8s.io/v1", spec={"rules": [{"backendRefs": [{"name": "s", "port": 80}], "matches": [{"headers": [{"name": "a", "value": "b"}]}]}]})
    )
    b = r2.spec.rules[0].backend_refs[0]
    assert (b.group, b.kind, b.weight) == ("", "Service", 1)
    assert r2.spec.rules[0].matches[0].headers[0].type == "Exact"


def test_redirect_default_status_is_302() -> None:
    r = HTTPRoute.model_validate(
        meta("HTTPRoute", "gateway.networking.k8s.io/v1", spec={"rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]}]})
    )
    assert r.spec.rules[0].filters[0].request_redirect.status_code == 302


def test_service_defaults() -> None:
    s = Service.model_validate(meta("Service", "v1", spec={"type": "LoadBalancer", "ports": [{"port": 80}]}))
    p = s.spec.ports[0]
    assert (p.protocol, p.effective_target_port) == ("TCP", 80)
    assert s.spec.session_affinity == "None"
    assert s.spec.effective_external_traffic_policy == "Cluster"
    c = Service.model_validate(meta("Service", "v1", spec={"ports": [{"port": 80}]}))
    assert c.spec.type == "ClusterIP" and c.spec.effective_external_traffic_policy is None


def test_endpointslice_nil_ready_means_ready() -> None:
    s = EndpointSlice.model_validate(
        meta("EndpointSlice", "discovery.k8s.io/v1", addressType="IPv4", endpoints=[{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "conditions": {"ready": False}}])
    )
    assert [e.conditions.is_ready for e in s.endpoints] == [True, False]


def test_secret_string_data_wins_and_base64_decodes() -> None:
    s = Secret.model_validate(meta("Secret", "v1", data={"a": "aGVsbG8=", "b": "eA=="}, stringData={"b": "override"}))
    assert s.value("a") == b"hello" and s.value("b") == b"override" and s.value("c") is None


def test_envoy_gateway_defaults() -> None:
    sp = SecurityPolicy.model_validate(
        meta("SecurityPolicy", "gateway.envoyproxy.io/v1alpha1", spec={"extAuth": {"http": {"backendRefs": [{"name": "auth", "port": 9000}]}}})
    )
    assert sp.spec.ext_auth.fail_open is False
    assert sp.spec.authorization is None
    with pytest.raises(ValidationError, match="exactly one of extAuth.http and extAuth.grpc"):
        SecurityPolicy.model_validate(meta("SecurityPolicy", "gateway.envoyproxy.io/v1alpha1", spec={"extAuth": {}}))
    btp = BackendTrafficPolicy.model_validate(
        meta("BackendTrafficPolicy", "gateway.envoyproxy.io/v1alpha1", spec={"retry": {}, "loadBalancer": {}, "compression": [{"type": "Gzip"}], "compressor": [{"type": "Zstd"}]})
    )
    assert btp.spec.retry.num_retries == 2
    assert btp.spec.load_balancer.type == "LeastRequest"
    assert [c.type for c in btp.spec.compressors()] == ["Zstd", "Gzip"]
    ctp = ClientTrafficPolicy.model_validate(
        meta("ClientTrafficPolicy", "gateway.envoyproxy.io/v1alpha1", spec={"tls": {"minVersion": 1.2}})
    )
    assert ctp.spec.tls.min_version == "1.2"  # YAML typed it as a float; the API field is a string
    with pytest.raises(ValidationError, match="exactly one of fqdn, ip and unix"):
        Backend.model_validate(meta("Backend", "gateway.envoyproxy.io/v1alpha1", spec={"endpoints": [{}]}))


def test_cilium_pool_and_policy_defaults() -> None:
    pool = CiliumLoadBalancerIPPool.model_validate(
        {"apiVersion": "cilium.io/v2", "kind": "CiliumLoadBalancerIPPool", "metadata": {"name": "p"}, "spec": {"blocks": [{"cidr": "10.0.0.0/24"}]}}
    )
    assert pool.spec.allow_first_last_i_ps == "Yes" and pool.spec.disabled is False
    with pytest.raises(ValidationError):
        CiliumLoadBalancerIPPool.model_validate(
            {"apiVersion": "cilium.io/v2", "kind": "CiliumLoadBalancerIPPool", "metadata": {"name": "p"}, "spec": {"blocks": [{"cidr": "10.0.0.0/24", "start": "10.0.0.1"}]}}
        )
    cnp = CiliumNetworkPolicy.model_validate(
        meta("CiliumNetworkPolicy", "cilium.io/v2", spec={"endpointSelector": {}, "egressDeny": [{"toCIDR": ["10.0.0.0/8"]}]})
    )
    assert cnp.rules()[0].egress_deny[0].to_cidr == ["10.0.0.0/8"]


def test_networkpolicy_policy_types_default() -> None:
    np = NetworkPolicy.model_validate(meta("NetworkPolicy", "networking.k8s.io/v1", spec={"egress": [{}]}))
    assert np.spec.effective_policy_types() == ["Ingress", "Egress"]


def test_certificate_defaults() -> None:
    c = Certificate.model_validate(
        meta("Certificate", "cert-manager.io/v1", spec={"secretName": "s", "issuerRef": {"name": "le"}})
    )
    assert c.spec.duration == "2160h"
    assert c.spec.issuer_ref.kind == "Issuer" and c.spec.issuer_ref.group == "cert-manager.io"
    assert (c.spec.private_key.algorithm, c.spec.private_key.effective_size) == ("RSA", 2048)


def test_reference_grant_needs_from_and_to() -> None:
    with pytest.raises(ValidationError):
        ReferenceGrant.model_validate(meta("ReferenceGrant", "gateway.networking.k8s.io/v1beta1", spec={"from": [], "to": []}))


def test_durations_are_validated() -> None:
    with pytest.raises(ValidationError, match="invalid duration"):
        HTTPRoute.model_validate(
            meta("HTTPRoute", "gateway.networking.k8s.io/v1", spec={"rules": [{"timeouts": {"request": "ten seconds"}}]})
        )


def test_quantities() -> None:
    from homeplane.api.units import parse_quantity

    assert [parse_quantity(v) for v in ("64Ki", "1Mi", 32768, "1.5M", "2k")] == [65536, 1048576, 32768, 1_500_000, 2000]
    for bad in ("12x", "Mi", "", "1MiB"):
        with pytest.raises(ValueError, match="invalid quantity"):
            parse_quantity(bad)
